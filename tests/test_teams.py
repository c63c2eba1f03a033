"""Sharing a host with roles (mbot.access): /share links, what a viewer and an operator may do, removal, alerts to
everyone with a role, /set and the original's command names. Forged updates through the fake Bot API over real HTTP,
the real server, sqlite in tmp_path; a bare protocol client as the agent."""
from __future__ import annotations

import json
import re
import time

import httpx
import pytest
import trio
import trio_websocket

from fakebot import BOT_USER, FakeBot
from helpers import hello_frame, open_tls, read_db, receive_json, upgrade
from mbot import access, store, users
from mbot.config import Settings
from mbot.telegram import views
from test_access import WallClock, buttons, fake, last_message_id, press_answer, say, start  # noqa: F401 (fixture)

ALICE, BOB, CAROL, MALLORY = 1001, 1002, 1003, 6666
NOT_A_VIEWERS = "You are a viewer of box1: that takes its"


def test_the_table_ranks_roles():
    assert access.role_of(ALICE, ALICE, None) == access.OWNER
    assert access.role_of(ALICE, BOB, access.VIEWER) == access.VIEWER
    assert access.role_of(ALICE, BOB, "admin") is None and access.role_of(0, BOB, None) is None  # CLI-only hosts
    assert access.role_of(ALICE, BOB, None) is None
    for action in ("card", "chart", "plot", "top", "containers", "info", "alerts"):
        assert access.allows(access.VIEWER, action), action
    for action in ("refresh", "power", "mute", "ack", "setalert", "delalert", "check"):
        assert not access.allows(access.VIEWER, action) and access.allows(access.OPERATOR, action), action
    for action in ("rename", "rotate", "revoke", "share", "unshare"):
        assert not access.allows(access.OPERATOR, action) and access.allows(access.OWNER, action), action
    assert not access.allows(access.OWNER, "no such action") and not access.allows(None, "card")
    assert access.parse_role("Operator") == access.OPERATOR and access.parse_role("owner") is None


class PowerAgent:
    """The host's agent: answers power commands, and sends samples when asked."""

    def __init__(self) -> None:
        self.commands: list[dict] = []
        self.seq = 0

    async def run(self, nursery: trio.Nursery, port: int, secret: str) -> None:
        self.stream = await open_tls(port)
        self.ws = await upgrade(nursery, self.stream, secret)
        await self.ws.send_message(hello_frame(capabilities=["power"]))
        await receive_json(self.ws)
        nursery.start_soon(self._answer)

    async def _answer(self) -> None:
        while True:
            try:
                frame = json.loads(await self.ws.get_message())
            except trio_websocket.ConnectionClosed:
                return
            if frame["type"] == "command":
                self.commands.append(frame)
                await self.ws.send_message(json.dumps({"type": "result", "id": frame["id"], "ok": True,
                                                       "message": "started"}))

    async def sample(self, cpu: float) -> None:
        self.seq += 1
        await self.ws.send_message(json.dumps({"type": "sample", "seq": self.seq, "ts": time.time(),
                                               "metrics": {"cpu": cpu, "ram": {"used": 1.0, "total": 4.0}}}))

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def share(fake: FakeBot, owner: int, text: str) -> str:
    reply = await say(fake, owner, text)
    link = re.search(r"https://t\.me/(\w+)\?start=([\w-]+)", reply["text"])
    assert link and link[1] == BOT_USER["username"], reply["text"]
    assert f"/start {link[2]}" in reply["text"] and buttons(reply) == {"🗑 Delete this message": f"delete:{owner}"}
    return link[2]


async def join(fake: FakeBot, user: int, token: str) -> None:
    """`user` opens a share link and is told what it gave them."""
    since = len(fake.sent)
    fake.push_message(user, f"/start {token}")
    await fake.wait_for(lambda c: c.params.get("chat_id") == user and "now shared with you" in c.shown, since=since)


async def setup(nursery, settings: Settings, fake: FakeBot, clock: WallClock, **overrides):
    server = await start(nursery, settings, fake, clock=clock, allowed_users=(ALICE,), **overrides)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"])[1]
    await say(fake, ALICE, "/newkey box2")
    agent = PowerAgent()
    await agent.run(nursery, server.port, secret)
    host_id = read_db(settings, "SELECT id FROM hosts WHERE name = 'box1'")[0][0]
    return server, agent, host_id


async def test_a_viewer_sees_and_cannot_act_an_operator_acts_and_removal_ends_it(fake: FakeBot, nursery,
                                                                                settings: Settings):
    clock = WallClock()
    server, agent, host_id = await setup(nursery, settings, fake, clock, metrics_port=0)

    # A share link: one use, for a stranger too (who becomes a user), and only its hash is stored.
    token = await share(fake, ALICE, "/share box1")
    welcome = await say(fake, BOB, f"/start {token}")
    assert welcome["text"].startswith("Welcome to mbot.")
    shared = await fake.wait_for(lambda c: c.params.get("chat_id") == BOB and "now shared with you" in c.shown)
    assert "as viewer" in shared.params["text"]
    assert (await say(fake, MALLORY, f"/start {token}"))["text"] == views.BAD_INVITE
    assert (await say(fake, MALLORY, "/hosts"))["text"] == views.NOT_ALLOWED
    assert read_db(settings, "SELECT count(*) FROM invites WHERE code_hash = ?", token) == [(0,)]

    # A link works once only, even for a user, and not after 24 h.
    late = await share(fake, ALICE, "/share box1 operator")
    clock.offset += users.INVITE_TTL + 1
    assert (await say(fake, CAROL, f"/start {late}"))["text"] == views.BAD_INVITE
    assert (await say(fake, CAROL, "/hosts"))["text"] == views.NOT_ALLOWED
    clock.offset = 0.0
    operator = await share(fake, ALICE, "/share box1 operator")
    assert (await say(fake, CAROL, f"/start {operator}"))["text"].startswith("Welcome to mbot.")
    await fake.wait_for(lambda c: c.params.get("chat_id") == CAROL and "now shared with you" in c.shown)
    assert "/newkey NAME" in (await say(fake, CAROL, f"/start {operator}"))["text"]  # spent: /help

    # Bob sees box1, marked, and nothing of box2.
    listing = (await say(fake, BOB, "/hosts"))["text"]
    assert "box1</b> · 👥 shared, viewer" in listing and "box2" not in listing
    summary = await say(fake, BOB, "/status")
    assert "box1" in summary["text"] and "box2" not in summary["text"]
    await say(fake, ALICE, "/setalert box2 cpu 95")
    alerts = (await say(fake, BOB, "/alerts"))["text"]
    assert "box1" in alerts and "box2" not in alerts
    assert "No such host" in (await say(fake, BOB, "/status box2"))["text"]
    card = await say(fake, BOB, "/status box1")
    card_id = last_message_id(fake, BOB)
    assert "Reboot" not in buttons(card) and "🔄 Refresh" not in buttons(card) and "🩺 Diagnostics" in buttons(card)
    assert "operator" in (await say(fake, CAROL, "/hosts"))["text"]

    # /metrics is the server operator's: sharing adds nothing to it that names a person or a role.
    async with httpx.AsyncClient() as client:
        scraped = (await client.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text
    assert 'host="box1"' in scraped and not re.search(rf"\b({BOB}|{CAROL}|{ALICE})\b|viewer|operator", scraped)

    # What a viewer must never reach: commands ...
    for text in ("/setalert box1 cpu 90", "/delalert box1 cpu", "/mute box1 1h", "/unmute box1",
                 "/check box1 https://example.com", "/stability box1", "/speedtest box1"):
        assert NOT_A_VIEWERS in (await say(fake, BOB, text))["text"], text
    for text in ("/rename box1 mine", "/revoke box1", "/rotate box1", "/share box1", "/shares box1",
                 "/unshare box1 user1003", "/delkey box1", "/renamekey box1 mine"):
        reply = (await say(fake, BOB, text))["text"]
        assert "that takes its owner" in reply, text
    # ... and forged buttons: refused to the presser alone, nothing done.
    since = len(fake.sent)
    for data in (f"power:{host_id}:reboot", f"power:{host_id}:shutdown", f"refresh:{host_id}", f"amute:{host_id}",
                 f"ack:{host_id}:1", f"revoke:{host_id}:wipe", f"unshare:{host_id}:{CAROL}",
                 f"stability:{host_id}", f"speedtest:{host_id}"):
        answer = await press_answer(fake, BOB, data, card_id, BOB)
        assert answer.get("show_alert") and "You are a viewer of box1" in answer["text"], data
    await say(fake, BOB, "/hosts")  # whatever a press had queued is out before this answer
    assert [c.method for c in fake.sent[since:] if c.method != "answerCallbackQuery"] == ["sendMessage"]  # /hosts
    assert agent.commands == [] and server.alerting.engine.host_status(host_id).muted_until is None
    assert read_db(settings, "SELECT revoked FROM hosts WHERE id = ?", host_id) == [(None,)]
    assert read_db(settings, "SELECT count(*) FROM alert_rules WHERE host_id = ?", host_id) == [(0,)]
    assert read_db(settings, "SELECT user_id, role FROM host_roles ORDER BY user_id") == [
        (BOB, "viewer"), (CAROL, "operator")]

    # The operator: Reboot with its confirmation, audited with who pressed; alert rules; not the owner's part.
    card = await say(fake, CAROL, "/status box1")
    carol_card = last_message_id(fake, CAROL)
    assert {"🔄 Refresh", "Reboot", "Shutdown"} <= set(buttons(card))
    since = len(fake.sent)
    fake.push_callback(CAROL, buttons(card)["Reboot"], last_message_id(fake, CAROL))
    question = (await fake.wait_for(lambda c: c.params.get("chat_id") == CAROL and c.shown.startswith("Reboot"),
                                    since=since)).params
    assert buttons(question)["Yes"].endswith(f":{CAROL}")
    # The viewer pressing the operator's Yes: not theirs.
    answer = await press_answer(fake, BOB, buttons(question)["Yes"], last_message_id(fake, CAROL), CAROL)
    assert answer["text"] == views.NOT_YOUR_BUTTON and agent.commands == []
    fake.push_callback(CAROL, buttons(question)["Yes"], last_message_id(fake, CAROL))
    await fake.wait_for(lambda c: c.method == "editMessageText" and "reboot started" in c.params["text"])
    assert [c["action"] for c in agent.commands] == ["reboot"]
    assert read_db(settings, "SELECT user_id, action, outcome FROM audit WHERE action = 'reboot'") == [
        (CAROL, "reboot", "ok")]
    assert "Alert set on <b>box1</b>" in (await say(fake, CAROL, "/setalert box1 cpu 90"))["text"]
    assert "that takes its owner" in (await say(fake, CAROL, "/rename box1 mine"))["text"]
    assert "that takes its owner" in (await say(fake, CAROL, "/share box1"))["text"]

    # A confirmation asked for while an operator, answered after the role is gone: nothing is sent.
    since = len(fake.sent)
    fake.push_callback(CAROL, buttons(card)["Shutdown"], carol_card)
    pending = (await fake.wait_for(lambda c: c.params.get("chat_id") == CAROL and c.shown.startswith("Shutdown"),
                                   since=since)).params
    pending_id = last_message_id(fake, CAROL)

    # /shares: who has what, a button to remove each; removal by button and by name.
    shares = await say(fake, ALICE, "/shares box1")
    assert "user1002 (1002) - viewer" in shares["text"] and "user1003 (1003) - operator" in shares["text"]
    fake.push_callback(ALICE, buttons(shares)["Remove user1002"], last_message_id(fake, ALICE))
    await fake.wait_for(lambda c: c.params.get("chat_id") == ALICE and "1002 no longer has access" in c.shown)
    assert "1003 no longer has access" in (await say(fake, ALICE, "/unshare box1 USER1003"))["text"]
    assert "Nobody called ghost" in (await say(fake, ALICE, "/unshare box1 ghost"))["text"]
    assert read_db(settings, "SELECT count(*) FROM host_roles") == [(0,)]
    audit = read_db(settings, "SELECT user_id, action, target FROM audit WHERE action IN ('share', 'unshare') "
                              "ORDER BY id")
    assert (ALICE, "unshare", BOB) in audit and (ALICE, "unshare", CAROL) in audit and (BOB, "share", BOB) in audit

    # Removed: nothing of box1 any more, commands or the buttons they still have.
    assert "box1" not in (await say(fake, BOB, "/hosts"))["text"]
    assert "box1" not in (await say(fake, BOB, "/status"))["text"]
    for text in ("/status box1", "/plot box1 cpu 1h", "/top box1", "/info box1", "/setalert box1 cpu 1"):
        assert "No such host" in (await say(fake, CAROL, text))["text"], text
    assert "No such host" in (await say(fake, BOB, "/plot box1 cpu 1h"))["text"]
    since = len(fake.sent)
    fake.push_callback(BOB, f"chart:{host_id}:1h:-:cpu", card_id)
    refused = await fake.wait_for(lambda c: c.params.get("chat_id") == BOB and c.method == "editMessageText",
                                  since=since)
    assert refused.params["text"] == "No such host. /hosts lists yours."
    fake.push_callback(CAROL, buttons(card)["Reboot"], carol_card)
    await fake.wait_for(lambda c: c.params.get("chat_id") == CAROL and c.method == "editMessageText"
                        and "No such host" in c.params["text"], since=since)
    fake.push_callback(CAROL, buttons(pending)["Yes"], pending_id)
    await fake.wait_for(lambda c: c.params.get("chat_id") == CAROL and c.method == "editMessageText"
                        and c.params["message_id"] == pending_id and "No such host" in c.params["text"], since=since)
    assert [c["action"] for c in agent.commands] == ["reboot"]
    assert read_db(settings, "SELECT count(*) FROM audit WHERE action = 'shutdown'") == [(0,)]
    await agent.close()
    await server.aclose()


async def test_alerts_reach_everyone_with_a_role_with_their_buttons(fake: FakeBot, nursery, settings: Settings,
                                                                     monkeypatch):
    from mbot.telegram import views as views_module
    monkeypatch.setattr(views_module, "alert_charted", lambda metric: False)  # text alerts: no matplotlib here
    clock = WallClock()
    server, agent, host_id = await setup(nursery, settings, fake, clock)
    await join(fake, BOB, await share(fake, ALICE, "/share box1 viewer"))
    await join(fake, CAROL, await share(fake, ALICE, "/share box1 operator"))
    await say(fake, ALICE, "/setalert box1 cpu 50")

    def firing(user):
        return lambda c: (c.params.get("chat_id") == user and "box1: CPU" in c.shown and c.method == "sendMessage"
                          and "back" not in c.shown and "still" not in c.shown)

    since = len(fake.sent)
    await agent.sample(95.0)
    fired = {user: (await fake.wait_for(firing(user), since=since)) for user in (ALICE, BOB, CAROL)}
    assert "reply_markup" not in fired[BOB].params  # a viewer: no Mute, no Ack (and text alerts have no Chart here)
    assert {"🔕 Mute 1h", "✔️ Ack"} <= set(buttons(fired[CAROL].params))
    assert {"🔕 Mute 1h", "✔️ Ack"} <= set(buttons(fired[ALICE].params))
    # The viewer's forged Ack and Mute, on their own alert message: refused.
    bob_alert = fired[BOB].result["message_id"]
    bob_alert_id = buttons(fired[ALICE].params)["✔️ Ack"].split(":")[2]
    for data in (f"ack:{host_id}:{bob_alert_id}", f"amute:{host_id}"):
        answer = await press_answer(fake, BOB, data, bob_alert, BOB)
        assert "You are a viewer of box1" in answer["text"], data
    assert server.alerting.engine.host_status(host_id).muted_until is None

    # The operator acknowledges: everyone's message says so, and loses its Ack button.
    since = len(fake.sent)
    carol_alert = fired[CAROL].result["message_id"]
    fake.push_callback(CAROL, buttons(fired[CAROL].params)["✔️ Ack"], carol_alert)
    for user in (ALICE, BOB, CAROL):
        edit = await fake.wait_for(lambda c: c.method == "editMessageText" and c.params["chat_id"] == user
                                   and "Acknowledged by user1003" in c.params["text"], since=since)
        assert edit.params["message_id"] == fired[user].result["message_id"]
        assert "✔️ Ack" not in (buttons(edit.params) if edit.params.get("reply_markup") else {})

    # Removed: the viewer gets neither the end of this alert nor the next one.
    await say(fake, ALICE, "/unshare box1 1002")
    since = len(fake.sent)
    for _ in range(5):  # clearly back: past the hysteresis margin for a few samples
        await agent.sample(5.0)
    for user in (ALICE, CAROL):
        await fake.wait_for(lambda c: c.params.get("chat_id") == user and "box1: CPU" in c.shown
                            and "back to normal" in c.shown, since=since)
    await agent.sample(96.0)
    await fake.wait_for(firing(ALICE), since=since)
    await fake.wait_for(firing(CAROL), since=since)
    await say(fake, ALICE, "/hosts")
    assert not [c for c in fake.sent[since:] if c.params.get("chat_id") == BOB]
    rows = read_db(settings, "SELECT DISTINCT chat_id FROM alert_messages WHERE resolved IS NULL")
    assert sorted(r[0] for r in rows) == [ALICE, CAROL]

    # The operator mutes by command: the owner's live alert message says who, and for how long.
    since = len(fake.sent)
    await say(fake, CAROL, "/mute box1 2h")
    edit = await fake.wait_for(lambda c: c.method == "editMessageText" and c.params["chat_id"] == ALICE
                               and "Muted by user1003 for 120 min" in c.params["text"], since=since)
    assert "✔️ Ack" in buttons(edit.params)  # this alert was not acknowledged
    assert not [c for c in fake.sent[since:] if c.params.get("chat_id") == BOB]
    await agent.close()
    await server.aclose()


async def test_set_default_host_and_the_original_names(fake: FakeBot, nursery, settings: Settings):
    clock = WallClock()
    server, agent, host_id = await setup(nursery, settings, fake, clock)
    assert "box1" in (await say(fake, ALICE, "/list"))["text"]
    assert "/share NAME" in (await say(fake, ALICE, "/linkkey abc"))["text"]
    assert "Revoke <b>box2</b>?" in (await say(fake, ALICE, "/delkey box2"))["text"]
    assert "is now <b>box3</b>" in (await say(fake, ALICE, "/renamekey box2 box3"))["text"]
    assert (await say(fake, ALICE, "/top"))["text"].startswith("Usage: /top NAME")
    assert "No default host" in (await say(fake, ALICE, "/set"))["text"]

    await join(fake, BOB, await share(fake, ALICE, "/share box1 operator"))
    assert "default host" in (await say(fake, BOB, "/set box1"))["text"]
    card = await say(fake, BOB, "/status")
    assert card["text"].startswith("<b>box1</b>") and "last seen" in card["text"] and "Reboot" in buttons(card)
    assert "Alert set on <b>box1</b>" in (await say(fake, BOB, "/setalert cpu 90 5m"))["text"]
    assert "box1" in (await say(fake, BOB, "/top"))["text"]
    # Per chat and user: Alice's chat has no default; a group chat of Bob's neither.
    assert "No default host" in (await say(fake, ALICE, "/set"))["text"]
    assert "box1" in (await say(fake, BOB, "/status", chat=-100777))["text"]  # the summary lists it
    assert read_db(settings, "SELECT chat_id, user_id, host_id FROM chat_defaults") == [(BOB, BOB, host_id)]

    # Access lost: the default goes with it, and nothing of the host shows.
    await say(fake, ALICE, "/unshare box1 user1002")
    assert read_db(settings, "SELECT count(*) FROM chat_defaults") == [(0,)]
    status = (await say(fake, BOB, "/status"))["text"]
    assert "box1" not in status and "no hosts yet" in status
    assert (await say(fake, BOB, "/top"))["text"].startswith("Usage: /top NAME")
    await agent.close()
    await server.aclose()


def test_share_links_are_hashed_one_use_and_expire(tmp_path):
    conn = store.connect(tmp_path / "db.sqlite3")
    store.migrate(conn)
    host_id = store.insert_host(conn, name="box1", owner=ALICE, key_id="k1", secret_hash="s1", created=0.0)
    code, late = users.new_code(), users.new_code()
    users.add_invite(conn, users.code_hash(code), 0.0, ALICE, kind=users.SHARE, host_id=host_id, role="viewer")
    users.add_invite(conn, users.code_hash(late), 0.0, ALICE, kind=users.SHARE, host_id=host_id, role="operator")
    assert code not in json.dumps([list(row) for row in conn.execute("SELECT * FROM invites")])
    assert users.redeem(conn, users.code_hash(code), BOB, 10.0, first_is_admin=True) == users.Redeemed(
        users.USER, host_id, "viewer")  # never the admin, even on a server without users
    assert users.redeem(conn, users.code_hash(code), CAROL, 10.0, first_is_admin=True) is None
    assert users.redeem(conn, users.code_hash(late), CAROL, users.INVITE_TTL + 1, first_is_admin=True) is None
    assert store.role_on(conn, host_id, BOB) == "viewer" and store.role_on(conn, host_id, CAROL) is None
    store.delete_host(conn, host_id)
    assert store.role_on(conn, host_id, BOB) is None
    conn.close()


@pytest.mark.parametrize("data", ["unshare:1", "unshare:x:1", "unshare:1:x", "unshare:1:2:3"])
def test_forged_unshare_buttons_do_not_decode(data):
    assert views.decode_callback(data) is None
