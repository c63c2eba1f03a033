"""mbot.rollup: aggregates checked against the raw points they summarise (hypothesis), tier choice."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from mbot import rollup
from mbot.rollup import DEFAULT_TIERS, Agg, Tier

DAY = 86400.0
NOW = 1_764_019_200.0  # a multiple of 3600

WIDTHS = st.sampled_from([1.0, 5.0, 60.0, 600.0, 3600.0, 86400.0])
VALUES = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def timestamps(draw, width: float = 60.0):
    """Anywhere, or exactly on an edge (or one tiny step either side of one), where bucketing goes wrong."""
    edge = draw(st.integers(-10, 3_000_000)) * width
    return draw(st.one_of(
        st.floats(-1e9, 3e9, allow_nan=False),
        st.just(edge),
        st.just(math.nextafter(edge, -math.inf)),
        st.just(math.nextafter(edge, math.inf)),
        st.integers(int(NOW) - 86400, int(NOW)).map(float),
    ))


def points_strategy(width: float = 3600.0):
    return st.lists(st.tuples(timestamps(width), VALUES), max_size=60)


def close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


def check_against_raw(aggs: list[Agg], points: list[tuple[float, float]], width: float) -> None:
    """Every aggregate matches exactly the raw points inside its half-open bucket; every point is in one bucket."""
    assert sum(a.count for a in aggs) == len(points)
    assert [a.start for a in aggs] == sorted({a.start for a in aggs})
    covered = 0
    for agg in aggs:
        inside = [v for ts, v in points if agg.start <= ts < agg.start + width]
        assert len(inside) == agg.count > 0
        covered += len(inside)
        assert agg.min == min(inside) and agg.max == max(inside)
        assert agg.min <= agg.avg <= agg.max
        assert close(agg.avg, math.fsum(inside) / len(inside), max(map(abs, inside)))
    assert covered == len(points)  # and since the buckets are disjoint, none is counted twice


@given(points_strategy(), WIDTHS)
def test_rollup_matches_the_raw_points(points, width):
    check_against_raw(rollup.rollup(points, width), points, width)


@given(st.lists(st.tuples(timestamps(60.0), VALUES), max_size=80),
       st.sampled_from([(5.0, 60.0), (60.0, 600.0), (600.0, 3600.0), (60.0, 3600.0)]))
def test_merge_of_finer_buckets_equals_direct_rollup(points, widths):
    fine, coarse = widths
    merged = rollup.merge(rollup.rollup(points, fine), coarse)
    direct = rollup.rollup(points, coarse)
    assert [(a.start, a.count, a.min, a.max) for a in merged] == [(a.start, a.count, a.min, a.max) for a in direct]
    scale = max((abs(v) for _, v in points), default=1.0)
    assert all(close(m.avg, d.avg, scale) for m, d in zip(merged, direct))
    check_against_raw(merged, points, coarse)


@given(points_strategy(60.0), points_strategy(60.0))
def test_combine_of_partial_batches_equals_the_whole(first, late):
    """What the store does when a late batch lands in a bucket it already holds: an upsert with combine."""
    stored = {a.start: a for a in rollup.rollup(first, 60.0)}
    for agg in rollup.rollup(late, 60.0):
        stored[agg.start] = rollup.combine(stored[agg.start], agg) if agg.start in stored else agg
    check_against_raw(sorted(stored.values(), key=lambda a: a.start), first + late, 60.0)


@given(st.lists(st.tuples(st.integers(0, 10 * 3600).map(lambda s: NOW + s), VALUES), max_size=80))
def test_weighted_mean_of_a_merge_is_the_mean_of_the_raw_points(points):
    merged = rollup.merge(rollup.rollup(points, 60.0), 1e12)  # one bucket holding everything
    if not points:
        assert merged == []
        return
    (only,) = merged
    values = [v for _, v in points]
    assert only.count == len(values)
    assert close(only.avg, math.fsum(values) / len(values), max(map(abs, values)))


def test_edges_are_half_open():
    points = [(0.0, 1.0), (59.999, 2.0), (60.0, 3.0), (math.nextafter(120.0, 0), 4.0), (120.0, 5.0)]
    aggs = rollup.rollup(points, 60.0)
    assert [(a.start, a.count, a.min, a.max) for a in aggs] == [(0.0, 2, 1.0, 2.0), (60.0, 2, 3.0, 4.0),
                                                                  (120.0, 1, 5.0, 5.0)]
    assert aggs[0].avg == 1.5


@given(st.data(), st.sampled_from([0.1, 2.5, 7.0, 60.0, 3600.0]))
def test_bucket_start_holds_the_point(data, width):
    """Also for widths that are not whole seconds, where floor(ts / width) rounds up just below an edge."""
    ts = data.draw(timestamps(width))
    start = rollup.bucket_start(ts, width)
    k = round(start / width)
    assert k * width == start <= ts < (k + 1) * width
    assert rollup.bucket_start(start, width) == start


def test_bucket_start_just_below_an_edge_that_division_rounds_up():
    ts = math.nextafter(235121940.10000002, 0)  # 235121940.1 / 0.1 rounds to 2351219401.0 exactly
    assert math.floor(ts / 0.1) * 0.1 > ts
    assert rollup.bucket_start(ts, 0.1) < ts


def test_rollup_skips_non_finite_values_and_sorts():
    aggs = rollup.rollup([(130.0, 2.0), (10.0, math.nan), (5.0, 1.0)], 60.0)
    assert [(a.start, a.count) for a in aggs] == [(0.0, 1), (120.0, 1)]


def test_average_of_equal_values_stays_inside_min_max():
    aggs = rollup.rollup([(float(i), 0.1) for i in range(7)], 60.0)
    assert aggs[0].min == aggs[0].avg == aggs[0].max == 0.1


def test_bad_widths():
    with pytest.raises(ValueError):
        rollup.rollup([], 0)
    with pytest.raises(ValueError):
        rollup.merge([], -60)


# --- tiers -------------------------------------------------------------------------------------------------------


def test_default_tiers_follow_the_issue():
    assert [(t.name, t.width, t.retention) for t in DEFAULT_TIERS] == [
        ("raw", 0, 2 * DAY), ("1m", 60, 7 * DAY), ("10m", 600, 90 * DAY), ("1h", 3600, 730 * DAY)]
    assert DEFAULT_TIERS[0].is_raw and DEFAULT_TIERS[0].step(2.0) == 2.0 and DEFAULT_TIERS[1].step(2.0) == 60
    with pytest.raises(ValueError, match="1m"):
        rollup.make_tiers(m1=0)


@pytest.mark.parametrize("span, tier", [
    (600, "raw"), (3600, "raw"), (2 * 3600, "raw"), (3 * 3600, "1m"), (DAY, "1m"), (25 * 3600, "1m"),
    (26 * 3600, "10m"), (7 * DAY, "10m"), (10 * DAY, "10m"), (11 * DAY, "1h"), (90 * DAY, "1h"), (730 * DAY, "1h"),
])
def test_choose_tier_by_span(span, tier):
    assert rollup.choose_tier(NOW - span, NOW, DEFAULT_TIERS, NOW).name == tier


def test_choose_tier_respects_retention_and_interval():
    # An hour three days ago: raw is gone (48 h), 1m still has it.
    assert rollup.choose_tier(NOW - 3 * DAY, NOW - 3 * DAY + 3600, DEFAULT_TIERS, NOW).name == "1m"
    # An agent sampling every second fills 1,500 raw points in 25 minutes.
    assert rollup.choose_tier(NOW - 1800, NOW, DEFAULT_TIERS, NOW, interval=1.0).name == "1m"
    # Further back than any tier keeps: the one with the longest history.
    assert rollup.choose_tier(NOW - 1000 * DAY, NOW, DEFAULT_TIERS, NOW).name == "1h"
    short = (Tier("raw", 0, DAY), Tier("1m", 60, 2 * DAY))
    assert rollup.choose_tier(NOW - 40 * 3600, NOW, short, NOW).name == "1m"  # too many points, but it holds start


# --- downsampling ------------------------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 10_000_000).map(float), VALUES), max_size=400),
       st.integers(2, 120), st.sampled_from([0.0, 1.0, 5.0, 60.0]))
def test_downsample_bounds_points_and_keeps_spikes(points, max_points, step):
    aggs, width = rollup.downsample(points, max_points, step=step)
    assert len(aggs) <= max_points
    assert sum(a.count for a in aggs) == len(points)
    if points:
        values = [v for _, v in points]
        assert min(a.min for a in aggs) == min(values) and max(a.max for a in aggs) == max(values)
    if len(points) > max_points:
        check_against_raw(aggs, points, width)
        if step:
            assert width % step == 0


def test_downsample_of_aggregates_merges_and_leaves_small_input_alone():
    minutes = rollup.rollup([(NOW + s, float(s % 97)) for s in range(0, 7 * 86400, 30)], 60.0)
    assert len(minutes) == 7 * 1440
    aggs, width = rollup.downsample(minutes, 1500, step=60.0)
    assert len(aggs) <= 1500 and width == 420.0  # 7 minutes: the smallest whole multiple that fits
    assert sum(a.count for a in aggs) == sum(m.count for m in minutes)
    assert min(a.min for a in aggs) == 0.0 and max(a.max for a in aggs) == 96.0
    few, same = rollup.downsample(minutes[:10], 1500, step=60.0)
    assert few == minutes[:10] and same == 60.0
