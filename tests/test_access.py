"""Who may use the bot, and who may press its buttons: claim and invite codes, ALLOWED_USERS, buttons in groups,
the hosts cap and the /newkey rate limit. The fake Bot API over real HTTP, the real server, sqlite in tmp_path."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time

import pytest
import trio
import trio_websocket

from fakebot import FakeBot, BOT_USER
from helpers import hello_frame, open_tls, read_db, receive_json, server_certificate, upgrade
from mbot import app, store, users
from mbot.config import Settings
from mbot.telegram import views
from mbot.telegram.outbox import Outbox, RateLimiter

ALICE, BOB, CAROL, MALLORY = 1001, 1002, 1003, 6666
GROUP = -100123
CLAIM_LINE = re.compile(r"opens (https://t\.me/(\w+)\?start=([\w-]+)) \(or sends the bot /start ([\w-]+)\)")


class WallClock:
    """Real time plus an offset the test moves forward: invite expiry without waiting 24 h."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBot:
    bot = FakeBot()
    await nursery.start(bot.serve)
    return bot


async def start(nursery: trio.Nursery, settings: Settings, fake: FakeBot, *, clock=time.time,
                **overrides) -> app.Server:
    settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url, **overrides)
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    since = len(fake.sent)  # counted before the start: the bot may set its commands before start() returns
    server = await nursery.start(lambda task_status: app.serve(
        settings, server_certificate(settings), handle_signals=False, outbox=outbox, clock=clock,
        task_status=task_status))
    await fake.wait_for("setMyCommands", since=since)  # the claim (if any) is logged before this call
    return server


async def say(fake: FakeBot, user: int, text: str, chat: int | None = None, method: str = "sendMessage") -> dict:
    """`user` sends `text` (in a private chat, or in `chat`); the params of the bot's next `method` there."""
    where = user if chat is None else chat
    since = len(fake.sent)
    fake.push_message(user, text, chat_id=chat)
    call = await fake.wait_for(lambda c: c.method == method and c.params.get("chat_id") == where, since=since)
    return call.params


async def press_answer(fake: FakeBot, user: int, data: str, message_id: int, chat: int) -> dict:
    """`user` presses a button; the params of the answerCallbackQuery for that very press."""
    update = fake.push_callback(user, data, message_id, chat_id=chat)
    query_id = update["callback_query"]["id"]
    call = await fake.wait_for(lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"]
                               == query_id)
    return call.params


def buttons(params: dict) -> dict[str, str]:
    return {b["text"]: b["callback_data"] for row in params["reply_markup"]["inline_keyboard"] for b in row}


def last_message_id(fake: FakeBot, chat: int) -> int:
    return max(mid for (c, mid) in fake.messages if c == chat)


def claim_codes(caplog) -> list[tuple[str, str]]:
    """(link, code) of each claim line logged so far."""
    found = []
    for record in caplog.records:
        match = CLAIM_LINE.search(record.getMessage())
        if match:
            assert match[3] == match[4]  # the link and the /start form carry the same code
            found.append((match[1], match[3]))
    return found


# --- pure parts --------------------------------------------------------------------------------------------------


def test_rate_limit_burst_then_refill_and_bounded_memory():
    limit = users.RateLimit(3, 60.0, max_keys=100)
    assert [limit.take(1, 0.0).allowed for _ in range(4)] == [True, True, True, False]
    refused = limit.take(1, 0.0)
    assert not refused.allowed and not refused.first_refusal and refused.retry_after == pytest.approx(60.0)
    assert limit.take(2, 0.0).allowed  # another key has its own bucket
    assert limit.take(1, 30.0).allowed is False and limit.take(1, 61.0).allowed
    # Told once per stretch of refusals, again after an allowed take.
    assert [limit.take(1, 61.0).first_refusal, limit.take(1, 61.0).first_refusal] == [True, False]
    for key in range(10_000):
        limit.take(("k", key), float(key))
    assert len(limit) <= 100


def test_seen_is_bounded():
    seen = users.Seen(limit=3)
    assert [seen.add(k) for k in (1, 1, 2)] == [True, False, True]
    for key in range(100):
        seen.add(key + 10)
    assert len(seen) == 3 and 1 not in seen


def test_roles_keep_the_order_of_allowed_users():
    assert users.role_of(7, (7, 8), {}) == users.ADMIN
    assert users.role_of(8, (7, 8), {}) == users.USER
    assert users.role_of(9, (7, 8), {9: users.USER}) == users.USER
    assert users.role_of(9, None, {9: users.ADMIN}) == users.ADMIN
    assert users.role_of(10, None, {}) is None and users.role_of(10, (), {}) is None


def test_codes_are_hashed_once_only_and_expire(tmp_path):
    conn = store.connect(tmp_path / "db.sqlite3")
    claim, invite, late = users.new_code(), users.new_code(), users.new_code()
    assert len({claim, invite, late}) == 3 and all(users.looks_like_code(c) for c in (claim, invite, late))
    assert not users.looks_like_code("short") and not users.looks_like_code("bad code with spaces in it!")
    assert users.reset_claim(conn, users.code_hash(claim), 0.0)
    users.add_invite(conn, users.code_hash(invite), 0.0, ALICE)
    users.add_invite(conn, users.code_hash(late), 0.0, ALICE)
    stored = [row[0] for row in conn.execute("SELECT code_hash FROM invites")]
    assert users.code_hash(claim) in stored and claim not in json.dumps(stored)
    assert users.code_hash(claim) == hashlib.sha256(claim.encode()).hexdigest()

    assert users.redeem(conn, users.code_hash(invite), BOB, 10.0, first_is_admin=True) == users.Redeemed(users.ADMIN)
    assert users.redeem(conn, users.code_hash(invite), CAROL, 10.0, first_is_admin=True) is None  # one use
    assert users.redeem(conn, users.code_hash(claim), CAROL, 10.0, first_is_admin=True) is None  # claim ended
    assert users.redeem(conn, users.code_hash(late), CAROL, users.INVITE_TTL + 1, first_is_admin=True) is None
    assert users.load_users(conn) == {BOB: users.ADMIN}
    assert not users.reset_claim(conn, users.code_hash(users.new_code()), 20.0)  # users exist: no claim
    conn.close()


# --- the claim, invites, restarts --------------------------------------------------------------------------------


async def test_claim_then_invites_end_to_end(fake: FakeBot, nursery, settings: Settings, caplog):
    caplog.set_level(logging.INFO, logger="mbot")
    clock = WallClock()
    server = await start(nursery, settings, fake, clock=clock)
    [(link, code)] = claim_codes(caplog)
    assert link == f"https://t.me/{BOT_USER['username']}?start={code}"
    assert [r for r in caplog.records if code in r.getMessage()] == [  # the one line that may hold it
        r for r in caplog.records if CLAIM_LINE.search(r.getMessage())]

    # Closed: a stranger gets one polite refusal.
    assert (await say(fake, MALLORY, "/newkey evil"))["text"] == views.NOT_ALLOWED
    # The claim link (Telegram sends /start CODE) makes the first person the admin.
    welcome = await say(fake, ALICE, f"/start {code}")
    assert "you are the admin" in welcome["text"] and "/invite" in welcome["text"]
    assert "registered" in (await say(fake, ALICE, "/newkey box1"))["text"]
    # A second use of the same code is refused.
    assert (await say(fake, BOB, f"/start {code}"))["text"] == views.BAD_INVITE
    assert (await say(fake, BOB, "/hosts"))["text"] == views.NOT_ALLOWED

    # The admin's /invite: a link whose code adds one more user, once.
    reply = await say(fake, ALICE, "/invite")
    invite = re.search(r"start=([\w-]+)", reply["text"])[1]
    assert f"/start {invite}" in reply["text"] and buttons(reply) == {"🗑 Delete this message": f"delete:{ALICE}"}
    assert (await say(fake, CAROL, f"/start {invite}"))["text"].startswith("Welcome to mbot.")
    assert "no hosts yet" in (await say(fake, CAROL, "/hosts"))["text"]
    assert (await say(fake, CAROL, "/invite"))["text"] == views.NOT_ADMIN
    assert (await say(fake, MALLORY, f"/start {invite}"))["text"] == views.BAD_INVITE

    # An invite expires after 24 h.
    late = re.search(r"start=([\w-]+)", (await say(fake, ALICE, "/invite"))["text"])[1]
    clock.offset += users.INVITE_TTL + 1
    assert (await say(fake, BOB, f"/start {late}"))["text"] == views.BAD_INVITE

    # Only hashes are stored: no code is in the database file.
    await server.aclose()
    data = b"".join(p.read_bytes() for p in settings.data_dir.glob("mbot.sqlite3*"))
    for secret in (code, invite, late):
        assert secret.encode() not in data
    assert read_db(settings, "SELECT id, role FROM users ORDER BY id") == [(ALICE, "admin"), (CAROL, "user")]

    # After a restart the invited user keeps access, no new claim is made, strangers stay out.
    caplog.clear()
    again = await start(nursery, settings, fake, clock=clock)
    assert claim_codes(caplog) == []
    assert "no hosts yet" in (await say(fake, CAROL, "/hosts"))["text"]
    assert "box1" in (await say(fake, ALICE, "/hosts"))["text"]
    assert (await say(fake, MALLORY, "/hosts"))["text"] == views.NOT_ALLOWED
    await again.aclose()


async def test_a_new_claim_code_at_each_start_until_claimed(fake: FakeBot, nursery, settings: Settings, caplog):
    caplog.set_level(logging.INFO, logger="mbot")
    first = await start(nursery, settings, fake)
    [(_, old)] = claim_codes(caplog)
    await first.aclose()
    caplog.clear()
    second = await start(nursery, settings, fake)
    [(_, new)] = claim_codes(caplog)
    assert new != old
    assert (await say(fake, ALICE, f"/start {old}"))["text"] == views.BAD_INVITE  # the old one is dead
    assert "you are the admin" in (await say(fake, ALICE, f"/start {new}"))["text"]
    await second.aclose()


async def test_wrong_codes_are_refused_and_rate_limited(fake: FakeBot, nursery, settings: Settings, caplog):
    from mbot.telegram.bot import CODE_BURST

    caplog.set_level(logging.INFO, logger="mbot")
    server = await start(nursery, settings, fake)
    [(_, code)] = claim_codes(caplog)
    since = len(fake.sent)
    for _ in range(CODE_BURST + 20):
        fake.push_message(MALLORY, f"/start {users.new_code()}")
    fake.push_message(MALLORY, f"/start {code}")  # even the right code, once over the limit
    # Updates are handled in order: once Alice is answered, all of Mallory's are done. Mallory's right code came
    # over the limit and was never looked at, so the claim is still good.
    assert "you are the admin" in (await say(fake, ALICE, f"/start {code}"))["text"]
    await fake.wait_for(lambda c: c.params.get("chat_id") == MALLORY and c.params.get("text") == views.NOT_ALLOWED,
                        since=since)
    to_mallory = [c.params["text"] for c in fake.sent[since:] if c.params.get("chat_id") == MALLORY]
    assert to_mallory == [views.BAD_INVITE] * CODE_BURST + [views.NOT_ALLOWED]
    assert read_db(settings, "SELECT id, role FROM users") == [(ALICE, "admin")]
    await server.aclose()


async def test_allowed_users_keep_working_and_the_first_is_admin(fake: FakeBot, nursery, settings: Settings,
                                                                 caplog):
    caplog.set_level(logging.INFO, logger="mbot")
    server = await start(nursery, settings, fake, allowed_users=(BOB, ALICE))
    assert claim_codes(caplog) == []  # nothing to claim
    assert (await say(fake, ALICE, "/invite"))["text"] == views.NOT_ADMIN
    assert "/invite" not in (await say(fake, ALICE, "/help"))["text"]
    reply = await say(fake, BOB, "/invite")
    assert "/invite" in (await say(fake, BOB, "/help"))["text"]
    invite = re.search(r"start=([\w-]+)", reply["text"])[1]
    # An invite adds to ALLOWED_USERS (as a user: the admin is the first of ALLOWED_USERS).
    assert (await say(fake, CAROL, f"/start {invite}"))["text"].startswith("Welcome to mbot.")
    assert (await say(fake, MALLORY, "/hosts"))["text"] == views.NOT_ALLOWED
    # An existing user opening an invite link gets /help, and the invite stays unspent.
    other = re.search(r"start=([\w-]+)", (await say(fake, BOB, "/invite"))["text"])[1]
    assert "/newkey NAME" in (await say(fake, ALICE, f"/start {other}"))["text"]
    assert (await say(fake, MALLORY, f"/start {other}"))["text"].startswith("Welcome to mbot.")
    await server.aclose()


async def test_help_lists_every_command(fake: FakeBot, nursery, settings: Settings):
    from mbot.telegram import commands

    server = await start(nursery, settings, fake, allowed_users=(ALICE, BOB))
    text = (await say(fake, ALICE, "/help"))["text"]
    for name in commands.SPECS:
        if name not in commands.NOT_IN_HELP:
            assert f"/{name}" in text
    assert "/invite" not in (await say(fake, BOB, "/help"))["text"]
    await server.aclose()


# --- buttons check who pressed them ------------------------------------------------------------------------------


async def test_buttons_in_a_group_act_only_for_their_user(fake: FakeBot, nursery, settings: Settings):
    server = await start(nursery, settings, fake, allowed_users=(ALICE, BOB))
    # A key's reply carries its secret: never in a group, where every member would read it.
    refusal = await say(fake, ALICE, "/newkey box1", chat=GROUP)
    assert "private chat" in refusal["text"] and "AGENT_SECRET" not in refusal["text"]
    assert read_db(settings, "SELECT count(*) FROM hosts") == [(0,)]
    key = await say(fake, ALICE, "/newkey box1")
    secret = re.search(r"AGENT_SECRET=(\S+)", key["text"])[1]
    env_doc = await fake.wait_for(lambda c: c.method == "sendDocument" and c.params["chat_id"] == ALICE
                                  and c.files["document"].filename == "box1.env")
    assert buttons(env_doc.params) == buttons(key) == {"🗑 Delete this message": f"delete:{ALICE}"}
    assert "private chat" in (await say(fake, ALICE, "/rotate box1", chat=GROUP))["text"]

    stream = await open_tls(server.port)
    ws = await upgrade(nursery, stream, secret)
    await ws.send_message(hello_frame(capabilities=["power"]))
    await receive_json(ws)
    commands: list[dict] = []

    async def agent():
        while True:
            try:
                frame = json.loads(await ws.get_message())
            except trio_websocket.ConnectionClosed:
                return  # the test closed it
            if frame["type"] == "command":
                commands.append(frame)
                await ws.send_message(json.dumps({"type": "result", "id": frame["id"], "ok": True,
                                                  "message": "started"}))

    nursery.start_soon(agent)
    card = await say(fake, ALICE, "/status box1", chat=GROUP)
    card_id = last_message_id(fake, GROUP)
    question = await say(fake, ALICE, "/revoke box1", chat=GROUP)
    revoke_id = last_message_id(fake, GROUP)
    since = len(fake.sent)
    fake.push_callback(ALICE, buttons(card)["Reboot"], card_id, chat_id=GROUP)
    power = (await fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == GROUP
                                 and c.params["text"].startswith("Reboot"), since=since)).params
    power_id = last_message_id(fake, GROUP)
    listing = await say(fake, ALICE, "/hosts", chat=GROUP)
    list_id = last_message_id(fake, GROUP)
    host_id = int(buttons(card)["🔄 Refresh"].split(":")[1])
    assert buttons(power)["Yes"] == f"confirm:{buttons(power)['Yes'].split(':')[1]}:{ALICE}"
    before = {k: dict(v) for k, v in fake.messages.items()}
    audit_before = read_db(settings, "SELECT count(*) FROM audit")

    # Bob is a user too, but none of these is his: each press gets the alert and changes nothing.
    since = len(fake.sent)
    presses = [(buttons(card)["🔄 Refresh"], card_id), (buttons(card)["Reboot"], card_id),
               (buttons(power)["Cancel"], power_id), (buttons(power)["Yes"], power_id),
               (buttons(question)["Revoke and delete history"], revoke_id),
               (buttons(question)["Revoke, keep history"], revoke_id), (buttons(question)["Cancel"], revoke_id),
               (f"delete:{ALICE}", list_id), (buttons(listing)["box1"], list_id),
               (f"chart:{host_id}:1h:-:cpu", card_id), (f"range:{host_id}:24h:-:cpu", card_id),
               ("delete", list_id),  # an old button without its user: not in a group
               (f"refresh:{host_id + 50}", card_id)]  # a missing host: the same alert, no hint either way
    for data, message_id in presses:
        answer = await press_answer(fake, BOB, data, message_id, GROUP)
        assert (answer.get("text"), answer.get("show_alert")) == (views.NOT_YOUR_BUTTON, True), data
    # A stranger's press does nothing either (and gets no explanation).
    answer = await press_answer(fake, MALLORY, buttons(power)["Yes"], power_id, GROUP)
    assert answer.get("text") is None
    # Whatever a press had queued would be out before Alice's next reply in the same chat.
    await say(fake, ALICE, "/hosts", chat=GROUP)
    assert fake.messages == {**before, (GROUP, last_message_id(fake, GROUP)): fake.messages[
        (GROUP, last_message_id(fake, GROUP))]}
    assert not [c for c in fake.sent[since:] if c.method in ("editMessageText", "deleteMessage", "sendPhoto",
                                                              "editMessageMedia")]
    assert commands == [] and read_db(settings, "SELECT count(*) FROM audit") == audit_before
    assert read_db(settings, "SELECT revoked FROM hosts WHERE name = 'box1'") == [(None,)]

    # The owner's own presses still work: Bob's presses spent nothing (the nonce is still good).
    answer = await press_answer(fake, ALICE, buttons(power)["Yes"], power_id, GROUP)
    assert answer.get("text") is None
    await fake.wait_for(lambda c: c.method == "editMessageText" and c.params["message_id"] == power_id
                        and "reboot started" in c.params["text"])
    assert [c["action"] for c in commands] == ["reboot"]
    # The secret went to Alice alone.
    assert not [chat for (chat, _), m in fake.messages.items() if chat == GROUP and secret in str(m)]
    await trio.aclose_forcefully(stream)
    await server.aclose()


# --- limits ------------------------------------------------------------------------------------------------------


async def test_newkey_flood_gets_the_burst_and_one_answer(fake: FakeBot, nursery, settings: Settings):
    from mbot.telegram.bot import NEWKEY_BURST

    server = await start(nursery, settings, fake, allowed_users=(ALICE, BOB))
    since = len(fake.sent)
    for i in range(150):
        fake.push_message(BOB, f"/newkey h{i}")
    # Updates are handled in order: Alice's answer comes after all of Bob's were handled. She is unaffected.
    assert "registered" in (await say(fake, ALICE, "/newkey mine"))["text"]
    assert read_db(settings, "SELECT count(*) FROM hosts WHERE owner = ?", BOB) == [(NEWKEY_BURST,)]
    slow = await fake.wait_for(lambda c: c.params.get("chat_id") == BOB and "Slow down" in c.params.get("text", ""),
                               since=since)
    assert "Try again in" in slow.params["text"]
    await fake.wait_for(lambda c: c.params.get("chat_id") == BOB and "h9" in c.params.get("text", ""), since=since)
    texts = [c.params.get("text", "") for c in fake.sent[since:] if c.params.get("chat_id") == BOB
             and c.method == "sendMessage"]
    assert len([t for t in texts if "registered" in t]) == NEWKEY_BURST
    assert len([t for t in texts if "Slow down" in t]) == 1  # a flood gets one answer, not 140
    await server.aclose()


async def test_hosts_per_user_are_capped(fake: FakeBot, nursery, settings: Settings):
    server = await start(nursery, settings, fake, allowed_users=(ALICE, BOB), max_hosts_per_user=2)
    for name in ("a", "b"):
        assert "registered" in (await say(fake, ALICE, f"/newkey {name}"))["text"]
    refused = (await say(fake, ALICE, "/newkey c"))["text"]
    assert "MBOT_MAX_HOSTS_PER_USER=2" in refused and "/revoke" in refused
    assert "registered" in (await say(fake, BOB, "/newkey c"))["text"]  # per user
    # Revoking with its history makes room.
    question = await say(fake, ALICE, "/revoke b")
    fake.push_callback(ALICE, buttons(question)["Revoke and delete history"], last_message_id(fake, ALICE))
    await fake.wait_for(lambda c: c.method == "editMessageText" and "is revoked" in c.params["text"])
    assert "registered" in (await say(fake, ALICE, "/newkey c"))["text"]
    await server.aclose()


async def test_tell_owner_goes_through_the_outbox_without_repeats(fake: FakeBot, nursery, settings: Settings):
    from mbot.agents import AgentHub
    from mbot.alerting import Alerting
    from mbot.install import Endpoint
    from mbot.store import Database
    from mbot.telegram.api import BotApi
    from mbot.telegram.bot import Bot
    from mbot.writer import Writer

    settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url)
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    db, writer = Database(settings.db_path), Writer(settings.db_path)
    async with BotApi(fake.url, fake.token) as api, trio.open_nursery() as inner:
        inner.start_soon(outbox.run)
        bot = Bot(settings, api, outbox, db, writer, AgentHub(db, writer), Alerting(db, writer, repeat=3600.0),
                  endpoint=Endpoint("127.0.0.1", 8000, "ab" * 32, "A" * 43 + "="))
        bot.tell_owner(0, "nobody to tell")  # a CLI-only host
        bot.tell_owner(ALICE, "<b>box1</b> sends too fast: samples are being dropped")
        bot.tell_owner(ALICE, "<b>box1</b> sends too fast: samples are being dropped")  # a repeat: not sent
        bot.tell_owner(ALICE, "<b>box2</b> was disconnected")
        await fake.wait_for(lambda c: c.method == "sendMessage" and "box2" in c.params["text"])
        inner.cancel_scope.cancel()
    writer.close()
    sent = [(c.params["chat_id"], c.params["text"], c.params["parse_mode"]) for c in fake.calls("sendMessage")]
    assert sent == [(ALICE, "<b>box1</b> sends too fast: samples are being dropped", "HTML"),
                    (ALICE, "<b>box2</b> was disconnected", "HTML")]
