"""Disk-full forecasts, the pure part (mbot/forecast.py): the fit, cleanups, the alert's hysteresis, the texts."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from mbot import forecast
from mbot.forecast import DiskFull, DiskFullOver, ForecastAlerts, full_in
from mbot.i18n import speaking

NOW = 1_700_000_000.0
H = 3600.0
GIB = 2.0 ** 30
DAY = 86400.0


def hourly(used_now: float, rate_per_hour: float, hours: int = 48, noise: float = 0.0,
           seed: int = 0) -> list[tuple[float, float]]:
    """`hours` hourly points ending now of a disk filling at a constant rate, with uniform noise (bytes)."""
    rng = random.Random(seed)
    return [(NOW - k * H, used_now - k * rate_per_hour + rng.uniform(-noise, noise)) for k in range(hours)][::-1]


def test_a_linear_fill_is_forecast_to_the_hour():
    # 100 GiB disk, 70 GiB used, +1 GiB an hour: full in 30 h.
    eta = full_in(hourly(70 * GIB, GIB), 100 * GIB, NOW)
    assert eta == pytest.approx(30 * H, rel=1e-9)


@given(st.floats(0.01, 50), st.floats(0.05, 0.95), st.integers(6, 48), st.floats(0, 0.02), st.integers(0, 10_000))
def test_the_forecast_error_on_a_noisy_linear_fill_stays_small(rate_gib, used_share, hours, noise_share, seed):
    """A disk filling at a constant rate with noise up to 2 % of its size on each hourly point (filesystems breathe):
    the forecast of a week or less away is within 15 % of the truth when it has a day of history, or says nothing
    rather than something far off it never says."""
    total = 1000 * GIB
    used = used_share * total
    points = hourly(used, rate_gib * GIB, hours, noise_share * total, seed)
    truth = (total - used) / (rate_gib * GIB) * H
    eta = full_in(points, total, NOW)
    if noise_share == 0:
        assert eta == pytest.approx(truth, rel=1e-6)
    elif eta is not None and hours >= 24 and truth < 7 * DAY and rate_gib * GIB * hours > 20 * noise_share * total:
        assert abs(eta - truth) <= 0.15 * truth + H


def test_a_cleanup_ends_the_trend_and_a_new_one_needs_hours_again():
    points = hourly(90 * GIB, GIB, 24)
    assert full_in(points, 100 * GIB, NOW) == pytest.approx(10 * H)
    # Cleaned to 40 GiB an hour ago: too little history since, no forecast.
    cleaned = points[:-2] + [(NOW - H, 40 * GIB), (NOW, 41 * GIB)]
    assert full_in(cleaned, 100 * GIB, NOW) is None
    # Filling again for 6 hours after the cleanup: a forecast from those hours only.
    again = [(t, y) for t, y in points[:-7]] + [(NOW - k * H, 40 * GIB + (6 - k) * 2 * GIB) for k in range(6, -1, -1)]
    assert full_in(again, 100 * GIB, NOW) == pytest.approx(((100 - 52) / 2) * H, rel=1e-6)


@given(st.lists(st.floats(0, 100), min_size=0, max_size=60), st.floats(-1e6, 1e6))
def test_a_disk_not_filling_has_no_forecast_and_time_shifts_change_nothing(values, shift):
    falling = sorted(values, reverse=True)
    points = [(NOW - (len(falling) - i) * H, v * GIB) for i, v in enumerate(falling)]
    assert full_in(points, 100 * GIB, NOW) is None  # flat or falling: never full
    rising = [(NOW - (len(values) - i) * H, v * GIB) for i, v in enumerate(values)]
    eta = full_in(rising, 100 * GIB, NOW)
    moved = full_in([(t + shift, y) for t, y in rising], 100 * GIB, NOW + shift)
    assert (eta is None) == (moved is None)
    if eta is not None and moved is not None:
        assert moved == pytest.approx(eta, rel=1e-6, abs=1.0)


def test_garbage_in_says_nothing():
    assert full_in([], 100.0, NOW) is None
    assert full_in(hourly(50.0, 1.0), 0.0, NOW) is None
    assert full_in(hourly(50.0, 1.0), float("nan"), NOW) is None
    assert full_in([(NOW - k * H, float("inf")) for k in range(10)], 100.0, NOW) is None
    assert full_in([(NOW, 1.0)] * 10, 100.0, NOW) is None  # no time span
    assert full_in(hourly(150.0, 1.0), 100.0, NOW) == 0.0  # over the size already: full now


def test_the_alert_fires_under_the_limit_and_resolves_only_well_past_it_or_when_the_trend_ends():
    alerts = ForecastAlerts(7 * DAY)
    assert alerts.update(1, "/", 8 * DAY, NOW) is None
    fired = alerts.update(1, "/", 3 * DAY, NOW)
    assert fired == DiskFull(1, "/", 3 * DAY, NOW)
    assert alerts.update(1, "/", 2 * DAY, NOW + 600) is None  # told once
    assert alerts.update(1, "/", 8 * DAY, NOW + 1200) is None  # just past the limit: still firing (hysteresis)
    over = alerts.update(1, "/", 9 * DAY, NOW + 1800)
    assert over == DiskFullOver(1, "/", 9 * DAY, NOW, NOW + 1800)
    assert alerts.update(1, "/", 6 * DAY, NOW + 2400) is not None
    assert alerts.update(1, "/", None, NOW + 3000) == DiskFullOver(1, "/", None, NOW + 2400, NOW + 3000)
    restored = ForecastAlerts(7 * DAY, [(2, "/home", NOW)])  # from the store: no second DiskFull
    assert restored.update(2, "/home", DAY, NOW) is None
    assert restored.gone(2, ["/"], NOW + 1) == [DiskFullOver(2, "/home", None, NOW, NOW + 1)]


@given(st.lists(st.one_of(st.none(), st.floats(0, 30 * DAY)), max_size=50))
def test_fired_and_over_alternate_whatever_the_forecasts(etas):
    alerts = ForecastAlerts(7 * DAY)
    kinds = [type(e) for i, eta in enumerate(etas) if (e := alerts.update(1, "/", eta, NOW + i)) is not None]
    assert all(kind is (DiskFull if i % 2 == 0 else DiskFullOver) for i, kind in enumerate(kinds))


def test_texts():
    assert forecast.describe(DiskFull(1, "/", 3 * DAY + 5 * H, NOW), "box1") == (
        "/ on box1 will be full in about 3 days at the current rate")
    assert forecast.describe(DiskFull(1, "/", 0.0, NOW), "box1") == "/ on box1 is full at the current rate"
    assert forecast.ended(DiskFullOver(1, "/", None, NOW, NOW), "box1").startswith(
        "✅ / on box1 is no longer filling up at that rate")
    assert forecast.card_line("/data", 5 * H) == "⏳ /data full in about 5 hours at the current rate"
    assert forecast.about(90) == "about 2 minutes" and forecast.about(1) == "about 1 minute"
    with speaking("ru"):
        assert forecast.describe(DiskFull(1, "/", 3 * DAY, NOW), "box1") == (
            "/ на box1 заполнится примерно через 3 дня при текущем темпе")
