"""Change events between two snapshots of one host and kind. Pure: values in, values out.

A snapshot is the whole current list of one kind (protocol.Snapshot); the store keeps the latest per host and
kind, and the writer, when it replaces one, tells its SnapshotListeners what changed: members that appeared,
members that disappeared, and members whose state changed (for kinds with a state field). Members are matched by
their kind's key (protocol.SnapshotKind.key: pid+name for processes, since pids are reused).

The first snapshot of a host and kind is a baseline: no events (a server that starts, or a host that is new, would
otherwise announce every member it has). A snapshot in another version of the kind is a baseline too: its members
may not compare.

For `processes` the agent reports the top consumers (by CPU and by memory), not every process: there Appeared and
Disappeared mean "entered" and "left" that list, not "started" and "ended". An alert on a process that must run
needs the agent to report that process by name whatever its rank (a later kind or option), not these events.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .protocol import SNAPSHOT_KINDS, SnapshotKind, snapshot_key

Item = dict[str, Any]


@dataclass(frozen=True)
class Appeared:
    key: tuple[Any, ...]
    item: Item


@dataclass(frozen=True)
class Disappeared:
    key: tuple[Any, ...]
    item: Item  # as last seen


@dataclass(frozen=True)
class StateChanged:
    key: tuple[Any, ...]
    item: Item  # as now
    before: Any
    after: Any


SnapshotEvent = Appeared | Disappeared | StateChanged


def diff(kind: SnapshotKind, previous: Sequence[Item] | None, current: Sequence[Item]) -> list[SnapshotEvent]:
    """What changed from `previous` (None: there was none, a baseline) to `current`, in a stable order: appeared
    and state changes in the order of `current`, then disappeared in the order of `previous`."""
    if previous is None:
        return []
    before = _by_key(kind, previous)
    events: list[SnapshotEvent] = []
    now_keys = set()
    for item in current:
        key = snapshot_key(kind, item)
        now_keys.add(key)
        old = before.get(key)
        if old is None:
            events.append(Appeared(key, item))
        elif kind.state is not None and old.get(kind.state) != item.get(kind.state):
            events.append(StateChanged(key, item, old.get(kind.state), item.get(kind.state)))
    events.extend(Disappeared(key, item) for key, item in before.items() if key not in now_keys)
    return events


def diff_stored(kind_name: str, previous: tuple[int, Sequence[Item]] | None, version: int,
                current: Sequence[Item]) -> list[SnapshotEvent]:
    """diff() for what the store holds: (version, items) of the previous snapshot, or None. Another version of the
    kind, or a kind this server no longer knows, is a baseline."""
    kind = SNAPSHOT_KINDS.get(kind_name)
    if kind is None or previous is None or previous[0] != version:
        return []
    return diff(kind, previous[1], current)


def _by_key(kind: SnapshotKind, items: Iterable[Item]) -> dict[tuple[Any, ...], Item]:
    # Items read back from the store went through validation once, but a stored row may be older or damaged:
    # anything that is not an object is skipped rather than trusted.
    return {snapshot_key(kind, item): item for item in items if isinstance(item, dict)}
