"""Acks paced by the server's ack rate (mbot.session.AckPolicy), seen from the agents' side: an agent of any version
is acked later but for everything, the real agent never resends what is merely unacked, and a connection cut while
samples wait for their ack loses nothing and stores nothing twice."""
from __future__ import annotations

import json

import trio

from mbot.session import AckPolicy

from helpers import (add_host, hello_frame, load_agent, open_raw_ws, read_db, receive_json, sample_frame,
                     start_agent_object, wait_for_samples)
from tcpproxy import TcpProxy

agent = load_agent()


async def test_a_bare_client_is_acked_once_per_period_for_everything(server, settings, nursery):
    # What any agent (an old one too) sees: the same ack frames, fewer of them; nothing on the wire is new.
    server.hub.ack_policy = AckPolicy(rate=1.0, max_wait=0.5)  # one connection: an ack every 0.5 s at most
    key = add_host(settings, "box1")
    ws = await open_raw_ws(nursery, server.port, key.secret)
    await ws.send_message(hello_frame())
    assert await receive_json(ws) == {"type": "ack", "seq": 0}
    started = trio.current_time()
    for seq in range(1, 6):
        await ws.send_message(sample_frame(seq))
    acks = []
    while not acks or acks[-1][1] < 5:
        frame = await receive_json(ws)
        if frame["type"] == "ack":
            acks.append((trio.current_time() - started, frame["seq"]))
    assert len(acks) <= 2  # the first at once, then one for the rest
    if len(acks) == 2:
        assert acks[1][0] - acks[0][0] >= 0.4
    assert [r[0] for r in read_db(settings, "SELECT seq FROM samples ORDER BY seq")] == [1, 2, 3, 4, 5]
    await ws.aclose()


async def test_a_lone_agent_is_acked_once_per_three_of_its_intervals(server, settings, nursery):
    # The default policy: an agent reads an ack per three samples, not one per sample (its own CPU, issue 14).
    server.hub.ack_policy = AckPolicy()
    key = add_host(settings, "box1")
    ws = await open_raw_ws(nursery, server.port, key.secret)
    await ws.send_message(hello_frame(interval=0.1))
    assert await receive_json(ws) == {"type": "ack", "seq": 0}
    acks: list[tuple[float, int]] = []

    async def send_samples() -> None:
        for seq in range(1, 9):  # at the interval the hello announced
            await ws.send_message(sample_frame(seq))
            await trio.sleep(0.1)

    async with trio.open_nursery() as inner:
        inner.start_soon(send_samples)
        with trio.fail_after(5):
            while not acks or acks[-1][1] < 8:
                frame = await receive_json(ws)
                acks.append((trio.current_time(), frame["seq"]))
    assert 2 <= len(acks) <= 4  # 8 samples 0.1 s apart: the first ack at once, then one per 0.3 s at most
    assert all(b[0] - a[0] >= 0.275 for a, b in zip(acks, acks[1:]))
    await ws.aclose()


def test_the_agent_does_not_resend_what_is_only_unacked():
    link = agent.Link(agent.SampleBuffer(100))
    link.receive(json.dumps({"type": "ack", "seq": 0}))  # the hello's
    for seq in (1, 2):
        link.buffer.append(seq, agent.encode_sample(seq, 1.7e9 + seq, {"cpu": 1.0}))
    sent = [last for _, last in link.frames()]
    for last in sent:
        link.sent(last)
    assert sent == [2]
    link.buffer.append(3, agent.encode_sample(3, 1.7e9 + 3, {"cpu": 1.0}))
    assert [last for _, last in link.frames()] == [3]  # only the new one, though 1 and 2 wait for their ack
    assert len(link.buffer) == 3
    link.receive(json.dumps({"type": "ack", "seq": 3}))  # one late ack frees them all
    assert len(link.buffer) == 0


async def test_a_cut_with_unacked_samples_loses_nothing_and_stores_nothing_twice(server, settings, nursery,
                                                                                tmp_path):
    server.hub.ack_policy = AckPolicy(rate=0.001, max_wait=3600.0)  # after the first, no ack on this connection
    key = add_host(settings, "box1")
    proxy = TcpProxy(server.port)
    port = await nursery.start(proxy.run)
    config = agent.AgentConfig(secret=key.secret, server="127.0.0.1", port=port, interval=0.05,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"),
                               backoff_min=0.05, backoff_max=0.1, quick_reconnect=(0.05, 0.1),
                               fast_retry=(0.05, 0.1))
    a = agent.Agent(config, agent.Collector(gpu=False))
    scope = await start_agent_object(nursery, a)
    await wait_for_samples(server, settings, "box1", 8)
    assert len(a.buffer) >= 6  # committed, waiting for an ack that does not come yet
    proxy.cut()  # no close frame, no last ack: the next hello's ack says what the server has
    with trio.fail_after(20):
        while server.hub.connections.get(key.host_id) is None or len(a.buffer) > 3:
            await trio.sleep(0.05)
    scope.cancel()
    seqs = [r[0] for r in read_db(settings, "SELECT seq FROM samples ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))  # every seq once: nothing lost, nothing twice
    assert len(seqs) >= 8
