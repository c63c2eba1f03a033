"""bench/ingest.py's simulated agents speak the agent's protocol with a hand-written WebSocket client: its frames must
be what a real WebSocket implementation (wsproto, as the server uses) reads, and it must read what one sends."""
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import wsproto
import wsproto.events as ev
from wsproto.frame_protocol import CloseReason

spec = importlib.util.spec_from_file_location("bench_ingest", Path(__file__).parent.parent / "bench" / "ingest.py")
assert spec is not None and spec.loader is not None
ingest = importlib.util.module_from_spec(spec)
sys.modules["bench_ingest"] = ingest
spec.loader.exec_module(ingest)


def server_side() -> wsproto.WSConnection:
    """A wsproto server connection past the handshake."""
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(b"GET /agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert isinstance(next(server.events()), ev.Request)
    server.send(ev.AcceptConnection())
    return server


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100_003])
def test_client_frames_are_masked_and_read_by_wsproto(size: int) -> None:
    server = server_side()
    text = ("abc\u00e9{}\"0" * (size // 8 + 1))[:size]
    data = ingest.ws_frame(ingest.OP_TEXT, text.encode(), random.Random(1))
    assert data[1] & 0x80  # masked, as RFC 6455 requires of a client
    server.receive_data(data + ingest.ws_frame(ingest.OP_PING, b"keepalive", random.Random(2)))
    got = list(server.events())
    assert isinstance(got[0], ev.TextMessage) and got[0].data == text
    assert isinstance(got[1], ev.Ping) and got[1].payload == b"keepalive"


def test_server_frames_are_parsed_whole_and_in_pieces() -> None:
    server = server_side()
    wire = (server.send(ev.Message(data='{"type":"ack","seq":3,"gather":15}'))
            + server.send(ev.Ping(payload=b"12345678")) + server.send(ev.Message(data="x" * 70_000))
            + server.send(ev.CloseConnection(code=1012, reason="restart")))
    whole = ingest.parse_frames(bytearray(wire))
    assert [(fin, op) for fin, op, _ in whole] == [(True, 0x1), (True, 0x9), (True, 0x1), (True, 0x8)]
    assert whole[1][2] == b"12345678" and len(whole[2][2]) == 70_000
    assert int.from_bytes(whole[3][2][:2], "big") == CloseReason.SERVICE_RESTART
    buffer, pieces = bytearray(), []
    for i in range(0, len(wire), 1000):  # as TLS records arrive
        buffer += wire[i:i + 1000]
        pieces += ingest.parse_frames(buffer)
    assert pieces == whole and not buffer


def test_a_masked_server_frame_is_refused() -> None:
    with pytest.raises(ValueError):
        ingest.parse_frames(bytearray(ingest.ws_frame(ingest.OP_TEXT, b"{}", random.Random(0))))


@pytest.mark.parametrize("ack, gather", [
    ({"seq": 1}, 0.0), ({"gather": 15}, 15.0), ({"gather": 0.5}, 0.5), ({"gather": 60}, 60.0),
    ({"gather": 0}, 0.0), ({"gather": -1}, 0.0), ({"gather": 61}, 0.0), ({"gather": float("nan")}, 0.0),
    ({"gather": True}, 0.0), ({"gather": "15"}, 0.0)])
def test_gather_is_read_as_the_agent_reads_it(ack: dict, gather: float) -> None:
    assert ingest.gather_of(ack) == gather


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_764_000_000.0 + self.now


class Wire:
    """The agent's side of a live connection: what it sends, frame by frame."""

    def __init__(self) -> None:
        self.state = "live"
        self.writes: list[list[dict]] = []

    def send_texts(self, *texts: str) -> None:
        self.writes.append([json.loads(t) for t in texts])


def test_gather_sends_every_sample_in_one_frame_then_the_latest_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(ingest, "time", clock)
    rng = random.Random(0)
    world = ingest.SimWorld(0, 5.0, 2, 0.0, [json.dumps(ingest.sample_metrics(rng)) for _ in range(ingest.POOL)],
                            [json.dumps(ingest.processes_items(rng)) for _ in range(ingest.POOL)])
    loop = ingest.Loop()
    agent = ingest.SimAgent(loop, world, "secret", "127.0.0.1", random.Random(1))
    wire = Wire()
    agent.conn = wire  # type: ignore[assignment]

    def advance(to: float) -> None:
        clock.now = to
        while loop.timers and loop.timers[0][0] <= to + ingest.SLACK:
            _, _, fn, args = ingest.heapq.heappop(loop.timers)
            fn(*args)

    agent.on_ack({"type": "ack", "seq": 0, "gather": 15})
    agent.next_sample = clock.now
    loop.call_at(clock.now, agent.tick)
    advance(1_000.0)
    advance(1_010.0)  # three samples taken, the oldest 10 s old: nothing sent yet
    assert wire.writes == []
    advance(1_015.0)  # the oldest is 15 s old: all of them in one frame, then one processes list (the latest)
    (frames,) = wire.writes
    assert frames[0]["type"] == "samples" and [s["seq"] for s in frames[0]["samples"]] == [1, 2, 3]
    assert [f["kind"] for f in frames[1:]] == ["processes"] and frames[1]["ts"] == clock.time() - 5
    agent.on_ack({"type": "ack", "seq": 3})  # no gather: at once again, seq 4 (taken at 1015) included
    assert [f["type"] for f in wire.writes[-1]] == ["sample"] and wire.writes[-1][0]["seq"] == 4
    advance(1_020.0)
    assert wire.writes[-1][0]["seq"] == 5 and not agent.spool.get(3)
