"""Flap damping, the pure part (mbot/telegram/alert_flap.py)."""
from __future__ import annotations

from hypothesis import given, strategies as st

from mbot.telegram.alert_flap import FLAPPING, QUIET, STEADY_BAD, STEADY_OK, TELL, FlapDamper

M = 60.0


def test_the_third_start_in_half_an_hour_is_flapping_then_quiet_until_steady():
    damper: FlapDamper[str] = FlapDamper(starts=3, window=30 * M, steady=30 * M)
    assert [damper.start("a", 0), damper.end("a", 1 * M)] == [TELL, TELL]
    assert [damper.start("a", 2 * M), damper.end("a", 3 * M)] == [TELL, TELL]
    assert damper.start("a", 4 * M) == FLAPPING and damper.count("a") == 3
    assert [damper.end("a", 5 * M), damper.start("a", 6 * M), damper.end("a", 7 * M)] == [QUIET, QUIET, QUIET]
    assert damper.start("b", 7 * M) == TELL  # another alert is not flapping
    assert damper.next_deadline() == 37 * M
    assert damper.due(36 * M) == []
    assert damper.due(37 * M) == [("a", STEADY_OK, 4)]
    assert not damper.flapping("a") and damper.start("a", 38 * M) == TELL  # an ordinary alert again


def test_starts_spread_over_more_than_the_window_are_not_flapping():
    damper: FlapDamper[str] = FlapDamper(starts=3, window=30 * M, steady=30 * M)
    for n in range(10):
        assert damper.start("a", n * 20 * M) == TELL
        assert damper.end("a", n * 20 * M + M) == TELL


def test_flapping_that_settles_in_trouble_is_told_as_an_alert_again():
    damper: FlapDamper[str] = FlapDamper(starts=2, window=30 * M, steady=30 * M)
    damper.start("a", 0)
    damper.end("a", M)
    assert damper.start("a", 2 * M) == FLAPPING
    assert damper.due(32 * M) == [("a", STEADY_BAD, 2)]
    assert damper.end("a", 40 * M) == TELL  # its end is told like any other


@given(st.lists(st.floats(0, 600), min_size=1, max_size=80))
def test_whatever_the_flapping_few_messages_and_nothing_lost(gaps):
    """Alternating starts and ends at any pace: at most FLAP_STARTS - 1 lives are told in a row before one
    flapping message; every flapping spell ends (due), and between flapping spells everything is told."""
    damper: FlapDamper[str] = FlapDamper(starts=3, window=30 * M, steady=30 * M)
    now, told, spells, ended = 0.0, 0, 0, 0
    for i, gap in enumerate(gaps):
        now += gap
        ended += len(damper.due(now))
        how = damper.start("a", now) if i % 2 == 0 else damper.end("a", now)
        if how == FLAPPING:
            spells += 1
        if how == TELL and i % 2 == 0:
            told += 1
    ended += len(damper.due(now + 30 * M))
    assert ended == spells  # no spell without its end
    assert damper.next_deadline() is None
    starts = (len(gaps) + 1) // 2
    assert told + spells <= starts
    # In every 30 minutes at most 2 lives are told and 1 flapping message per spell.
    assert told <= 2 * (now / (30 * M) + 1) + 2 * spells
