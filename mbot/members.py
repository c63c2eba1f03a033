"""Alerts on one member of a snapshot: a systemd service (`/setalert box1 service:nginx down`), a check. Containers
are not members: their alerts are rules on the `container_down:NAME` series of the samples (mbot.alerts, kind CODE),
where the agent also says a restart loop. Pure: values in, values out.

The shape every such kind shares is one row of MEMBER_KINDS: the word a rule starts with, the snapshot kind that
lists the members and the field that names them, how a name as typed becomes that name (`nginx` ->
`nginx.service`), and what a member's item, or its absence from the latest snapshot, means as a state code. The
alert engine (mbot.alerts) sees each watched member as one series named like the rule's metric
(`service:nginx.service`) whose value is that code: UP (1) when all is well, a code below THRESHOLD otherwise. A
member rule is "value < THRESHOLD", so everything the engine does for other rules (FOR, mute, reminders, the hold
while a host is offline, a restart without a second message) holds for it unchanged. mbot.alerting keeps the
latest snapshot of each member kind per host and adds the watched members' codes to every sample it feeds the
engine: a change shows at the next sample, at most one interval after the snapshot that says it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .i18n import N_, _

UP, CHANGING, STOPPED, FAILED = 1.0, 0.0, -0.5, -1.0
THRESHOLD = 0.5  # a member rule fires below this: any code but UP
# Message ids (mbot.i18n): said with _() where shown.
STATE_WORDS = {UP: N_("running"), CHANGING: N_("starting or stopping"), STOPPED: N_("not running"),
               FAILED: N_("failed")}
DOWN_WORD = "down"  # /setalert NAME service:UNIT down

Item = dict[str, Any]


@dataclass(frozen=True)
class MemberKind:
    word: str  # the metric's prefix: service
    snapshot: str  # the snapshot kind whose items are the members: services
    key: str  # the item field that names a member: unit
    label: str  # how messages call one: "service {name}" (a message id)
    name: re.Pattern[str]  # what a member's name may look like (as typed, before normalise)
    normalise: Callable[[str], str]
    code: Callable[[Item | None], float]  # an item (None: absent from the latest snapshot) -> a state code
    words: dict[float, str] | None = None  # what its codes are called, where STATE_WORDS does not fit


def _unit_name(name: str) -> str:
    """What systemctl itself does with a bare name: `nginx` is `nginx.service`."""
    return name if re.search(r"\.[a-z]+$", name) else f"{name}.service"


def _service_code(item: Item | None) -> float:
    # A unit missing from the agent's list (loaded units that are not inactive) is stopped or not loaded at all.
    if item is None:
        return STOPPED
    state = item.get("state")
    if state in ("active", "reloading"):
        return UP
    if state == "failed":
        return FAILED
    if state in ("activating", "deactivating"):
        return CHANGING
    return STOPPED


def _check_code(item: Item | None) -> float:
    # Checks from the host (mbot.checks): the agent says `down` after the check's N consecutive failures. A check
    # it has not reported (just added, not run yet) is not known to be down.
    if item is None or item.get("state") != "down":
        return UP
    return FAILED


MEMBER_KINDS: dict[str, MemberKind] = {
    "service": MemberKind("service", "services", "unit", N_("service {name}"),
                          re.compile(r"[A-Za-z0-9:_.@\\-]{1,256}"), _unit_name, _service_code),
    "check": MemberKind("check", "checks", "name", N_("check {name}"),
                        re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,39}"), str.lower, _check_code,
                        {UP: N_("up"), FAILED: N_("down")}),
}
SNAPSHOT_KINDS = frozenset(kind.snapshot for kind in MEMBER_KINDS.values())


def member_of(metric: str) -> tuple[MemberKind, str] | None:
    """`service:nginx.service` -> (its kind, the member's name), or None when `metric` names no member."""
    word, colon, name = metric.partition(":")
    kind = MEMBER_KINDS.get(word.lower())
    if not colon or kind is None or kind.name.fullmatch(name) is None:
        return None
    return kind, name


def normalise(metric: str) -> str | None:
    """A member metric as typed -> as rules store it (`service:nginx` -> `service:nginx.service`), or None."""
    found = member_of(metric)
    if found is None:
        return None
    kind, name = found
    return f"{kind.word}:{kind.normalise(name)}"


def codes(metrics: Iterable[str], items_by_kind: dict[str, Sequence[Item]]) -> dict[str, float]:
    """The series to add to a host's samples: for each watched member metric whose kind has a snapshot
    (`items_by_kind`, by snapshot kind), its state code. A kind with no snapshot yet adds nothing (unknown is not
    down)."""
    out = {}
    for metric in metrics:
        found = member_of(metric)
        if found is None:
            continue
        kind, name = found
        items = items_by_kind.get(kind.snapshot)
        if items is None:
            continue
        item = next((i for i in items if i.get(kind.key) == name), None)
        out[metric] = kind.code(item)
    return out


def label(series: str) -> str | None:
    """"service nginx.service" for a member series, None for other series."""
    found = member_of(series)
    if found is None:
        return None
    label = _(found[0].label, name=found[1])
    return label if "{name}" in found[0].label else f"{label} {found[1]}"  # a kind whose label names no {name}


def state_word(value: float, metric: str | None = None) -> str:
    """A state code in words; `metric` (service:nginx.service, check:web) picks its kind's own words."""
    found = member_of(metric) if metric is not None else None
    words = found[0].words if found is not None and found[0].words else STATE_WORDS
    word = words.get(value, STATE_WORDS.get(value))
    return _(word) if word is not None else _("state {code}", code=f"{value:g}")
