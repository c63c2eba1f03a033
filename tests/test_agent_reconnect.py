"""Reconnecting after a server restart (issue 13): the pure policy (agent.Reconnect, agent.server_gone), the
agent's connection loop under trio's autojump clock, and the real agent against the real server stopped and
started again on the same port and data directory."""
from __future__ import annotations

import collections
import dataclasses
import logging
import random
import re
import socket

import pytest
import trio
import trio_websocket

from helpers import add_host, certificate, load_agent, read_db, wait_for_samples
from mbot import app, protocol
from test_agent_trust import unit_agent

agent = load_agent()

STABLE = 3600.0  # a connection that was up an hour


def always(value):
    return lambda: value


# --- the policy, without IO ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [protocol.CLOSE_RESTART, 1001])
def test_restart_close_comes_back_within_seconds_then_refusals_are_retried_fast_for_a_minute(code):
    longest = agent.Reconnect(rand=always(1.0))
    assert longest.closed(code, STABLE, now=100.0) == agent.Retry(3.0, expected=True)
    assert agent.Reconnect(rand=always(0.0)).closed(code, STABLE, now=100.0) == agent.Retry(0.5, expected=True)
    # The server is still starting: refused (or reset) is retried every 1-2 s for a minute after the close ...
    for now in (103.0, 120.0, 159.9):
        assert longest.failed(gone=True, now=now) == agent.Retry(2.0, expected=True)
    # ... then the usual exponential backoff, from its second step (the quick wait was its first).
    assert [longest.failed(gone=True, now=161.0 + i).delay for i in range(7)] == [2, 4, 8, 16, 32, 60, 60]


def test_a_server_gone_without_a_close_frame_is_retried_quickly_but_not_as_announced():
    policy = agent.Reconnect(rand=always(1.0))
    assert policy.closed(1006, STABLE, now=0.0) == agent.Retry(3.0, expected=False)  # killed, crashed: a warning
    assert policy.failed(gone=True, now=5.0) == agent.Retry(2.0, expected=False)
    dropped = agent.Reconnect(rand=always(0.0))
    assert dropped.closed(None, STABLE, now=0.0).delay == 0.5  # the agent dropped it (no answer to a ping)


def test_only_a_server_that_is_not_there_is_retried_fast():
    policy = agent.Reconnect(rand=always(1.0))
    policy.closed(protocol.CLOSE_RESTART, STABLE, now=0.0)
    # A name that does not resolve, a timeout, an HTTP refusal: backoff, even within the minute.
    assert [policy.failed(gone=False, now=1.0 + i).delay for i in range(3)] == [2, 4, 8]
    assert policy.failed(gone=True, now=10.0).delay == 2.0


@pytest.mark.parametrize("code", [protocol.CLOSE_POLICY, protocol.CLOSE_INVALID, protocol.CLOSE_TOO_BIG,
                                  1011, protocol.CLOSE_REPLACED, 1000])
def test_closes_that_do_not_say_restart_back_off_as_before(code):
    policy = agent.Reconnect(rand=always(1.0))
    assert policy.closed(code, STABLE, now=0.0) == agent.Retry(1.0, expected=False)  # backoff, a fresh run
    assert policy.failed(gone=True, now=2.0).delay == 2.0  # no fast window: the server is there, and said no
    assert policy.closed(code, 0.5, now=10.0).delay == 4.0  # a host kept over a limit backs off further
    assert policy.closed(code, 0.5, now=20.0).delay == 8.0


def test_a_server_that_keeps_closing_at_once_with_1012_gets_the_backoff():
    policy = agent.Reconnect(rand=always(1.0), stable_after=30.0)
    assert policy.closed(protocol.CLOSE_RESTART, STABLE, now=0.0).delay == 3.0
    # Connections that do not stay up 30 s: whatever the close says, the waits grow.
    delays = [policy.closed(protocol.CLOSE_RESTART, 1.0, now=100.0 * i).delay for i in range(1, 7)]
    assert delays == [2, 4, 8, 16, 32, 60]
    assert policy.failed(gone=True, now=700.0).delay == 60.0  # and its minute of fast retries has long passed


def test_hundreds_of_agents_do_not_come_back_in_the_same_instant():
    rng = random.Random(13)
    delays = [agent.Reconnect(rand=rng.random).closed(protocol.CLOSE_RESTART, STABLE, now=0.0).delay
              for _ in range(300)]
    assert 0.5 <= min(delays) and max(delays) <= 3.0
    per_10ms = collections.Counter(int(d * 100) for d in delays)
    assert max(per_10ms.values()) <= 12  # at most 4 % in any 10 ms: the old fixed 1.0 s put all 300 in one
    # and the fast retries while the server is still down are spread too
    retries = [agent.Reconnect(rand=rng.random, fast=(1.0, 2.0)) for _ in range(300)]
    for policy in retries:
        policy.closed(protocol.CLOSE_RESTART, STABLE, now=0.0)
    per_10ms = collections.Counter(int(p.failed(True, now=1.0).delay * 100) for p in retries)
    assert max(per_10ms.values()) <= 12


def _raised(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as caught:
        return caught


def test_server_gone_tells_a_restarting_server_from_other_failures():
    import ssl

    refused = ConnectionRefusedError(111, "Connection refused")
    # trio: OSError("all attempts to connect ... failed") from a group of the attempts' errors
    assert agent.server_gone(_raised(OSError("all attempts failed"), ExceptionGroup("x", [refused])))
    assert agent.server_gone(_raised(trio.BrokenResourceError(), ssl.SSLEOFError(8, "EOF")))  # cut in the handshake
    assert agent.server_gone(_raised(trio.BrokenResourceError(), ConnectionResetError(104, "reset")))
    assert not agent.server_gone(socket.gaierror(-2, "Name or service not known"))
    assert not agent.server_gone(OSError(113, "No route to host"))
    assert not agent.server_gone(trio.TooSlowError())
    assert not agent.server_gone(trio_websocket.ConnectionRejected(503, (), None))
    assert not agent.server_gone(_raised(trio.BrokenResourceError(), ssl.SSLCertVerificationError("bad cert")))


async def test_server_gone_on_real_sockets():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError) as refused:
        await trio.open_tcp_stream("127.0.0.1", port)
    assert agent.server_gone(refused.value)

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    a = unit_agent_for(port=listener.socket.getsockname()[1])

    async def hang_up(stream):
        await stream.aclose()  # what a server stopping in the middle of a handshake does

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hang_up, [listener])
        with pytest.raises(trio.BrokenResourceError) as cut:
            await a._open_stream()
        nursery.cancel_scope.cancel()
    assert agent.server_gone(cut.value)


def unit_agent_for(port: int) -> "agent.Agent":
    config = agent.AgentConfig(secret="s", server="127.0.0.1", port=port, fingerprint="ab" * 32)
    return agent.Agent(config, StubCollectorForUnits())


class StubCollectorForUnits:
    def collect(self):
        return {"cpu": 1.0}

    def host_facts(self):
        return {"hostname": "box1"}

    def close(self):
        pass


# --- the connection loop (autojump clock) ----------------------------------------------------------------------


def refused() -> OSError:
    return _raised(OSError("all attempts to connect to 10.0.0.5:8000 failed"),
                   ExceptionGroup("x", [ConnectionRefusedError(111, "Connection refused")]))


async def run_script(a, script):
    """Run the agent's connection loop against `script` (one outcome per attempt: an Ended to return, an exception
    to raise); returns (exit status, trio times of the attempts)."""
    attempts = []
    outcomes = iter(script)

    async def fake_connect():
        attempts.append(trio.current_time())
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    a._connect_and_serve = fake_connect
    status = await a.run()
    return status, attempts


def gaps(times):
    return [round(b - a, 6) for a, b in zip(times, times[1:])]


async def test_agent_after_a_restart_close_is_back_within_seconds(tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    a = unit_agent(tmp_path)
    restart = agent.Ended(STABLE, protocol.CLOSE_RESTART, "disconnected from 10.0.0.5:8000: code 1012", logging.INFO)
    # an hour up, the server restarts (1012), is refused for 20 attempts, is back for an hour, then revokes the key
    script = [restart] + [refused() for _ in range(20)] + [agent.AgentStop("revoked")]
    status, times = await run_script(a, script)
    assert status == 1
    assert 0.5 <= gaps(times)[0] <= 3.0
    assert all(1.0 <= g <= 2.0 for g in gaps(times)[1:])  # not 1, 2, 4, 8, 16, 32, 60 s
    # thinned as before (1st, 2nd, 4th, 8th, 16th), and at INFO: the server said it was restarting
    lines = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(lines) == 5 and all(r.levelno == logging.INFO for r in lines)
    assert "more since the previous line, not logged" in lines[-1].getMessage()


async def test_agent_over_a_limit_still_backs_off_and_a_revoked_key_still_stops(tmp_path, autojump_clock):
    a = unit_agent(tmp_path)
    a.reconnect.rand = always(1.0)
    over = agent.Ended(STABLE, protocol.CLOSE_POLICY, "code 1008", logging.WARNING)
    again = agent.Ended(0.5, protocol.CLOSE_POLICY, "code 1008", logging.WARNING)
    status, times = await run_script(a, [over, again, again, refused(), refused(), agent.AgentStop("revoked")])
    assert status == 1 and gaps(times) == [1.0, 2.0, 4.0, 8.0, 16.0]


async def test_agent_that_gets_a_401_after_a_restart_stops(tmp_path, autojump_clock):
    a = unit_agent(tmp_path)
    restart = agent.Ended(STABLE, protocol.CLOSE_RESTART, "code 1012", logging.INFO)
    status, times = await run_script(a, [restart, refused(), trio_websocket.ConnectionRejected(401, (), None)])
    assert status == 1 and len(times) == 3  # a new server that does not know the key: stop, as before


# --- the real agent, the real server stopped and started again -------------------------------------------------


class Seen(logging.Handler):
    """Sets an event when the agent logs a line containing `text` (the agent logs in the trio thread)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.event = text, trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_real_agent_is_back_fast_after_the_server_restarts(settings, nursery, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="mbot.agent")
    key = add_host(settings, "box1")
    cert = certificate(settings)
    first = await nursery.start(lambda task_status: app.serve(settings, cert, handle_signals=False,
                                                              task_status=task_status))
    # Short restart waits so the test is quick; a backoff of 5 s would show in the log as "retrying in 5.0 s".
    config = agent.AgentConfig(secret=key.secret, server="127.0.0.1", port=first.port, interval=0.1,
                               fingerprint=first.fingerprint, fingerprint_file=str(tmp_path / "fp.json"),
                               backoff_min=5.0, backoff_max=60.0, stable_after=0.2,
                               quick_reconnect=(0.05, 0.1), fast_retry=(0.05, 0.1))
    scope = trio.CancelScope()

    async def run():
        with scope:
            await agent.run_agent(config)

    nursery.start_soon(run)
    await wait_for_samples(first, settings, "box1", 4)  # up longer than stable_after
    refused_seen = Seen("cannot connect to")
    logging.getLogger("mbot.agent").addHandler(refused_seen)
    try:
        await first.aclose()  # closes the agent with 1012
        with trio.fail_after(30):
            await refused_seen.event.wait()  # the agent found nothing listening: the server is "restarting"
    finally:
        logging.getLogger("mbot.agent").removeHandler(refused_seen)
    stored = read_db(settings, "SELECT samples_count FROM hosts")[0][0]
    again = dataclasses.replace(settings, port=first.port)  # same port, same data directory
    second = await nursery.start(lambda task_status: app.serve(again, cert, handle_signals=False,
                                                               task_status=task_status))
    await wait_for_samples(second, settings, "box1", stored + 2)
    scope.cancel()
    await second.aclose()

    messages = [r.getMessage() for r in caplog.records if r.name == "mbot.agent"]
    closed_at = next(i for i, m in enumerate(messages) if "code 1012" in m)
    assert "reconnect in a few seconds" in messages[closed_at]  # the server's hint, in the agent's log
    delays = [float(d) for m in messages[closed_at:] for d in re.findall(r"retrying in ([\d.]+) s", m)]
    assert len(delays) >= 2 and max(delays) <= 0.1  # the quick wait, then fast retries; never the 5 s backoff
    assert any(m.startswith("connected to") for m in messages[closed_at:])
    # nothing lost, nothing twice: the samples collected while the server was away were replayed
    seqs = [r[0] for r in read_db(settings, "SELECT seq FROM samples ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_stopping_server_takes_no_new_agents(server):
    await server.hub.close_all(protocol.CLOSE_RESTART, "restarting")  # what stop() does first
    with pytest.raises(trio.BrokenResourceError) as cut:  # not a connection to a server about to vanish
        await unit_agent_for(server.port)._open_stream()
    assert agent.server_gone(cut.value)  # which the agent retries fast
