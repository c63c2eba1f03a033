"""One message per alert life, with buttons: the fake Bot API server, the real server and the real agent.

Time moves by an offset on the server's clock (WallClock), never by waiting: reminders and offline delays are hours
and seconds of server time that the test skips.
"""
from __future__ import annotations

import dataclasses
import re
import time

import trio

from fakebot import Call, FakeBot
from helpers import ack_reaching, load_agent, sample_frame, server_certificate
from mbot import app
from mbot.config import Settings
from mbot.telegram.outbox import Outbox, RateLimiter
from test_bot import ALICE, BOB, Agent, WallClock, buttons, fake, last_message_id, press, say  # noqa: F401 (fake: a fixture)


REPEAT = 20.0


async def start(nursery: trio.Nursery, settings: Settings, fake: FakeBot, clock: WallClock) -> app.Server:
    # Reminders every 20 s of server time: a jump to the next one stays under the offline delay (30 s).
    settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url,
                                   allowed_users=(ALICE, BOB), alert_repeat=REPEAT)
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    return await nursery.start(lambda task_status: app.serve(
        settings, server_certificate(settings), handle_signals=False, outbox=outbox, clock=clock,
        task_status=task_status))


async def commits(server: app.Server, count: int = 2) -> None:
    before = server.writer.committed_samples
    while server.writer.committed_samples < before + count:
        await server.writer.next_commit()


async def jump(server: app.Server, clock: WallClock, seconds: float) -> None:
    """Move the server's time on, with fresh samples on both sides: the agent stays online (a jump longer than the
    offline delay after its last sample would take it offline)."""
    await commits(server)
    clock.offset += seconds
    server.alerting.clock_moved()
    await commits(server)


def to_alice(method: str, text: str):
    def match(call: Call) -> bool:
        return (call.method == method and call.params.get("chat_id") == ALICE
                and text in (call.params.get("text") or call.params.get("caption") or ""))
    return match


def reply_to(call: Call) -> int | None:
    return (call.params.get("reply_parameters") or {}).get("message_id")


async def test_an_alert_is_one_thread_with_working_buttons_across_a_restart(fake: FakeBot, nursery,
                                                                            settings: Settings, tmp_path,
                                                                            monkeypatch):
    from mbot.telegram import alert_delivery

    # The first chart imports matplotlib, seconds on a busy machine: the time bound has a test of its own.
    monkeypatch.setattr(alert_delivery, "CHART_TIMEOUT", 60.0)
    agent = load_agent()
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.1,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"))
    # RAM in use is never 0 %: it fires once a second of samples is over, with a second of history to draw.
    await say(fake, ALICE, "/setalert box1 ram 0 1s")
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        fired = await fake.wait_for(to_alice("sendPhoto", "box1: RAM"), timeout=60)
        alert_id = fired.result["message_id"]
        assert fired.files["photo"].data.startswith(b"\x89PNG")
        assert "threshold 0 %" in fired.params["caption"]
        pressable = buttons(fired.params)
        assert list(pressable) == ["⚙️ Processes", "🔕 Mute 1h", "✔️ Ack"]  # the photo is the chart

        # Processes: the list the server had when it fired, kept with the alert.
        procs = await press(fake, ALICE, pressable["⚙️ Processes"], alert_id, method="sendMessage")
        assert "top processes when the RAM alert fired" in procs["text"] and "Top memory" in procs["text"]

        # Someone else's press, and a forged alert id: refused, nothing happens.
        await say(fake, BOB, "/hosts")
        refused = await press(fake, BOB, pressable["✔️ Ack"], last_message_id(fake, BOB))
        assert refused["text"] == "No such host. /hosts lists yours."
        await say(fake, BOB, "/hosts")
        refused = await press(fake, BOB, pressable["🔕 Mute 1h"], last_message_id(fake, BOB))
        assert refused["text"] == "No such host. /hosts lists yours."
        host_id = pressable["✔️ Ack"].split(":")[1]
        forged = await press(fake, ALICE, f"ack:{host_id}:999999", alert_id, method="sendMessage")
        assert "too old" in forged["text"]
        assert server.alerting.engine.host_status(int(host_id)).muted_until is None

        # A reminder (REPEAT of server time later) replies to the alert's message, with the Ack button.
        since = len(fake.sent)
        await jump(server, clock, REPEAT + 1)
        reminder = await fake.wait_for(to_alice("sendMessage", "box1: RAM still"), since=since)
        assert reply_to(reminder) == alert_id and "✔️ Ack" in buttons(reminder.params)

        # Ack: no more reminders for it.
        acked = await press(fake, ALICE, pressable["✔️ Ack"], alert_id, method="sendMessage")
        assert acked["text"] == "Acknowledged: no more reminders for RAM on <b>box1</b> until it resolves."
        since = len(fake.sent)
        await jump(server, clock, REPEAT + 1)
        await say(fake, ALICE, "/alerts")  # a round trip through the bot after the timers ran
        assert not [c for c in fake.sent[since:] if to_alice("sendMessage", "still")(c)]
        agents.cancel_scope.cancel()
    await server.aclose()

    # A restart keeps the thread: the end edits the same message and replies to it.
    server = await start(nursery, settings, fake, clock)
    config = dataclasses.replace(config, port=server.port)
    since = len(fake.sent)
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        await say(fake, ALICE, "/setalert box1 ram 99.9")  # replaces the rule, keeps the state: it resolves
        edited = await fake.wait_for(to_alice("editMessageCaption", "✅ box1: RAM back to normal"), since=since)
        assert edited.params["message_id"] == alert_id
        assert "worst" in edited.params["caption"]
        assert list(buttons(edited.params)) == ["⚙️ Processes"]  # Mute and Ack are over with it
        notice = await fake.wait_for(to_alice("sendMessage", "box1: RAM back to normal"), since=since)
        assert reply_to(notice) == alert_id
        assert fake.messages[ALICE, alert_id]["caption"].startswith("✅")

        # Mute 1h, from the buttons the old message still had.
        muted = await press(fake, ALICE, pressable["🔕 Mute 1h"], alert_id, method="sendMessage")
        assert muted["text"].startswith("<b>box1</b> muted for 1 h")
        assert server.alerting.engine.host_status(int(host_id)).muted_until is not None
        agents.cancel_scope.cancel()
    await server.aclose()


async def test_offline_is_one_thread_and_a_deleted_message_gets_a_new_one(fake: FakeBot, nursery,
                                                                           settings: Settings):
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    seq = 0
    for deleted in (False, True):
        agent = await Agent.connect(nursery, server.port, secret)
        seq += 1
        await agent.ws.send_message(sample_frame(seq, ts=clock()))
        await ack_reaching(agent.ws, seq)
        await agent.close()
        since = len(fake.sent)
        clock.offset += 91  # past the server's start grace (90 s) and the default offline delay (30 s)
        server.alerting.clock_moved()
        offline = await fake.wait_for(to_alice("sendMessage", "box1 is offline"), since=since)
        assert list(buttons(offline.params)) == ["🔕 Mute 1h"]  # no reminders to ack, nothing to chart
        message_id = offline.result["message_id"]
        if deleted:
            del fake.messages[ALICE, message_id]  # the user deleted it
        since = len(fake.sent)
        agent = await Agent.connect(nursery, server.port, secret)
        ended = await fake.wait_for(to_alice("sendMessage" if deleted else "editMessageText", "✅ box1 was offline"),
                                    since=since)
        if deleted:  # a new message says it, and that one notifies: no reply to a message that is gone
            assert reply_to(ended) is None and ended.params.get("reply_markup") is None
        else:
            assert ended.params["message_id"] == message_id
            notice = await fake.wait_for(to_alice("sendMessage", "box1 is back online after"), since=since)
            assert reply_to(notice) == message_id
        await agent.close()
    await say(fake, ALICE, "/hosts")
    assert not [c for c in fake.sent if to_alice("sendMessage", "back online after")(c) and reply_to(c) is None]
    await server.aclose()


async def test_a_slow_chart_leaves_text_and_an_alert_that_ends_while_muted_says_so_quietly(
        fake: FakeBot, nursery, settings: Settings, monkeypatch):
    from mbot import charts
    from mbot.telegram import alert_delivery

    def stuck(spec):
        time.sleep(0.5)  # in its worker thread, abandoned by then
        raise AssertionError("an abandoned render's result is never used")

    monkeypatch.setattr(charts, "render", stuck)
    monkeypatch.setattr(alert_delivery, "CHART_TIMEOUT", 0.05)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    await say(fake, ALICE, "/setalert box1 cpu 50")
    agent = await Agent.connect(nursery, server.port, secret)
    await agent.ws.send_message(sample_frame(1, cpu=99.0, ts=clock()))
    fired = await fake.wait_for(to_alice("sendMessage", "box1: CPU 99 %"))
    pressable = buttons(fired.params)
    assert list(pressable) == ["📈 Chart", "🔕 Mute 1h", "✔️ Ack"]  # no process list was sent

    # Muted, it ends silently; when the mute ends, its message says so, quietly (an edit, no reply).
    await press(fake, ALICE, pressable["🔕 Mute 1h"], fired.result["message_id"], method="sendMessage")
    for seq in (2, 3):
        await agent.ws.send_message(sample_frame(seq, cpu=10.0, ts=clock()))
    await ack_reaching(agent.ws, 3)
    since = len(fake.sent)
    fake.push_message(ALICE, "/unmute box1")
    await fake.wait_for(to_alice("sendMessage", "Nothing is firing"), since=since)
    edited = await fake.wait_for(to_alice("editMessageText", "✅ box1: CPU back to normal while muted"), since=since)
    assert edited.params["message_id"] == fired.result["message_id"]
    assert list(buttons(edited.params)) == ["📈 Chart"]
    await say(fake, ALICE, "/hosts")
    assert not [c for c in fake.sent[since:] if reply_to(c) is not None]
    await agent.close()
    await server.aclose()


def test_alert_buttons_fit_and_forged_data_decodes_to_nothing():
    from mbot.telegram import views

    keyboard = views.alert_keyboard(123456789, 987654321, "disk:/" + "x" * 40, chart=True, procs=True, live=True)
    texts = [b["text"] for row in keyboard["inline_keyboard"] for b in row]
    assert texts == ["⚙️ Processes", "🔕 Mute 1h", "✔️ Ack"]  # the chart's data would not fit in 64 bytes: left out
    for row in keyboard["inline_keyboard"]:
        for b in row:
            assert views.decode_callback(b["callback_data"]) is not None
    for forged in ("ack:1", "ack:1:x", "ack:x:1", "aprocs:1:-1", "amute:1:2", "amute:x", "ack:1:2:3"):
        assert views.decode_callback(forged) is None, forged


async def test_a_rule_deleted_while_firing_leaves_its_message_saying_so_without_buttons(
        fake: FakeBot, nursery, settings: Settings, monkeypatch):
    from mbot import charts

    def no_chart(spec):
        raise charts.NoData("not drawn in this test")

    monkeypatch.setattr(charts, "render", no_chart)
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    await say(fake, ALICE, "/setalert box1 cpu 50")
    agent = await Agent.connect(nursery, server.port, secret)
    await agent.ws.send_message(sample_frame(1, cpu=99.0, ts=clock()))
    fired = await fake.wait_for(to_alice("sendMessage", "box1: CPU 99 %"))
    assert "✔️ Ack" in buttons(fired.params)
    since = len(fake.sent)
    await say(fake, ALICE, "/delalert box1 cpu")
    edited = await fake.wait_for(to_alice("editMessageText", "its alert was deleted"), since=since)
    assert edited.params["message_id"] == fired.result["message_id"]
    assert edited.params["text"] == "🗑 box1: CPU: its alert was deleted (/delalert)"
    assert "reply_markup" not in edited.params  # its buttons are gone with the rule
    assert "reply_markup" not in fake.messages[ALICE, fired.result["message_id"]]
    await agent.close()
    await server.aclose()
