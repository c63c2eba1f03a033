"""The bot in groups: /bind and /unbind, alerts in a group (and its forum topic), buttons there checked against the
presser, a group that removed the bot, and status pages that keep themselves current. The fake Bot API over real
HTTP, the real server and sqlite in tmp_path; time moves by an offset on the server's clock (WallClock), never by
waiting."""
from __future__ import annotations

import logging
import re
import sqlite3
from datetime import timezone

import pytest
import trio

from fakebot import BOT_USER, Call, FakeBot
from helpers import ack_reaching, sample_frame
from mbot import statuspage
from mbot.model import Binding, Host
from mbot.telegram import groups, statuspages, views
from test_access import buttons, fake, press_answer, say, start  # noqa: F401 (fake: a fixture)
from test_bot import Agent, WallClock

ALICE, BOB, MALLORY, TROLL = 1001, 1002, 6666, 6667
GROUP, OTHER_GROUP = -100123, -100456
TOPIC = 7


async def in_topic(fake: FakeBot, user: int, text: str, chat: int, thread: int) -> Call:
    """`user` sends `text` in forum topic `thread` of `chat`; the bot's next message there."""
    since = len(fake.sent)
    fake.push_message(user, text, chat_id=chat, thread_id=thread)
    return await fake.wait_for(lambda c: c.method == "sendMessage" and c.params.get("chat_id") == chat, since=since)


def to(chat: int, text: str, method: str = "sendMessage"):
    def match(call: Call) -> bool:
        return call.method == method and call.params.get("chat_id") == chat and text in (
            call.params.get("text") or call.params.get("caption") or "")
    return match


async def new_key(fake: FakeBot, user: int, name: str) -> str:
    return re.search(r"AGENT_SECRET=(\S+)", (await say(fake, user, f"/newkey {name}"))["text"]).group(1)


async def online(nursery, server, secret: str, clock: WallClock, seq: int) -> Agent:
    agent = await Agent.connect(nursery, server.port, secret)
    await agent.ws.send_message(sample_frame(seq, ts=clock()))
    await ack_reaching(agent.ws, seq)
    return agent


def gone(caplog, chat: int) -> int:
    return len([r for r in caplog.records if f"chat {chat} is gone" in r.getMessage()])


def stopped(caplog) -> int:
    return len([r for r in caplog.records if "cannot be edited" in r.getMessage()])


async def until(server, condition) -> None:
    """Wait for the status pages' task to make `condition` true (it runs when woken: no polling of time)."""
    with trio.fail_after(10):
        while not condition():
            await server.bot.pages.next_pass()


async def settle(server) -> None:
    """Return once the pages' task has made a whole pass that started after this call."""
    for _ in range(2):
        server.bot.pages.clock_moved()
        await server.bot.pages.next_pass()


# --- pure parts --------------------------------------------------------------------------------------------------


def uptime(buckets: list[float], width: float, *args) -> statuspage.Uptime:
    """statuspage.uptime over the buckets with samples (as store.covered_runs would cover them)."""
    runs: list[tuple[float, float]] = []
    for bucket in buckets:
        if runs and runs[-1][1] == bucket:
            runs[-1] = (runs[-1][0], bucket + width)
        else:
            runs.append((bucket, bucket + width))
    return statuspage.uptime(runs, width, *args)


def test_uptime_counts_silences_longer_than_the_offline_delay():
    now, day = 100 * 86400.0, 86400.0
    start = now - day
    every_minute = [start + 60 * i for i in range(1440)]
    assert uptime(every_minute, 60, start, now, now - 5, 30) == statuspage.Uptime(1.0, None)
    # Ten minutes without a sample: down for ten minutes, the latest incident.
    gap = [b for b in every_minute if not start + 600 <= b < start + 1200]
    up = uptime(gap, 60, start, now, now - 5, 30)
    assert up.fraction == pytest.approx(1 - 600 / day) and up.incident == (start + 600, start + 1200)
    assert statuspage.percent(up.fraction) == "99.30"
    # A host that sends every 2 minutes leaves every other minute empty: that is not an outage (delay 6 min).
    sparse = every_minute[::2]
    assert uptime(sparse, 60, start, now, now - 5, 360).fraction == 1.0
    # Silent since its last sample: down until now, and that is the latest incident.
    silent = uptime(every_minute[:-30], 60, start, now, now - 1800, 30)
    assert silent.incident == (now - 1800, now) and silent.fraction == pytest.approx(1 - 1800 / day)
    # The tiers lag the latest sample by seconds: the stretch is vouched for; a host that came back after a long
    # silence is not.
    assert uptime(every_minute[:-2], 60, start, now, now - 5, 30).fraction == 1.0
    back = uptime(every_minute[:-120], 60, start, now, now - 5, 30)
    assert back.fraction == pytest.approx(1 - (7200 - 5) / day)
    # Stretches read from the cache 8 minutes ago: the last sample vouches for what came since (`lag`), not more.
    cached = every_minute[:-8]
    assert uptime(cached, 60, start, now, now - 5, 30, statuspage.ROLLUP_LAG + 480).fraction == 1.0
    assert uptime(cached, 60, start, now, now - 5, 30).fraction == pytest.approx(1 - (480 - 5) / day)
    # Registered a minute ago, nothing sent yet: down since registration; an empty window has no figure.
    assert uptime([], 60, now - 60, now, None, 30).fraction == 0.0
    assert uptime([], 60, now, now, None, 30).fraction is None
    assert statuspage.percent(0.999999) == "99.99" and statuspage.percent(1.0) == "100"


def test_the_store_finds_the_covered_stretches(tmp_path):
    from mbot import store

    conn = store.connect(tmp_path / "db.sqlite3")
    store.migrate(conn)
    blob = b"\0\0\0\0"
    # Minutes 0-4 and 7 of host 1 (two layouts in minute 2), minute 3 of host 2.
    for host_id, minute, layout in ((1, 0, 1), (1, 1, 1), (1, 2, 1), (1, 2, 2), (1, 3, 1), (1, 4, 1), (1, 7, 1),
                                    (2, 3, 1)):
        store.put_agg_row(conn, "agg_1m", host_id, 6000 + 60 * minute, layout, 1, blob, blob, blob)
    assert store.covered_runs(conn, "agg_1m", 1, 6000) == [(6000.0, 6300.0), (6420.0, 6480.0)]
    assert store.covered_runs(conn, "agg_1m", 1, 6100) == [(6120.0, 6300.0), (6420.0, 6480.0)]
    assert store.covered_runs(conn, "agg_1m", 2, 0) == [(6180.0, 6240.0)]
    assert store.covered_runs(conn, "agg_1m", 3, 0) == []
    with pytest.raises(ValueError):
        store.covered_runs(conn, "hosts; DROP TABLE hosts", 1, 0)


def test_a_page_is_edited_only_when_its_text_changed_and_at_most_once_a_minute():
    assert statuspage.edit_due("same", "same", 0.0, 1000.0) is None
    assert statuspage.edit_due("old", "new", 990.0, 1000.0) == 1050.0
    assert statuspage.edit_due("old", "new", 900.0, 1000.0) == 1000.0


def test_a_page_names_only_the_hosts_it_is_given_and_fits_one_message():
    def host(i: int) -> Host:
        return Host(i, f"<h{i}>" + "x" * 100, ALICE, f"k{i}", 0.0, {}, 1, 0, None, 50.0, {}, 0)

    rows = [statuspage.HostFigures(host(i), i % 2 == 0, statuspage.Uptime(1.0, None),
                                   statuspage.Uptime(0.5, (10.0, 70.0))) for i in range(60)]
    text = statuspage.page_text(rows, timezone.utc, views.e)
    assert len(text) <= statuspage.MESSAGE_LIMIT and "… and" in text and "<h0>" not in text
    assert "🟢 <b>&lt;h0&gt;" in text and "🔴 <b>&lt;h1&gt;" in text and "last incident 1970-01-01 00:00, 1 min" in text


def test_hostile_update_fields_and_who_gets_alerts():
    assert groups.topic_of({"message_thread_id": 5, "is_topic_message": True}) == 5
    for hostile in ({"message_thread_id": 5}, {"message_thread_id": "5", "is_topic_message": True},
                    {"message_thread_id": True, "is_topic_message": True},
                    {"message_thread_id": 2 ** 40, "is_topic_message": True}, {}):
        assert groups.topic_of(hostile) is None, hostile
    assert groups.migrated({"chat": {"id": GROUP}, "migrate_to_chat_id": OTHER_GROUP}) == (GROUP, OTHER_GROUP)
    for hostile in ({"chat": {"id": GROUP}, "migrate_to_chat_id": "x"}, {"chat": {"id": GROUP}},
                    {"chat": {"id": ALICE}, "migrate_to_chat_id": GROUP}, {"migrate_to_chat_id": GROUP}):
        assert groups.migrated(hostile) is None, hostile
    assert groups.left({"chat": {"id": GROUP}, "new_chat_member": {"status": "kicked"}}) == GROUP
    assert groups.left({"chat": {"id": GROUP}, "new_chat_member": {"status": "administrator"}}) is None
    assert groups.left({"chat": {"id": ALICE}, "new_chat_member": {"status": "kicked"}}) is None  # blocked in private
    for hostile in ({"chat": {"id": "x"}, "new_chat_member": {"status": "left"}}, [], {"chat": [], "new_chat_member": 1},
                    {"chat": {"id": True}, "new_chat_member": {"status": "left"}}):
        assert groups.left(hostile) is None, hostile
    assert groups.migrated({"chat": [GROUP], "migrate_to_chat_id": OTHER_GROUP}) is None
    assert groups.ours("/status box1", "mbot_bot") and groups.ours("/x@MBOT_bot", "mbot_bot")
    assert not groups.ours("/weather", "mbot_bot") and not groups.ours("/status@other", "mbot_bot")
    assert groups.chat_is_gone(403, "Forbidden: bot was kicked from the group chat")
    assert groups.chat_is_gone(400, "Bad Request: chat not found")
    assert not groups.chat_is_gone(400, "Bad Request: message to edit not found")
    # A binding counts only while its maker owns the host.
    bindings = [Binding(1, GROUP, TOPIC, ALICE), Binding(1, OTHER_GROUP, None, BOB)]
    assert groups.receivers(ALICE, True, bindings) == [groups.Dest(ALICE, None, True), groups.Dest(GROUP, TOPIC)]


# --- end to end --------------------------------------------------------------------------------------------------


async def test_groups_act_for_the_member_who_sent_and_alerts_reach_the_bound_topic(fake: FakeBot, nursery, settings,
                                                                                   caplog):
    caplog.set_level(logging.INFO)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock=clock, allowed_users=(ALICE, BOB))
    secret = await new_key(fake, ALICE, "box1")
    await new_key(fake, BOB, "bobsecret")

    # Strangers in a group: one refusal for the group, however many write; nothing is bound.
    since = len(fake.sent)
    fake.push_message(MALLORY, "/bind box1", chat_id=GROUP)
    fake.push_message(TROLL, "/bind box1", chat_id=GROUP)
    fake.push_message(MALLORY, "/status", chat_id=GROUP)
    fake.push_message(ALICE, "/bind", chat_id=GROUP)
    await fake.wait_for(to(GROUP, "None of your hosts"), since=since)
    refusals = [c for c in fake.sent[since:] if to(GROUP, views.NOT_ALLOWED[:20])(c)]
    assert len(refusals) == 1

    # Another bot's command is none of ours; one addressed to us that we do not know gets its answer.
    since = len(fake.sent)
    fake.push_message(ALICE, "/weather", chat_id=GROUP)
    fake.push_message(ALICE, "/weather@otherbot", chat_id=GROUP)
    fake.push_message(ALICE, f"/weather@{BOT_USER['username']}", chat_id=GROUP)
    unknown = await fake.wait_for(to(GROUP, "Unknown command"), since=since)
    await say(fake, ALICE, "/hosts", chat=GROUP)
    assert [c for c in fake.sent[since:] if to(GROUP, "Unknown command")(c)] == [unknown]
    # A user who does not own the host cannot bind it: the answer a missing host gets.
    assert (await say(fake, BOB, "/bind box1", chat=GROUP))["text"].startswith("No such host")
    # The owner binds it from a forum topic, addressing the bot by name: the reply and the alerts go to that topic.
    bound = await in_topic(fake, ALICE, f"/bind@{BOT_USER['username']} box1", GROUP, TOPIC)
    assert bound.params["message_thread_id"] == TOPIC and "now come to this topic" in bound.params["text"]
    assert "box1" in (await say(fake, ALICE, "/bind", chat=GROUP))["text"]
    bobs_view = (await say(fake, BOB, "/bind", chat=GROUP))["text"]
    assert "None of your hosts" in bobs_view and "1 host of other members" in bobs_view and "box1" not in bobs_view
    # Another group gets it too; that group will have removed the bot by the time an alert goes out.
    await say(fake, ALICE, "/bind box1", chat=OTHER_GROUP)

    agent = await online(nursery, server, secret, clock, 1)
    await agent.close()
    fake.kicked.add(OTHER_GROUP)
    since = len(fake.sent)
    clock.offset += 91
    server.alerting.clock_moved()
    in_group = await fake.wait_for(to(GROUP, "box1 is offline"), since=since)
    await fake.wait_for(to(ALICE, "box1 is offline"), since=since)
    assert in_group.params["message_thread_id"] == TOPIC
    group_alert = in_group.result["message_id"]
    mute = buttons(in_group.params)["🔕 Mute 1h"]
    # Bob is a user and in the group, but box1 is not his: its buttons do nothing for him.
    answer = await press_answer(fake, BOB, mute, group_alert, GROUP)
    assert answer.get("text") == views.NOT_YOUR_BUTTON
    host_id = int(mute.split(":")[1])
    assert server.alerting.engine.host_status(host_id).muted_until is None
    # The group that removed the bot refused (403): its binding is gone, said once.
    await until(server, lambda: gone(caplog, OTHER_GROUP))
    assert gone(caplog, OTHER_GROUP) == 1

    # The owner's press works, and the answer stays in the topic.
    since = len(fake.sent)
    fake.push_callback(ALICE, mute, group_alert, chat_id=GROUP)
    muted = await fake.wait_for(to(GROUP, "muted for 1 h"), since=since)
    assert muted.params["message_thread_id"] == TOPIC
    assert server.alerting.engine.host_status(host_id).muted_until is not None
    await say(fake, ALICE, "/unmute box1")

    # Across a restart, back online: the group's own copy is edited, and the reply stays in the topic; then
    # unbound, the next alert reaches Alice alone.
    await server.aclose()
    server = await start(nursery, settings, fake, clock=clock, allowed_users=(ALICE, BOB))
    since = len(fake.sent)
    agent = await online(nursery, server, secret, clock, 2)
    await fake.wait_for(lambda c: c.method == "editMessageText" and c.params["chat_id"] == GROUP
                        and c.params["message_id"] == group_alert, since=since)
    back = await fake.wait_for(to(GROUP, "box1 is back online"), since=since)
    assert back.params["message_thread_id"] == TOPIC and back.params["reply_parameters"]["message_id"] == group_alert
    since = len(fake.sent)
    fake.push_message(ALICE, "/unbind box1", chat_id=GROUP)
    await fake.wait_for(to(GROUP, "<b>box1</b>'s alerts no longer come here."), since=since)
    await agent.close()
    since = len(fake.sent)
    clock.offset += 91
    server.alerting.clock_moved()
    await fake.wait_for(to(ALICE, "box1 is offline"), since=since)
    await say(fake, ALICE, "/hosts")  # anything queued for the group would be out by now
    assert not [c for c in fake.sent[since:] if c.params.get("chat_id") in (GROUP, OTHER_GROUP)]
    # Nothing of Bob's ever reached a group.
    assert not [c for c in fake.sent if c.params.get("chat_id") in (GROUP, OTHER_GROUP)
                and "bobsecret" in str(c.params)]
    await server.aclose()


async def test_the_bot_removed_from_a_group_forgets_it_and_follows_one_that_moved(fake: FakeBot, nursery, settings,
                                                                                  caplog):
    caplog.set_level(logging.INFO)
    server = await start(nursery, settings, fake, allowed_users=(ALICE,))
    await new_key(fake, ALICE, "box1")
    # A group that becomes a supergroup (topics turned on) gets a new id: the binding follows, the page stops.
    await say(fake, ALICE, "/bind box1", chat=OTHER_GROUP)
    await say(fake, ALICE, "/statuspage", chat=OTHER_GROUP)
    fake.push_migration(ALICE, OTHER_GROUP, GROUP)
    await until(server, lambda: "now supergroup" in caplog.text)
    assert "box1" in (await say(fake, ALICE, "/bind", chat=GROUP))["text"]
    assert "None of your hosts" in (await say(fake, ALICE, "/bind", chat=OTHER_GROUP))["text"]
    assert "no status page" in (await say(fake, ALICE, "/statuspage off", chat=OTHER_GROUP))["text"]

    await say(fake, ALICE, "/statuspage", chat=GROUP)
    fake.push_my_chat_member(ALICE, GROUP, "kicked")
    fake.push_my_chat_member(ALICE, GROUP, "kicked")  # said twice: still once in the log
    await until(server, lambda: gone(caplog, GROUP))
    await settle(server)
    assert "None of your hosts" in (await say(fake, ALICE, "/bind", chat=GROUP))["text"]
    assert "no status page" in (await say(fake, ALICE, "/statuspage off", chat=GROUP))["text"]
    assert gone(caplog, GROUP) == 1
    await server.aclose()


async def test_a_status_page_in_a_channel_is_asked_for_privately_by_its_administrator(fake: FakeBot, nursery,
                                                                                     settings):
    channel = -100777
    fake.admins[channel] = {ALICE}
    fake.usernames["@news"] = channel
    server = await start(nursery, settings, fake, allowed_users=(ALICE, BOB))
    await new_key(fake, ALICE, "box1")
    await new_key(fake, BOB, "bobsecret")
    # A channel post has no sender: whatever it says, nobody could be checked, so it does nothing.
    since = len(fake.sent)
    fake._push_update({"channel_post": {"message_id": 1, "chat": {"id": channel, "type": "channel"}, "date": 0,
                                        "text": "/statuspage", "sender_chat": {"id": channel, "type": "channel"}}})
    assert "Only an administrator of @news" in (await say(fake, BOB, "/statuspage @news"))["text"]
    assert "I cannot see @elsewhere" in (await say(fake, ALICE, "/statuspage @elsewhere box1"))["text"]
    assert "posted in @news" in (await say(fake, ALICE, "/statuspage @news box1"))["text"]
    posted = [c for c in fake.sent[since:] if c.method == "sendMessage" and c.params["chat_id"] == channel]
    assert len(posted) == 1 and "🔴 <b>box1</b>" in posted[0].params["text"]
    assert "bobsecret" not in posted[0].params["text"]
    assert "stopped" in (await say(fake, ALICE, f"/statuspage {channel} off"))["text"]
    assert "no status page" in (await say(fake, ALICE, "/statuspage @news off"))["text"]
    await server.aclose()


async def test_a_status_page_keeps_itself_current_within_the_edit_limits(fake: FakeBot, nursery, settings, caplog):
    caplog.set_level(logging.INFO)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock=clock, allowed_users=(ALICE, BOB))
    secret = await new_key(fake, ALICE, "box1")
    await new_key(fake, ALICE, "box2")
    await new_key(fake, BOB, "bobsecret")
    agent = await online(nursery, server, secret, clock, 1)

    assert (await say(fake, BOB, "/statuspage box1", chat=GROUP))["text"].startswith("No such host")
    bobs = await in_topic(fake, BOB, "/statuspage", GROUP, TOPIC)
    bobs_page = bobs.result["message_id"]
    assert "bobsecret" in bobs.params["text"] and "box1" not in bobs.params["text"]
    assert "in the group" in (await say(fake, ALICE, "/statuspage"))["text"]  # a private chat needs a channel
    since = len(fake.sent)
    posted = await in_topic(fake, ALICE, "/statuspage", GROUP, TOPIC)
    page_id, text = posted.result["message_id"], posted.params["text"]
    assert posted.params["message_thread_id"] == TOPIC
    assert "🟢 <b>box1</b>" in text and "🔴 <b>box2</b>" in text and "never connected" in text
    assert "bobsecret" not in text

    def page_edits(after: int) -> list[Call]:
        return [c for c in fake.sent[after:] if c.method == "editMessageText" and c.params["message_id"] == page_id]

    await settle(server)  # the page is the pages' task's before the clock moves
    # box1 goes offline: the page says so at once (its last edit is over a minute old).
    await agent.close()
    since = len(fake.sent)
    clock.offset += 91
    server.alerting.clock_moved()
    edit = await fake.wait_for(lambda c: c in page_edits(since), since=since)
    assert "🔴 <b>box1</b>" in edit.params["text"] and "offline since" in edit.params["text"]
    # Back within the minute: no second edit until the minute is up.
    since = len(fake.sent)
    agent = await online(nursery, server, secret, clock, 2)
    await fake.wait_for(to(ALICE, "back online"), since=since)
    await settle(server)
    await say(fake, ALICE, "/hosts", chat=GROUP)  # an edit queued for the group would be out before this
    assert page_edits(since) == []
    clock.offset += 61
    await agent.ws.send_message(sample_frame(3, ts=clock()))  # still sending: online after the jump
    await ack_reaching(agent.ws, 3)
    server.bot.pages.clock_moved()
    edit = await fake.wait_for(lambda c: c in page_edits(since), since=since)
    assert "🟢 <b>box1</b>" in edit.params["text"] and "last incident" in edit.params["text"]
    # Bob's page in the same group lists his host alone, and its text never changed: never edited (Telegram would
    # refuse an edit that changes nothing).
    assert all(c.params["message_id"] != bobs_page for c in fake.sent if c.method == "editMessageText")

    # A restart goes on editing the same message.
    await agent.close()
    await server.aclose()
    server = await start(nursery, settings, fake, clock=clock, allowed_users=(ALICE, BOB))
    since = len(fake.sent)
    clock.offset += 91
    server.alerting.clock_moved()
    server.bot.pages.clock_moved()
    edit = await fake.wait_for(lambda c: c in page_edits(since), since=since)
    assert "🔴 <b>box1</b>" in edit.params["text"]

    # Someone deleted the message: the page stops, in one log line.
    del fake.messages[GROUP, page_id]
    agent = await online(nursery, server, secret, clock, 5)
    clock.offset += 61
    server.bot.pages.changed(0)
    await until(server, lambda: stopped(caplog))
    await settle(server)
    assert stopped(caplog) == 1
    assert "no status page" in (await say(fake, ALICE, "/statuspage off", chat=GROUP))["text"]
    # A new one, then off: its message says so once its minute is up.
    since = len(fake.sent)
    fake.push_message(ALICE, "/statuspage box2", chat_id=GROUP)
    second = (await fake.wait_for(to(GROUP, "<b>Status</b>"), since=since)).result["message_id"]
    assert "stopped" in (await say(fake, ALICE, "/statuspage off", chat=GROUP))["text"]
    clock.offset += 61
    server.bot.pages.clock_moved()
    retired = await fake.wait_for(lambda c: c.method == "editMessageText" and c.params["message_id"] == second,
                                  since=since)
    assert retired.params["text"].endswith("No longer kept current.") and "box2" in retired.params["text"]
    # Whatever went to the group names one user's hosts: Bob's page his, everything else Alice's.
    for call in fake.sent:
        if call.params.get("chat_id") == GROUP:
            message_id = call.params.get("message_id") or (call.result or {}).get("message_id")
            said = str(call.params)
            assert ("box" not in said) if message_id == bobs_page else ("bobsecret" not in said), said
    await agent.close()
    await server.aclose()


async def test_a_page_that_cannot_be_drawn_holds_up_no_other_page(fake: FakeBot, nursery, settings, caplog,
                                                                  monkeypatch):
    clock = WallClock()
    server = await start(nursery, settings, fake, clock=clock, allowed_users=(ALICE, BOB))
    await new_key(fake, BOB, "bobs")
    secret = await new_key(fake, ALICE, "box1")
    agent = await online(nursery, server, secret, clock, 1)
    await in_topic(fake, BOB, "/statuspage", GROUP, TOPIC)  # first in line: the pass reaches it first
    page_id = (await in_topic(fake, ALICE, "/statuspage", GROUP, TOPIC)).result["message_id"]
    await settle(server)
    drawn = statuspages._measure

    def measure(conn, page, now, cache):
        if page.owner == BOB:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return drawn(conn, page, now, cache)

    monkeypatch.setattr(statuspages, "_measure", measure)
    await agent.close()
    since, passes = len(fake.sent), server.bot.pages.passes
    clock.offset += 91
    server.alerting.clock_moved()
    edit = await fake.wait_for(lambda c: c.method == "editMessageText" and c.params["message_id"] == page_id,
                               since=since)
    assert "🔴 <b>box1</b>" in edit.params["text"]
    # Bob's page waits its turn instead of being retried in a spin: a few passes, a few log lines.
    await settle(server)
    failed = [r for r in caplog.records if "could not look at it" in r.getMessage()]
    assert 1 <= len(failed) <= 3 and server.bot.pages.passes - passes < 20
    await server.aclose()
