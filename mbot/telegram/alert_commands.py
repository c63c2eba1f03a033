"""The alert commands' grammar: /setalert, /delalert, /mute, /unmute -> values, or a usage error. Pure.

Like mbot.telegram.commands, a mistake is never silence: AlertUsageError starts with the command's usage line and says
what was wrong. Which metrics exist comes from the catalogue (through mbot.alerts.metric_of).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from .. import members, series as catalogue
from ..alerts import (CODE as _CODE, DOWN as _DOWN, LOAD as _LOAD, MIN_DELAY as _MIN_DELAY, PCT as _PCT,
                      RATE as _RATE, STATE as _STATE, TEMP as _TEMP, AlertRule, OfflineRule, metric_of, metric_words)
from ..durations import format_duration as _duration_text, parse_duration
from ..i18n import N_, _
from ..series import canonical
from .alert_text import format_value

__all__ = [
    "AlertSpec", "OfflineSpec", "DeleteSpec", "MuteSpec", "AlertUsageError", "parse_setalert", "parse_delalert",
    "parse_mute", "parse_unmute", "USAGE_SETALERT", "USAGE_DELALERT", "USAGE_MUTE", "USAGE_UNMUTE",
]


USAGE_SETALERT = "Usage: /setalert NAME METRIC THRESHOLD [FOR]"
USAGE_DELALERT = "Usage: /delalert NAME METRIC"
USAGE_MUTE = "Usage: /mute NAME DURATION"
USAGE_UNMUTE = "Usage: /unmute NAME"

_DURATION_HELP = N_("durations look like 30s, 5m, 2h, 1d or 1h30m")
_MAX_FOR = 7 * 86400.0
_MAX_MUTE = 366 * 86400.0
_NUMBER = re.compile(r"([<>]?)(-?(?:\d+(?:\.\d*)?|\.\d+))(.*)", re.DOTALL)
# Rates use binary multiples whatever the spelling (K, KB, KiB), as the status card shows them.
_RATE_UNITS = {"": 1, "b": 1, **{f"{p}{s}": 1024 ** (i + 1) for i, p in enumerate("kmgt") for s in ("", "b", "ib")}}
_UNITS = {_PCT: {"": 1, "%": 1}, _TEMP: {"": 1, "c": 1, "°c": 1, "°": 1}, _LOAD: {"": 1}, _RATE: _RATE_UNITS}


_MS_UNITS = {"": 1, "ms": 1, "s": 1000}  # round trips (rtt, jitter) are in milliseconds


def _in_ms(metric: str) -> bool:
    row = catalogue.selectors().get(metric.partition(":")[0])
    return row is not None and row.unit == catalogue.MILLISECONDS


class AlertUsageError(ValueError):
    """Bad arguments to an alert command; str(self) starts with the usage line and says what is wrong."""


def _usage(usage: str, problem: str) -> AlertUsageError:
    """`usage`: a USAGE_* line; both are said in the user's language."""
    return AlertUsageError(_("Usage: {usage}", usage=usage.removeprefix("Usage: ")) + "\n" + problem)


@dataclass(frozen=True)
class AlertSpec:
    """/setalert NAME METRIC THRESHOLD [FOR], parsed; the caller resolves NAME to a host."""

    name: str
    metric: str
    threshold: float
    below: bool
    for_s: float

    def rule(self, host_id: int) -> AlertRule:
        return AlertRule(host_id, self.metric, self.threshold, self.below, self.for_s)


@dataclass(frozen=True)
class OfflineSpec:
    """/setalert NAME offline [DELAY]: (re-)enable the offline alert; delay None is the default."""

    name: str
    delay: float | None

    def rule(self, host_id: int) -> OfflineRule:
        return OfflineRule(host_id, self.delay)


@dataclass(frozen=True)
class DeleteSpec:
    name: str
    metric: str  # a rule's metric, or "offline"


@dataclass(frozen=True)
class MuteSpec:
    name: str
    duration: float


def _duration_arg(usage: str, what: str, text: str, low: float, high: float) -> float:
    try:
        seconds = parse_duration(text, allow_zero=True)
    except ValueError:
        raise _usage(usage, _("{what} {text!r} is not a duration: {help}.", what=what, text=text[:32],
                              help=_(_DURATION_HELP))) from None
    if not low <= seconds <= high:
        raise _usage(usage, _("{what} must be between {low} and {high}.", what=what, low=_duration_text(low),
                              high=_duration_text(high)))
    return seconds


def _metric_help() -> str:
    return _("METRIC: {words}, or offline (containers, services and checks: THRESHOLD is the word down)",
             words=", ".join(metric_words()))


def _metric_arg(usage: str, text: str) -> str:
    member = members.normalise(text)  # service:nginx -> service:nginx.service
    if member is not None:
        return member
    selector, colon, mount = text.partition(":")
    metric = canonical(selector) + colon + mount  # temps is temp; mount points are case-sensitive
    if metric == "offline" or metric_of(metric) is not None:
        return metric
    raise _usage(usage, _("unknown metric {text!r}. {help}.", text=text[:32], help=_metric_help()))


def _threshold_arg(metric: str, text: str) -> tuple[float, bool]:
    found = metric_of(metric)
    assert found is not None
    kind = found.kind
    if kind == _STATE:  # a member is up or not: the one condition is "down"
        if text.strip().lower() != members.DOWN_WORD:
            raise _usage(USAGE_SETALERT, _("{metric} takes no threshold but `down`, e.g. /setalert box1 {metric} down.",
                                           metric=metric))
        return members.THRESHOLD, True
    match = _NUMBER.fullmatch(text.strip())
    unit = "" if match is None else match[3].strip().lower().removesuffix("/s")
    units = _UNITS[kind]
    in_ms = _in_ms(metric)
    if in_ms:
        units = _MS_UNITS
    if match is None or unit not in units:
        examples = {_PCT: N_("90, 90% or <10"), _TEMP: N_("80 or 80C"), _LOAD: N_("4 or 4.5"),
                    _RATE: N_("10M or <1K (bytes/s)")}
        if in_ms:
            examples[kind] = N_("200, 200ms or 1s")
        raise _usage(USAGE_SETALERT, _("THRESHOLD {text!r} is not valid for {metric}: try {examples}.",
                                       text=text[:32], metric=metric, examples=_(examples[kind])))
    value = float(match[2]) * units[unit]
    low, high = found.bounds
    if not low <= value <= high:
        raise _usage(USAGE_SETALERT, _("THRESHOLD for {metric} must be between {low} and {high}.", metric=metric,
                                       low=format_value(metric, low), high=format_value(metric, high)))
    return value, match[1] == "<"


def parse_setalert(args: Sequence[str]) -> AlertSpec | OfflineSpec:
    """/setalert NAME METRIC THRESHOLD [FOR] | /setalert NAME offline [DELAY]."""
    if len(args) < 2:
        raise _usage(USAGE_SETALERT, _("{help}; e.g. /setalert box1 cpu 90 5m or /setalert box1 offline 2m.",
                                       help=_metric_help()))
    name = args[0]
    metric = _metric_arg(USAGE_SETALERT, args[1])
    if metric == "offline":
        if len(args) > 3:
            raise _usage(USAGE_SETALERT, _("offline takes one DELAY at most, e.g. /setalert box1 offline 2m."))
        delay = None if len(args) == 2 else _duration_arg(USAGE_SETALERT, "DELAY", args[2], _MIN_DELAY, _MAX_FOR)
        return OfflineSpec(name, delay)
    found = metric_of(metric)
    assert found is not None
    if found.kind == _CODE:
        return _state_alert(name, metric, args[2:])
    if len(args) == 2 and members.member_of(metric) is not None:
        args = [*args, members.DOWN_WORD]
    if len(args) == 2:
        raise _usage(USAGE_SETALERT, _("THRESHOLD is missing, e.g. /setalert {name} {metric} 90 5m.", name=name[:32],
                                       metric=metric))
    if len(args) > 4:
        raise _usage(USAGE_SETALERT, _("too many arguments."))
    threshold, below = _threshold_arg(metric, args[2])
    for_s = 0.0 if len(args) == 3 else _duration_arg(USAGE_SETALERT, "FOR", args[3], 0.0, _MAX_FOR)
    return AlertSpec(name, metric, threshold, below, for_s)


def _state_alert(name: str, metric: str, rest: Sequence[str]) -> AlertSpec:
    """`container:web down [FOR]`, `containers down [FOR]`: fires when the container is not running, unhealthy,
    restarting over and over (3 times in 10 min, counted by the agent) or, for one named container, gone."""
    example = _("e.g. /setalert {name} {metric} down, or down 2m to let a restart pass.", name=name[:32],
                metric=metric[:40])
    if not rest or rest[0].lower() != "down":
        raise _usage(USAGE_SETALERT, _("{metric} takes the word down (and an optional FOR): {example}",
                                       metric=metric[:40], example=example))
    if len(rest) > 2:
        raise _usage(USAGE_SETALERT, _("too many arguments: {example}", example=example))
    for_s = 0.0 if len(rest) == 1 else _duration_arg(USAGE_SETALERT, "FOR", rest[1], 0.0, _MAX_FOR)
    return AlertSpec(name, metric, _DOWN, False, for_s)


def parse_delalert(args: Sequence[str]) -> DeleteSpec:
    if len(args) != 2:
        raise _usage(USAGE_DELALERT, _("{help}; /alerts lists your rules.", help=_metric_help()))
    return DeleteSpec(args[0], _metric_arg(USAGE_DELALERT, args[1]))


def parse_mute(args: Sequence[str]) -> MuteSpec:
    if len(args) != 2:
        raise _usage(USAGE_MUTE, _("e.g. /mute box1 2h; {help}.", help=_(_DURATION_HELP)))
    return MuteSpec(args[0], _duration_arg(USAGE_MUTE, "DURATION", args[1], 1.0, _MAX_MUTE))


def parse_unmute(args: Sequence[str]) -> str:
    if len(args) != 1:
        raise _usage(USAGE_UNMUTE, _("e.g. /unmute box1."))
    return args[0]
