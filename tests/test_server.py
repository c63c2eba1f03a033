"""The real server over real TLS, driven by a bare WebSocket client."""
from __future__ import annotations

import hashlib
import json

import pytest
import trio
import trio_websocket

from mbot import app, protocol
from mbot.config import Settings

from helpers import (ack_reaching, add_host, certificate, hello_frame, open_tls, read_db, receive_json,
                     rejection_status, sample_frame, upgrade)


async def test_samples_are_committed_then_acked(server: app.Server, settings: Settings, connect):
    key = add_host(settings, "box1")
    ws = await connect(key.secret)
    await ws.send_message(hello_frame(epoch=7))
    assert await receive_json(ws) == {"type": "ack", "seq": 0}
    for seq in range(1, 6):
        await ws.send_message(sample_frame(seq, cpu=seq * 10))
    await ack_reaching(ws, 5)
    # The ack promises the rows are on disk: another connection sees them.
    rows = read_db(settings, "SELECT seq FROM samples ORDER BY seq")
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    (last_seq, count, metrics), = read_db(settings, "SELECT last_seq, samples_count, last_metrics FROM hosts")
    assert (last_seq, count) == (5, 5)
    assert json.loads(metrics)["cpu"] == 50
    await ws.aclose()


async def test_dropped_samples_are_counted_for_the_user(server: app.Server, settings: Settings, connect):
    key = add_host(settings, "box1")
    ws = await connect(key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    frame = json.loads(sample_frame(9))
    frame["metrics"]["dropped"] = 7
    await ws.send_message(json.dumps(frame))
    await ack_reaching(ws, 9)
    assert read_db(settings, "SELECT dropped FROM hosts") == [(7,)]


async def test_replayed_samples_are_stored_once(server: app.Server, settings: Settings, connect):
    key = add_host(settings, "box1")
    ws = await connect(key.secret)
    await ws.send_message(hello_frame(epoch=1))
    await receive_json(ws)
    for seq in (1, 2, 3):
        await ws.send_message(sample_frame(seq))
    await ack_reaching(ws, 3)
    await ws.aclose()

    # Reconnect with the same epoch: the server says what it has, and a replay is acked but not stored twice.
    ws = await connect(key.secret)
    await ws.send_message(hello_frame(epoch=1))
    assert await receive_json(ws) == {"type": "ack", "seq": 3}
    await ws.send_message(json.dumps({"type": "samples", "samples": [
        json.loads(sample_frame(seq)) for seq in (2, 3, 4)]}))
    await ack_reaching(ws, 4)
    assert [r[0] for r in read_db(settings, "SELECT seq FROM samples ORDER BY rowid")] == [1, 2, 3, 4]

    # A new epoch (agent restarted without its spool) starts again at 1 and is not mistaken for a replay.
    await ws.aclose()
    ws = await connect(key.secret)
    await ws.send_message(hello_frame(epoch=2))
    assert await receive_json(ws) == {"type": "ack", "seq": 0}
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)
    assert read_db(settings, "SELECT count(*) FROM samples") == [(5,)]


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
async def test_wrong_or_missing_secret_gets_401(server: app.Server, settings: Settings, secret, caplog):
    key = add_host(settings, "box1")
    assert await rejection_status(server.port, secret) == 401
    assert await rejection_status(server.port, key.secret) is None
    assert "rejected agent connection" in caplog.text
    if secret:
        assert secret not in caplog.text


async def test_secret_is_stored_only_as_a_hash(settings: Settings):
    key = add_host(settings, "box1")
    dump = "\n".join(str(row) for row in read_db(settings, "SELECT * FROM hosts"))
    assert key.secret not in dump


BAD_FRAMES = [
    ("{not json", protocol.CLOSE_INVALID),
    (json.dumps({"type": "sample", "seq": "one", "ts": 1e9, "metrics": {}}), protocol.CLOSE_INVALID),
    (json.dumps({"type": "sample", "seq": 1, "ts": 1e9, "metrics": {"cpu": float("nan")}}), protocol.CLOSE_INVALID),
    (json.dumps({"type": "sample", "seq": 1, "ts": 1e9, "metrics": {"ram": {"used": -1, "total": 5}}}),
     protocol.CLOSE_INVALID),
    (json.dumps({"type": "bogus"}), protocol.CLOSE_POLICY),
    ("x" * (2 << 20), protocol.CLOSE_TOO_BIG),
]


async def test_bad_frames_close_only_their_connection(server: app.Server, settings: Settings, connect):
    good_key = add_host(settings, "good")
    good = await connect(good_key.secret)
    await good.send_message(hello_frame())
    await receive_json(good)
    seq = 0
    for i, (frame, code) in enumerate(BAD_FRAMES):
        key = add_host(settings, f"bad{i}")
        bad = await connect(key.secret)
        await bad.send_message(hello_frame())
        await receive_json(bad)
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            with trio.fail_after(10):
                await bad.send_message(frame)  # the server may hang up while a 2 MiB frame is still going out
                while True:
                    await bad.get_message()
        assert closed.value.reason.code == code, frame[:60]
        # Meanwhile the good agent streams on.
        seq += 1
        await good.send_message(sample_frame(seq))
        await ack_reaching(good, seq)


async def test_garbage_bytes_and_plain_http_do_not_disturb(server: app.Server, settings: Settings, connect):
    key = add_host(settings, "good")
    good = await connect(key.secret)
    await good.send_message(hello_frame())
    await receive_json(good)
    raw = await trio.open_tcp_stream("127.0.0.1", server.port)
    await raw.send_all(b"\x00\xffGET / HTTP/1.1\r\n\r\n" * 10)
    with trio.fail_after(10):
        while await raw.receive_some():  # the server hangs up on a failed TLS handshake
            pass
    await raw.aclose()
    await good.send_message(sample_frame(1))
    await ack_reaching(good, 1)


async def test_new_connection_replaces_old(server: app.Server, settings: Settings, connect):
    key = add_host(settings, "box1")
    first = await connect(key.secret)
    await first.send_message(hello_frame())
    await receive_json(first)
    second = await connect(key.secret)
    await second.send_message(hello_frame())
    await receive_json(second)
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        with trio.fail_after(10):
            await first.get_message()
    assert closed.value.reason.code == protocol.CLOSE_REPLACED
    await second.send_message(sample_frame(1))
    await ack_reaching(second, 1)


async def test_stop_closes_agents_with_1012_and_commits(settings: Settings, nursery: trio.Nursery):
    key = add_host(settings, "box1")
    done = trio.Event()

    async def run(task_status):
        await app.serve(settings, certificate(settings), handle_signals=False, task_status=task_status)
        done.set()

    running = await nursery.start(run)
    stream = await open_tls(running.port)
    ws = await upgrade(nursery, stream, key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)
    running.stop()
    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
        with trio.fail_after(10):
            while True:
                await ws.get_message()
    assert closed.value.reason.code == protocol.CLOSE_RESTART == 1012  # service restart: agents come back soon
    assert "reconnect in a few seconds" in closed.value.reason.reason
    await trio.aclose_forcefully(stream)
    with trio.fail_after(10):
        await done.wait()
    assert read_db(settings, "SELECT seq FROM samples") == [(1,)]


async def test_served_certificate_matches_the_fingerprint(server: app.Server):
    stream = await open_tls(server.port)
    try:
        assert hashlib.sha256(stream.getpeercert(binary_form=True)).hexdigest() == server.fingerprint
        assert stream.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        await trio.aclose_forcefully(stream)


async def test_restart_reuses_certificate(settings: Settings):
    first = certificate(settings)
    again = certificate(settings)
    assert first.fingerprint == again.fingerprint
    assert (settings.data_dir / "key.pem").stat().st_mode & 0o777 == 0o600


async def test_a_command_result_is_delivered_once_and_a_late_one_ignored(server: app.Server, settings: Settings,
                                                                          connect, nursery: trio.Nursery, caplog):
    key = add_host(settings, "box1")
    ws = await connect(key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    send_result, results = trio.open_memory_channel(2)

    async def ask(timeout: float) -> None:
        await send_result.send(await server.hub.run_command(key.host_id, "reboot", timeout))

    nursery.start_soon(ask, 30.0)
    command = await receive_json(ws)
    assert command["type"] == "command" and command["action"] == "reboot"
    answer = {"type": "result", "id": command["id"], "ok": True, "message": "reboot started"}
    await ws.send_message(json.dumps(answer))
    with trio.fail_after(10):
        result = await results.receive()
    assert result.ok and result.message == "reboot started"

    await ws.send_message(json.dumps(answer))  # answered twice: the second is logged and ignored
    nursery.start_soon(ask, 0.01)  # nobody answers this one in time
    late = await receive_json(ws)
    with trio.fail_after(10):
        assert await results.receive() is None
    await ws.send_message(json.dumps({**answer, "id": late["id"]}))  # too late: ignored too
    await ws.send_message(sample_frame(1))
    await ack_reaching(ws, 1)  # the connection goes on
    assert caplog.text.count("it was never sent; ignored") == 2
