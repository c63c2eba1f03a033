"""Quiet hours: `/quiet 23:00-07:00` sends a user's notifications silently (Telegram's disable_notification) in that
window of the wall clock in MBOT_TZ; nothing is dropped or delayed. Pure: the grammar and the window.

The window is read on the wall clock, so it follows daylight saving time: 23:00-07:00 is 23:00-07:00 local time on
both sides of a change, 7 or 9 hours long on the night of one. On the night clocks go forward, a window that starts
or ends in the skipped hour starts or ends when the clock has jumped past it; on the night they go back, the repeated
hour is quiet (or not) both times.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Sequence

from .i18n import N_, _

USAGE = N_("Usage: /quiet HH:MM-HH:MM (e.g. /quiet 23:00-07:00), /quiet off, or /quiet to see the setting")
DAY = 24 * 60

_TIME = r"([01]?\d|2[0-3])(?::([0-5]\d))?"
_WINDOW = re.compile(rf"{_TIME}-{_TIME}")


class QuietUsageError(ValueError):
    """str(self) is what to tell the user: the problem, then the usage line."""


@dataclass(frozen=True)
class QuietHours:
    """A daily window of the wall clock, in minutes after midnight; `end` before `start` wraps past midnight."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not (0 <= self.start < DAY and 0 <= self.end < DAY) or self.start == self.end:
            raise ValueError(f"not a quiet window: {self.start}-{self.end}")

    def covers(self, minute: int) -> bool:
        """Whether this minute of the day (0-1439) is quiet: start inclusive, end exclusive."""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def quiet_at(self, instant: float, tz: tzinfo) -> bool:
        """Whether a notification at `instant` (seconds since 1970) goes out silently, the wall clock read in `tz`."""
        local = datetime.fromtimestamp(instant, tz)
        return self.covers(local.hour * 60 + local.minute)

    @property
    def minutes(self) -> int:
        """How long the window is, on a day without a clock change."""
        return (self.end - self.start) % DAY

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# What `/quiet ARGS` asks for: SHOW the setting, OFF, or a QuietHours to set.
SHOW, OFF = "show", "off"


def parse_quiet(args: Sequence[str]) -> QuietHours | str:
    """`/quiet` -> SHOW, `/quiet off` -> OFF, `/quiet 23:00-07:00` (or `23-7`, `23:00 - 07:00`) -> QuietHours."""
    text = "".join(args).strip().lower()
    if not text:
        return SHOW
    if text in ("off", "none", "no"):
        return OFF
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise QuietUsageError(_("{text!r} is not a window of the clock.", text=text[:40]) + " " + _(USAGE))
    start = int(match[1]) * 60 + int(match[2] or 0)
    end = int(match[3]) * 60 + int(match[4] or 0)
    if start == end:
        raise QuietUsageError(_("{text} is an empty window; /quiet off turns quiet hours off.", text=text) + " "
                              + _(USAGE))
    return QuietHours(start, end)
