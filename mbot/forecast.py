"""Disk-full forecasts (issue 16, item 7): when a disk will be full at its current rate, and the alert that says so.
Pure: hourly points in, forecasts and events out (mbot.alerting reads the hour tier and sends the events).

What is fitted: the disk's USED BYTES (the hour tier's averages of `disk_used:MOUNT`), by least squares over the
last WINDOW, against the latest size (`disk_total:MOUNT`). Bytes, not percent: what fills a disk is bytes written,
and a disk that was resized would make the percent jump and the fit lie, while its bytes keep their trend and the
latest size says where "full" is now.

A disk that was cleaned (used fell by more than CLEANUP of its size from one hour to the next) starts a new trend
there: only the points after the last cleanup count, so a cleanup ends the forecast at once (too few points after
it: no forecast), and it comes back only if the disk keeps filling for MIN_SPAN again. That is "resolved when the
trend changes"; a trend that only slows resolves once its forecast is RESOLVE_MARGIN past the limit (hysteresis: a
forecast hovering at the limit must not flap).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .i18n import _, n_

METRIC = "forecast"  # the alert's metric in alert_messages; its series is the disk's ("disk:/home")
WINDOW = 48 * 3600.0  # hours of the hour tier fitted
MIN_POINTS = 6  # hourly points after the last cleanup before anything is forecast
MIN_SPAN = 5 * 3600.0  # ... spanning at least this much time
CLEANUP = 0.02  # a fall of used bytes by more than this share of the size between two points: a new trend
RESOLVE_MARGIN = 1.25  # a firing forecast resolves when it says full later than this many times the limit
EVERY = 600.0  # seconds between evaluations (the hour tier moves slowly)
SHOWN = 30 * 86400.0  # the card shows forecasts of disks full sooner than this (or alerting)


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares line through (t, y): (slope per second, value at the mean time). Times are centred, so hours
    near 1.7e9 s lose no precision."""
    n = len(points)
    mean_t = math.fsum(t for t, _ in points) / n
    mean_y = math.fsum(y for _, y in points) / n
    var = math.fsum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0, mean_y
    cov = math.fsum((t - mean_t) * (y - mean_y) for t, y in points)
    return cov / var, mean_y


def trend(points: Sequence[tuple[float, float]], total: float) -> list[tuple[float, float]]:
    """The points of the current trend: those after the last cleanup (oldest first in, oldest first out)."""
    start = 0
    for i in range(1, len(points)):
        if points[i - 1][1] - points[i][1] > CLEANUP * total:
            start = i
    return list(points[start:])


def full_in(points: Sequence[tuple[float, float]], total: float, now: float) -> float | None:
    """Seconds from `now` until the disk is full at the current rate (0: the line says it is full already), or
    None: not filling, too little history since the last cleanup, or nothing sane to go by."""
    if not (total > 0 and math.isfinite(total)):
        return None
    points = [(t, y) for t, y in points if math.isfinite(t) and math.isfinite(y) and t <= now]
    points = trend(sorted(points), total)
    if len(points) < MIN_POINTS or points[-1][0] - points[0][0] < MIN_SPAN:
        return None
    slope, level = fit(points)
    if not slope > 0:
        return None
    mean_t = math.fsum(t for t, _ in points) / len(points)
    used_now = level + slope * (now - mean_t)
    return max(0.0, (total - used_now) / slope)


def about(seconds: float) -> str:
    """A forecast's time as people say it: "about 3 days", "about 5 hours", "about 40 minutes"."""
    if seconds >= 2 * 86400:
        return n_("about {n} day", "about {n} days", round(seconds / 86400))
    if seconds >= 2 * 3600:
        return n_("about {n} hour", "about {n} hours", round(seconds / 3600))
    return n_("about {n} minute", "about {n} minutes", max(1, round(seconds / 60)))


# --- the alert ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiskFull:
    """A disk forecast to be full sooner than the limit."""

    host_id: int
    mount: str
    full_in: float
    at: float

    @property
    def series(self) -> str:
        return f"disk:{self.mount}"


@dataclass(frozen=True, slots=True)
class DiskFullOver:
    """Its forecast no longer says so (the trend changed, or slowed well past the limit)."""

    host_id: int
    mount: str
    full_in: float | None  # None: no forecast any more (cleaned, stopped filling)
    since: float  # when it fired
    at: float

    @property
    def series(self) -> str:
        return f"disk:{self.mount}"


ForecastEvent = DiskFull | DiskFullOver


class ForecastAlerts:
    """Which disks' forecasts are firing: forecasts in, DiskFull / DiskFullOver out."""

    def __init__(self, limit: float, firing: Iterable[tuple[int, str, float]] = ()) -> None:
        self.limit = limit
        self._firing: dict[tuple[int, str], float] = {(h, m): since for h, m, since in firing}

    def update(self, host_id: int, mount: str, eta: float | None, now: float) -> ForecastEvent | None:
        key = (host_id, mount)
        if key not in self._firing:
            if eta is not None and eta < self.limit:
                self._firing[key] = now
                return DiskFull(host_id, mount, eta, now)
            return None
        if eta is None or eta > self.limit * RESOLVE_MARGIN:
            return DiskFullOver(host_id, mount, eta, self._firing.pop(key), now)
        return None

    def gone(self, host_id: int, mounts: Iterable[str], now: float) -> list[ForecastEvent]:
        """Disks of a host that are no longer reported (unmounted, host removed): their alerts end."""
        keep = set(mounts)
        ends: list[ForecastEvent] = []
        for h, m in list(self._firing):
            if h == host_id and m not in keep:
                since = self._firing.pop((h, m))
                ends.append(DiskFullOver(h, m, None, since, now))
        return ends

    def firing(self) -> list[tuple[int, str, float]]:
        return [(h, m, since) for (h, m), since in self._firing.items()]

    def is_firing(self, host_id: int, mount: str) -> bool:
        return (host_id, mount) in self._firing


def describe(event: ForecastEvent, host_name: str) -> str:
    """The message (plain text: the caller escapes it)."""
    if isinstance(event, DiskFull):
        if event.full_in <= 0:
            return _("{mount} on {host} is full at the current rate", mount=event.mount, host=host_name)
        return _("{mount} on {host} will be full in {when} at the current rate", mount=event.mount, host=host_name,
                 when=about(event.full_in))
    if event.full_in is None:
        return _("{mount} on {host} is no longer filling up at that rate: the disk-full forecast is over",
                 mount=event.mount, host=host_name)
    return _("{mount} on {host} is filling up more slowly: now full in {when}", mount=event.mount,
             host=host_name, when=about(event.full_in))


def ended(event: DiskFullOver, host_name: str) -> str:
    """What the alert's own message is edited to when it ends."""
    return "✅ " + describe(event, host_name)


def card_line(mount: str, eta: float) -> str:
    return _("⏳ {mount} full in {when} at the current rate", mount=mount, when=about(eta))


def as_points(aggs: Iterable[Any], now: float) -> list[tuple[float, float]]:
    """Hour-tier aggregates (mbot.rollup.Agg) -> (bucket middle, average); the current hour's bucket, still
    filling, at `now` (its middle is still ahead)."""
    return [(min(agg.start + 1800.0, now), agg.avg) for agg in aggs]
