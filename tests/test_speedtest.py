"""The speed test (mbot/speedtest.py): throughput both ways over the agent's own connection."""
from __future__ import annotations

import json
import re
import time

import pytest
import trio
import trio_websocket

from fakebot import FakeBot
from helpers import add_host, hello_frame, load_agent, open_tls, read_db, receive_json, upgrade
from mbot import protocol
from mbot.limits import SampleBudget, SnapshotBudget
from mbot.session import AgentSession, Close, Ignore, UploadBytes
from test_bot import ALICE, buttons, say, start_server


def _session() -> AgentSession:
    session = AgentSession(now=0.0, sample_budget=lambda interval: SampleBudget(interval, since=0.0, now=0.0,
                                                                                 wall_now=0.0),
                           snapshot_budget=lambda interval: SnapshotBudget(interval))
    session.receive(hello_frame(), 0.0)
    return session


def test_binary_frames_only_during_an_upload_and_only_as_many_bytes_as_asked():
    session = _session()
    refused = session.receive(b"x" * 10, 1.0)
    assert isinstance(refused, Close) and refused.code == protocol.CLOSE_UNSUPPORTED
    session = _session()
    session.speed_started("t1", upload_bytes=100)
    assert session.receive(b"x" * 60, 1.0) == UploadBytes(60)
    over = session.receive(b"x" * 60, 1.0)
    assert isinstance(over, Close) and over.code == protocol.CLOSE_POLICY and over.limit == "speed test bytes"


def test_a_report_nobody_asked_for_is_ignored_and_one_asked_for_is_delivered():
    session = _session()
    report = json.dumps({"type": "speedtest", "id": "t1", "bytes": 5})
    assert isinstance(session.receive(report, 1.0), Ignore)
    session.speed_started("t1")
    assert session.receive(report, 1.0) == protocol.SpeedReport("t1", 5)
    session.speed_ended("t1")
    assert isinstance(session.receive(report, 1.0), Ignore)  # late


def test_the_agent_takes_only_bounded_speed_tests_from_the_server():
    agent = load_agent()
    link = agent.Link(agent.SampleBuffer(10))
    ok = agent.speedtest_request("speedtest", {"id": "t", "dir": "up", "seconds": 10, "bytes": 1 << 30})
    assert ok == agent.SpeedTestRequest("t", "up", 10.0, 1 << 30)
    for bad in ({"dir": "sideways"}, {"seconds": 1e9}, {"seconds": float("nan")}, {"seconds": True},
                {"bytes": -1}, {"bytes": 1 << 40}, {"id": ""}, {"id": "x" * 65}):
        frame = {"id": "t", "dir": "up", "seconds": 10, "bytes": 1000, **bad}
        assert isinstance(agent.speedtest_request("speedtest", frame), agent.Ignored), bad
    assert link.receive(b"\x00" * 7) == agent.Binary(7)  # counted (in a download), never parsed


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBot:
    bot = FakeBot()
    await nursery.start(bot.serve)
    return bot


async def _stream(port: int, secret: str, nursery, gaps: list[float], stop: trio.Event) -> None:
    """Another host sending a sample a second: how long each waits for its ack."""
    stream = await open_tls(port)
    try:
        ws = await upgrade(nursery, stream, secret)
        await ws.send_message(hello_frame())
        await receive_json(ws)
        seq = 0
        while not stop.is_set():
            seq += 1
            sent = trio.current_time()
            await ws.send_message(json.dumps({"type": "sample", "seq": seq, "ts": time.time(),
                                              "metrics": {"cpu": 1.0}}))
            while (await receive_json(ws))["seq"] < seq:
                pass
            gaps.append(trio.current_time() - sent)
            await trio.sleep(1.0)
    finally:
        await trio.aclose_forcefully(stream)


async def test_throughput_both_ways_while_another_agent_keeps_streaming(fake, nursery, settings, tmp_path):
    agent = load_agent()
    server = await start_server(nursery, settings, fake)
    server.hub.speed_seconds = 0.5
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    other = add_host(settings, "box2")
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.2,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"))
    gaps: list[float] = []
    stop = trio.Event()
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        agents.start_soon(_stream, server.port, other.secret, agents, gaps, stop)
        await server.hub.wait_until(1, connected=True)
        card = await say(fake, ALICE, "/status box1")
        since = len(fake.sent)
        fake.push_callback(ALICE, buttons(card)["🚀 Speed test"], max(m for (c, m) in fake.messages if c == ALICE))
        await fake.wait_for(lambda c: c.method == "sendMessage" and "download then upload" in c.params["text"],
                            since=since)
        assert "Another speed test is running" in (await say(fake, ALICE, "/speedtest box1"))["text"]
        result = await fake.wait_for(lambda c: c.method == "sendMessage" and "Upload (host -&gt; server)"
                                     in c.params["text"], since=since, timeout=30)
        text = result.params["text"]
        assert "not the internet" in text
        down = float(re.search(r"Download \(server -&gt; host\): ([\d.]+) Mbit/s", text).group(1))
        up = float(re.search(r"Upload \(host -&gt; server\): ([\d.]+) Mbit/s", text).group(1))
        assert down > 0 and up > 0
        # The result is kept as series of the host, on the sample that followed the test.
        with trio.fail_after(10):
            while not any("speed_down" in names and "speed_up" in names
                          for names, in read_db(settings, "SELECT names FROM layouts")):
                await server.writer.next_commit()
        stop.set()
        agents.cancel_scope.cancel()
    # The other host's samples were acked within its interval (1 s) all along.
    assert gaps and max(gaps) < 1.0, gaps
    await server.aclose()


async def test_an_agent_that_lies_about_what_it_received_gains_nothing(fake, nursery, settings):
    server = await start_server(nursery, settings, fake)
    server.hub.speed_seconds = 0.2
    key = add_host(settings, "box1", owner=ALICE)
    stream = await open_tls(server.port)
    ws = await upgrade(nursery, stream, key.secret)
    await ws.send_message(hello_frame(capabilities=["speedtest"]))
    await receive_json(ws)

    async def liar():
        try:
            await lie()
        except trio_websocket.ConnectionClosed:
            pass

    async def lie():
        sent = 0
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                sent += len(message)
                continue
            frame = json.loads(message)
            if frame["type"] == "speedtest_end":  # claims a terabyte
                await ws.send_message(json.dumps({"type": "speedtest", "id": frame["id"], "bytes": 10**12}))
            elif frame["type"] == "speedtest" and frame["dir"] == "up":  # sends nothing, claims a lot
                await ws.send_message(json.dumps({"type": "speedtest", "id": frame["id"], "bytes": 10**12}))

    nursery.start_soon(liar)
    await say(fake, ALICE, "/speedtest box1")
    result = await fake.wait_for(lambda c: c.method == "sendMessage" and "Upload" in c.params["text"], timeout=30)
    text = result.params["text"]
    sent_mb = float(re.search(r"Download \(server -&gt; host\): [\d.]+ Mbit/s \(([\d.]+) MB", text).group(1))
    assert sent_mb < 1e5  # what the server sent (under 1 GiB), not the terabyte claimed
    assert "Upload (host -&gt; server): no result" in text  # no bytes counted here: nothing to show
    await trio.aclose_forcefully(stream)
    await server.aclose()


async def test_an_old_agent_is_told_to_update(fake, nursery, settings):
    server = await start_server(nursery, settings, fake)
    key = add_host(settings, "box1", owner=ALICE)
    stream = await open_tls(server.port)
    ws = await upgrade(nursery, stream, key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    assert "too old for a speed test" in (await say(fake, ALICE, "/speedtest box1"))["text"]
    await trio.aclose_forcefully(stream)
    await server.aclose()
