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

_DURATION_HELP = "durations look like 30s, 5m, 2h, 1d or 1h30m"
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
    return AlertUsageError(f"{usage}\n{problem}")


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
        raise _usage(usage, f"{what} {text[:32]!r} is not a duration: {_DURATION_HELP}.") from None
    if not low <= seconds <= high:
        raise _usage(usage, f"{what} must be between {_duration_text(low)} and {_duration_text(high)}.")
    return seconds


def _metric_help() -> str:
    return f"METRIC: {', '.join(metric_words())}, or offline (containers, services and checks: THRESHOLD is the word down)"


def _metric_arg(usage: str, text: str) -> str:
    member = members.normalise(text)  # service:nginx -> service:nginx.service
    if member is not None:
        return member
    selector, colon, mount = text.partition(":")
    metric = canonical(selector) + colon + mount  # temps is temp; mount points are case-sensitive
    if metric == "offline" or metric_of(metric) is not None:
        return metric
    raise _usage(usage, f"unknown metric {text[:32]!r}. {_metric_help()}.")


def _threshold_arg(metric: str, text: str) -> tuple[float, bool]:
    found = metric_of(metric)
    assert found is not None
    kind = found.kind
    if kind == _STATE:  # a member is up or not: the one condition is "down"
        if text.strip().lower() != members.DOWN_WORD:
            raise _usage(USAGE_SETALERT, f"{metric} takes no threshold but `down`, e.g. /setalert box1 {metric} down.")
        return members.THRESHOLD, True
    match = _NUMBER.fullmatch(text.strip())
    unit = "" if match is None else match[3].strip().lower().removesuffix("/s")
    units = _UNITS[kind]
    in_ms = _in_ms(metric)
    if in_ms:
        units = _MS_UNITS
    if match is None or unit not in units:
        examples = {_PCT: "90, 90% or <10", _TEMP: "80 or 80C", _LOAD: "4 or 4.5", _RATE: "10M or <1K (bytes/s)"}
        if in_ms:
            examples[kind] = "200, 200ms or 1s"
        raise _usage(USAGE_SETALERT, f"THRESHOLD {text[:32]!r} is not valid for {metric}: try {examples[kind]}.")
    value = float(match[2]) * units[unit]
    low, high = found.bounds
    if not low <= value <= high:
        shown = f"{format_value(metric, low)} and {format_value(metric, high)}"
        raise _usage(USAGE_SETALERT, f"THRESHOLD for {metric} must be between {shown}.")
    return value, match[1] == "<"


def parse_setalert(args: Sequence[str]) -> AlertSpec | OfflineSpec:
    """/setalert NAME METRIC THRESHOLD [FOR] | /setalert NAME offline [DELAY]."""
    if len(args) < 2:
        raise _usage(USAGE_SETALERT, f"{_metric_help()}; e.g. /setalert box1 cpu 90 5m or /setalert box1 offline 2m.")
    name = args[0]
    metric = _metric_arg(USAGE_SETALERT, args[1])
    if metric == "offline":
        if len(args) > 3:
            raise _usage(USAGE_SETALERT, "offline takes one DELAY at most, e.g. /setalert box1 offline 2m.")
        delay = None if len(args) == 2 else _duration_arg(USAGE_SETALERT, "DELAY", args[2], _MIN_DELAY, _MAX_FOR)
        return OfflineSpec(name, delay)
    found = metric_of(metric)
    assert found is not None
    if found.kind == _CODE:
        return _state_alert(name, metric, args[2:])
    if len(args) == 2 and members.member_of(metric) is not None:
        args = [*args, members.DOWN_WORD]
    if len(args) == 2:
        raise _usage(USAGE_SETALERT, f"THRESHOLD is missing, e.g. /setalert {name[:32]} {metric} 90 5m.")
    if len(args) > 4:
        raise _usage(USAGE_SETALERT, "too many arguments.")
    threshold, below = _threshold_arg(metric, args[2])
    for_s = 0.0 if len(args) == 3 else _duration_arg(USAGE_SETALERT, "FOR", args[3], 0.0, _MAX_FOR)
    return AlertSpec(name, metric, threshold, below, for_s)


def _state_alert(name: str, metric: str, rest: Sequence[str]) -> AlertSpec:
    """`container:web down [FOR]`, `containers down [FOR]`: fires when the container is not running, unhealthy,
    restarting over and over (3 times in 10 min, counted by the agent) or, for one named container, gone."""
    example = f"e.g. /setalert {name[:32]} {metric[:40]} down, or down 2m to let a restart pass."
    if not rest or rest[0].lower() != "down":
        raise _usage(USAGE_SETALERT, f"{metric[:40]} takes the word down (and an optional FOR): {example}")
    if len(rest) > 2:
        raise _usage(USAGE_SETALERT, f"too many arguments: {example}")
    for_s = 0.0 if len(rest) == 1 else _duration_arg(USAGE_SETALERT, "FOR", rest[1], 0.0, _MAX_FOR)
    return AlertSpec(name, metric, _DOWN, False, for_s)


def parse_delalert(args: Sequence[str]) -> DeleteSpec:
    if len(args) != 2:
        raise _usage(USAGE_DELALERT, f"{_metric_help()}; /alerts lists your rules.")
    return DeleteSpec(args[0], _metric_arg(USAGE_DELALERT, args[1]))


def parse_mute(args: Sequence[str]) -> MuteSpec:
    if len(args) != 2:
        raise _usage(USAGE_MUTE, f"e.g. /mute box1 2h; {_DURATION_HELP}.")
    return MuteSpec(args[0], _duration_arg(USAGE_MUTE, "DURATION", args[1], 1.0, _MAX_MUTE))


def parse_unmute(args: Sequence[str]) -> str:
    if len(args) != 1:
        raise _usage(USAGE_UNMUTE, "e.g. /unmute box1.")
    return args[0]
