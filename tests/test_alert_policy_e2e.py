"""Issue 16 end to end: the real server, the real agent over TLS, the fake Bot API server. Time moves by the
injected clock (WallClock), never by waiting: restarts are silent, a long outage is said once, a reboot from the
chat is a maintenance window."""
from __future__ import annotations

import dataclasses
import re

import psutil
import pytest
import trio

from fakebot import FakeBot
from helpers import load_agent, read_db, server_certificate
from mbot import app
from mbot.config import Settings
from mbot.telegram.outbox import Outbox, RateLimiter
from test_bot import ALICE, WallClock, buttons, last_message_id, press, say

agent = load_agent()


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBot:
    bot = FakeBot()
    await nursery.start(bot.serve)
    return bot


async def start(nursery: trio.Nursery, settings: Settings, fake: FakeBot, clock: WallClock, port: int = 0):
    settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url, allowed_users=(ALICE,),
                                   port=port)
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    return await nursery.start(lambda task_status: app.serve(
        settings, server_certificate(settings), handle_signals=False, outbox=outbox, clock=clock,
        task_status=task_status))


class Agents:
    """Real agents, each in its own cancel scope, reconnecting fast after a restart close (as in production, only
    quicker: tests/test_agent_reconnect.py). Their backoff is short too: the restarts here come within
    stable_after of the agents' connecting, or cut a handshake, and either way the agent backs off (1 s by
    default) instead of taking the quick reconnect."""

    def __init__(self, nursery: trio.Nursery, tmp_path) -> None:
        self.nursery, self.tmp_path, self.scopes = nursery, tmp_path, {}

    def start(self, name: str, secret: str, server, **overrides) -> None:
        config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.05,
                                   fingerprint=server.fingerprint, fingerprint_file=str(self.tmp_path / f"{name}.json"),
                                   stable_after=0.2, quick_reconnect=(0.05, 0.1), fast_retry=(0.05, 0.1),
                                   backoff_min=0.05, backoff_max=0.2, **overrides)
        scope = self.scopes[name] = trio.CancelScope()

        async def run() -> None:
            with scope:
                await agent.run_agent(config)

        self.nursery.start_soon(run)

    def stop(self, name: str) -> None:
        self.scopes.pop(name).cancel()


def alerts_to(fake: FakeBot, since: int) -> list[str]:
    """What the bot sent ALICE that was not a reply to a command of the test."""
    return [c.params["text"] for c in fake.sent[since:] if c.method == "sendMessage" and c.params["chat_id"] == ALICE]


async def new_host(fake: FakeBot, name: str) -> str:
    return re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, f"/newkey {name}"))["text"]).group(1)


async def all_connected(server, count: int) -> None:
    with trio.fail_after(20):
        while len(server.hub.connections) < count:
            await server.writer.next_commit()


async def hellos_seen(server, host_ids, after: float) -> None:
    """Until the alert engine has had a sign of life of each host since `after` (its clock): woken by commits."""
    with trio.fail_after(20):
        while not all((server.alerting.engine.host_status(h).last_seen or 0) >= after for h in host_ids):
            await server.writer.next_commit()


async def test_a_restart_with_agents_connected_sends_nothing_and_a_long_outage_is_said_once(
        fake: FakeBot, nursery, settings: Settings, tmp_path):
    clock = WallClock()
    first = await start(nursery, settings, fake, clock)
    agents = Agents(nursery, tmp_path)
    secrets = {name: await new_host(fake, name) for name in ("box1", "box2", "box3")}
    for name, secret in secrets.items():
        agents.start(name, secret, first)
    await all_connected(first, 3)
    await hellos_seen(first, (1, 2, 3), 0)

    # 1. A restart (1012, the agents come back in a fraction of a second here, seconds in production).
    since = len(fake.sent)
    await first.aclose()
    second = await start(nursery, settings, fake, clock, port=first.port)
    started = clock()
    await hellos_seen(second, (1, 2, 3), started)
    for _ in range(8):  # two minutes later (past the start grace and the offline delay), the agents still sending
        clock.offset += 15
        second.alerting.clock_moved()
        await hellos_seen(second, (1, 2, 3), clock())
    assert await say(fake, ALICE, "/hosts")  # a round trip through the bot: anything queued before it is out
    assert alerts_to(fake, since)[:-1] == []  # zero alert messages (the last one is the /hosts reply)

    # 2. Down for 29 minutes; box3's machine does not come back with it.
    agents.stop("box3")
    await second.aclose()
    clock.offset += 29 * 60
    since = len(fake.sent)
    third = await start(nursery, settings, fake, clock, port=first.port)
    started = clock()
    await hellos_seen(third, (1, 2), started)
    for _ in range(7):  # the start grace runs out, box1 and box2 sending all along
        clock.offset += 15
        third.alerting.clock_moved()
        await hellos_seen(third, (1, 2), clock())
    report = await fake.wait_for(lambda c: c.method == "sendMessage" and "mbot was down" in c.params["text"],
                                 since=since, timeout=10)
    assert report.params["text"].endswith("(29 min); 2 hosts came back, 1 did not: box3")
    assert third.alerting.engine.host_status(3).offline_since is not None
    # box3 comes back later: its "back online", and nothing besides the report before that.
    agents.start("box3", secrets["box3"], third)
    # (The report was its offline alert, so there is no thread to edit: its end goes as a message of its own.)
    back = await fake.wait_for(lambda c: c.method == "sendMessage" and "✅ box3 was offline" in c.params["text"]
                               and c.params["text"].endswith("back online"), since=since, timeout=10)
    assert alerts_to(fake, since) == [report.params["text"], back.params["text"]]
    heartbeat = float(read_db(settings, "SELECT value FROM kv WHERE key = 'server.heartbeat'")[0][0])
    assert heartbeat >= started  # written at start, so the next outage is measured from this run
    for name in ("box1", "box2", "box3"):
        agents.stop(name)
    await third.aclose()


@pytest.mark.parametrize("action", ["reboot", "shutdown"])
async def test_a_power_action_from_the_chat_is_a_maintenance_window(fake: FakeBot, nursery, settings: Settings,
                                                                    tmp_path, action):
    clock = WallClock()
    server = await start(nursery, settings, fake, clock)
    agents = Agents(nursery, tmp_path)
    secret = await new_host(fake, "box1")
    ran = tmp_path / "power.log"
    power = dict(allow_power=True, power_command=f"sh -c 'echo {{action}} >> {ran}'")
    agents.start("box1", secret, server, **power)
    await all_connected(server, 1)
    since = len(fake.sent)
    card = await say(fake, ALICE, "/status box1")
    label = "Reboot" if action == "reboot" else "Shutdown"
    question = await press(fake, ALICE, buttons(card)[label], last_message_id(fake, ALICE), "sendMessage")
    q_id = last_message_id(fake, ALICE)
    await press(fake, ALICE, buttons(question)["Yes"], q_id)
    await fake.wait_for(lambda c: c.method == "editMessageText" and f"{action} started" in c.params["text"])
    assert ran.read_text() == f"{action}\n"

    # The machine goes down; nine minutes pass: far past the offline delay, within MBOT_REBOOT_GRACE (10 min).
    agents.stop("box1")
    with trio.fail_after(10):
        await server.hub.wait_until(1, connected=False)
    clock.offset += 9 * 60
    server.alerting.clock_moved()
    shown = "🔁 rebooting" if action == "reboot" else "⏻ shut down"
    assert shown in (await say(fake, ALICE, "/status box1"))["text"]
    word = "rebooting" if action == "reboot" else "shut down"
    assert f"<b>box1</b> - {word}, last seen 9 min" in (await say(fake, ALICE, "/hosts"))["text"]
    if action == "shutdown":  # held past the grace, silently, until it is back
        clock.offset += 3600
        server.alerting.clock_moved()
        assert "⏻ shut down" in (await say(fake, ALICE, "/status box1"))["text"]

    booted = psutil.boot_time() + 540  # a new boot
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psutil, "boot_time", lambda: booted)
        agents.start("box1", secret, server, **power)
        back = await fake.wait_for(lambda c: c.method == "sendMessage" and "box1 is back" in c.params["text"],
                                   since=since, timeout=10)
    took = "9 min" if action == "reboot" else "1 h 9 min"
    assert back.params["text"].startswith(f"box1 is back after {took}" if action == "reboot"
                                          else f"box1 is back, {took} after its shutdown from the chat")
    assert "(booted " in back.params["text"]
    sent = alerts_to(fake, since)
    assert not [t for t in sent if "offline" in t]  # no offline alert, no "back online"
    assert server.alerting.power_states() == {}  # the window is closed: watched as usual again
    agents.stop("box1")
    await server.aclose()


async def test_a_reboot_that_does_not_come_back_within_the_grace_is_an_alert(fake: FakeBot, nursery,
                                                                             settings: Settings, tmp_path):
    clock = WallClock()
    server = await start(nursery, dataclasses.replace(settings, reboot_grace=300.0), fake, clock)
    agents = Agents(nursery, tmp_path)
    secret = await new_host(fake, "box1")
    agents.start("box1", secret, server, allow_power=True, power_command="true")
    await all_connected(server, 1)
    card = await say(fake, ALICE, "/status box1")
    question = await press(fake, ALICE, buttons(card)["Reboot"], last_message_id(fake, ALICE), "sendMessage")
    await press(fake, ALICE, buttons(question)["Yes"], last_message_id(fake, ALICE))
    await fake.wait_for(lambda c: c.method == "editMessageText" and "reboot started" in c.params["text"])
    since = len(fake.sent)
    agents.stop("box1")
    with trio.fail_after(10):
        await server.hub.wait_until(1, connected=False)
    clock.offset += 301
    server.alerting.clock_moved()
    overdue = await fake.wait_for(lambda c: c.method == "sendMessage" and "not back" in c.params["text"], since=since,
                                  timeout=10)
    assert re.match(r"box1 is not back 5 min( 1 s)? after its reboot", overdue.params["text"])
    await server.aclose()
