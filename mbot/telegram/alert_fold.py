"""Storms folded (issue 16, item 4): which alerts of a chat wait for each other, and what one message for many says.
Pure: time is given, nothing is sent here (mbot/telegram/alert_delivery.py does the sending and the waiting).

- `Batches`: items held per group (a chat's alert starts; a folded message's ends) from the first one's arrival
  until `wait` after it, then due together. The deadline is fixed by the first item, never pushed back by later
  ones: a steady trickle cannot hold alerts back longer than the wait.
- `Fold`: the text and buttons of one message for several alerts: a line per alert (edited to its end when it ends),
  a button per host (its card), and a head that says what most likely happened: when most of the chat's hosts lost
  contact at once, the hosts are not the news, the server's side is ("7 of 9 hosts lost contact at 14:02: probably
  the server's network or the server itself").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Generic, Hashable, Sequence, TypeVar

from ..alerts import Firing, Offline
from ..forecast import DiskFull
from ..i18n import _, n_
from . import views

G = TypeVar("G", bound=Hashable)
T = TypeVar("T")

TEXT_LIMIT = 3900  # a folded message's text (Telegram: 4096): the lines that do not fit are counted instead
BUTTONS = 24  # host buttons at most (8 rows of 3)


class Batches(Generic[G, T]):
    """Items held per group until `wait` after the group's first item."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._held: dict[G, tuple[float, list[T]]] = {}

    def add(self, group: G, item: T, now: float) -> None:
        if group in self._held:
            self._held[group][1].append(item)
        else:
            self._held[group] = (now + self.wait, [item])

    def next_deadline(self) -> float | None:
        return min((due for due, _ in self._held.values()), default=None)

    def due(self, now: float) -> list[tuple[G, list[T]]]:
        """The groups whose wait is over (oldest deadline first), removed from the batches."""
        ready = sorted((due, group) for group, (due, _) in self._held.items() if due <= now)
        return [(group, self._held.pop(group)[1]) for _, group in ready]

    def take(self, group: G) -> list[T]:
        """A group's items now (something must not overtake them), removed; [] when none are held."""
        held = self._held.pop(group, None)
        return [] if held is None else held[1]

    def groups(self) -> list[G]:
        return list(self._held)

    def items(self, group: G) -> Sequence[T]:
        held = self._held.get(group)
        return () if held is None else held[1]


def lost_contact(offline: int, hosts: int) -> bool:
    """Whether `offline` hosts going offline together, of the chat's `hosts`, is the server's side losing them
    (most of them, and more than one) rather than news about each host."""
    return offline >= 2 and offline * 2 > hosts


def _clock(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%H:%M")


def head(events: Sequence[Firing | Offline | DiskFull], hosts: int, tz: tzinfo) -> str:
    """What a folded message says first. `hosts`: how many hosts the chat watches (that ever connected)."""
    offline = [e for e in events if isinstance(e, Offline)]
    if lost_contact(len({e.host_id for e in offline}), hosts):
        return _("⚠️ {n} of {total} hosts lost contact at {time}: probably the server's network or the server "
                 "itself", n=len({e.host_id for e in offline}), total=max(hosts, len(offline)),
                 time=_clock(min(e.since for e in offline), tz))
    first = min(e.since if isinstance(e, Offline) else e.at for e in events)
    return n_("⚠️ {n} alert at {time}", "⚠️ {n} alerts at {time}", len(events), time=_clock(first, tz))


@dataclass
class Fold:
    """One message for several alerts: `lines` are [alert id, the alert's line (HTML), its end's line or None]."""

    head: str  # HTML
    lines: list[list[Any]]
    hosts: list[tuple[int, str]]  # (host id, name), each once, in order
    id: int | None = None  # its alert_folds row
    message_id: int | None = field(default=None, compare=False)

    def end(self, alert_id: int, text: str) -> None:
        for line in self.lines:
            if line[0] == alert_id:
                line[2] = text

    def open(self) -> bool:
        return any(line[2] is None for line in self.lines)

    def text(self) -> str:
        out = [self.head]
        size = len(self.head)
        for shown, (_id, line, ended) in enumerate(self.lines):
            line = ended or f"• {line}"
            rest = len(self.lines) - shown
            if size + 1 + len(line) + (40 if rest > 1 else 0) > TEXT_LIMIT:
                out.append(_("… and {n} more", n=rest))
                break
            out.append(line)
            size += 1 + len(line)
        return "\n".join(out)

    def keyboard(self) -> views.Keyboard:
        buttons = [views.button(name, views.Callback("card", (str(host_id),))) for host_id, name in self.hosts]
        buttons = buttons[:BUTTONS]
        return views.keyboard(*(buttons[i:i + 3] for i in range(0, len(buttons), 3)))

    def as_dict(self) -> dict[str, Any]:
        return {"head": self.head, "lines": self.lines, "hosts": self.hosts}

    @classmethod
    def from_dict(cls, data: dict[str, Any], fold_id: int) -> Fold:
        return cls(str(data["head"]), [[int(a), str(t), None if e is None else str(e)] for a, t, e in data["lines"]],
                   [(int(h), str(n)) for h, n in data["hosts"]], fold_id)


def ends_text(texts: Sequence[str]) -> str:
    """The reply that tells a folded message's ends (each its own line, HTML): one notification for all of them."""
    out: list[str] = []
    size = 0
    for shown, text in enumerate(texts):
        if size + len(text) + 40 > TEXT_LIMIT:
            out.append(_("… and {n} more", n=len(texts) - shown))
            break
        out.append(text)
        size += len(text) + 1
    return "\n".join(out)
