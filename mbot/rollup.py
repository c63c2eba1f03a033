"""Rollup maths for the history tiers: buckets, aggregates, tier choice. Pure: no IO, no clock.

Tiers: raw samples, then 1-minute, 10-minute and 1-hour aggregates, each kept for its own retention
(MBOT_RETAIN_RAW, MBOT_RETAIN_1M, MBOT_RETAIN_10M, MBOT_RETAIN_1H).

An aggregate keeps start, count, min, avg and max. The average is stored rather than the sum because it is what a
chart draws and what a reader of the table expects; merging weights each average by its integer count and adds the
products with math.fsum, so an average of averages equals the mean of the raw points up to float rounding, and the
count is exact. Buckets are half-open, [start, start + width): a point exactly on an edge belongs to the bucket that
starts there, never to two and never to none.

Incremental rollup goes by arrival (mbot.history): remember the last raw rowid rolled up; roll up the rows above it
(any order, any age) with `rollup`, and upsert each aggregate with `combine` into the row already stored for that
bucket. Every raw row is counted exactly once, and a late batch (an agent replaying its spool after an outage) still
lands, since `combine` of partial aggregates equals the aggregate of the union. Rolling each new batch of raw rows
straight into every tier (60, 600, 3600) is exact too: rollup(x, 600) == merge(rollup(x, 60), 600).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from . import durations

MAX_POINTS = 1500  # per line and response: a 1280 px chart cannot show more, and Telegram users wait for it
DEFAULT_INTERVAL = 5.0  # the agent's default sample interval: the raw tier's step when the host's is unknown


# --- tiers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tier:
    """One level of history. `width` is the bucket width in seconds; 0 for raw samples (their step is the agent's
    interval, which the caller knows). `retention`: seconds the tier is kept."""

    name: str
    width: float
    retention: float

    @property
    def is_raw(self) -> bool:
        return self.width == 0

    def step(self, interval: float = DEFAULT_INTERVAL) -> float:
        """Seconds between two points of this tier."""
        return interval if self.is_raw else self.width


def make_tiers(raw: float = 2 * 86400, m1: float = 7 * 86400, m10: float = 90 * 86400,
               h1: float = 730 * 86400) -> tuple[Tier, ...]:
    """The four tiers, finest first, from retentions in seconds (parse MBOT_RETAIN_* with mbot.durations)."""
    for name, value in (("raw", raw), ("1m", m1), ("10m", m10), ("1h", h1)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"retention of {name} must be a positive number of seconds, got {value!r}")
    return (Tier("raw", 0, raw), Tier("1m", 60, m1), Tier("10m", 600, m10), Tier("1h", 3600, h1))


DEFAULT_TIERS = make_tiers()


def choose_tier(start: float, end: float, tiers: Sequence[Tier], now: float, *,
                interval: float = DEFAULT_INTERVAL, max_points: int = MAX_POINTS) -> Tier:
    """The finest tier that still holds `start` and gives at most `max_points` points for [start, end].

    With the defaults: raw up to about 2 h (1,500 x 5 s), 1 m up to 25 h, 10 m up to about 10 d, 1 h beyond.
    When no tier fits both rules, the coarsest tier that holds `start` (the caller downsamples it), else the tier
    that keeps the longest history.
    """
    if not tiers:
        raise ValueError("no tiers")
    span = max(end - start, 0.0)
    ordered = sorted(tiers, key=lambda t: t.step(interval))
    holding = [t for t in ordered if now - t.retention <= start]
    for tier in holding:
        if span / tier.step(interval) <= max_points:
            return tier
    if holding:
        return holding[-1]
    return max(ordered, key=lambda t: t.retention)


# --- buckets ---------------------------------------------------------------------------------------------------


def bucket_start(ts: float, width: float) -> float:
    """Start of the half-open bucket [start, start + width) that holds `ts`.

    floor(ts / width) can round up to the next integer just below an edge (the division rounds), which would put a
    point in a bucket that starts after it; the two checks correct that, so start <= ts < next start always holds.
    """
    k = math.floor(ts / width)
    if k * width > ts:
        k -= 1
    elif (k + 1) * width <= ts:
        k += 1
    return float(k * width)


# --- aggregates ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Agg:
    """A bucket of one series: [start, start + width), `count` samples, their min, mean and max."""

    start: float
    count: int
    min: float
    avg: float
    max: float


Point = tuple[float, float]
PointsOrAggs = Iterable[Union[Point, Agg]]


def _clamp(avg: float, lo: float, hi: float) -> float:
    # The mean lies in [min, max] mathematically; rounding of sum/count can step one ulp outside it.
    return min(max(avg, lo), hi)


def rollup(points: Iterable[Point], width: float) -> list[Agg]:
    """(ts, value) points in any order -> one Agg per non-empty bucket, sorted by start.

    Non-finite values are skipped: NaN would poison min and max, and the protocol never sends one anyway.
    """
    if not width > 0:
        raise ValueError("width must be positive")
    buckets: dict[float, list[float]] = {}
    for ts, value in points:
        if math.isfinite(value):
            buckets.setdefault(bucket_start(ts, width), []).append(value)
    out = []
    for start in sorted(buckets):
        values = buckets[start]
        lo, hi = min(values), max(values)
        out.append(Agg(start, len(values), lo, _clamp(math.fsum(values) / len(values), lo, hi), hi))
    return out


def combine(a: Agg, b: Agg) -> Agg:
    """Two aggregates of the same bucket (e.g. what is stored and a late batch) -> the aggregate of both."""
    return _merged(min(a.start, b.start), (a, b))


def _merged(start: float, parts: Sequence[Agg]) -> Agg:
    count = sum(p.count for p in parts)
    lo = min(p.min for p in parts)
    hi = max(p.max for p in parts)
    avg = math.fsum(p.avg * p.count for p in parts) / count
    return Agg(start, count, lo, _clamp(avg, lo, hi), hi)


def merge(aggs: Iterable[Agg], width: float) -> list[Agg]:
    """Aggregates -> aggregates of a coarser `width` (1m -> 10m -> 1h), count-weighted, sorted by start.

    `width` must be a multiple of the source buckets' width (all tiers are), so no source bucket straddles an edge;
    each source bucket goes whole into the bucket that holds its start.
    """
    if not width > 0:
        raise ValueError("width must be positive")
    groups: dict[float, list[Agg]] = {}
    for agg in aggs:
        if agg.count > 0:
            groups.setdefault(bucket_start(agg.start, width), []).append(agg)
    return [_merged(start, groups[start]) for start in sorted(groups)]


def downsample_width(first: float, last: float, step: float, max_points: int = MAX_POINTS) -> float:
    """The smallest bucket width, a whole multiple of `step`, that puts points from [first, last] into at most
    `max_points` buckets (or `step` itself when they already fit)."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    span = max(last - first, 0.0)
    # n edges-aligned buckets of width w cover at most ceil(span / w) + 1 buckets: keep span / w <= max_points - 1.
    needed = span / (max_points - 1)
    if step > 0:
        return step * max(1, math.ceil(needed / step))
    return float(max(1, math.ceil(needed)))


def downsample(items: PointsOrAggs, max_points: int = MAX_POINTS, step: float = 0.0) -> tuple[list[Agg], float]:
    """Raw points or aggregates -> at most `max_points` aggregates, and the step between them.

    Neighbours are merged into time buckets (a multiple of `step`, the tier's width or the agent interval), not
    into groups of n, so an offline period stays an empty stretch that a chart draws as a gap, and min/max keep
    every spike. Input that already fits comes back as aggregates unchanged, with `step` as given.
    """
    aggs: list[Agg] = []
    points: list[Point] = []
    for item in items:
        if isinstance(item, Agg):
            aggs.append(item)
        else:
            points.append((item[0], item[1]))
    if points:
        aggs.extend(Agg(ts, 1, v, v, v) for ts, v in points if math.isfinite(v))
    aggs.sort(key=lambda a: a.start)
    if len(aggs) <= max_points:
        return aggs, step
    width = downsample_width(aggs[0].start, aggs[-1].start, step, max_points)
    return merge(aggs, width), width
