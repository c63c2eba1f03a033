"""Disk-full forecasts end to end (issue 16, item 7): hourly rows stored by the server's own writer and rollup, the
forecast evaluated on the alerting task's slow timer, the alert through the fake Bot API, the card's line, and the
end when the disk is cleaned. Time moves by an offset on the server's clock."""
from __future__ import annotations

import json

from fakebot import FakeBot
from helpers import read_db
from mbot import alerting, history, protocol
from mbot.config import Settings
from test_alert_delivery import reply_to, start, to_alice
from test_bot import ALICE, WallClock, buttons, fake, say  # noqa: F401 (fake: a fixture)

GIB = 2.0 ** 30
H = 3600.0


def disk_sample(seq: int, ts: float, used: float) -> protocol.Samples:
    return protocol.parse_agent_frame(json.dumps({"type": "sample", "seq": seq, "ts": ts, "metrics": {
        "cpu": 5.0, "disks": {"/": {"used": used, "total": 100 * GIB, "percent": 100 * used / (100 * GIB)}}}}))


async def test_a_filling_disk_is_forecast_alerted_shown_on_the_card_and_ended_by_a_cleanup(
        fake: FakeBot, nursery, settings: Settings):
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    await say(fake, ALICE, "/newkey box1")
    await say(fake, ALICE, "/delalert box1 offline")  # its agent is the test: its silence is not the point here
    [(host_id,)] = read_db(settings, "SELECT id FROM hosts WHERE name = 'box1'")
    await server.writer.hello(host_id, protocol.parse_agent_frame(json.dumps(
        {"type": "hello", "v": 1, "agent": "t", "epoch": 1, "interval": 5})))
    # Two days of a disk filling 1 GiB an hour, 70 GiB of 100 used now: full in about 30 hours.
    now = clock()
    for seq, hours_ago in enumerate(range(47, -1, -1), start=1):
        await server.writer.samples(host_id, 1, disk_sample(seq, now - hours_ago * H, (70 - hours_ago) * GIB),
                                    lambda seq: None)
    while await server.writer.call(history.rollup_step, 1000):
        pass
    assert len(read_db(settings, "SELECT bucket FROM agg_1h WHERE host_id = ?", host_id)) >= 48

    since = len(fake.sent)
    clock.offset += alerting.FORECAST_FIRST + 1  # the first evaluation after the start
    server.alerting.clock_moved()
    fired = await fake.wait_for(to_alice("sendMessage", "/ on box1 will be full in about 30 hours at the current "
                                                        "rate"), since=since)
    assert list(buttons(fired.params)) == ["🔕 Mute 1h"]  # no reminders to ack; the card has the charts
    card = await say(fake, ALICE, "/status box1")
    assert "⏳ / full in about 30 hours at the current rate" in card["text"]

    # Cleaned: 40 GiB used. The trend is over at the next evaluation: its message is edited, a reply tells it.
    since = len(fake.sent)
    for seq in (49, 50):
        await server.writer.samples(host_id, 1, disk_sample(seq, now + seq - 48, 40 * GIB), lambda seq: None)
    await server.writer.call(history.rollup_step, 1000)  # (behind the samples in the writer's queue: they are in)
    clock.offset += 601
    server.alerting.clock_moved()
    edited = await fake.wait_for(to_alice("editMessageText", "✅ / on box1 is no longer filling up"), since=since)
    assert edited.params["message_id"] == fired.result["message_id"]
    notice = await fake.wait_for(to_alice("sendMessage", "/ on box1 is no longer filling up"), since=since)
    assert reply_to(notice) == fired.result["message_id"]
    assert "⏳" not in (await say(fake, ALICE, "/status box1"))["text"]
    assert read_db(settings, "SELECT value FROM kv WHERE key = 'forecast.firing'") == [("[]",)]
    await server.aclose()


async def test_a_forecast_round_over_many_hosts_goes_a_slice_at_a_time(fake: FakeBot, nursery, settings: Settings,
                                                                      monkeypatch):
    # Thousands of hosts are read FORECAST_SLICE at a time, FORECAST_STEP apart, never in one long read: here one
    # host per slice, so the second host's alert comes only after the step.
    monkeypatch.setattr(alerting, "FORECAST_SLICE", 1)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    now = clock()
    for name in ("box1", "box2"):
        await say(fake, ALICE, f"/newkey {name}")
        await say(fake, ALICE, f"/delalert {name} offline")
        [(host_id,)] = read_db(settings, "SELECT id FROM hosts WHERE name = ?", name)
        await server.writer.hello(host_id, protocol.parse_agent_frame(json.dumps(
            {"type": "hello", "v": 1, "agent": "t", "epoch": 1, "interval": 5})))
        for seq, hours_ago in enumerate(range(47, -1, -1), start=1):
            await server.writer.samples(host_id, 1, disk_sample(seq, now - hours_ago * H, (70 - hours_ago) * GIB),
                                        lambda seq: None)
    while await server.writer.call(history.rollup_step, 1000):
        pass

    since = len(fake.sent)
    clock.offset += alerting.FORECAST_FIRST + 1
    server.alerting.clock_moved()
    await fake.wait_for(to_alice("sendMessage", "/ on box1 will be full in about 30 hours"), since=since)
    [(box2,)] = read_db(settings, "SELECT id FROM hosts WHERE name = 'box2'")
    assert server.alerting.forecast_lines(box2) == []  # not read yet: its slice comes a step later
    clock.offset += alerting.FORECAST_STEP + 0.1
    server.alerting.clock_moved()
    await fake.wait_for(to_alice("sendMessage", "/ on box2 will be full in about 30 hours"), since=since)
    assert server.alerting.forecast_lines(box2) == ["⏳ / full in about 30 hours at the current rate"]
    await server.aclose()
