"""Durations: the one parser of what people type (30m, 2d3h, 1.5h) and the one formatter of what they read.

Pure. Everything that takes a duration from a user (MBOT_RETAIN_*, /plot spans, /setalert FOR, /mute) reads it
with parse_duration, so a spelling that works in one place works in all; everything that shows one uses
format_duration, so the chat, the alert messages and the CLI say "2 h 5 min" alike.
"""
from __future__ import annotations

import math
import re

from .i18n import N_, _

# A year is 365 days: `2y` is the default retention of the 1-hour tier (730d), so a chart of "the last 2 years"
# reaches exactly as far back as the history does.
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
SYNTAX = N_("a number and s, m, h, d, w or y, like 30m, 48h, 7d, 1y")  # for usage lines and error messages
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdwy])")

# Days, not weeks, as the largest unit shown: "730d" reads better than "104w 2d".
_SENTENCE_UNITS = ((N_("{n} d"), 86400), (N_("{n} h"), 3600), (N_("{n} min"), 60), (N_("{n} s"), 1))
_COMPACT_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """'48h', '7d', '90d', '30m', '2w', '1y', '45s' (also '1.5h', glued '2d3h', any case, spaces around) -> seconds.

    A duration must be longer than 0 unless `allow_zero` (an alert's FOR may be 0s). Raises ValueError with a
    message that can be shown to a user as is.
    """
    compact = text.strip().lower()
    if not compact or _PART.sub("", compact):
        raise ValueError(_("{text!r} is not a duration: use {syntax}", text=text, syntax=_(SYNTAX)))
    seconds = sum(float(n) * UNIT_SECONDS[unit] for n, unit in _PART.findall(compact))
    if not math.isfinite(seconds):
        raise ValueError(_("{text!r}: that duration is too long", text=text))
    if not (seconds > 0 or allow_zero):
        raise ValueError(_("{text!r}: a duration must be longer than 0", text=text))
    return seconds


def format_duration(seconds: float, *, compact: bool = False) -> str:
    """Seconds -> text.

    For sentences (the default): the largest unit and, when not zero, the next one, in whole seconds rounded down:
    '3 d 4 h', '2 h', '1 h 5 min', '42 s'; less than a second (or a negative span, from clocks apart) reads '0 s'.
    `compact`: the parser's own spelling with every unit, rounded, for a span the user typed: '2d 3h', '730d',
    '30m', '0s'; parse_duration reads each part back.
    """
    if compact:
        units, remaining = _COMPACT_UNITS, round(seconds)
    else:
        units, remaining = _SENTENCE_UNITS, max(0, int(seconds))
    counts: list[tuple[int, str]] = []
    for unit, size in units:
        n, remaining = divmod(remaining, size)
        counts.append((n, unit))
    if compact:
        shown = [(n, unit) for n, unit in counts if n]
    else:
        first = next((i for i, (n, _unit) in enumerate(counts) if n), len(counts) - 1)
        shown = [(n, unit) for n, unit in counts[first:first + 2] if n]
    if compact:
        return " ".join(f"{n}{unit}" for n, unit in shown) or "0s"
    # The units in the chat's language (mbot.i18n): "2 ч 5 мин"; the CLI's stay "2 h 5 min".
    return " ".join(_(unit, n=n) for n, unit in shown) or _("{n} s", n=0)
