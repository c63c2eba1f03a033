"""Hostile and broken input: each case must leave a good agent streaming."""
from __future__ import annotations

import json

import pytest
import trio
import trio_websocket

from helpers import (ack_reaching, add_host, certificate, hello_frame, open_tls, read_db, receive_json,
                     rejection_status, sample_frame)
from mbot import protocol, tls
from mbot.agents import AgentHub
from mbot.limits import AuthThrottle, FrameBucket
from mbot.store import Database
from mbot.writer import Writer


@pytest.fixture
async def good(server, settings, connect):
    """A well-behaved agent that the test checks is still streaming after the abuse."""
    key = add_host(settings, "good")
    ws = await connect(key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    seq = 0

    async def still_streaming():
        nonlocal seq
        seq += 1
        await ws.send_message(sample_frame(seq))
        await ack_reaching(ws, seq)

    await still_streaming()
    return still_streaming


async def closed_with(ws) -> int:
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        with trio.fail_after(10):
            while True:
                await ws.get_message()
    return closed.value.reason.code


async def bad_agent(settings, connect, name):
    key = add_host(settings, name)
    ws = await connect(key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    return ws


async def test_plain_http_over_tls(server, good):
    stream = await open_tls(server.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(15):
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    await trio.aclose_forcefully(stream)
    assert not answer.startswith(b"HTTP/1.1 101")
    await good()


async def test_deep_json_and_huge_samples(server, settings, connect, good):
    ws = await bad_agent(settings, connect, "deep")
    await ws.send_message('{"type": "sample", "metrics": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert await closed_with(ws) == protocol.CLOSE_INVALID
    await good()
    ws = await bad_agent(settings, connect, "wide")
    metrics = {"cpu_cores": [1] * 100_000}  # 100,000 series in 200 kB
    await ws.send_message(json.dumps({"type": "sample", "seq": 1, "ts": 1e9, "metrics": metrics}))
    assert await closed_with(ws) == protocol.CLOSE_POLICY
    await good()
    assert read_db(settings, "SELECT count(*) FROM samples JOIN hosts ON hosts.id = host_id "
                             "WHERE name IN ('deep', 'wide')") == [(0,)]


async def test_seq_going_backwards_is_stored_once(server, settings, connect, good):
    ws = await bad_agent(settings, connect, "backwards")
    for seq in (5, 6, 3, 6, 7):
        await ws.send_message(sample_frame(seq))
    frame = await ack_reaching(ws, 7)
    assert frame["seq"] == 7
    rows = read_db(settings, "SELECT seq FROM samples JOIN hosts ON hosts.id = host_id WHERE name = 'backwards' "
                             "ORDER BY samples.rowid")
    assert [r[0] for r in rows] == [5, 6, 7]
    await good()


async def test_frame_flood_is_cut_off(server, settings, connect, good):
    ws = await bad_agent(settings, connect, "flood")
    try:
        with trio.fail_after(30):
            for seq in range(1, 5001):
                await ws.send_message(sample_frame(seq))
    except trio_websocket.ConnectionClosed:
        pass  # the server may hang up before the flood is out
    assert await closed_with(ws) == protocol.CLOSE_POLICY
    await good()


async def test_result_for_a_command_never_sent(server, settings, connect, good, caplog):
    ws = await bad_agent(settings, connect, "liar")
    await ws.send_message(json.dumps({"type": "result", "id": "nope", "ok": True, "message": "rebooted"}))
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)  # logged and ignored; the connection goes on
    assert "never sent" in caplog.text
    await good()


async def test_repeated_wrong_secrets_are_slowed_down(server, good):
    for _ in range(6):
        assert await rejection_status(server.port, "guess") == 401
    started = trio.current_time()
    assert await rejection_status(server.port, "guess") == 401
    assert trio.current_time() - started >= 0.5
    await good()


async def test_silent_clients_are_dropped_at_the_handshake_deadline(settings, nursery):
    db = Database(settings.db_path)
    writer = Writer(settings.db_path)
    nursery.start_soon(writer.run)
    hub = AgentHub(db, writer, handshake_timeout=0.5)
    port = await nursery.start(hub.listen, "127.0.0.1", 0, tls.server_context(certificate(settings)))
    # One that never starts TLS, one that finishes TLS but never sends the upgrade request.
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    tls_only = await open_tls(port)
    with trio.fail_after(5):
        assert await raw.receive_some() == b""
        try:
            assert await tls_only.receive_some() == b""
        except trio.BrokenResourceError:
            pass  # closed without close_notify: as good
    await raw.aclose()
    await trio.aclose_forcefully(tls_only)
    writer.close()


def test_auth_throttle_is_bounded_and_forgets():
    throttle = AuthThrottle(free=2, window=60, max_delay=8, max_addresses=3)
    for _ in range(2):
        assert throttle.delay("a", 0) == 0
        throttle.failed("a", 0)
    delays = []
    for _ in range(8):
        delays.append(throttle.delay("a", 1))
        throttle.failed("a", 1)
    assert delays == sorted(delays) and delays[0] > 0 and delays[-1] == 8
    assert throttle.delay("a", 1000) == 0  # an old streak is forgotten
    for address in "bcde":
        throttle.failed(address, 2)
    assert len(throttle._seen) == 3
    throttle.succeeded("e")
    assert throttle.delay("e", 2) == 0


def test_frame_bucket():
    bucket = FrameBucket(rate=10, burst=5, now=0)
    assert all(bucket.take(0) for _ in range(5))
    assert not bucket.take(0)
    assert bucket.take(0.1)  # one token back after 1/rate seconds
    assert not bucket.take(0.1)
