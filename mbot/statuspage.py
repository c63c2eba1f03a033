"""The status page (/statuspage): uptime and incidents from a host's history, the page's text, and when its message
may be edited. Pure: numbers and Hosts in, text and decisions out (mbot/telegram/statuspages.py does the IO).

What counts: a host is down where its history has a silence longer than its offline delay (the one the card and the
alert engine use: three intervals, at least 30 s), measured on the buckets of the history tiers (1-minute buckets for
24 h, 10-minute ones for 30 d): a bucket with a sample is up. An incident is one such silence; the latest one in 30
days is shown (ongoing: "offline since"). A host counts from its registration, so a key whose agent was installed
later starts with some down time. Outages shorter than a bucket are invisible in that window's figure: 24 h resolves
minutes, 30 d ten minutes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Callable, Sequence

from .i18n import _, number
from .model import Host

DAY = 86400.0
WINDOWS = ((DAY, "agg_1m", 60.0), (30 * DAY, "agg_10m", 600.0))  # (span, history table, its bucket width)
MIN_EDIT = 60.0  # a page's message is edited at most once a minute
CHECK_EVERY = 60.0  # and looked at again at least this often (figures move while a host is down)
MESSAGE_LIMIT = 4096
# The rollup folds new samples every 10 s: a latest sample at most this far past the folded buckets vouches for the
# stretch between them; further, it is a host that just came back after a silence.
ROLLUP_LAG = 300.0

Escape = Callable[[str], str]  # views.e


@dataclass(frozen=True)
class Uptime:
    fraction: float | None  # share of the window the host was up; None: the window is empty
    incident: tuple[float, float] | None  # (start, end) of the latest down stretch in the window (until now: the
    # host is silent still)


def uptime(runs: Sequence[tuple[float, float]], width: float, start: float, end: float, last_seen: float | None,
           delay: float, lag: float = ROLLUP_LAG) -> Uptime:
    """Up share of [start, end] for a host whose history covers the stretches `runs` ([from, to), in order, made of
    buckets of `width` seconds with samples), last seen at `last_seen`: its latest sample vouches for the stretch
    since `runs` end when that is at most `lag` long (what the tiers have not folded yet, and what happened since
    `runs` were read). A silence counts as down when it lasts `delay` (the host's offline delay) or more; between
    buckets a silence is a whole number of buckets, so one empty bucket is down when `delay` <= `width`."""
    if end <= start:
        return Uptime(None, None)
    covered = [(first, last) for first, last in runs if last > start and first < end]
    if last_seen is not None and start <= last_seen <= end:
        tail = covered[-1][1] if covered else last_seen
        covered.append((tail if 0 <= last_seen - tail <= lag else last_seen, last_seen))
    down = 0.0
    latest: tuple[float, float] | None = None
    cursor = start
    gap_needed = max(delay, width)
    for first, last in covered:
        gap = first - cursor
        if gap >= gap_needed or (cursor == start and gap >= delay and gap > 0):
            down += gap
            latest = (cursor, first)
        cursor = max(cursor, last)
    if end - cursor >= delay:  # silent since its last sample: down until now
        down += end - cursor
        latest = (cursor, end)
    return Uptime(max(0.0, 1.0 - down / (end - start)), latest)


def offline_delay(host: Host) -> float:
    """The silence after which a host is offline (as Host.is_online)."""
    return max(3 * host.interval, 30.0)


def percent(fraction: float | None) -> str:
    """Rounded down, so any down time shows as less than 100."""
    if fraction is None:
        return "-"
    value = math.floor(fraction * 10000) / 100
    return "100" if value >= 100 else number(value, 2)


@dataclass(frozen=True)
class HostFigures:
    host: Host
    online: bool
    day: Uptime
    month: Uptime


def _clock(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M")


def host_line(figures: HostFigures, tz: tzinfo, escape: Escape) -> str:
    """One host: 🟢/🔴, its name, uptime over 24 h and 30 d, its latest incident. Nothing in it moves with the clock
    alone while the host is up, so an unchanged page is never edited."""
    host = figures.host
    mark = "🟢" if figures.online else "🔴"
    if host.last_seen is None:  # its agent is not installed yet: no figures to give
        return f"{mark} <b>{escape(host.name)}</b> · {_('never connected')}"
    up = _("up {day} % (24 h), {month} % (30 d)", day=percent(figures.day.fraction),
           month=percent(figures.month.fraction))
    # The finer window places an incident better; the month's finds older ones.
    incident = figures.day.incident or figures.month.incident
    if not figures.online:
        last = _("offline since {when}", when=_clock(host.last_seen, tz))
    elif incident is not None:
        minutes = max(1, round((incident[1] - incident[0]) / 60))
        last = _("last incident {when}, {minutes} min", when=_clock(incident[0], tz), minutes=minutes)
    else:
        last = _("no incident in 30 d")
    return f"{mark} <b>{escape(host.name)}</b> · {up} · {last}"


def page_text(rows: Sequence[HostFigures], tz: tzinfo, escape: Escape) -> str:
    """The whole message. Only the hosts given (the page owner's): nothing else is ever named."""
    head = _("<b>Status</b> · kept current by mbot")
    if not rows:
        return head + "\n" + _("No hosts to show.")
    lines = [head]
    for index, figures in enumerate(rows):
        line = host_line(figures, tz, escape)
        if sum(len(x) + 1 for x in lines) + len(line) > MESSAGE_LIMIT - 100:
            lines.append(_("… and {n} more", n=len(rows) - index))
            break
        lines.append(line)
    lines.append(_("<i>An incident: the host sent nothing for longer than its offline delay.</i>"))
    return "\n".join(lines)


def edit_due(old_text: str, new_text: str, edited: float, now: float) -> float | None:
    """When the message may say `new_text`: None when it already does (Telegram refuses an edit that changes
    nothing), else `now` or the end of the minute since its last edit."""
    if new_text == old_text:
        return None
    return max(now, edited + MIN_EDIT)
