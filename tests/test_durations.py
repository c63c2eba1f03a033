"""mbot.durations: the one duration parser and formatter."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from mbot.durations import format_duration, parse_duration

DAY = 86400.0


@pytest.mark.parametrize("text, seconds", [
    ("48h", 48 * 3600), ("7d", 7 * DAY), ("90d", 90 * DAY), ("730d", 730 * DAY), ("30m", 1800), ("2w", 14 * DAY),
    ("45s", 45), ("1.5h", 5400), ("2d3h", 2 * DAY + 3 * 3600), (" 7D ", 7 * DAY), ("1h30m", 5400),
    ("1y", 365 * DAY), ("2y", 730 * DAY), ("1y1d", 366 * DAY),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-7d", "0h", "7 d", "2d 3h", "1e3s", "abc", "9" * 400 + "d"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_zero_only_where_allowed():
    assert parse_duration("0s", allow_zero=True) == 0.0
    with pytest.raises(ValueError, match="longer than 0"):
        parse_duration("0m")


def test_the_message_shows_the_syntax():
    with pytest.raises(ValueError, match=r"'5x' is not a duration: use a number and s, m, h, d, w or y"):
        parse_duration("5x")


@pytest.mark.parametrize("seconds, text", [
    (3 * DAY + 4 * 3600 + 5, "3 d 4 h"), (3 * DAY + 300, "3 d"), (2 * 3600 + 120, "2 h 2 min"), (7200, "2 h"),
    (3900.9, "1 h 5 min"), (300, "5 min"), (42, "42 s"), (0.5, "0 s"), (-3, "0 s"),
])
def test_format_for_sentences(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds, text", [
    (2 * DAY + 3 * 3600, "2d 3h"), (730 * DAY, "730d"), (1800, "30m"), (0, "0s"), (DAY + 61, "1d 1m 1s"),
])
def test_format_compact(seconds, text):
    assert format_duration(seconds, compact=True) == text


@given(st.integers(1, 10_000 * 86400))
def test_compact_reads_back(seconds):
    assert sum(parse_duration(part) for part in format_duration(seconds, compact=True).split()) == seconds
