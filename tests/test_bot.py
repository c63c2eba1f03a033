"""The bot end to end: the fake Bot API server over HTTP, the real mbot server, agents over real TLS."""
from __future__ import annotations

import dataclasses
import html
import json
import re
import time
from html import unescape

import pytest
import trio

from fakebot import FakeBot
from helpers import (ROOT, ack_reaching, hello_frame, open_tls, read_db, receive_json, sample_frame, server_certificate,
                     upgrade)
from mbot import app, install, protocol
from mbot.config import Settings
from mbot.telegram.outbox import Outbox, RateLimiter

ALICE, BOB, MALLORY = 1001, 1002, 6666


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBot:
    bot = FakeBot()
    await nursery.start(bot.serve)
    return bot


async def start_server(nursery: trio.Nursery, settings: Settings, fake: FakeBot, **overrides) -> app.Server:
    overrides.setdefault("allowed_users", (ALICE, BOB))  # the bot is closed by default; MALLORY stays a stranger
    settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url, **overrides)
    # Telegram's real limit (1 message/s per chat) would make each test wait seconds for nothing.
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    return await nursery.start(
        lambda task_status: app.serve(settings, server_certificate(settings), handle_signals=False, outbox=outbox,
                                      task_status=task_status))


@pytest.fixture
async def server(nursery: trio.Nursery, settings: Settings, fake: FakeBot):
    running = await start_server(nursery, settings, fake)
    yield running
    await running.aclose()


async def say(fake: FakeBot, user: int, text: str, method: str = "sendMessage") -> dict:
    """Send `text` as `user`; return the params of the bot's next `method` call to that chat."""
    since = len(fake.sent)
    fake.push_message(user, text)
    call = await fake.wait_for(lambda c: c.method == method and c.params.get("chat_id") == user, since=since)
    return call.params


async def press(fake: FakeBot, user: int, data: str, message_id: int, method: str = "editMessageText") -> dict:
    since = len(fake.sent)
    fake.push_callback(user, data, message_id)
    call = await fake.wait_for(lambda c: c.method == method and c.params.get("chat_id") == user, since=since)
    return call.params


def buttons(params: dict) -> dict[str, str]:
    return {b["text"]: b["callback_data"] for row in params["reply_markup"]["inline_keyboard"] for b in row}


def last_message_id(fake: FakeBot, user: int) -> int:
    return max(mid for (chat, mid) in fake.messages if chat == user)


class Agent:
    """A bare protocol client standing in for an agent where the test needs to see or answer each frame."""

    def __init__(self, ws, stream):
        self.ws, self.stream = ws, stream

    @classmethod
    async def connect(cls, nursery, port: int, secret: str) -> "Agent":
        stream = await open_tls(port)
        ws = await upgrade(nursery, stream, secret)
        await ws.send_message(hello_frame(capabilities=["power"]))
        await receive_json(ws)
        return cls(ws, stream)

    async def close(self):
        await trio.aclose_forcefully(self.stream)


async def test_start_and_menu(fake: FakeBot, server):
    await fake.wait_for("setMyCommands")
    assert {"command": "status", "description": "A summary of your hosts, or one host's card: /status [NAME]"} in fake.commands
    reply = await say(fake, ALICE, "/start")
    assert "/newkey NAME" in reply["text"] and reply["parse_mode"] == "HTML"


async def test_agent_command_sends_the_file(fake: FakeBot, server):
    since = len(fake.sent)
    fake.push_message(ALICE, "/agent")
    doc = await fake.wait_for("sendDocument", since=since)
    assert doc.files["document"].filename == "mbot_agent.py" and b"def main(" in doc.files["document"].data


async def test_usage_lines_never_silence(fake: FakeBot, server):
    assert (await say(fake, ALICE, "/newkey"))["text"].startswith("Usage: /newkey NAME")
    assert (await say(fake, ALICE, "/rename x"))["text"].startswith("Usage: /rename OLD NEW")
    assert "Unknown command /reboot_everything" in (await say(fake, ALICE, "/reboot_everything"))["text"]
    assert "not a valid name" in (await say(fake, ALICE, "/newkey bad/name"))["text"]
    assert "No such host" in (await say(fake, ALICE, "/status ghost"))["text"]


async def test_newkey_then_agent_then_status_card(fake: FakeBot, server, settings: Settings, nursery):
    reply = await say(fake, ALICE, "/newkey box1")
    secret = re.search(r"AGENT_SECRET=(\S+)", reply["text"]).group(1)
    assert f"AGENT_FINGERPRINT={server.fingerprint}" in reply["text"]
    assert "AGENT_SERVER_IP=127.0.0.1" in reply["text"]
    # The one-liner first, pinned to this server's key (tests/test_install.py checks what it fetches).
    assert install.one_liner(server.hub.downloads.endpoint, secret) in html.unescape(reply["text"])
    assert secret not in json.dumps(reply["reply_markup"])
    # Then the agent file and its ready .env, so a phone is enough to set a host up.
    agent_doc = await fake.wait_for(lambda c: c.method == "sendDocument" and c.files["document"].filename
                                    == "mbot_agent.py")
    assert agent_doc.files["document"].data == (ROOT / "agent" / "mbot_agent.py").read_bytes()
    env_doc = await fake.wait_for(lambda c: c.method == "sendDocument" and c.files["document"].filename == "box1.env")
    env = dict(line.split("=", 1) for line in env_doc.files["document"].data.decode().splitlines())
    assert env == {"AGENT_SERVER_IP": "127.0.0.1", "AGENT_PORT": str(server.port), "AGENT_SECRET": secret,
                   "AGENT_FINGERPRINT": server.fingerprint}
    assert "Delete this message" in json.dumps(env_doc.params["reply_markup"])
    # The delete button removes the message that holds the secret.
    message_id = last_message_id(fake, ALICE)
    await press(fake, ALICE, buttons(reply)["🗑 Delete this message"], message_id, method="deleteMessage")
    assert (ALICE, message_id) not in fake.messages

    agent = await Agent.connect(nursery, server.port, secret)
    await agent.ws.send_message(sample_frame(1, cpu=42.0))
    await ack_reaching(agent.ws, 1)
    card = await say(fake, ALICE, "/status box1")
    assert "🟢 online" in card["text"] and "CPU 42 %" in card["text"]
    # Chart buttons only for what the host has: CPU and RAM here, no GPU.
    assert set(buttons(card)) == {"🔄 Refresh", "📈 CPU", "📈 RAM", "🩺 Diagnostics", "📶 Stability", "🚀 Speed test",
                                  "Reboot", "Shutdown"}
    listed = await say(fake, ALICE, "/hosts")
    assert "box1" in listed["text"] and "online" in listed["text"]
    summary = await say(fake, ALICE, "/status")
    assert "CPU 42 %" in summary["text"]

    # Refresh edits the card in place with the newest figures.
    await agent.ws.send_message(sample_frame(2, cpu=7.0))
    await ack_reaching(agent.ws, 2)
    card_id = last_message_id(fake, ALICE)
    edited = await press(fake, ALICE, buttons(card)["🔄 Refresh"], card_id)
    assert edited["message_id"] == card_id and "CPU 7 %" in edited["text"]
    await agent.close()


async def test_reboot_confirm_runs_once_and_cancel_runs_nothing(fake: FakeBot, server, settings, nursery):
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    agent = await Agent.connect(nursery, server.port, secret)
    commands: list[dict] = []

    async with trio.open_nursery() as answering:
        answering.start_soon(answer_commands, agent, commands)
        await reboot_flow(fake, commands)
        answering.cancel_scope.cancel()
    audit = read_db(settings, "SELECT user_id, host_name, action, outcome FROM audit")
    assert audit == [(ALICE, "box1", "reboot", "ok")]
    await agent.close()


async def answer_commands(agent: "Agent", commands: list[dict]) -> None:
    """Answer every command the bare agent gets as started, keeping the frames in `commands`."""
    while True:
        frame = json.loads(await agent.ws.get_message())
        if frame["type"] == "command":
            commands.append(frame)
            await agent.ws.send_message(json.dumps({"type": "result", "id": frame["id"], "ok": True,
                                                    "message": "started"}))


async def reboot_flow(fake: FakeBot, commands: list[dict]) -> None:
    card = await say(fake, ALICE, "/status box1")
    card_id = last_message_id(fake, ALICE)

    # Reboot -> question -> Cancel: nothing runs.
    question = await press(fake, ALICE, buttons(card)["Reboot"], card_id, method="sendMessage")
    assert question["text"].startswith("Reboot <b>box1</b>?")
    q_id = last_message_id(fake, ALICE)
    assert (await press(fake, ALICE, buttons(question)["Cancel"], q_id))["text"] == "Cancelled."
    # Yes after Cancel: the nonce is gone.
    assert "expired" in (await press(fake, ALICE, buttons(question)["Yes"], q_id))["text"]

    # Reboot -> Yes: runs exactly once; a second Yes on the same question does nothing more.
    question = await press(fake, ALICE, buttons(card)["Reboot"], card_id, method="sendMessage")
    q_id = last_message_id(fake, ALICE)
    await press(fake, ALICE, buttons(question)["Yes"], q_id)
    done = await fake.wait_for(lambda c: c.method == "editMessageText" and "reboot started" in c.params["text"])
    assert done.params["message_id"] == q_id
    assert "expired" in (await press(fake, ALICE, buttons(question)["Yes"], q_id))["text"]
    assert [c["action"] for c in commands] == ["reboot"]


async def test_other_users_cannot_see_or_touch_a_host(fake: FakeBot, server, nursery):
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    agent = await Agent.connect(nursery, server.port, secret)
    card = await say(fake, ALICE, "/status box1")
    host_id = int(buttons(card)["🔄 Refresh"].split(":")[1])

    assert "No such host" in (await say(fake, BOB, "/status box1"))["text"]
    assert "no hosts" in (await say(fake, BOB, "/hosts"))["text"]
    # Forged callbacks naming Alice's host get the answer a missing host gets.
    bobs_message = last_message_id(fake, BOB)
    missing = await press(fake, BOB, f"refresh:{host_id + 100}", bobs_message)
    for data in (f"refresh:{host_id}", f"power:{host_id}:reboot", f"revoke:{host_id}:wipe", f"card:{host_id}"):
        fake.messages[(BOB, bobs_message)]["text"] = "reset"  # so the same edit twice is not "not modified"
        forged = await press(fake, BOB, data, bobs_message)
        assert forged["text"] == missing["text"] == "No such host. /hosts lists yours."
    # Bob may use the same name for a host of his own.
    assert "registered" in (await say(fake, BOB, "/newkey box1"))["text"]
    # Alice's agent was never asked to do anything, and still streams.
    await agent.ws.send_message(sample_frame(1))
    await ack_reaching(agent.ws, 1)
    await agent.close()


async def test_allowed_users_refuses_others_politely_once(fake: FakeBot, nursery, settings: Settings):
    running = await start_server(nursery, settings, fake, allowed_users=(ALICE,))
    assert (await say(fake, MALLORY, "/newkey evil"))["text"] == "Sorry, this mbot is private."
    since = len(fake.sent)
    fake.push_message(MALLORY, "/hosts")
    assert "registered" in (await say(fake, ALICE, "/newkey box1"))["text"]
    assert not [c for c in fake.sent[since:] if c.params.get("chat_id") == MALLORY]
    await running.aclose()


async def test_rotate_and_revoke_lock_the_old_secret_out(fake: FakeBot, server, nursery):
    from helpers import rejection_status

    old = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    agent = await Agent.connect(nursery, server.port, old)
    rotated = await say(fake, ALICE, "/rotate box1")
    new = re.search(r"AGENT_SECRET=(\S+)", rotated["text"]).group(1)
    with pytest.raises(Exception) as closed:
        with trio.fail_after(10):
            await agent.ws.get_message()
    assert closed.value.reason.code == protocol.CLOSE_REVOKED
    await agent.close()
    assert await rejection_status(server.port, old) == 401
    assert await rejection_status(server.port, new) is None

    question = await say(fake, ALICE, "/revoke box1")
    q_id = last_message_id(fake, ALICE)
    answer = await press(fake, ALICE, buttons(question)["Revoke, keep history"], q_id)
    assert "revoked" in answer["text"]
    assert await rejection_status(server.port, new) == 401
    # The host and its history stay; /rotate brings it back.
    assert "box1" in (await say(fake, ALICE, "/hosts"))["text"]


async def test_429_is_honoured_and_restart_does_not_replay(fake: FakeBot, nursery, settings: Settings):
    running = await start_server(nursery, settings, fake)
    await fake.wait_for("setMyCommands")
    fake.fail_next("sendMessage", 429, retry_after=1)
    started = trio.current_time()
    reply = await say(fake, ALICE, "/help")
    assert trio.current_time() - started >= 1.0
    assert "/newkey" in reply["text"]
    assert fake.attempts["sendMessage"] == 2
    await running.aclose()

    # A second server on the same data: the saved offset means /help is not answered again.
    sent_before = len(fake.calls("sendMessage"))
    again = await start_server(nursery, settings, fake)
    await say(fake, ALICE, "/hosts")
    assert len(fake.calls("sendMessage")) == sent_before + 1
    await again.aclose()


@pytest.mark.parametrize("allowed", [True, False])
async def test_real_agent_reboot_end_to_end(fake: FakeBot, server, nursery, tmp_path, allowed):
    """/newkey -> the real agent connects with the secret from the reply -> /status -> Reboot -> Yes."""
    from helpers import load_agent

    agent = load_agent()
    reply = await say(fake, ALICE, "/newkey box1")
    secret = re.search(r"AGENT_SECRET=(\S+)", reply["text"]).group(1)
    fingerprint = re.search(r"AGENT_FINGERPRINT=(\S+)", reply["text"]).group(1)
    ran = tmp_path / "power.log"
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.2,
                               fingerprint=fingerprint, fingerprint_file=str(tmp_path / "fp.json"),
                               allow_power=allowed, power_command=f"sh -c 'echo {{action}} >> {ran}'")
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        with trio.fail_after(10):
            await server.hub.wait_until(1, connected=True)
        card = await say(fake, ALICE, "/status box1")
        question = await press(fake, ALICE, buttons(card)["Reboot"], last_message_id(fake, ALICE), "sendMessage")
        q_id = last_message_id(fake, ALICE)
        await press(fake, ALICE, buttons(question)["Yes"], q_id)
        outcome = await fake.wait_for(lambda c: c.method == "editMessageText" and c.params["message_id"] == q_id
                                      and "Asking" not in c.params["text"])
        agents.cancel_scope.cancel()
    if not allowed:
        assert "AGENT_ALLOW_POWER=1" in outcome.params["text"]
        assert not ran.exists()
        return
    assert "reboot started" in outcome.params["text"]
    assert ran.read_text() == "reboot\n"
    # The "reboot": the agent went away above; it comes back from a new boot, and the alert engine says so
    # (tests/test_alert_policy_e2e.py moves the clock through the window).
    import psutil

    booted = psutil.boot_time() + 600
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psutil, "boot_time", lambda: booted)
        async with trio.open_nursery() as agents:
            agents.start_soon(agent.run_agent, config)
            back = await fake.wait_for(lambda c: c.method == "sendMessage" and " is back after " in c.params["text"])
            agents.cancel_scope.cancel()
    assert back.params["text"].startswith("box1 is back after")
    assert ran.read_text() == "reboot\n"  # ran once


class WallClock:
    """Real time plus an offset the test can move forward: alert timers without waiting for them."""

    def __init__(self):
        import time

        self._time = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self._time() + self.offset


async def test_alerts_end_to_end_with_the_real_agent(fake: FakeBot, nursery, settings: Settings, tmp_path):
    from helpers import load_agent

    clock = WallClock()
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url,
                                   allowed_users=(ALICE, BOB))
    server = await nursery.start(lambda task_status: app.serve(
        settings, server_certificate(settings), handle_signals=False, outbox=outbox, clock=clock,
        task_status=task_status))
    agent = load_agent()
    reply = await say(fake, ALICE, "/newkey box1")
    secret = re.search(r"AGENT_SECRET=(\S+)", reply["text"]).group(1)
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.1,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"))

    assert "Usage: /setalert" in (await say(fake, ALICE, "/setalert box1 cpu"))["text"]
    assert "No such host" in (await say(fake, BOB, "/setalert box1 ram 0"))["text"]
    # RAM in use is never 0 %, so this fires on the first sample (an idle CPU can read 0 %).
    assert "Alert set on <b>box1</b>: ram &gt; 0 %" in (await say(fake, ALICE, "/setalert box1 ram 0"))["text"]
    is_alert = lambda text: lambda c: (c.method in ("sendMessage", "sendPhoto") and c.params["chat_id"] == ALICE  # noqa: E731
                                       and text in c.shown)
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        fired = await fake.wait_for(is_alert("box1: RAM"), timeout=10)
        assert "threshold" in fired.shown
        overview = await say(fake, ALICE, "/alerts")
        assert "firing" in overview["text"] and "offline after 30 s" in overview["text"]
        agents.cancel_scope.cancel()
    # Only one message for the incident, however many samples were over.
    assert len([c for c in fake.sent if c.method in ("sendMessage", "sendPhoto") and "box1: RAM" in c.shown]) == 1

    # The agent stopped: after the delay (30 s by default), and not before the server has run 90 s (its start grace:
    # agents' time to reconnect after a restart), the owner hears of it. Moved forward, not waited for.
    clock.offset += 91
    server.alerting.clock_moved()
    await fake.wait_for(is_alert("box1 is offline"), timeout=10)
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        back = await fake.wait_for(is_alert("box1 is back online after"), timeout=10)
        agents.cancel_scope.cancel()
    assert "after 1 min 31 s" in back.params["text"] or "after 1 min 32 s" in back.params["text"]
    # Mute, then unmute: one message says what is still firing.
    assert "muted for 2 h" in (await say(fake, ALICE, "/mute box1 2h"))["text"]
    since = len(fake.sent)
    fake.push_message(ALICE, "/unmute box1")
    ended = await fake.wait_for(lambda c: c.method == "sendMessage" and "notifications are back on" in c.params["text"],
                                since=since)
    assert "Still firing" in ended.params["text"]
    assert "removed" in (await say(fake, ALICE, "/delalert box1 ram"))["text"]
    await server.aclose()


def png_size(data: bytes) -> tuple[int, int]:
    import struct

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


async def test_plot_charts_and_range_buttons(fake: FakeBot, server, nursery):
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    agent = await Agent.connect(nursery, server.port, secret)
    import time

    now = time.time()
    for seq in range(1, 31):  # the last 5 minutes at 10 s, then a gap
        await agent.ws.send_message(sample_frame(seq, cpu=seq, ts=now - 600 + seq * 10))
    await ack_reaching(agent.ws, 30)

    usage = await say(fake, ALICE, "/plot box1 gpu 1h")
    assert usage["text"].startswith("Usage: /plot NAME METRICS SPAN") and "Metrics of this host: cpu" in usage["text"]
    assert (await say(fake, ALICE, "/plot box1 cpu soon"))["text"].startswith("Usage: /plot")

    since = len(fake.sent)
    fake.push_message(ALICE, "/plot box1 cpu;ram 1h 80")
    photo = await fake.wait_for(lambda c: c.method in ("sendPhoto", "sendMessage"), since=since, timeout=20)
    assert photo.method == "sendPhoto", photo.params
    assert png_size(photo.files["photo"].data) == (1280, 640)
    assert "box1" in photo.params["caption"] and "CPU" in photo.params["caption"]
    assert [c.method for c in fake.sent[since:]][:1] == ["sendChatAction"]
    ranges = buttons(photo.params)
    assert list(ranges) == ["10m", "1h", "24h", "7d", "30d"]

    # A range button replaces the picture in place.
    since = len(fake.sent)
    fake.push_callback(ALICE, ranges["24h"], photo.result["message_id"])
    edited = await fake.wait_for(lambda c: c.method == "editMessageMedia", since=since, timeout=20)
    assert edited.params["message_id"] == photo.result["message_id"]
    assert png_size(edited.files["photo"].data) == (1280, 640)
    assert "· 24h ·" in buttons(edited.params)

    # The card's chart button, and a range with no data.
    card = await say(fake, ALICE, "/status box1")
    since = len(fake.sent)
    fake.push_callback(ALICE, buttons(card)["📈 RAM"], last_message_id(fake, ALICE))
    assert png_size((await fake.wait_for("sendPhoto", since=since, timeout=20)).files["photo"].data) == (1280, 640)
    assert "No data" in (await say(fake, ALICE, "/plot box1 cpu 1m"))["text"]
    # Someone else's chart: the same answer as a missing host.
    await say(fake, BOB, "/hosts")
    forged = await press(fake, BOB, ranges["1h"], last_message_id(fake, BOB))
    assert forged["text"] == "No such host. /hosts lists yours."
    await agent.close()


async def test_restart_neither_repeats_nor_forgets_a_firing_alert(fake: FakeBot, nursery, settings: Settings,
                                                                  tmp_path):
    from helpers import load_agent

    agent = load_agent()
    running = await start_server(nursery, settings, fake)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    await say(fake, ALICE, "/setalert box1 ram 0")
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=running.port, interval=0.1,
                               fingerprint=running.fingerprint, fingerprint_file=str(tmp_path / "fp.json"))
    firing = lambda c: c.method in ("sendMessage", "sendPhoto") and c.shown.startswith("box1: RAM")  # noqa: E731
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        await fake.wait_for(firing, timeout=10)
        agents.cancel_scope.cancel()
    await running.aclose()

    again = await start_server(nursery, settings, fake)
    config = dataclasses.replace(config, port=again.port)
    since = len(fake.sent)
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        # Samples over the threshold keep coming after the restart...
        before = again.writer.committed_samples
        while again.writer.committed_samples < before + 5:
            await again.writer.next_commit()
        overview = await say(fake, ALICE, "/alerts")
        agents.cancel_scope.cancel()
    # ...yet no second "firing" message, and the alert is still known to be firing.
    assert not [c for c in fake.sent[since:] if firing(c)]
    assert "firing for" in overview["text"]
    await again.aclose()


async def test_a_host_registered_by_the_cli_while_the_server_runs_gets_its_alerts(fake: FakeBot, server, settings,
                                                                                  nursery):
    """The alerting edge used to keep its own (name, owner) cache, filled at start and by the bot only: a host made
    by `python -m mbot newkey NAME --owner ID` meanwhile never got an alert message until the next restart."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MBOT_DATA_DIR": str(settings.data_dir), "MBOT_PUBLIC_HOST": "127.0.0.1"}
    done = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "mbot", "newkey", "cli1", "--owner", str(ALICE)], capture_output=True, text=True,
        env=env, cwd=ROOT, timeout=60))
    assert done.returncode == 0, done.stderr
    secret = re.search(r"AGENT_SECRET=(\S+)", done.stdout).group(1)
    assert "Alert set on <b>cli1</b>" in (await say(fake, ALICE, "/setalert cli1 cpu 50"))["text"]
    agent = await Agent.connect(nursery, server.port, secret)
    await agent.ws.send_message(sample_frame(1, cpu=99.0))
    fired = await fake.wait_for(lambda c: c.method in ("sendMessage", "sendPhoto") and c.params["chat_id"] == ALICE
                                and c.shown.startswith("cli1: CPU"), timeout=10)
    assert "99 %" in fired.shown
    await agent.close()


async def test_a_host_over_a_limit_costs_its_owner_one_message(fake: FakeBot, server, nursery):
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey greedy"))["text"]).group(1)
    batch = json.dumps({"type": "samples", "samples": [
        {"seq": seq, "ts": time.time(), "metrics": {"cpu": 1}} for seq in range(1, 1001)]})
    for _ in range(3):  # far over the budget of a host made a moment ago, reconnecting each time
        agent = await Agent.connect(nursery, server.port, secret)
        await agent.ws.send_message(batch)
        with pytest.raises(Exception):
            with trio.fail_after(10):
                while True:
                    await agent.ws.get_message()
        await agent.close()
    told = await fake.wait_for(lambda c: c.method == "sendMessage" and "went over its limit" in c.params["text"],
                               timeout=10)
    assert told.params["chat_id"] == ALICE and "<b>greedy</b>" in told.params["text"]
    assert "samples" in told.params["text"]
    # Three closes, one message.
    assert len([c for c in fake.calls("sendMessage") if "went over its limit" in c.params["text"]]) == 1


async def test_host_names_are_one_name_whatever_the_case(fake: FakeBot, server, settings: Settings, nursery):
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    assert "you already have a host named 'box1'; names that differ only in case" in unescape(
        (await say(fake, ALICE, "/newkey BOX1"))["text"])
    # Look-alikes are not letters of another case: refused as names, unknown as references.
    assert "not a valid name" in (await say(fake, ALICE, "/newkey ｂｏｘ1"))["text"]
    assert "No such host" in (await say(fake, ALICE, "/status \u212aox1"))["text"]  # KELVIN SIGN, lower() is "k"
    assert "<b>box1</b>" in (await say(fake, ALICE, "/status BOX1"))["text"]
    # Someone else's box1 is theirs: names are unique per owner.
    assert "AGENT_SECRET=" in (await say(fake, BOB, "/newkey Box1"))["text"]
    assert "<b>Box1</b> is now <b>BOX1</b>" in (await say(fake, BOB, "/rename box1 BOX1"))["text"]  # its own name
    await say(fake, ALICE, "/newkey box2")
    assert "you already have a host named 'box2'" in unescape((await say(fake, ALICE, "/rename BOX1 Box2"))["text"])

    # The catalogue words people type, a span of years, and one too long, in the chat's own syntax.
    agent = await Agent.connect(nursery, server.port, secret)
    now = time.time()
    for seq in range(1, 4):
        await agent.ws.send_message(sample_frame(seq, cpu=seq, ts=now - 30 + seq * 10))
    await ack_reaching(agent.ws, 3)
    reply = (await say(fake, ALICE, "/plot Box1 temperatures 1y"))["text"]
    assert reply.startswith("Usage: /plot NAME") and "This host has no temp" in reply
    reply = (await say(fake, ALICE, "/plot box1 cpu 3y"))["text"]
    assert "reaches back further than the history this server keeps (730d)" in reply and "python -m" not in reply
    assert "Unknown metric 'cpux'. Metrics: cpu, load" in unescape((await say(fake, ALICE, "/plot box1 cpux 1h"))["text"])
    assert "Alert set on <b>box1</b>: temp" in (await say(fake, ALICE, "/setalert BOX1 temperatures 80"))["text"]
    since = len(fake.sent)
    fake.push_message(ALICE, "/plot BOX1 cpu 2y")
    photo = await fake.wait_for(lambda c: c.method in ("sendPhoto", "sendMessage"), since=since, timeout=20)
    assert photo.method == "sendPhoto" and "last 730d" in photo.params["caption"], photo.params
    await agent.close()


async def test_names_that_differ_only_in_case_from_before_keep_working(fake: FakeBot, server, settings: Settings):
    from mbot import store

    await say(fake, ALICE, "/newkey box1")
    conn = store.connect(settings.db_path)  # as an older mbot allowed: BOX1 next to box1
    with store.transaction(conn):
        store.insert_host(conn, name="BOX1", owner=ALICE, key_id="00ff00ff00ff00ff", secret_hash="x" * 64, created=1.0)
    conn.close()
    assert "<b>BOX1</b>" in (await say(fake, ALICE, "/status BOX1"))["text"]  # the exact spelling picks
    assert "<b>box1</b>" in (await say(fake, ALICE, "/status box1"))["text"]
    assert "'Box1' could be BOX1 or box1: type the name exactly" in unescape((await say(fake, ALICE, "/status Box1"))["text"])
    assert "<b>BOX1</b> is now <b>box9</b>" in (await say(fake, ALICE, "/rename BOX1 box9"))["text"]
    assert "<b>box1</b>" in (await say(fake, ALICE, "/status Box1"))["text"]  # one name fits again
