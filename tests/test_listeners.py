"""MBOT_LISTENERS=2: the main process and one listener process serve agents on the same port (mbot/listenerpool.py,
mbot/listener.py). Real TLS on port 0, a real sqlite file, the real agent or a bare WebSocket client; a test places
a connection in a process by letting only that one accept (ListenerPool.accepting)."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
import trio
import trio.testing
import trio_websocket

from helpers import (ack_reaching, add_host, certificate, hello_frame, load_agent, make_settings, open_tls, upgrade,
                     read_db, receive_json, sample_frame, wait_for_samples)
from mbot import app, channel, checks, listenerpool, protocol
from mbot.channel import Channel
from mbot.config import ConfigError, load_settings
from mbot.config import Settings
from mbot.session import GatherPolicy
from mbot.stability import StabilityRun, StabilitySpec

agent = load_agent()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", listeners=2)


@pytest.fixture
async def server(settings: Settings, nursery: trio.Nursery) -> AsyncIterator[app.Server]:
    running: app.Server = await nursery.start(
        lambda task_status: app.serve(settings, certificate(settings), handle_signals=False, task_status=task_status))
    yield running
    await running.aclose()


def agent_config(server: app.Server, secret: str, tmp_path: Path):
    return agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.2,
                             fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"),
                             backoff_min=0.05, backoff_max=0.2)


async def place(server: app.Server, where: int) -> None:
    """New connections land in process `where` (0: the main one, 1: the listener) from now on."""
    pool = server.listeners
    assert pool is not None
    await pool.accepting(1 - where, False)
    await pool.accepting(where, True)


async def hello(connect, secret: str, **extra) -> trio_websocket.WebSocketConnection:
    ws = await connect(secret)
    await ws.send_message(hello_frame(**extra))
    assert (await receive_json(ws))["type"] == "ack"
    return ws


async def closed_as_replaced(ws: trio_websocket.WebSocketConnection) -> None:
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        with trio.fail_after(10):
            await ws.get_message()
    assert closed.value.reason.code == protocol.CLOSE_REPLACED


async def test_the_same_host_connecting_in_another_process_replaces_the_old_connection(server, settings, connect):
    # Two processes serving agents take twice one's frames before their agents are asked to gather.
    assert server.hub.gather_policy == GatherPolicy.for_processes(2)
    key = add_host(settings, "box1")
    await place(server, 1)
    first = await hello(connect, key.secret)
    await place(server, 0)
    second = await hello(connect, key.secret)  # in the main process: the listener's is closed
    await closed_as_replaced(first)
    assert server.hub.connections[key.host_id].where == 0
    await place(server, 1)
    third = await hello(connect, key.secret)  # and back: the main process's is closed
    await closed_as_replaced(second)
    await third.send_message(sample_frame(1))
    await ack_reaching(third, 1)
    # The old connection's end (told later by the listener) does not make the host look offline.
    assert server.hub.is_connected(key.host_id) and server.hub.connections[key.host_id].where == 1


async def test_a_listener_serves_agents_and_acks_what_the_main_process_committed_and_closes_hostile_ones(
        server, settings, nursery, connect):
    told: list[tuple[str, str]] = []
    server.hub.on_limit = lambda host, limit, detail: told.append((host.name, limit))
    good_key, key = add_host(settings, "good"), add_host(settings, "greedy")
    await place(server, 1)
    good = await hello(connect, good_key.secret)
    assert server.hub.is_connected(good_key.host_id) and server.hub.connections[good_key.host_id].where == 1
    for seq in (1, 2, 3):
        await good.send_message(sample_frame(seq, cpu=10.0 * seq))
    ack = await ack_reaching(good, 3)
    # Acked means committed by the main process's writer: the rows are there when the ack is.
    assert read_db(settings, "SELECT seq FROM samples ORDER BY seq") == [(1,), (2,), (3,)] and ack["seq"] == 3

    # A hostile agent there is closed there; the limit is counted and told once by the main process.
    batch = [{"seq": seq, "ts": time.time(), "metrics": {"cpu": 1}} for seq in range(1, 1001)]
    for _ in range(2):
        ws = await hello(connect, key.secret)
        await ws.send_message(json.dumps({"type": "samples", "samples": batch}))  # far over its sample budget
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            with trio.fail_after(10):
                while True:
                    await ws.get_message()
        assert closed.value.reason.code == protocol.CLOSE_POLICY
    ws = await hello(connect, key.secret)
    await ws.send_message("not json")
    with pytest.raises(trio_websocket.ConnectionClosed):
        with trio.fail_after(10):
            while True:
                await ws.get_message()
    assert told == [("greedy", "samples")] and server.hub.limits_exceeded == {"samples": 2}
    assert read_db(settings, "SELECT samples_count FROM hosts WHERE name = 'greedy'") == [(0,)]
    await good.send_message(sample_frame(4))  # the listener and its other agents go on
    await ack_reaching(good, 4)
    await good.aclose()
    with trio.fail_after(10):
        await server.hub.wait_until(good_key.host_id, connected=False)


async def test_from_the_chat_an_agent_of_the_listener_is_online_and_reboots(settings, nursery):
    from fakebot import FakeBot
    from test_bot import ALICE, Agent, answer_commands, reboot_flow, say, start_server

    fake = FakeBot()
    await nursery.start(fake.serve)
    running = await start_server(nursery, settings, fake)
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    await place(running, 1)
    agent = await Agent.connect(nursery, running.port, secret)
    await agent.ws.send_message(sample_frame(1, cpu=42.0))
    await ack_reaching(agent.ws, 1)
    (host_id,), = read_db(settings, "SELECT id FROM hosts WHERE name = 'box1'")
    assert running.hub.connections[host_id].where == 1
    card = await say(fake, ALICE, "/status box1")
    assert "🟢 online" in card["text"] and "CPU 42 %" in card["text"]
    commands: list[dict] = []

    async with trio.open_nursery() as answering:
        answering.start_soon(answer_commands, agent, commands)
        await reboot_flow(fake, commands)  # the chat's question, Yes, "reboot started": through the listener
        answering.cancel_scope.cancel()
    await agent.close()
    await running.aclose()


async def test_commands_and_checks_reach_an_agent_of_the_listener(server, settings, nursery, connect):
    key = add_host(settings, "box1")
    await place(server, 1)
    ws = await hello(connect, key.secret, capabilities=[checks.CAPABILITY])
    assert (await receive_json(ws)) == {"type": "checks", "checks": []}  # after the hello's ack, as in one process
    results = []

    async def ask() -> None:
        results.append(await server.hub.run_command(key.host_id, "reboot", 30.0))

    nursery.start_soon(ask)
    command = await receive_json(ws)
    assert command["type"] == "command" and command["action"] == "reboot"
    await ws.send_message(json.dumps({"type": "result", "id": command["id"], "ok": True, "message": "rebooting"}))
    with trio.fail_after(10):
        while not results:
            await trio.sleep(0.01)
    assert results[0].ok and results[0].message == "rebooting"

    spec = checks.CheckSpec(id=1, host_id=key.host_id, name="web", target="https://example.com", every=60.0)
    server.hub.check_specs[key.host_id] = [spec]
    await server.hub.send_checks(key.host_id)
    frame = await receive_json(ws)
    assert frame["type"] == "checks" and [c["name"] for c in frame["checks"]] == ["web"]
    # Unanswered, a command ends as it does in one process: None after its timeout.
    assert await server.hub.run_command(key.host_id, "reboot", 0.05) is None


async def test_the_real_agent_of_a_listener_is_online_for_alerting_and_takes_speed_and_stability_tests(
        server, settings, nursery, tmp_path):
    key = add_host(settings, "box1")
    await place(server, 1)
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await agent.run_agent(agent_config(server, key.secret, tmp_path))

    nursery.start_soon(run)
    await wait_for_samples(server, settings, "box1", 2)
    assert server.hub.connections[key.host_id].where == 1
    # The alert engine is fed by the main process's commits, wherever the agent is served.
    status = server.alerting.engine.host_status(key.host_id)
    assert status.last_seen is not None and status.offline_since is None

    server.hub.speed_seconds = 0.2
    server.hub.claim_speed(key.host_id)
    down, up = await server.hub.speedtest(key.host_id)
    assert down is not None and down.bytes > 0 and up is not None and up.bytes > 0

    server.hub.claim_stability(key.host_id, 0.01)
    test = StabilityRun(StabilitySpec("box1", 0.01, 0.4), start=trio.current_time())
    progress: list[int] = []
    await server.hub.stability(key.host_id, test, lambda run, now: progress.append(run.answers), 0.1)
    # The listener's figures, on this process's clock: answered probes, an end after the start.
    assert progress and test.answers >= 20 and len(test.rtts) == 40 and test.ended > test.start
    scope.cancel()
    seqs = [r[0] for r in read_db(settings, "SELECT seq FROM samples ORDER BY rowid")]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_listener_that_dies_is_restarted_and_its_hosts_go_offline(server, settings, connect, monkeypatch):
    monkeypatch.setattr(listenerpool, "RESTART_MIN", 0.05)
    key = add_host(settings, "box1")
    pool = server.listeners
    await place(server, 1)
    await hello(connect, key.secret)
    os.kill(pool.links[1].pid, signal.SIGKILL)
    with trio.fail_after(10):
        await server.hub.wait_until(key.host_id, connected=False)
        await pool.wait_ready()
    assert pool.starts == 2
    await place(server, 1)
    ws = await hello(connect, key.secret)  # the new listener serves, and the server never stopped
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)
    assert server.hub.connections[key.host_id].where == 1


async def test_only_the_main_process_has_the_bot_and_stop_closes_the_listeners_agents_with_1012(settings, nursery,
                                                                                                 monkeypatch):
    monkeypatch.setenv("BOT_TOKEN", "123456:not-for-listeners")
    key = add_host(settings, "box1")
    running: app.Server = await nursery.start(
        lambda task_status: app.serve(settings, certificate(settings), handle_signals=False, task_status=task_status))
    environ = Path(f"/proc/{running.listeners.links[1].pid}/environ").read_bytes().split(b"\0")
    assert b"PYTHONPATH=" + str(listenerpool.PACKAGE_ROOT).encode() in environ  # it is the listener's environment
    assert not any(entry.startswith(b"BOT_TOKEN=") for entry in environ)  # so it cannot poll Telegram
    await place(running, 1)
    stream = await open_tls(running.port)
    ws = await upgrade(nursery, stream, key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)
    pid = running.listeners.links[1].pid
    await running.aclose()
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        with trio.fail_after(10):
            await ws.get_message()
    assert closed.value.reason.code == protocol.CLOSE_RESTART
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    await trio.aclose_forcefully(stream)


async def test_a_stalled_peer_stops_the_channel_taking_data():
    """Back-pressure: a main process that stops reading makes a listener's connections wait, not its memory grow."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    channel = Channel(ours, room=3)
    queued = []

    async def queue_data() -> None:
        for i in range(5):
            await channel.put_data(("snapshot", i, None))
            queued.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.send_loop)
        nursery.start_soon(queue_data)
        await trio.testing.wait_all_tasks_blocked()
        assert queued == [0, 1, 2]  # the room is taken, and nothing was read
        channel.put(("gone", 1))  # control messages never wait
        received, reader = [], Channel(theirs)
        while len(received) < 6:
            received += await reader.receive()
        nursery.cancel_scope.cancel()
    assert queued == [0, 1, 2, 3, 4]
    assert [m[1] for m in received if m[0] == "snapshot"] == [0, 1, 2, 3, 4] and ("gone", 1) in received


async def test_many_large_messages_queued_together_cross_and_a_broken_peer_is_refused():
    ours, theirs = trio.testing.memory_stream_pair()
    sender, receiver = Channel(ours), Channel(theirs)
    big = b"x" * (1 << 20)  # an agent frame's size at most: 70 of them queued at once are 70 MiB in one write
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send_loop)
        for i in range(70):
            await sender.put_data(("snapshot", i, big))
        received = []
        while len(received) < 70:
            received += await receiver.receive()
        nursery.cancel_scope.cancel()
    assert [m[1] for m in received] == list(range(70)) and all(m[2] == big for m in received)
    await ours.send_all(channel.HEADER.pack(channel.MAX_FRAME + 1))
    with pytest.raises(channel.ChannelBroken):
        await receiver.receive()


def test_the_setting():
    assert load_settings({"MBOT_DATA_DIR": "/tmp/x"}).listeners == 1  # one process, as before
    assert load_settings({"MBOT_DATA_DIR": "/tmp/x", "MBOT_LISTENERS": "3"}).listeners == 3
    for bad in ("0", "-1", "two", "17"):
        with pytest.raises(ConfigError) as error:
            load_settings({"MBOT_DATA_DIR": "/tmp/x", "MBOT_LISTENERS": bad})
        assert error.value.variable == "MBOT_LISTENERS"


async def test_one_process_by_default(tmp_path, nursery):
    settings = make_settings(tmp_path / "data")
    running: app.Server = await nursery.start(
        lambda task_status: app.serve(settings, certificate(settings), handle_signals=False, task_status=task_status))
    assert running.listeners is None and running.hub.sockets == []
    await running.aclose()


