"""The agent endpoint: TLS listener, handshake authentication, one task per agent connection.

The listener is trio's own (serve_listeners over SSL listeners) with trio-websocket wrapping each stream, rather than
trio_websocket.serve_websocket, so that each connection is isolated: a peer that breaks TLS or HTTP in some new way
ends its own task with a log line and never the server; and the 10 s handshake deadline covers TLS as well.

Before authentication a connection holds a place in the PreAuthGate (bounded per address and in all, the oldest
evicted first), so idle or silent sockets cannot take the file descriptors real agents need. After it, the host's
SampleBudget bounds what it may send, and the writer bounds the new series names it may introduce; a host over a
limit is closed with 1008 and its owner is told once. Strings an agent chose are logged with repr() escaping, and a
flapping host's connects and disconnects are summarised, so neither can forge or flood the log.

With MBOT_LISTENERS > 1 the same code serves agents in listener processes too (mbot/listener.py): a connection's
frames go to an IngestSink (the writer here, the channel to the main process there), and the hub's adopt() and
forget() keep the registry of live connections, which in the main process also holds the listeners'.

The port also answers two plain HTTPS GETs, /install and /agent.py (the one-line install, mbot/install.py): the first
request's head is read here (bounded like the handshake) and either answered or replayed to trio-websocket.
"""
from __future__ import annotations

import contextlib
import logging
import math
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, wrap_server_stream

from . import admission, install, limits, protocol, store
from .listening import AcceptGate, serve_sockets, serve_tcp
from .i18n import _
from .model import secret_hash
from .admission import HandshakeGate
from .limits import AuthThrottle, LogSummary, PreAuthGate, SampleBudget, SnapshotBudget
from .linkquality import LinkPolicy
from .stability import PROBE_TIMEOUT as STABILITY_TIMEOUT, StabilityBudget, StabilityRun
from .protocol import Hello, Result, Snapshot, SpeedReport
from .session import AckPolicy, Action, AgentSession, Close, GatherPolicy, Ignore, StoreSamples, UploadBytes
from .speedtest import Throughput
from . import checks, speedtest
from .checks import CheckSpec
from .store import Database
from .writer import LimitExceeded

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
# Closing an agent for what it sent: how long to wait for its close reply. Meanwhile the frames it still sends are
# read and dropped (a lingering close): closing the socket under a peer that is still sending makes TCP reset the
# connection, which throws away the error frame and the close code before the agent has read them.
CLOSE_LINGER = 10.0
AGENT_PATH = "/agent"
DUPLICATE_WINDOW = 60.0  # a second replacement within this long means two agents share a key
LIMIT_NOTICE_EVERY = 86400.0  # an owner hears about the same limit of the same host at most once a day

# Told (in the trio thread) when a host goes over a limit: (host, limit name, what happened). The app turns it into
# one chat message to the owner.
LimitNotice = Callable[[store.Host, str, str], None]


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    """(address, address:port) of the peer."""
    try:
        addr = stream.socket.getpeername()
        return addr[0], f"{addr[0]}:{addr[1]}"
    except (OSError, AttributeError):
        return "?", "?"


def _address(peer: str) -> str:
    return peer.rpartition(":")[0] or peer


def _bearer(request: WebSocketRequest) -> str | None:
    for name, value in request.headers:
        if name.lower() == b"authorization":
            scheme, _sep, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class IngestSink(Protocol):
    """Where a connection's checked frames go: the Writer itself in the process that owns it, the channel to that
    process in a listener process (mbot/listener.py). The same calls and the same promise: on_commit(seq) only after
    the commit, so acks never precede commits in either."""

    async def hello(self, host_id: int, hello: Hello) -> int: ...

    async def samples(self, host_id: int, epoch: int, samples: protocol.Samples, on_commit: Callable[[int], None],
                      on_error: Callable[[BaseException], None] | None = None) -> None: ...

    async def snapshot(self, host_id: int, snapshot: Snapshot) -> None: ...


class Connection(Protocol):
    """A live agent as the hub, the bot and the control socket see it: an AgentConnection in this process, or a
    listenerpool.RemoteConnection served by a listener process (`where`: 0 here, else the listener's number)."""

    host: store.Host
    peer: str
    where: int

    @property
    def hello(self) -> Hello | None: ...

    async def close(self, code: int, reason: str) -> None: ...

    async def send_checks(self) -> None: ...

    async def run_command(self, action: str, timeout: float) -> Result | None: ...

    async def stability(self, run: StabilityRun, progress: Callable[[StabilityRun, float], None],
                        progress_every: float) -> None: ...

    async def speedtest(self, seconds: float, max_bytes: int) -> tuple[Throughput | None, Throughput | None]: ...


@dataclass
class _Awaited:
    done: trio.Event = field(default_factory=trio.Event)
    result: Result | None = None


@dataclass
class _AwaitedSpeed:
    done: trio.Event = field(default_factory=trio.Event)
    report: SpeedReport | None = None
    at: float = 0.0  # when it came (trio clock)


class AgentConnection:
    """One authenticated agent: the driver of its AgentSession (mbot/session.py), which decides; this class reads
    frames, performs what the session says (writer, socket, logs) and sends the coalesced acks after commits."""

    where = 0  # served by this process

    def __init__(self, host: store.Host, ws: WebSocketConnection, peer: str, writer: IngestSink,
                 hub: AgentHub) -> None:
        self.host = host
        self.ws = ws
        self.peer = peer
        self._writer = writer
        self._hub = hub
        self.session = AgentSession(now=trio.current_time(),
                                    sample_budget=lambda interval: hub.budget(host, interval),
                                    snapshot_budget=lambda interval: hub.snapshot_budget(host, interval),
                                    link=hub.link_policy, acks=hub.ack_policy, gather=hub.gather_policy,
                                    connections=hub.connection_count)
        self._ack_wanted = trio.Event()
        self._pong = trio.Event()  # set (and replaced) when a link probe's pong came
        self._stability_settled = trio.Event()  # set (and replaced) when a stability probe is answered or lost
        self._speed_awaiting: dict[str, _AwaitedSpeed] = {}
        self._uploaded = 0  # bytes of the speed test's upload under way, counted here
        self._uploaded_at = 0.0  # when its last frame came
        self._awaiting: dict[str, _Awaited] = {}
        self._closing = False
        self._closed = trio.Event()
        self._receiving = trio.CancelScope()
        self._store_failure: Close | None = None  # the writer refused a frame of ours (a limit, a poison)

    @property
    def hello(self) -> Hello | None:
        return self.session.hello

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_acks)
            nursery.start_soon(self._probe_link, nursery)
            with self._receiving:
                await self._receive()
            if self._store_failure is not None:
                await self._close_for(self._store_failure)
            nursery.cancel_scope.cancel()

    async def _receive(self) -> None:
        """Frames -> session -> actions, until the session says Close or the socket closes (with a log line)."""
        try:
            while True:
                deadline, timed_out = self.session.hello_deadline, False
                if deadline == math.inf:  # no cancel scope per frame once the hello is in
                    message = await self.ws.get_message()
                else:
                    with trio.move_on_at(deadline) as waiting:
                        message = await self.ws.get_message()
                    timed_out = waiting.cancelled_caught
                now = trio.current_time()
                action = self.session.timeout(now) if timed_out else self.session.receive(message, now)
                if action is not None and not await self._perform(action):
                    return
        except ConnectionClosed as exc:
            reason = exc.reason
            said = getattr(reason, "reason", None)
            self._hub.log(self.host.id, logging.INFO, "agent %s (%s) disconnected (code %s%s)", self.host.name,
                          self.peer, getattr(reason, "code", "?"), f", {said!r}" if said else "")

    async def _perform(self, action: Action) -> bool:
        """Do what the session said; False when the connection is over."""
        if isinstance(action, StoreSamples):
            if action.wait:
                await trio.sleep(action.wait)  # a fast replay: read on more slowly rather than refuse it
            await self._writer.samples(self.host.id, action.epoch, action.samples, self._on_commit,
                                       self._on_store_error)
        elif isinstance(action, Snapshot):
            await self._writer.snapshot(self.host.id, action)
        elif isinstance(action, Hello):
            committed = await self._writer.hello(self.host.id, action)
            self._hub.log(self.host.id, logging.INFO, "agent %s connected from %s (agent %r, %r)", self.host.name,
                          self.peer, action.agent_version, action.facts.get("os") or "unknown OS")
            await self.ws.send_message(self.session.hello_stored(committed))
            await self.send_checks()
        elif isinstance(action, Result):
            awaited = self._awaiting.get(action.command_id)
            if awaited is not None:
                awaited.result = action
                awaited.done.set()
        elif isinstance(action, UploadBytes):
            self._uploaded += action.count
            self._uploaded_at = trio.current_time()
        elif isinstance(action, SpeedReport):
            awaited_speed = self._speed_awaiting.get(action.test_id)
            if awaited_speed is not None:
                awaited_speed.report, awaited_speed.at = action, trio.current_time()
                awaited_speed.done.set()
        elif isinstance(action, Ignore):
            self._hub.log((action.what, self.host.id), logging.WARNING, "agent %s sent %s", self.host.name,
                          action.why)
        else:
            await self._close_for(action)
            return False
        return True

    def _on_store_error(self, exc: BaseException) -> None:
        if self._store_failure is None:
            if isinstance(exc, LimitExceeded):
                self._store_failure = self.session.store_failed(exc.limit, exc.detail)
            else:
                self._store_failure = self.session.store_failed()
            self._receiving.cancel()

    async def close(self, code: int, reason: str) -> None:
        """Close from another task (shutdown, replacement); bounded even when the peer is gone."""
        self._closing = True
        with trio.move_on_after(CLOSE_TIMEOUT):
            with contextlib.suppress(ConnectionClosed):
                await self._flush_ack()
            await self.ws.aclose(code, reason[:120])
        self._closed.set()

    async def finish_closing(self) -> None:
        """After serve(): if another task is closing us, let its close handshake finish before the socket goes
        (the reader task that completes the handshake dies with this connection's nursery)."""
        if self._closing:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._closed.wait()

    async def _close_for(self, close: Close) -> None:
        if close.limit is not None:
            self._hub.log(("limit", self.host.id), logging.WARNING, "agent %s (%s): over its limit of %s: %s; "
                          "closing with 1008", self.host.name, self.peer, close.limit, close.detail)
            self._hub.over_limit(self.host, LimitExceeded(close.limit, close.detail))
        elif not close.quiet:
            self._hub.log(("bad", self.host.id), logging.WARNING, "agent %s (%s): %s; closing with %d",
                          self.host.name, self.peer, close.reason, close.code)
        with trio.move_on_after(CLOSE_LINGER):
            try:
                await self._flush_ack()
                await self.ws.send_message(protocol.error("bad_frame", close.reason))
            except ConnectionClosed:
                return
            await self.ws.aclose(close.code, close.reason[:120])

    async def send_checks(self) -> None:
        """The host's checks (mbot/checks.py), to an agent that runs them: after the hello's ack, and whenever they
        change (an empty list stops them). An agent without the capability gets nothing (/check says to update)."""
        if self.hello is None or checks.CAPABILITY not in self.hello.capabilities:
            return
        try:
            await self.ws.send_message(checks.frame(self._hub.check_specs.get(self.host.id, [])))
        except ConnectionClosed:
            pass

    async def run_command(self, action: str, timeout: float) -> Result | None:
        """Send a command and wait for its result; None when the agent did not answer in time."""
        command_id = secrets.token_hex(8)
        awaited = self._awaiting[command_id] = _Awaited()
        self.session.command_sent(command_id)
        try:
            await self.ws.send_message(protocol.command(command_id, action, time.time() + timeout))
            with trio.move_on_after(timeout):
                await awaited.done.wait()
        except ConnectionClosed:
            pass
        finally:
            self.session.command_ended(command_id)
            self._awaiting.pop(command_id, None)
        return awaited.result

    async def _probe_link(self, nursery: trio.Nursery) -> None:
        """Measure the round trip now and then; the session's LinkProbe decides when and what it means. One ping in
        flight at most: an unanswered one is awaited (and counted lost each period) rather than joined by more."""
        link = self.session.link
        while True:
            await trio.sleep_until(link.next_at)
            if self._speed_awaiting:
                link.skip(trio.current_time())
                continue
            times: list[float] = []
            nursery.start_soon(self._ping, times)
            deadline = link.sent(trio.current_time())
            while len(times) < 2:
                with trio.move_on_at(deadline):
                    while len(times) < 2:
                        await self._pong.wait()
                if len(times) < 2:
                    deadline = link.overdue(trio.current_time())
            link.answered(times[0], times[1])

    async def _ping(self, times: list[float]) -> None:
        # The payload is unpredictable, so no pong can come before the agent has read this ping.
        times.append(trio.current_time())
        try:
            await self.ws.ping(secrets.token_bytes(8))
        except ConnectionClosed:
            return  # the receive loop ends the connection
        times.append(trio.current_time())
        self._pong.set()
        self._pong = trio.Event()

    async def stability(self, run: StabilityRun, progress: Callable[[StabilityRun, float], None],
                        progress_every: float) -> None:
        """The stability test (mbot/stability.py): a ping every interval, each in its own task, `run` keeping the
        score; progress(run, now) every progress_every seconds. Ends early if the connection goes."""
        async with trio.open_nursery() as probes:
            next_progress = run.start + progress_every
            for i in range(run.spec.count):
                await trio.sleep_until(run.due(i))
                if self.ws.closed is not None:
                    break
                if run.slot(i):
                    probes.start_soon(self._stability_ping, run, i)
                now = trio.current_time()
                if now >= next_progress:
                    progress(run, now)
                    next_progress = now + progress_every
            run.end(trio.current_time())
            with trio.move_on_after(STABILITY_TIMEOUT):
                while run.in_flight:
                    await self._stability_settled.wait()
            probes.cancel_scope.cancel()

    async def _stability_ping(self, run: StabilityRun, i: int) -> None:
        payload = secrets.token_bytes(8)
        sent = trio.current_time()
        answered = False
        try:
            with trio.move_on_after(STABILITY_TIMEOUT):
                await self.ws.ping(payload)
                answered = True
        except (ConnectionClosed, ValueError):  # ValueError: the same 8 random bytes twice in flight
            pass
        finally:
            if answered:
                run.answered(i, sent, trio.current_time())
            else:
                run.given_up(i)
                # trio-websocket keeps a ping's payload until a pong comes (0.12: WebSocketConnection._pings):
                # one the agent never answers would stay for the life of the connection.
                pings = getattr(self.ws, "_pings", None)
                if isinstance(pings, dict):
                    pings.pop(payload, None)
            self._stability_settled.set()
            self._stability_settled = trio.Event()

    async def speedtest(self, seconds: float, max_bytes: int) -> tuple[Throughput | None, Throughput | None]:
        """Download, then upload (mbot/speedtest.py); None for a direction the agent did not answer."""
        down = await self._speed_down(seconds, max_bytes)
        up = await self._speed_up(seconds, max_bytes)
        values = speedtest.metrics(down, up)
        if values:
            self.session.fold_once("speed", values)
        return down, up

    @contextlib.contextmanager
    def _speed_direction(self, upload_bytes: int = 0) -> Iterator[tuple[str, _AwaitedSpeed]]:
        """One direction of a speed test: its id, awaited by the session and by us for its report, until it ends."""
        test_id, awaited = secrets.token_hex(8), _AwaitedSpeed()
        self._speed_awaiting[test_id] = awaited
        self.session.speed_started(test_id, upload_bytes=upload_bytes)
        try:
            yield test_id, awaited
        finally:
            self.session.speed_ended(test_id)
            self._speed_awaiting.pop(test_id, None)

    async def _speed_down(self, seconds: float, max_bytes: int) -> Throughput | None:
        chunk = secrets.token_bytes(speedtest.CHUNK)  # random: nothing on the way can compress it
        sent = 0
        with self._speed_direction() as (test_id, awaited):
            try:
                await self.ws.send_message(speedtest.start(test_id, "down", seconds, max_bytes))
                started = trio.current_time()
                # Each send waits for TCP to take the frame: the pace is the path's. Other connections run between.
                while sent + len(chunk) <= max_bytes and trio.current_time() - started < seconds:
                    await self.ws.send_message(chunk)
                    sent += len(chunk)
                await self.ws.send_message(speedtest.end(test_id))
                with trio.move_on_after(speedtest.ANSWER_TIMEOUT):
                    await awaited.done.wait()
            except ConnectionClosed:
                return None
        if awaited.report is None:
            return None
        # What it says it got, never more than was sent; over the server's own time up to its answer.
        return Throughput("down", min(awaited.report.bytes, sent), awaited.at - started)

    async def _speed_up(self, seconds: float, max_bytes: int) -> Throughput | None:
        self._uploaded = 0
        with self._speed_direction(upload_bytes=max_bytes) as (test_id, awaited):
            try:
                await self.ws.send_message(speedtest.start(test_id, "up", seconds, max_bytes))
                started = trio.current_time()
                with trio.move_on_after(seconds + speedtest.ANSWER_TIMEOUT):
                    await awaited.done.wait()
            except ConnectionClosed:
                return None
        if awaited.report is None or not self._uploaded:
            return None
        # The bytes counted here, over the server's own time from its request to the last of them.
        return Throughput("up", self._uploaded, self._uploaded_at - started)

    def _on_commit(self, seq: int) -> None:
        if self.session.committed(seq):
            self._ack_wanted.set()

    async def _send_acks(self) -> None:
        # One wakeup per ack period at most (session.AckPolicy), however many frames were committed meanwhile.
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted = trio.Event()
            while (ack := self.session.next_ack(trio.current_time())) is None and self.session.ack_pending:
                await trio.sleep_until(self.session.ack_at())
            if ack is None:
                continue
            try:
                await self.ws.send_message(ack)
            except ConnectionClosed:
                return

    async def _flush_ack(self) -> None:
        """Before a close: the agent learns what is committed now, not only at its next hello."""
        ack = self.session.flush_ack(trio.current_time())
        if ack is not None:
            await self.ws.send_message(ack)


class TestRefused(Exception):
    """A stability or speed test that cannot start now (offline, already running, an agent too old): the chat and
    the control socket say why in their own words around the same reason."""

    def __init__(self, reason: str, *, after_name: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.after_name = reason, after_name

    def text(self, name: str, escape: Callable[[str], str] = str) -> str:
        """The whole sentence: `name` (as it is to appear) in front when it has one, the reason through `escape`."""
        return (name if self.after_name else "") + escape(self.reason)


class AgentHub:
    """Accepts agents and keeps the one live connection of each host."""

    # How often connections are acked (an instance may be given its own: tests make it faster or slower).
    ack_policy = AckPolicy()

    def __init__(self, db: Database, writer: IngestSink | None, *, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 gate: PreAuthGate | None = None, handshakes: HandshakeGate | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._writer = writer
        self._ssl_context: ssl.SSLContext | None = None  # set by listen()
        self._handshake_timeout = handshake_timeout
        self._throttle = AuthThrottle()
        self.gate = gate if gate is not None else PreAuthGate()  # (an empty gate is falsy: it has a len)
        self._waiting: dict[object, trio.CancelScope] = {}  # pre-auth connections, to evict the oldest
        # Handshakes under way at once, and who waits for one (mbot/admission.py); the woken are set here.
        self.handshakes = handshakes if handshakes is not None else HandshakeGate()
        self._slot_granted: dict[object, trio.Event] = {}
        self._budgets: dict[int, SampleBudget] = {}  # per host, across its connections: reconnecting earns nothing
        self._snapshot_budgets: dict[int, SnapshotBudget] = {}  # likewise
        self._flapping = LogSummary()
        self._clock = clock
        self.on_limit: LimitNotice | None = None
        self.limits_exceeded: dict[str, int] = {}
        self._limit_told: dict[tuple[int, str], float] = {}
        self._last_replaced: dict[int, float] = {}  # host id -> when one of its connections last replaced another
        # Every host's live connection; with MBOT_LISTENERS > 1 also those of the listener processes (listenerpool).
        self.connections: dict[int, Connection] = {}
        self.accept_gate = AcceptGate()  # closed: this process leaves new connections to the other listeners
        self.sockets: list[trio.socket.SocketType] = []  # the listening sockets (listen() opened them)
        self.downloads: install.Downloads | None = None  # what GET /install and /agent.py serve (set by the app)
        self._changed = trio.Event()  # replaced on every connect/disconnect; wakes wait_until()
        self._closing = False  # close_all() has begun: the server is stopping
        self.link_policy = LinkPolicy()  # how connections probe their round trip (tests make it fast)
        self.gather_policy = GatherPolicy()  # when agents are asked to send several samples per frame
        self.stability_budget = StabilityBudget()  # one test per host, a total probe rate for the server
        self.speed_busy = False  # one speed test at a time per server (claim_speed; cleared when it ends)
        self.speed_seconds = speedtest.SECONDS  # each way (tests make it short)
        # Checks from the host (mbot/checks.py, mbot/checksync.py keeps these): each host's checks, and who to
        # wake when the bot changed them.
        self.check_specs: dict[int, list[CheckSpec]] = {}
        self.on_checks_changed: Callable[[], None] | None = None

    # --- limits ----------------------------------------------------------------------------------------------

    def budget(self, host: store.Host, interval: float) -> SampleBudget:
        budget = self._budgets.get(host.id)
        if budget is None:
            since = host.last_seen if host.last_seen is not None else host.created
            budget = self._budgets[host.id] = SampleBudget(interval, since=since, now=trio.current_time(),
                                                           wall_now=self._clock())
        else:
            budget.set_interval(interval)
        return budget

    def snapshot_budget(self, host: store.Host, interval: float) -> SnapshotBudget:
        budget = self._snapshot_budgets.get(host.id)
        if budget is None:
            budget = self._snapshot_budgets[host.id] = SnapshotBudget(interval)
        else:
            budget.set_interval(interval)
        return budget

    def over_limit(self, host: store.Host, exc: LimitExceeded) -> None:
        """Count it, and tell the owner once a day per host and limit (never once per reconnect)."""
        self.limits_exceeded[exc.limit] = self.limits_exceeded.get(exc.limit, 0) + 1
        now = self._clock()
        key = (host.id, exc.limit)
        if now - self._limit_told.get(key, -math.inf) < LIMIT_NOTICE_EVERY:
            return
        self._limit_told[key] = now
        if len(self._limit_told) > 10_000:  # bounded: forget the notices older than a day
            self._limit_told = {k: t for k, t in self._limit_told.items() if now - t < LIMIT_NOTICE_EVERY}
        if self.on_limit is not None:
            self.on_limit(host, exc.limit, exc.detail)

    def _replaced(self, host: store.Host, peer: str, previous: str) -> None:
        """One agent replacing its own stale connection is normal (a network blip); connections of one key that
        keep replacing each other are two machines sharing a key, both feeding one history: say so, once."""
        now = trio.current_time()
        last, self._last_replaced[host.id] = self._last_replaced.get(host.id), now
        if last is None or now - last > DUPLICATE_WINDOW:
            self.log(host.id, logging.INFO, "agent %s: a new connection from %s replaces the one from %s", host.name,
                     peer, previous)
            return
        self.log(("duplicate", host.id), logging.WARNING, "agent %s: connections from %s and %s keep replacing each "
                 "other: two agents use this host's key", host.name, peer, previous)
        self.over_limit(host, LimitExceeded(
            "one agent per key", f"two agents seem to use its key (connections from {_address(peer)} and "
            f"{_address(previous)} keep replacing each other, and both feed one history); give each machine its own "
            "key with /newkey"))

    def log(self, key: object, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
        """One line per event, but per key (a host, an address, a kind of event) only the first few in 10 minutes;
        the next line that is logged says how many were held back. A peer that reconnects a thousand times a
        second then costs a few lines, not a flood."""
        show, held = self._flapping.check(key, trio.current_time())
        if show:
            log.log(level, message + (f" ({held} more like this not logged)" if held else ""), *args,
                    exc_info=exc_info)

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext, *, shared: bool = False,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve agents on host:port until cancelled. `shared`: listener processes will accept on the same sockets
        (MBOT_LISTENERS > 1): keep them in `sockets`, and accept through `accept_gate`."""
        # Plain TCP listeners: TLS starts in _handle, once the peer has sent its first byte (see _session).
        self._ssl_context = ssl_context
        await serve_tcp(self._handle, host, port, port_variable="PORT", host_variable="MBOT_HOST",
                        announce="listening for agents on %s:%d (TLS)", gate=self.accept_gate if shared else None,
                        opened=self.sockets.extend if shared else None, task_status=task_status)

    async def serve_sockets(self, sockets: list[trio.socket.SocketType], ssl_context: ssl.SSLContext) -> None:
        """Serve listening sockets another process opened (a listener process: mbot/listener.py)."""
        self._ssl_context = ssl_context
        await serve_sockets(self._handle, sockets, self.accept_gate)

    def connection_count(self) -> int:
        """Agents connected to the server (all processes): what acks, probes and gathering are paced by."""
        return len(self.connections)

    def is_connected(self, host_id: int) -> bool:
        return host_id in self.connections

    async def wait_until(self, host_id: int, *, connected: bool) -> None:
        while self.is_connected(host_id) != connected:
            await self._changed.wait()

    def _notify_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run_command(self, host_id: int, action: str, timeout: float = 30.0) -> Result | None:
        """Run a command on a connected agent. Raises LookupError when it is not connected: a command is never
        queued for later, so a reboot cannot fire hours after it was asked for."""
        connection = self.connections.get(host_id)
        if connection is None:
            raise LookupError(host_id)
        return await connection.run_command(action, timeout)

    def claim_stability(self, host_id: int, interval: float) -> None:
        """Take the host's place in stability_budget for a test (release it when the test ends), or TestRefused.
        Taken at once, so a second request finds it taken even before the first test's task runs."""
        if not self.is_connected(host_id):
            raise TestRefused(_(" is offline: a stability test needs its agent connected."))
        refusal = self.stability_budget.refusal(host_id, interval)
        if refusal is not None:
            raise TestRefused(_(": not now: {reason}", reason=refusal))
        self.stability_budget.take(host_id, interval)

    def claim_speed(self, host_id: int) -> None:
        """Take the server's one speed test (clear speed_busy when it ends), or TestRefused."""
        connection = self.connections.get(host_id)
        if connection is None:
            raise TestRefused(_(" is offline: a speed test needs its agent connected."))
        if connection.hello is not None and "speedtest" not in connection.hello.capabilities:
            raise TestRefused(_(": its agent is too old for a speed test; update mbot_agent.py (/agent)."))
        if self.speed_busy:
            raise TestRefused(_("Another speed test is running on this server; try again in half a minute."),
                              after_name=False)
        self.speed_busy = True

    async def stability(self, host_id: int, run: StabilityRun, progress: Callable[[StabilityRun, float], None],
                        progress_every: float) -> None:
        """Run a stability test on a connected agent (the caller claimed it: claim_stability). Raises
        LookupError when the host is not connected."""
        connection = self.connections.get(host_id)
        if connection is None:
            raise LookupError(host_id)
        await connection.stability(run, progress, progress_every)

    async def speedtest(self, host_id: int) -> tuple[Throughput | None, Throughput | None]:
        """Run a speed test on a connected agent (the caller claimed it: claim_speed). LookupError: not connected."""
        connection = self.connections.get(host_id)
        if connection is None:
            raise LookupError(host_id)
        return await connection.speedtest(self.speed_seconds, speedtest.MAX_BYTES)

    async def send_checks(self, host_id: int) -> None:
        connection = self.connections.get(host_id)
        if connection is not None:
            await connection.send_checks()

    def checks_changed(self) -> None:
        if self.on_checks_changed is not None:
            self.on_checks_changed()

    async def disconnect(self, host_id: int, code: int, reason: str) -> None:
        connection = self.connections.get(host_id)
        if connection is not None:
            await connection.close(code, reason)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every agent (shutdown); from now on new connections are dropped at once, so that an agent that
        reconnects within a second finds the door shut rather than a server about to vanish under it."""
        self._closing = True
        async with trio.open_nursery() as nursery:
            for connection in list(self.connections.values()):
                nursery.start_soon(connection.close, code, reason)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        if self._closing:
            await trio.aclose_forcefully(tcp)
            return
        address, peer = _peer(tcp)
        token = object()
        evict = self.gate.admit(token, address)
        if evict is None:
            self.log(("refused", address), logging.WARNING, "refused a connection from %s: %d connections from "
                     "that address are already waiting to authenticate", peer, self.gate.per_address)
            await trio.aclose_forcefully(tcp)
            return
        for other in evict:
            self._waiting.pop(other).cancel()
        preauth = self._waiting[token] = trio.CancelScope()
        tls: list[trio.SSLStream[trio.SocketStream]] = []  # the TLS stream, once _session has started it
        try:
            async with trio.open_nursery() as nursery:
                await self._session(nursery, tcp, tls, address, peer, preauth, token)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, ConnectionClosed) as group:
            first = group.exceptions[0]
            self.log(("failed", address), logging.INFO, "connection from %s failed: %s", peer,
                     first.__cause__ or first)
        except* Exception:
            # Isolation: whatever one peer manages to break ends its own connection, never the listener.
            self.log(("crashed", address), logging.ERROR, "connection from %s crashed", peer, exc_info=True)
        finally:
            self._release(token)
            stream: trio.abc.AsyncResource = tls[0] if tls else tcp
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
                await _close_quietly(stream)
            if scope.cancelled_caught:
                await trio.aclose_forcefully(stream)

    def _release(self, token: object) -> None:
        self._handshake_over(token, completed=False)
        self.gate.release(token)
        self._waiting.pop(token, None)

    async def _handshake_slot(self, tcp: trio.SocketStream, token: object, peer: str) -> bool:
        """Wait for a place among the handshakes under way (mbot/admission.py); False when the connection was
        refused because its wait would outlast the agent's patience: it got the busy alert, and its agent backs off."""
        gate = self.handshakes
        decision = gate.arrive(token, trio.current_time())
        self._moved(decision.evict, decision.granted)
        if decision.verdict == admission.WAIT:
            granted = self._slot_granted[token] = trio.Event()
            give_up = trio.current_time() + gate.max_wait
            while not granted.is_set() and trio.current_time() < give_up:
                with trio.move_on_at(min(give_up, gate.evict_at())):
                    await granted.wait()
                if not granted.is_set():  # the oldest holder may have stalled: its slot goes to the first in line
                    evicted = gate.evict_stalled(trio.current_time())
                    self._moved(evicted.evict, evicted.granted)
            if not granted.is_set() and gate.gave_up(token):
                decision.verdict = admission.REFUSE
        if decision.verdict == admission.REFUSE:
            self.log("busy", logging.WARNING, "refused a connection from %s: too many handshakes waiting (%d under "
                     "way, %d waiting, ~%.1f s each); its agent will try again later", peer, gate.holding,
                     gate.waiting, gate.mean)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                # Its ClientHello is read first: closing a socket with unread bytes resets the connection, which
                # could reach the agent before the alert (and read as a server that went away).
                await tcp.receive_some(install.MAX_HEAD)
                await tcp.send_all(admission.BUSY_ALERT)
            return False
        return True

    def _handshake_over(self, token: object, *, completed: bool) -> None:
        self._slot_granted.pop(token, None)
        self._moved([], self.handshakes.leave(token, trio.current_time(), completed=completed))

    def _moved(self, evict: list[object], granted: list[object]) -> None:
        for token in evict:  # a slot holder that stalled: its task ends like any evicted pre-auth connection
            scope = self._waiting.get(token)
            if scope is not None:
                scope.cancel()
        for token in granted:
            event = self._slot_granted.pop(token, None)
            if event is not None:
                event.set()

    async def _session(self, nursery: trio.Nursery, tcp: trio.SocketStream, tls: list[trio.SSLStream[Any]],
                       address: str, peer: str, preauth: trio.CancelScope, token: object) -> None:
        stage, host = "TLS handshake", None
        # One deadline for the first byte, then one for TLS, the upgrade and authentication once a handshake slot is
        # free: a slow client cannot pin a socket. `preauth` is cancelled when the gate evicts this connection to
        # make room.
        with preauth, trio.move_on_after(self._handshake_timeout) as deadline:
            # TLS state (OpenSSL's buffers) only for a peer that has said something: an idle socket then costs a
            # socket and a task, and accepting a flood of them stays fast enough that real agents get through.
            await trio.lowlevel.wait_readable(tcp.socket)
            stage = "wait for a handshake slot"
            if not await self._handshake_slot(tcp, token, peer):
                return
            stage = "TLS handshake"
            deadline.deadline = trio.current_time() + self._handshake_timeout  # the wait was not the peer's doing
            assert self._ssl_context is not None
            stream = trio.SSLStream(tcp, self._ssl_context, server_side=True, https_compatible=True)
            tls.append(stream)
            await stream.do_handshake()
            stage = "HTTP request"
            head, decision = await _read_head(stream)
            if isinstance(decision, (install.Download, install.TooLarge)):
                self._handshake_over(token, completed=True)  # a download holds no handshake slot
                await self._answer(stream, decision, address, peer)
                return
            stage = "WebSocket handshake"
            # trio-websocket reads 4 KiB at a time by default: a processes snapshot or a gathered frame (5-10 KB)
            # then took several trips through the TLS stream, each with its own task switches.
            request = await wrap_server_stream(nursery, _Replay(stream, head), max_message_size=limits.MAX_FRAME_BYTES,
                                               receive_buffer_size=RECEIVE_BYTES)
            host = await self._authenticate(request, address, peer, token)
        if preauth.cancelled_caught:
            self.log("evicted", logging.INFO, "connection from %s evicted during its %s to make room: too many "
                     "connections waiting to authenticate, or a handshake far slower than the others", peer, stage)
            return
        if deadline.cancelled_caught:
            self.log(("slow", address), logging.INFO, "%s from %s did not finish within %g s; dropped", stage, peer,
                     self._handshake_timeout)
            return
        if host is None:
            return
        self._release(token)  # authenticated: no longer counts against the waiting room
        ws = await request.accept()
        connection = self.connection(host, ws, peer)
        self.adopt(connection, nursery)
        try:
            await connection.serve()
            await connection.finish_closing()
        finally:
            self.forget(connection)

    def connection(self, host: store.Host, ws: WebSocketConnection, peer: str) -> AgentConnection:
        """The driver of a new authenticated connection (a listener process gives it the channel as its sink)."""
        assert self._writer is not None  # a hub without a writer (a listener process's) makes its own sinks
        return AgentConnection(host, ws, peer, self._writer, self)

    def adopt(self, connection: Connection, nursery: trio.Nursery) -> None:
        """A host's new connection (here or in a listener process) becomes its one live connection; the one it
        replaces is closed with 4001 from `nursery`, unless a listener process replaced it itself (both its own)."""
        host = connection.host
        previous = self.connections.get(host.id)
        self.connections[host.id] = connection
        self._notify_change()
        if previous is not None:
            self._replaced(host, connection.peer, previous.peer)
            if not previous.where == connection.where != 0:
                nursery.start_soon(previous.close, protocol.CLOSE_REPLACED, "replaced by a newer connection")

    def forget(self, connection: Connection) -> None:
        """A connection ended: the host is offline unless a newer connection already replaced it."""
        if self.connections.get(connection.host.id) is connection:
            del self.connections[connection.host.id]
            self._notify_change()

    async def _answer(self, stream: trio.abc.Stream, decision: install.Download | install.TooLarge, address: str,
                      peer: str) -> None:
        """A GET of the installer or the agent file (or a head too large to be anything): answer it and close.
        Still inside the connection's handshake deadline and its place in the pre-auth gate."""
        status, response = install.answer(decision, self.downloads)
        if isinstance(decision, install.TooLarge):
            self.log(("head", address), logging.INFO, "connection from %s: request head over %d bytes; answered 431",
                     peer, install.MAX_HEAD)
        else:
            self.log(("get", address), logging.INFO, "%s %s from %s: %d", "HEAD" if decision.head_only else "GET",
                     decision.path, peer, status)
        await stream.send_all(response)

    async def _authenticate(self, request: WebSocketRequest, address: str, peer: str,
                            token: object) -> store.Host | None:
        if request.path.split("?")[0] != AGENT_PATH:
            self.log(("path", address), logging.INFO, "rejected connection from %s: unknown path %r", peer,
                     request.path[:80])
            await request.reject(404, body=b"not found\n")
            return None
        secret = _bearer(request)
        host = await self._db.read(store.host_by_secret_hash, secret_hash(secret)) if secret else None
        self._handshake_over(token, completed=True)  # the throttle's wait below holds no slot
        if host is None:
            now = trio.current_time()
            delay = self._throttle.delay(address, now)
            self._throttle.failed(address, now)
            self.log(("auth", address), logging.WARNING, "rejected agent connection from %s: %s%s", peer,
                     "unknown secret" if secret else "no Authorization: Bearer header",
                     f" (answering after {delay:g} s: repeated failures)" if delay else "")
            await trio.sleep(delay)
            await request.reject(401, body=b"secret rejected\n")
            return None
        self._throttle.succeeded(address)
        return host


async def _read_head(stream: trio.abc.Stream) -> tuple[bytes, install.Decision]:
    """The first request's head (what was read of it, and what it is), bounded by install.MAX_HEAD; the caller's
    deadline bounds the time. A peer that closes first is a failed connection like any other."""
    sniffer = install.RequestSniffer()
    head = b""
    while True:
        data = bytes(await stream.receive_some(install.MAX_HEAD))
        if not data:
            raise trio.BrokenResourceError("the peer closed the connection before sending a request")
        head += data
        decision = sniffer.receive(data)
        if not isinstance(decision, install.NeedMore):
            return head, decision


RECEIVE_BYTES = 65536  # per read from an agent's TLS stream: whatever has arrived, in one go


class _Replay(trio.abc.Stream):
    """A stream that first gives back bytes already read from it: trio-websocket reads the request head again."""

    def __init__(self, stream: trio.abc.Stream, pending: bytes) -> None:
        self._stream = stream
        self._pending = pending

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._pending:
            size = len(self._pending) if max_bytes is None else max_bytes
            data, self._pending = self._pending[:size], self._pending[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


def load_downloads(endpoint: install.Endpoint) -> install.Downloads:
    """Read what /install and /agent.py serve (blocking: call it in a thread). A file that is missing is served as
    404, with one warning here."""
    try:
        template: str | None = install.SCRIPT_FILE.read_text(encoding="utf-8")
    except OSError as exc:
        log.warning("cannot read the install script %s (/install answers 404): %s", install.SCRIPT_FILE, exc)
        template = None
    try:
        agent: bytes | None = install.AGENT_FILE.read_bytes()
    except OSError as exc:
        log.warning("cannot read the agent file %s (/agent.py answers 404): %s", install.AGENT_FILE, exc)
        agent = None
    return install.Downloads(endpoint, template, agent)


async def _close_quietly(stream: trio.abc.AsyncResource) -> None:
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
        pass
