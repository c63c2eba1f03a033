"""Storms folded and flapping damped with several receivers (issue 16's delivery with teams and groups), end to end:
the real server, bare agents over real TLS, the fake Bot API. Time moves by an offset on the server's clock."""
from __future__ import annotations

import dataclasses

import trio

from fakebot import FakeBot
from helpers import ack_reaching, read_db, sample_frame
from mbot.config import Settings
from test_access import buttons, fake, say, start  # noqa: F401 (fake: a fixture)
from test_bot import WallClock
from test_groups import GROUP, TOPIC, in_topic, new_key, online, to
from test_teams import join, share

ALICE, BOB = 1001, 1002
WAIT = 30.0


async def told(advance, match, fake: FakeBot, since: int):
    """Server time moves on until `match` is sent (held events are stamped when the delivery task takes them, which
    may be a moment after the jump that made them: then another jump sends them)."""
    for _ in range(16):  # 4 s of patience in all; a jump that came too early costs 0.25 s
        await advance()
        with trio.move_on_after(0.25):
            return await fake.wait_for(match, since=since)
    raise AssertionError("never sent")


async def test_a_storm_is_folded_in_the_owners_chat_and_in_a_viewers_each_with_their_buttons(
        fake: FakeBot, nursery, settings: Settings):
    settings = dataclasses.replace(settings, alert_group_wait=WAIT)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock=clock, allowed_users=(ALICE,))
    secrets = [await new_key(fake, ALICE, name) for name in ("box1", "box2", "box3")]
    await join(fake, BOB, await share(fake, ALICE, "/share box1 viewer"))
    await join(fake, BOB, await share(fake, ALICE, "/share box2 viewer"))
    agents = [await online(nursery, server, secret, clock, 1) for secret in secrets]
    for agent in agents[:2]:  # box1 and box2 drop together; box3 stays (Alice watches 3 hosts, Bob 2)
        await agent.close()
    seq = 1

    async def advance() -> None:
        """16 s on (under the offline delay): box3 says something first, so it stays online."""
        nonlocal seq
        clock.offset += 16
        seq += 1
        await agents[2].ws.send_message(sample_frame(seq, ts=clock()))
        await ack_reaching(agents[2].ws, seq)
        server.alerting.clock_moved()

    since = len(fake.sent)
    for _ in range(6):  # past the start grace (90 s): two offline alerts, held for the group wait in each chat
        await advance()
    folds = {user: await told(advance, to(user, "hosts lost contact"), fake, since) for user in (ALICE, BOB)}
    assert "2 of 3 hosts lost contact" in folds[ALICE].params["text"]  # Alice's own three hosts
    assert "2 of 2 hosts lost contact" in folds[BOB].params["text"]  # the two Bob gets alerts of
    for user, fold in folds.items():
        assert "box1 is offline" in fold.params["text"] and "box2 is offline" in fold.params["text"]
        assert set(buttons(fold.params)) == {"box1", "box2"}, user  # cards: no Mute, no Ack, whoever reads it
        # One message per chat: neither alert also went alone.
        alone = [c for c in fake.sent[since:] if c.params.get("chat_id") == user and c.method == "sendMessage"
                 and c.params.get("text", "").startswith("box")]
        assert alone == [], user
    rows = read_db(settings, "SELECT chat_id, count(*) FROM alert_messages WHERE resolved IS NULL GROUP BY chat_id")
    assert sorted(rows) == [(ALICE, 2), (BOB, 2)]

    # They come back: each chat's own fold has its lines edited.
    since = len(fake.sent)
    for n, secret in enumerate(secrets[:2]):
        agents[n] = await online(nursery, server, secret, clock, 2)
    for user in (ALICE, BOB):
        edit = await told(advance, to(user, "✅", "editMessageText"), fake, since)
        assert edit.params["message_id"] == folds[user].result["message_id"]
    for agent in agents:
        await agent.close()
    await server.aclose()


async def test_a_flapping_host_is_told_as_flapping_in_its_bound_group_too(fake: FakeBot, nursery,
                                                                         settings: Settings):
    clock = WallClock()
    server = await start(nursery, settings, fake, clock=clock, allowed_users=(ALICE,))
    secret = await new_key(fake, ALICE, "box1")
    await in_topic(fake, ALICE, "/bind box1", GROUP, TOPIC)
    since = len(fake.sent)
    seq = 0
    for n in range(3):  # offline and back, three times within 30 minutes
        seq += 1
        agent = await online(nursery, server, secret, clock, seq)
        await agent.close()
        clock.offset += 91 if n == 0 else 40  # (the first past the start grace)
        server.alerting.clock_moved()
        if n < 2:
            for chat in (ALICE, GROUP):
                await fake.wait_for(to(chat, "box1 is offline"), since=since)
            since = len(fake.sent)
    for chat in (ALICE, GROUP):
        flapping = await fake.wait_for(to(chat, "🔁 box1 is flapping: 3 alerts in 30 min"), since=since)
        assert "🔕 Mute 1h" in buttons(flapping.params)
        if chat == GROUP:
            assert flapping.params["message_thread_id"] == TOPIC
    await say(fake, ALICE, "/hosts")
    assert [c for c in fake.sent[since:] if "box1 is offline" in (c.params.get("text") or "")] == []
    await server.aclose()
