"""The daily digest (issue 16, item 9): `/digest 09:00` sends one message a day, a picture with a row per host (CPU,
RAM and disk sparklines, uptime % and alert count of the last 24 h) and the disk forecasts. Pure: the grammar, when
the next one is due, and the figures (the chart is mbot/digestchart.py, the sending mbot/telegram/digests.py).

When: at HH:MM of the wall clock in MBOT_TZ. On the night clocks go forward, a time in the skipped hour comes as
much later as the clock jumped (02:30 at 03:30); on the night they go back, a time in the repeated hour comes once
(its first time).
A digest is due at the first HH:MM after the last one sent (or after it was set): a server that was down over 09:00
sends it when it is back, once, and the next one at the next 09:00.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from typing import Sequence

from .i18n import _, n_

DAY = 86400.0
SPAN = DAY  # what a digest covers
SHOW, OFF = "show", "off"
_TIME = re.compile(r"([01]?\d|2[0-3])(?::([0-5]\d))?")


class DigestUsageError(ValueError):
    """str(self) is what to tell the user: the problem, then the usage line."""


def usage() -> str:
    return _("Usage: /digest HH:MM (e.g. /digest 09:00), /digest off, or /digest to see the setting")


def parse_digest(args: Sequence[str]) -> int | str:
    """`/digest` -> SHOW, `/digest off` -> OFF, `/digest 09:00` (or `9`) -> minutes after midnight."""
    text = "".join(args).strip().lower()
    if not text:
        return SHOW
    if text in ("off", "none", "no"):
        return OFF
    match = _TIME.fullmatch(text)
    if match is None:
        raise DigestUsageError(_("{text} is not a time of day.", text=repr(text[:40])) + " " + usage())
    return int(match[1]) * 60 + int(match[2] or 0)


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def next_due(minute: int, tz: tzinfo, after: float) -> float:
    """The first instant strictly after `after` at which the wall clock in `tz` reads `minute` (or, that day, has
    just jumped past it)."""
    day = datetime.fromtimestamp(after, tz).date()
    at = time(minute // 60, minute % 60)
    for offset in range(-1, 3):
        local = datetime.combine(day + timedelta(days=offset), at, tzinfo=tz)
        ts = local.timestamp()
        # A time in a skipped hour is read with the offset before the jump (fold 0, PEP 495): as much after the
        # jump as it was into the gap (02:30 -> 03:30); a repeated time is its first occurrence.
        if ts > after:
            return ts
    raise AssertionError("a day always has a next time")  # pragma: no cover


# --- the figures ------------------------------------------------------------------------------------------------


@dataclass
class HostDay:
    """One host's last 24 hours: what its row in the picture shows."""

    name: str
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (t, %) points of the sparklines
    ram: list[tuple[float, float]] = field(default_factory=list)
    disk: list[tuple[float, float]] = field(default_factory=list)  # the fullest disk's percent
    uptime: float | None = None  # share of the span with samples, 0-1 (None: it did not exist then)
    alerts: int = 0
    forecasts: list[str] = field(default_factory=list)  # card lines of disks filling up


def uptime(minutes_with_samples: int, start: float, end: float, created: float) -> float | None:
    """The share of [max(start, created), end] the host reported in, from the count of 1-minute buckets that hold
    samples (a sample every few seconds fills each minute it is up)."""
    begin = max(start, created)
    if end - begin < 60:
        return None
    return min(1.0, minutes_with_samples / math.floor((end - begin) / 60))


def percent(value: float) -> str:
    return f"{math.floor(value * 1000) / 10:g} %"  # down, never up: 99.96 % is not 100 %


def row_text(day: HostDay) -> str:
    """The text beside a host's sparklines, and its line in the caption."""
    up = _("up {share}", share=percent(day.uptime)) if day.uptime is not None else _("new")
    return up + " · " + n_("{n} alert", "{n} alerts", day.alerts)


def caption(days: Sequence[HostDay], end: float, tz: tzinfo, limit: int = 1024) -> str:
    """The photo's caption (plain text, at most `limit` characters): a line per host, then the forecasts."""
    lines = [_("Daily digest, last 24 h to {time}", time=datetime.fromtimestamp(end, tz).strftime("%H:%M"))]
    if not days:
        lines.append(_("No hosts yet: /newkey NAME adds one."))
    lines += [f"{day.name}: {row_text(day)}" for day in days]
    forecasts = [f"{day.name} {line}" for day in days for line in day.forecasts]
    lines += forecasts if forecasts else [_("No disk is filling up.")]
    out: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        if size + len(line) + 1 > limit - 20:
            out.append(_("… and {n} more", n=len(lines) - i))
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)
