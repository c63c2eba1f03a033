"""A connection storm converges: handshakes are bounded, the rest wait in order or are refused at once (cheaply, so
their agents back off), and connections that stall cannot keep real agents out (mbot/admission.py)."""
from __future__ import annotations

import trio
import trio.testing

from helpers import add_host, certificate, hello_frame, load_agent, open_tls, receive_json, upgrade
from mbot import admission, tls
from mbot.admission import GO, REFUSE, WAIT, HandshakeGate
from mbot.agents import HANDSHAKE_TIMEOUT, AgentHub
from mbot.store import Database
from mbot.writer import Writer

agent = load_agent()


def test_handshakes_beyond_the_slots_wait_in_order_and_a_wait_too_long_is_refused():
    gate = HandshakeGate(slots=2, max_wait=1.0, initial=0.5)
    assert gate.expected_wait() == 0.0
    assert gate.arrive("a", 0.0).verdict == GO and gate.arrive("b", 0.0).verdict == GO
    assert gate.arrive("c", 0.0).verdict == WAIT  # expected wait: 1 x 0.5 s / 2 slots
    assert gate.arrive("d", 0.0).verdict == WAIT  # 2 x 0.5 / 2 = 0.5 s
    assert gate.arrive("e", 0.0).verdict == WAIT  # 0.75 s
    assert gate.arrive("f", 0.0).verdict == WAIT  # 1.0 s: still within max_wait
    assert gate.arrive("g", 0.0).verdict == REFUSE and gate.refused == 1
    assert gate.leave("b", 0.3, completed=True) == ["c"]  # first come, first served
    assert gate.leave("g", 0.3, completed=False) == []  # refused ones never held anything
    assert gate.leave("d", 0.3, completed=False) == []  # a waiting one that gave up just leaves the line
    assert gate.leave("a", 0.4, completed=True) == ["e"]
    assert (gate.holding, gate.waiting) == (2, 1)


def test_the_wait_follows_how_long_handshakes_take_now():
    gate = HandshakeGate(slots=1, max_wait=1.0, initial=0.1)
    for i in range(30):  # handshakes slow down to 2 s each (a saturated loop)
        assert gate.arrive(i, 2.0 * i).verdict == GO
        gate.leave(i, 2.0 * i + 2.0, completed=True)
    assert 1.8 < gate.mean <= 2.0
    assert gate.arrive("x", 100.0).verdict == GO
    assert gate.arrive("y", 100.0).verdict == REFUSE  # would wait about 2 s
    # Failures and evictions say nothing about a handshake's duration.
    gate.leave("x", 200.0, completed=False)
    assert gate.mean <= 2.0


def test_one_that_waited_too_long_is_refused_then_and_leaves_the_line():
    gate = HandshakeGate(slots=1, max_wait=1.0, initial=0.05)
    assert gate.arrive("a", 0.0).verdict == GO
    assert gate.arrive("b", 0.0).verdict == WAIT and gate.arrive("c", 0.0).verdict == WAIT  # the mean says soon
    assert gate.gave_up("b") and gate.refused == 1  # but "a" takes far longer: "b" is told after max_wait
    assert gate.leave("a", 5.0, completed=True) == ["c"]
    assert not gate.gave_up("c")  # granted at the same moment: it goes ahead


def test_a_stalled_holder_loses_its_slot_only_when_someone_waits():
    gate = HandshakeGate(slots=1, max_wait=10.0, initial=0.1, hold_floor=2.0)
    assert gate.arrive("slow", 0.0).verdict == GO
    assert gate.evict_stalled(5.0).evict == []  # nobody waits: it may take its time (up to the deadline)
    assert gate.evict_at() == 2.0
    assert gate.arrive("agent", 1.0).verdict == WAIT
    assert gate.evict_stalled(1.5).evict == []  # not stalled yet
    moved = gate.evict_stalled(2.0)
    assert (moved.evict, moved.granted) == (["slow"], ["agent"]) and gate.evicted == 1
    assert gate.leave("slow", 2.1, completed=False) == []  # its task ends later: harmless


def test_a_newcomer_that_would_be_refused_evicts_stalled_holders_first():
    gate = HandshakeGate(slots=1, max_wait=0.05, initial=0.1, hold_floor=2.0)
    assert gate.arrive("slow", 0.0).verdict == GO
    decision = gate.arrive("agent", 3.0)  # 3 s behind a holder that stalled: evicted, and the agent goes at once
    assert decision.verdict == GO and decision.evict == ["slow"] and decision.granted == []


def test_the_busy_alert_is_what_the_agent_takes_for_a_busy_server():
    assert admission.BUSY_ALERT == b"\x15\x03\x03\x00\x02\x02\x5a"  # alert, TLS 1.2, fatal user_canceled


async def hub_on(settings, nursery, gate: HandshakeGate) -> tuple[AgentHub, int, Writer]:
    db = Database(settings.db_path)
    writer = Writer(settings.db_path)
    nursery.start_soon(writer.run)
    hub = AgentHub(db, writer, handshakes=gate)
    port = await nursery.start(hub.listen, "127.0.0.1", 0, tls.server_context(certificate(settings)))
    return hub, port, writer


async def stalled_client(port: int, address: str) -> trio.SocketStream:
    """The start of a TLS record and nothing more: it takes a handshake slot and never finishes."""
    sock = trio.socket.socket()
    await sock.bind((address, 0))
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(b"\x16\x03\x01")
    return stream


async def until(condition) -> None:
    """Until `condition()` holds, checked each time every task (the in-process server's too) is blocked."""
    with trio.fail_after(5):
        while not condition():
            await trio.testing.wait_all_tasks_blocked()


async def test_a_real_agent_gets_in_while_stalled_clients_hold_every_handshake_slot(settings, nursery):
    hub, port, writer = await hub_on(settings, nursery, HandshakeGate(slots=2, hold_floor=0.3))
    key = add_host(settings, "good")
    stalled = [await stalled_client(port, f"127.0.0.{2 + i}") for i in range(3)]
    await until(lambda: hub.handshakes.holding == 2 and hub.handshakes.waiting == 1)
    started = trio.current_time()
    stream = await open_tls(port)
    ws = await upgrade(nursery, stream, key.secret)
    await ws.send_message(hello_frame())
    assert (await receive_json(ws))["type"] == "ack"
    # Without eviction it would wait out the stalled ones' handshake deadline (10 s).
    assert trio.current_time() - started < HANDSHAKE_TIMEOUT / 2
    assert hub.handshakes.evicted >= 2
    for client in stalled[:2]:  # the two that held the slots were closed
        with trio.fail_after(5):
            assert await client.receive_some() == b""
    for client in stalled:
        await trio.aclose_forcefully(client)
    await trio.aclose_forcefully(stream)
    writer.close()


async def test_a_connection_that_would_wait_too_long_is_refused_cheaply_and_its_agent_backs_off(settings, nursery,
                                                                                              tmp_path):
    hub, port, writer = await hub_on(settings, nursery, HandshakeGate(slots=1, max_wait=0.0, hold_floor=60.0))
    key = add_host(settings, "good")
    stalled = await stalled_client(port, "127.0.0.2")
    await until(lambda: hub.handshakes.holding == 1)
    config = agent.AgentConfig(secret=key.secret, server="127.0.0.1", port=port,
                               fingerprint=certificate(settings).fingerprint,
                               fingerprint_file=str(tmp_path / "fp.json"))
    a = agent.Agent(config, agent.Collector(gpu=False))
    try:
        await a._open_stream()
        raise AssertionError("a server with no handshake to spare let the agent in")
    except Exception as exc:  # noqa: BLE001 - what the agent's connection loop sees, classified as it does
        assert agent.server_busy(exc) and not agent.server_gone(exc)
        # Not a restart: the agent's usual backoff, never the fast retries of a server that went away.
        reconnect = agent.Reconnect(rand=lambda: 1.0)
        assert [reconnect.failed(agent.server_gone(exc), 0.0).delay for _ in range(3)] == [1.0, 2.0, 4.0]
    assert hub.handshakes.refused == 1 and hub.handshakes.holding == 1  # no TLS state was made for it
    await trio.aclose_forcefully(stalled)
    await until(lambda: hub.handshakes.holding == 0)
    await a.check_connection()  # the slot is free again: in at once
    writer.close()
