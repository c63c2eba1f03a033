"""Storms folded, end to end (issue 16, item 4): the real server, bare agents over real TLS, the fake Bot API.

Five of six hosts drop at once: one message says the server's side lost them, with a button per host; a restart
keeps it; when they come back, that message's lines are edited and one reply tells it. Time moves by an offset on
the server's clock, never by waiting.
"""
from __future__ import annotations

import dataclasses
import re

import trio
import trio.testing

from fakebot import FakeBot
from helpers import ack_reaching, read_db, sample_frame
from mbot.config import Settings
from test_alert_delivery import reply_to, start, to_alice
from test_bot import ALICE, Agent, WallClock, buttons, fake, say  # noqa: F401 (fake: a fixture)

WAIT = 30.0


async def test_five_hosts_dropping_at_once_are_one_message_and_their_return_one_reply(
        fake: FakeBot, nursery, settings: Settings):
    settings = dataclasses.replace(settings, alert_group_wait=WAIT)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    secrets = [re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, f"/newkey box{n}"))["text"]).group(1)
               for n in range(1, 7)]
    agents = [await Agent.connect(nursery, server.port, secret) for secret in secrets]
    for agent in agents:
        await agent.ws.send_message(sample_frame(1, ts=clock()))
        await ack_reaching(agent.ws, 1)
    for agent in agents[:5]:
        await agent.close()
    keeper, seq = agents[5], 1  # box6 stays: "5 of 6"

    async def advance(seconds: float) -> None:
        """Server time moves on; box6 says something first, so it stays online (when the steps are shorter than
        its offline delay, 30 s: the engine may look at the clock before box6's sample is in)."""
        nonlocal seq
        clock.offset += seconds
        if keeper is not None:
            seq += 1
            await keeper.ws.send_message(sample_frame(seq, ts=clock()))
            await ack_reaching(keeper.ws, seq)
        server.alerting.clock_moved()

    async def told(match, since: int):
        """Server time moves past the wait until `match` is sent. Held events are stamped when the delivery task
        takes them, which may be a moment after the jump that made them: then a second jump sends them."""
        for _ in range(40):  # 10 s of patience in all; a jump that came too early costs 0.25 s
            await advance(WAIT / 2 + 1)
            with trio.move_on_after(0.25):
                return await fake.wait_for(match, since=since)
        raise AssertionError("never sent")

    since = len(fake.sent)
    for _ in range(6):  # past the start grace (90 s): five offline alerts, held for the group wait
        await advance(16)  # (steps under box6's offline delay: its samples keep it online)
    await say(fake, ALICE, "/hosts")
    assert not [c for c in fake.sent[since:] if "is offline (last seen" in (c.params.get("text") or "")]  # still waiting
    folded = await told(to_alice("sendMessage", "5 of 6 hosts lost contact at"), since)
    text = folded.params["text"]
    assert text.startswith("⚠️ 5 of 6 hosts lost contact at") and "probably the server's network" in text
    assert [line.split(" (")[0] for line in text.split("\n")[1:]] == [f"• box{n} is offline" for n in range(1, 6)]
    assert list(buttons(folded.params)) == [f"box{n}" for n in range(1, 6)]  # each opens its host's card
    await say(fake, ALICE, "/hosts")
    assert [c.method for c in fake.sent[since:] if "is offline (last seen" in (c.params.get("text") or "")] == ["sendMessage"], [c.params.get("text") for c in fake.sent[since:]]
    folded_id = folded.result["message_id"]

    # A restart in between: the folded message is still theirs.
    await keeper.close()
    await server.aclose()
    server = await start(nursery, settings, fake, clock)
    since = len(fake.sent)
    back = [await Agent.connect(nursery, server.port, secret) for secret in secrets]
    keeper = back.pop()
    await say(fake, ALICE, "/hosts")
    assert not [c for c in fake.sent[since:] if "back online" in (c.params.get("text") or "")]  # ends wait too
    edited = await told(to_alice("editMessageText", "5 of 6 hosts lost contact"), since)
    assert edited.params["message_id"] == folded_id
    assert [line.split(" was offline")[0] for line in edited.params["text"].split("\n")[1:]] == [
        f"✅ box{n}" for n in range(1, 6)]
    assert list(buttons(edited.params)) == [f"box{n}" for n in range(1, 6)]
    notice = await fake.wait_for(to_alice("sendMessage", "is back online after"), since=since)
    assert reply_to(notice) == folded_id
    assert sorted(line.split(" after")[0] for line in notice.params["text"].split("\n")) == [
        f"box{n} is back online" for n in range(1, 6)]
    await say(fake, ALICE, "/hosts")
    told = [c for c in fake.sent[since:] if "back online" in (c.params.get("text") or "")]
    assert len(told) == 2  # the edit and the one reply
    assert read_db(settings, "SELECT count(*) FROM alert_folds") == [(0,)]  # nothing left to edit
    for agent in (*back, keeper):
        await agent.close()
    await server.aclose()


async def test_a_lone_alert_waits_once_then_goes_as_before(fake: FakeBot, nursery, settings: Settings):
    """Nothing else follows: after the wait, the alert is its usual message (here text with Mute)."""
    settings = dataclasses.replace(settings, alert_group_wait=WAIT)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    agent = await Agent.connect(nursery, server.port, secret)
    await agent.ws.send_message(sample_frame(1, ts=clock()))
    await ack_reaching(agent.ws, 1)
    await agent.close()
    since = len(fake.sent)
    clock.offset += 91
    server.alerting.clock_moved()
    for _ in range(40):  # (see told() above)
        clock.offset += WAIT
        server.alerting.clock_moved()
        with trio.move_on_after(0.25):
            offline = await fake.wait_for(to_alice("sendMessage", "box1 is offline"), since=since)
            break
    assert list(buttons(offline.params)) == ["🔕 Mute 1h"]
    # Its end does not wait: it edits at once.
    since = len(fake.sent)
    agent = await Agent.connect(nursery, server.port, secret)
    edited = await fake.wait_for(to_alice("editMessageText", "✅ box1 was offline"), since=since)
    assert edited.params["message_id"] == offline.result["message_id"]
    await agent.close()
    await server.aclose()


async def test_a_flapping_host_is_told_once_as_flapping_then_once_steady(fake: FakeBot, nursery, settings: Settings):
    """Offline and back: told twice as usual; the third time one "flapping" message; then silence until it has been
    steady for 30 minutes, which its message and one reply say."""
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    since = len(fake.sent)
    seq = 0

    async def away(seconds: float) -> None:
        nonlocal seq
        agent = await Agent.connect(nursery, server.port, secret)
        seq += 1
        await agent.ws.send_message(sample_frame(seq, ts=clock()))
        await ack_reaching(agent.ws, seq)
        await agent.close()
        clock.offset += seconds
        server.alerting.clock_moved()

    for n in range(2):
        await away(91 if n == 0 else 40)  # (the first past the start grace)
        await fake.wait_for(to_alice("sendMessage", "box1 is offline"), since=since)
        since = len(fake.sent)
    await away(40)
    flapping = await fake.wait_for(to_alice("sendMessage", "🔁 box1 is flapping: 3 alerts in 30 min"), since=since)
    quiet_from = len(fake.sent)
    await away(40)
    await away(40)
    await say(fake, ALICE, "/setalert box1 offline 1h")  # it stays now (its silence in the next jump is no outage)
    agent = await Agent.connect(nursery, server.port, secret)
    await say(fake, ALICE, "/hosts")
    # Its return reaches alert delivery through a queue, and the flap damper times it when it takes it: the jump
    # must come after, or "steady" would count from the jump (this test timed out now and then under load).
    await trio.testing.wait_all_tasks_blocked(0.05)
    clock.offset += 31 * 60
    server.alerting.clock_moved()
    edited = await fake.wait_for(to_alice("editMessageText", "✅ box1 was flapping"), since=quiet_from)
    assert edited.params["message_id"] == flapping.result["message_id"]
    notice = await fake.wait_for(to_alice("sendMessage", "box1 is steady again"), since=quiet_from)
    assert reply_to(notice) == flapping.result["message_id"]
    told = [c.params.get("text") for c in fake.sent[quiet_from:] if c.method == "sendMessage"
            and any(word in (c.params.get("text") or "") for word in ("is offline", "back online"))]
    assert told == []  # nothing about each flap in between
    await agent.close()
    await server.aclose()
