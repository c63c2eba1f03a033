"""Link quality (mbot/linkquality.py): the server measures the round trip to each agent over its own WebSocket."""
from __future__ import annotations

import dataclasses
import json
import re
import time

import httpx
import pytest
import trio
import trio_websocket

from fakebot import FakeBot
from helpers import hello_frame, load_agent, open_tls, read_db, receive_json, upgrade
from mbot import linkquality, protocol
from mbot.linkquality import LinkPolicy, LinkProbe
from mbot.protocol import Samples
from test_bot import ALICE, buttons, say, start_server

FAST = LinkPolicy(every=0.05, spread=0.2, timeout=1.0, window=6)


# --- the pure part -----------------------------------------------------------------------------------------------


def test_stats_are_mean_rtt_mean_step_jitter_and_lost_share_in_ms_and_percent():
    stats = linkquality.stats_of([0.010, 0.012, None, 0.011])
    assert stats.rtt == pytest.approx(11.0) and stats.jitter == pytest.approx(1.5)
    assert stats.loss == 25.0 and stats.probes == 4
    assert linkquality.stats_of([None, None]).metrics() == {"loss": 100.0}  # nothing answered: no RTT to show
    assert linkquality.stats_of([]) is None


def test_a_late_pong_counts_as_lost_once_and_never_as_a_huge_rtt():
    probe = LinkProbe(LinkPolicy(every=10, spread=0, timeout=5, window=6), now=0.0, rng=lambda: 0.5)
    assert probe.next_at == 10.0  # the first probe after one period
    deadline = probe.sent(5.0)
    assert deadline == 10.0
    assert probe.overdue(10.0) == 20.0 and probe.overdue(20.0) == 30.0  # the link stays silent: two lost
    assert probe.answered(5.0, 25.0) == -1.0  # 20 s late: already counted, not an RTT
    assert probe.stats().metrics() == {"loss": 100.0}
    probe.sent(35.0)
    assert probe.answered(35.0, 35.004) == pytest.approx(0.004)
    assert probe.stats().loss == pytest.approx(100 * 2 / 3) and probe.stats().rtt == pytest.approx(4.0)
    assert probe.next_at == pytest.approx(45.004)
    probe.skip(45.004)  # a speed test fills the connection: no probe, nothing counted
    assert probe.next_at == pytest.approx(55.004) and probe.stats().probes == 3


def _samples(*seqs: int) -> Samples:
    metrics = protocol.validate_metrics({"cpu": 1.0})
    return Samples(tuple(protocol.Sample(seq, 1.7e9 + seq, metrics, protocol.flatten(metrics)) for seq in seqs))


def test_fold_adds_the_figures_to_the_newest_sample_of_live_frames_only():
    probe = LinkProbe(FAST, now=0.0)
    assert probe.fold(_samples(1)) == _samples(1)  # no probe yet: nothing to add
    probe.sent(0.0)
    probe.answered(0.0, 0.002)
    live = probe.fold(_samples(1, 2))
    assert "link" not in live.items[0].metrics
    assert live.items[1].metrics["link"] == {"loss": 0.0, "rtt": 2.0, "jitter": 0.0}
    assert live.items[1].series["rtt"] == 2.0 and live.items[1].series["loss"] == 0.0
    replay = _samples(*range(1, 500))
    assert probe.fold(replay) == replay  # a replay is old: today's round trip does not belong to its rows


def test_an_agent_cannot_send_link_figures_of_its_own():
    metrics = protocol.validate_metrics({"cpu": 1.0, "link": {"rtt": -5.0, "loss": 1e9}})
    assert "link" not in metrics and "rtt" not in protocol.flatten(metrics)


def test_plot_words_for_the_link():
    from mbot import plotspec

    flat = {**protocol.flatten(protocol.validate_metrics({"cpu": 1.0})),
            **protocol.flatten({"link": {"rtt": 1.0, "jitter": 0.5, "loss": 0.0}})}
    link = plotspec.resolve_metrics(["link"], flat)
    assert [c.series for c in link] == ["rtt", "jitter", "loss"] and {c.unit for c in link} == {"ms", "%"}
    assert [c.series for c in plotspec.resolve_metrics(["ping"], flat)] == ["rtt"]


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBot:
    bot = FakeBot()
    await nursery.start(bot.serve)
    return bot


async def link_metrics(server, settings, name: str, want) -> dict:
    """Until the host's latest stored sample carries link figures that `want` accepts (woken by commits)."""
    with trio.fail_after(20):
        while True:
            rows = read_db(settings, "SELECT last_metrics FROM hosts WHERE name = ?", name)
            link = json.loads(rows[0][0] or "{}").get("link") if rows else None
            if link and want(link):
                return link
            await server.writer.next_commit()


async def test_rtt_reaches_card_plot_alerts_and_metrics_with_the_real_agent(fake, nursery, settings, tmp_path):
    agent = load_agent()
    server = await start_server(nursery, settings, fake, metrics_port=0)
    server.hub.link_policy = FAST
    secret = re.search(r"AGENT_SECRET=(\S+)", (await say(fake, ALICE, "/newkey box1"))["text"]).group(1)
    assert "rtt &gt; 1000 ms for 5 min" in (await say(fake, ALICE, "/setalert box1 rtt 1s 5m"))["text"]
    assert "loss &gt; 5 %" in (await say(fake, ALICE, "/setalert box1 loss 5"))["text"]
    assert "200, 200ms or 1s" in (await say(fake, ALICE, "/setalert box1 jitter 5%"))["text"]
    assert "rtt &gt; 0 ms" in (await say(fake, ALICE, "/setalert box1 rtt 0"))["text"]  # replaces the rule above
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=server.port, interval=0.1,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"))
    async with trio.open_nursery() as agents:
        agents.start_soon(agent.run_agent, config)
        link = await link_metrics(server, settings, "box1", lambda link: link.get("rtt") is not None)
        # Loopback: well under a second, never negative; nothing lost.
        assert 0 < link["rtt"] < 1000 and link["jitter"] >= 0 and link["loss"] == 0
        fired = await fake.wait_for(lambda c: c.method in ("sendMessage", "sendPhoto")
                                    and "box1: round trip to the server" in c.shown, timeout=10)
        assert " ms (threshold 0 ms)" in fired.shown
        card = await say(fake, ALICE, "/status box1")
        assert re.search(r"Link to server: RTT [\d.]+ ms · jitter [\d.]+ ms · loss 0 %", card["text"])
        chart = await say(fake, ALICE, "/plot box1 rtt 1h", method="sendPhoto")
        assert "round trip" in chart["caption"] or "RTT" in chart["caption"]
        assert buttons(card)["📈 Link"].endswith(":1h:-:link")  # the chart of all three
        async with httpx.AsyncClient() as client:
            scraped = (await client.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text
        assert re.search(r'mbot_host_link_rtt_seconds\{host="box1",key="[0-9a-f]+"\} 0\.\d+', scraped)
        assert re.search(r'mbot_host_link_loss_ratio\{host="box1",key="[0-9a-f]+"\} 0\n', scraped)
        agents.cancel_scope.cancel()
    await server.aclose()


class _Hostile:
    """A bare client whose WebSocket library does something odd with the server's pings."""

    def __init__(self, monkeypatch, behaviour):
        original = trio_websocket.WebSocketConnection._handle_ping_event

        async def handle(ws, event):
            if not ws.is_client:
                return await original(ws, event)
            return await behaviour(ws, event)

        monkeypatch.setattr(trio_websocket.WebSocketConnection, "_handle_ping_event", handle)


async def _stream(ws, settings, server, want) -> dict:
    await ws.send_message(hello_frame(interval=0.05))
    await receive_json(ws)
    seq = 0

    async def send():
        nonlocal seq
        while True:
            seq += 1
            await ws.send_message(json.dumps({"type": "sample", "seq": seq, "ts": time.time(),
                                              "metrics": {"cpu": 1.0}}))
            await trio.sleep(0.05)

    async def drain():
        # Read the acks as an agent does: trio-websocket queues one message, and a reader stuck behind an unread
        # ack reads no more pings either (which made this test's RTT depend on whether an ack or a ping came first).
        while True:
            await ws.get_message()

    async with trio.open_nursery() as sender:
        sender.start_soon(send)
        sender.start_soon(drain)
        link = await link_metrics(server, settings, "box1", want)
        sender.cancel_scope.cancel()
    return link


async def test_an_agent_that_never_answers_pings_reads_as_loss_and_keeps_streaming(server, settings, nursery,
                                                                                     monkeypatch):
    from helpers import add_host

    async def silent(ws, event):
        return None

    _Hostile(monkeypatch, silent)
    server.hub.link_policy = dataclasses.replace(FAST, timeout=0.05)
    key = add_host(settings, "box1")
    stream = await open_tls(server.port)
    ws = await upgrade(nursery, stream, key.secret)
    link = await _stream(ws, settings, server, lambda link: link["loss"] == 100.0)
    assert link == {"loss": 100.0}  # no RTT made up, and samples kept flowing meanwhile
    connection = server.hub.connections[next(iter(server.hub.connections))]
    assert len(connection.ws._pings) <= 1  # one ping in flight at most, however long it stays silent
    await trio.aclose_forcefully(stream)


async def test_forged_and_early_pongs_cannot_make_an_rtt_negative_or_absurd(server, settings, nursery, monkeypatch):
    from helpers import add_host

    async def forger(ws, event):
        # Pongs nobody asked for, with payloads of its choosing, then the real one after a short delay.
        for payload in (b"", b"\x00" * 8, event.payload[::-1], b"x" * 125):
            await ws.pong(payload)
        await trio.sleep(0.01)
        await ws._send(event.response())

    _Hostile(monkeypatch, forger)
    server.hub.link_policy = FAST
    key = add_host(settings, "box1")
    stream = await open_tls(server.port)
    try:
        ws = await upgrade(nursery, stream, key.secret)
        link = await _stream(ws, settings, server, lambda link: "rtt" in link)
    finally:  # also when it fails: a socket left to the garbage collector fails whichever test runs then
        await trio.aclose_forcefully(stream)
    # Each RTT includes the forger's own 10 ms delay: the forged pongs before it woke nothing early.
    assert 10.0 <= link["rtt"] < 1000.0 and 0 <= link["loss"] <= 100


def test_probes_of_a_crowded_server_are_spread_to_its_probe_rate():
    # 5,000 agents at 200 probes/s: one probe per connection every 25 s, not 10 (500 pings a second).
    policy = LinkPolicy(every=10, spread=0, timeout=5, window=6, rate=200)
    assert LinkProbe(policy, now=0.0, rng=lambda: 0.5, connections=lambda: 5000).next_at == 25.0
    assert LinkProbe(policy, now=0.0, rng=lambda: 0.5, connections=lambda: 100).next_at == 10.0
