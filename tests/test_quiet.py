"""Quiet hours (/quiet, mbot.quiet): the grammar and the window, unit- and property-tested (midnight, DST), then end
to end: alerts in the window arrive with disable_notification, replies to commands never do, nothing is dropped."""
from __future__ import annotations

import dataclasses
import re
from datetime import datetime, time as clock_time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import trio
from hypothesis import given, strategies as st

from fakebot import FakeBot
from helpers import load_agent, server_certificate
from mbot import app
from mbot.config import Settings
from mbot.quiet import DAY, OFF, SHOW, QuietHours, QuietUsageError, parse_quiet
from mbot.telegram.outbox import Outbox, RateLimiter
from test_bot import ALICE, BOB, WallClock, say

BERLIN = ZoneInfo("Europe/Berlin")


# --- the grammar -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    ([], SHOW),
    (["off"], OFF),
    (["OFF"], OFF),
    (["23:00-07:00"], QuietHours(23 * 60, 7 * 60)),
    (["23:00", "-", "07:00"], QuietHours(23 * 60, 7 * 60)),
    (["23-7"], QuietHours(23 * 60, 7 * 60)),
    (["1:30-6:45"], QuietHours(90, 6 * 60 + 45)),
    (["12:00-13:00"], QuietHours(12 * 60, 13 * 60)),
    (["00:00-23:59"], QuietHours(0, DAY - 1)),
])
def test_parse(args, expected):
    assert parse_quiet(args) == expected


@pytest.mark.parametrize("args", [["soon"], ["24:00-07:00"], ["23:60-07:00"], ["23:00-23:00"], ["23:00"],
                                  ["23:00-07:00-08:00"], ["-1:00-07:00"], ["23:00–07:00"]])
def test_parse_errors_say_the_usage(args):
    with pytest.raises(QuietUsageError) as error:
        parse_quiet(args)
    assert "Usage: /quiet HH:MM-HH:MM" in str(error.value)


windows = st.tuples(st.integers(0, DAY - 1), st.integers(0, DAY - 1)).filter(lambda w: w[0] != w[1]).map(
    lambda w: QuietHours(*w))


@given(windows)
def test_a_window_reads_back_from_its_text(window):
    assert parse_quiet([str(window)]) == window


# --- the window --------------------------------------------------------------------------------------------------


def test_wraps_past_midnight():
    night = QuietHours(23 * 60, 7 * 60)
    assert [night.covers(h * 60) for h in (22, 23, 0, 3, 6, 7, 12)] == [False, True, True, True, True, False, False]
    assert night.covers(7 * 60 - 1) and not night.covers(23 * 60 - 1)
    day = QuietHours(9 * 60, 17 * 60)
    assert [day.covers(h * 60) for h in (8, 9, 16, 17, 23, 0)] == [False, True, True, False, False, False]


@given(windows, st.integers(0, DAY - 1))
def test_the_other_way_round_is_the_rest_of_the_day(window, minute):
    assert window.covers(minute) != QuietHours(window.end, window.start).covers(minute)


@given(windows)
def test_a_window_covers_its_length_in_minutes(window):
    covered = [m for m in range(DAY) if window.covers(m)]
    assert len(covered) == window.minutes
    # one stretch, from start (wrapping past midnight when it must)
    assert {(window.start + i) % DAY for i in range(window.minutes)} == set(covered)


instants = st.floats(datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp(),
                     datetime(2032, 1, 1, tzinfo=timezone.utc).timestamp())


@given(windows, instants, st.sampled_from([BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe"),
                                           timezone.utc, timezone(timedelta(hours=5, minutes=30))]))
def test_quiet_at_reads_the_wall_clock_of_the_zone(window, instant, tz):
    local = datetime.fromtimestamp(instant, timezone.utc).astimezone(tz).time()
    start, end = clock_time(*divmod(window.start, 60)), clock_time(*divmod(window.end, 60))
    expected = start <= local < end if window.start < window.end else (local >= start or local < end)
    assert window.quiet_at(instant, tz) == expected


def quiet_minutes(window: QuietHours, night_of: datetime, tz) -> int:
    """Real minutes quiet in the 24 h from noon of `night_of` (local)."""
    noon = datetime(night_of.year, night_of.month, night_of.day, 12, tzinfo=tz).timestamp()
    return sum(window.quiet_at(noon + 60 * i + 30, tz) for i in range(DAY))


def test_daylight_saving_nights_are_an_hour_shorter_or_longer_on_the_clock_they_follow():
    night = QuietHours(23 * 60, 7 * 60)
    assert quiet_minutes(night, datetime(2025, 3, 29), BERLIN) == 7 * 60  # clocks go forward: 23:00-07:00 is 7 h
    assert quiet_minutes(night, datetime(2025, 10, 25), BERLIN) == 9 * 60  # clocks go back: 9 h
    assert quiet_minutes(night, datetime(2025, 6, 1), BERLIN) == 8 * 60
    # 06:59 and 07:00 local on the morning after the change, whatever its offset
    after = datetime(2025, 3, 30, 6, 59, tzinfo=BERLIN).timestamp()
    assert night.quiet_at(after, BERLIN) and not night.quiet_at(after + 60, BERLIN)
    # A window inside the skipped hour does not happen that night; the repeated hour is quiet twice.
    skipped = QuietHours(2 * 60 + 15, 2 * 60 + 45)
    assert quiet_minutes(skipped, datetime(2025, 3, 29), BERLIN) == 0
    assert quiet_minutes(skipped, datetime(2025, 10, 25), BERLIN) == 60


# --- end to end ----------------------------------------------------------------------------------------------------


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBot:
    bot = FakeBot()
    await nursery.start(bot.serve)
    return bot


async def start(nursery, settings: Settings, fake: FakeBot, clock):
    settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url,
                                   allowed_users=(ALICE, BOB), tz=timezone.utc)
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    return await nursery.start(lambda task_status: app.serve(
        settings, server_certificate(settings), handle_signals=False, outbox=outbox, clock=clock,
        task_status=task_status))


def window_around(instant: float, before: int, after: int) -> str:
    minute = int(instant // 60) % DAY
    return str(QuietHours((minute - before) % DAY, (minute + after) % DAY))


async def test_alerts_in_quiet_hours_are_silent_and_replies_never_are(fake: FakeBot, nursery, settings, tmp_path):
    agent = load_agent()
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    shown = await say(fake, ALICE, "/quiet")
    assert shown["text"].startswith("No quiet hours")
    assert "Usage: /quiet" in (await say(fake, ALICE, "/quiet soon"))["text"]
    now_window = window_around(clock(), 60, 60)
    set_reply = await say(fake, ALICE, f"/quiet {now_window}")
    assert set_reply["text"].startswith(f"Quiet hours: {now_window} (UTC)")
    assert not set_reply.get("disable_notification")  # a reply to a command: never silent
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    await say(fake, ALICE, "/setalert box1 ram 0")  # fires on the first sample
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.1,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"))
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        fired = await fake.wait_for(lambda c: c.method in ("sendMessage", "sendPhoto") and "box1: RAM" in c.shown,
                                    timeout=10)
        assert fired.params.get("disable_notification") is True  # delivered, without a sound

        # Two hours later the window is over: the next notification (the mute's end) makes a sound again.
        await say(fake, ALICE, "/mute box1 1h")
        clock.offset += 2 * 3600
        server.alerting.clock_moved()
        ended = await fake.wait_for(lambda c: c.method == "sendMessage" and "notifications are back on"
                                    in c.params["text"], timeout=10)
        assert not ended.params.get("disable_notification")
        agents.cancel_scope.cancel()
    # Another user's quiet hours are theirs alone, and the setting survives a restart.
    assert (await say(fake, BOB, "/quiet"))["text"].startswith("No quiet hours")
    await server.aclose()
    again = await start(nursery, settings, fake, clock)
    assert (await say(fake, ALICE, "/quiet"))["text"].startswith(f"Quiet hours: {now_window} (UTC)")
    assert (await say(fake, ALICE, "/quiet off"))["text"].startswith("Quiet hours are off")
    assert (await say(fake, ALICE, "/quiet"))["text"].startswith("No quiet hours")
    await again.aclose()
