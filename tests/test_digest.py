"""The daily digest (issue 16, item 9): the pure part (mbot/digest.py), its picture, and end to end through the fake
Bot API under the server's injected clock: sent once a day, not again after a restart, none when off."""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from fakebot import FakeBot
from helpers import read_db
from mbot import digest, digestchart, protocol
from mbot.config import Settings
from mbot.digest import HostDay, DigestUsageError, next_due, parse_digest
from mbot.i18n import speaking
from test_alert_delivery import start, to_alice
from test_bot import ALICE, WallClock, fake, say  # noqa: F401 (fake: a fixture)

BERLIN = ZoneInfo("Europe/Berlin")


def test_parse():
    assert parse_digest([]) == digest.SHOW and parse_digest(["off"]) == digest.OFF
    assert parse_digest(["09:00"]) == 540 and parse_digest(["9"]) == 540 and parse_digest(["23:59"]) == 1439
    for bad in (["25:00"], ["9am"], ["09:60"], ["x" * 100]):
        with pytest.raises(DigestUsageError) as error:
            parse_digest(bad)
        assert "Usage: /digest HH:MM" in str(error.value) and len(str(error.value)) < 200


@given(st.integers(0, 1439), st.floats(1.6e9, 1.9e9), st.sampled_from([timezone.utc, BERLIN,
                                                                        ZoneInfo("America/Sao_Paulo")]))
def test_the_next_digest_is_the_next_time_the_clock_shows_it(minute, after, tz):
    due = next_due(minute, tz, after)
    assert after < due <= after + 25 * 3600  # within a day (and the hour a clock change adds)
    local = datetime.fromtimestamp(due, tz)
    shown = local.hour * 60 + local.minute
    # That time of the clock, or (a time the clock skipped that night) as much later as it jumped.
    assert shown == minute or 0 < (shown - minute) % 1440 <= 60
    assert next_due(minute, tz, due) > due + 22 * 3600  # the next one is the next day's


def test_daylight_saving_nights_send_once():
    # Berlin, 29 March 2026: 02:00 -> 03:00. 02:30 does not exist: sent at 03:30, once.
    before = datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN).timestamp()
    due = next_due(150, BERLIN, before)
    assert datetime.fromtimestamp(due, BERLIN).strftime("%d %H:%M") == "29 03:30"
    # 25 October 2026: 03:00 -> 02:00. 02:30 happens twice: the first one only.
    before = datetime(2026, 10, 25, 0, 0, tzinfo=BERLIN).timestamp()
    due = next_due(150, BERLIN, before)
    assert datetime.fromtimestamp(due, timezone.utc).strftime("%H:%M") == "00:30"  # 02:30 CEST
    assert datetime.fromtimestamp(next_due(150, BERLIN, due), BERLIN).day == 26


def test_uptime_and_caption():
    assert digest.uptime(1440, 0.0, 86400.0, -1.0) == 1.0
    assert digest.uptime(720, 0.0, 86400.0, 43200.0) == 1.0  # created halfway: judged on its own half
    assert digest.uptime(0, 0.0, 86400.0, 86400.0 - 10) is None  # a minute old: nothing to say yet
    assert digest.percent(0.99961) == "99.9 %" and digest.percent(1.0) == "100 %"
    days = [HostDay(f"host{n}", uptime=0.5, alerts=n, forecasts=["⏳ / full in about 3 days at the current rate"])
            for n in range(200)]
    text = digest.caption(days, 0.0, timezone.utc)
    assert len(text) <= 1024 and text.startswith("Daily digest, last 24 h to 00:00")
    assert "host1: up 50 % · 1 alert" in text and "host2: up 50 % · 2 alerts" in text and "more" in text
    with speaking("ru"):
        assert "host2: на связи 50 % · 2 оповещения" in digest.caption(days[:3], 0.0, timezone.utc)
    assert digest.caption([], 0.0, timezone.utc).endswith("No disk is filling up.")


def test_the_picture_has_a_row_per_host():
    points = [(float(t), 50.0 + (t % 7200) / 200) for t in range(0, 86400, 600)]
    days = [HostDay(f"box{n}", points, points, points[:10], 0.99, n) for n in range(3)] + [HostDay("new", uptime=None)]
    png = digestchart.render(days, 0.0, 86400.0, "mbot · last 24 h")
    assert png.startswith(b"\x89PNG")
    height = int.from_bytes(png[20:24], "big")
    assert height == round((0.9 + digestchart.ROW_IN * 4) * 100)


def disk_sample(seq: int, ts: float) -> protocol.Samples:
    return protocol.parse_agent_frame(json.dumps({"type": "sample", "seq": seq, "ts": ts, "metrics": {
        "cpu": 20.0 + seq % 30, "ram": {"used": 1.0, "total": 4.0, "percent": 25.0},
        "disks": {"/": {"used": 50.0, "total": 100.0, "percent": 50.0}}}}))


async def test_one_digest_a_day_not_repeated_by_a_restart_and_none_when_off(fake: FakeBot, nursery,
                                                                            settings: Settings):
    settings = dataclasses.replace(settings, tz=timezone.utc)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    await say(fake, ALICE, "/newkey box1")
    await say(fake, ALICE, "/delalert box1 offline")  # the test is its agent: time jumps are not outages here
    [(host_id,)] = read_db(settings, "SELECT id FROM hosts WHERE name = 'box1'")
    await server.writer.hello(host_id, protocol.parse_agent_frame(json.dumps(
        {"type": "hello", "v": 1, "agent": "t", "epoch": 1, "interval": 5})))
    now = clock()
    for seq in range(1, 145):  # a sample every 10 minutes of the last day
        await server.writer.samples(host_id, 1, disk_sample(seq, now - (144 - seq) * 600), lambda seq: None)
    await server.writer.call(lambda conn: None)  # (behind the samples in the writer's queue: they are in)

    assert (await say(fake, ALICE, "/digest"))["text"].startswith("No daily digest.")
    assert "every day at 09:00 (UTC)" in (await say(fake, ALICE, "/digest 09:00"))["text"]
    assert (await say(fake, ALICE, "/digest"))["text"].startswith("Daily digest at 09:00 (UTC)")

    def digests() -> list:
        return [c for c in fake.sent if to_alice("sendPhoto", "Daily digest")(c)]

    async def until(when: float) -> None:
        clock.offset += when - clock()
        server.alerting.clock_moved()

    first_due = next_due(540, timezone.utc, clock())
    await until(first_due + 1)
    sent = await fake.wait_for(to_alice("sendPhoto", "Daily digest, last 24 h to 09:00"))
    assert sent.files["photo"].data.startswith(b"\x89PNG")
    assert "box1: up" in sent.params["caption"] and "0 alerts" in sent.params["caption"]

    # A restart after it went: not sent again (the next one, a day later, is the second).
    await server.aclose()
    server = await start(nursery, settings, fake, clock)
    assert (await say(fake, ALICE, "/digest"))["text"].startswith("Daily digest at 09:00 (UTC)")
    await until(first_due + 86400 + 1)
    await fake.wait_for(lambda c: len(digests()) >= 2)
    await say(fake, ALICE, "/hosts")
    assert len(digests()) == 2

    # Said in the user's language: after /lang ru, the next one is Russian.
    await say(fake, ALICE, "/lang ru")
    await until(first_due + 2 * 86400 + 1)
    russian = await fake.wait_for(to_alice("sendPhoto", "Ежедневная сводка, последние 24 ч до 09:00"))
    assert "box1: на связи" in russian.params["caption"]
    await say(fake, ALICE, "/lang en")

    # Off: none the next day.
    assert (await say(fake, ALICE, "/digest off"))["text"] == "No more daily digests."
    await until(first_due + 3 * 86400 + 1)
    await say(fake, ALICE, "/hosts")
    await until(first_due + 3 * 86400 + 2)
    await say(fake, ALICE, "/hosts")
    assert len(digests()) == 2 and len([c for c in fake.sent if to_alice("sendPhoto", "Ежедневная")(c)]) == 1
    assert read_db(settings, "SELECT count(*) FROM digests") == [(0,)]
    await server.aclose()
