"""The server's side of one agent connection, without IO (h11.Connection is the model).

An AgentSession takes what arrived (a text frame and the time) and says what to do about it, as one action:

    Hello          record it (writer.hello), then send hello_stored(the seq the writer answers): the first ack
    StoreSamples   wait `wait` seconds (a replay faster than the server wants is slowed down, not refused), then
                   queue the samples on the writer
    Snapshot       queue it on the writer (no ack: only the latest counts)
    Result         the answer to a command this connection sent and still waits for: wake the waiter
    SpeedReport    the agent's answer in a speed test this connection runs (mbot/speedtest.py): wake the waiter
    UploadBytes    a binary frame of a speed test's upload: count it (nothing else may be binary)
    Ignore         nothing to do but log `why`
    Close          send an `error` frame with the reason, then close with the code

It never touches a socket, the database or a clock: mbot.agents drives it (read a message -> receive() -> perform
the action) and tells it back what the writer committed, so that it can say which ack to send.

What it holds:
- the hello state machine: the first frame must be a hello (within HELLO_TIMEOUT), a second hello is an error;
- the frame rate bucket (limits.FrameBucket, per connection);
- the host's SampleBudget and SnapshotBudget (per host across its connections: the hub lends them, so that
  reconnecting earns nothing);
- ack coalescing and pacing: the highest committed seq, the highest acked and when the last ack went; an ack goes
  out only when the first grew, and at most once per AckPolicy.period (a share of the server's ack rate, at most
  25 s): one ack then covers every sample committed meanwhile (docs/architecture.md, "Acks, probes and gathering under load");
  each ack carries how long the agent should gather samples before sending them (GatherPolicy);
- command/result matching: the ids of commands sent and not answered yet;
- the link probe (mbot/linkquality.py): when to measure the round trip, and the figures it folds into live samples.

Once it said Close, the session is closed: later frames are ignored (the driver is closing the socket anyway).
"""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Callable

from . import protocol, series as catalogue
from .limits import FrameBucket, SampleBudget, SnapshotBudget
from .linkquality import LIVE_ITEMS, LinkPolicy, LinkProbe
from .protocol import Hello, ProtocolError, Result, Samples, Snapshot, SpeedReport, UnknownSnapshot

HELLO_TIMEOUT = 10.0
MAX_PENDING_COMMANDS = 16  # the bot sends one at a time per host; more would be a bug, not a reason to grow


@dataclass(frozen=True)
class AckPolicy:
    """How often one connection may be acked. Each ack costs the server a frame, a TLS record, a send and a task
    wakeup, which at a few thousand agents is a large share of the work per sample, and the agent as much again to
    read it, while an agent loses nothing by waiting: it keeps unacked samples in its spool and never resends them on
    the same connection. So the server spends at most `rate` acks a second in all, and acks an agent at most once per
    `samples` of its intervals: a connection's acks come at most every max(connections/rate, samples x interval)
    seconds (the first one at once), never more than `max_wait` apart while samples come. A handful of agents at 5 s
    get an ack every 15 s; 1,000 agents every 10-15 s, 2,500 and more every 25 s.

    `max_wait` stays under the agent's keepalive (it pings after 30 s without a message from the server, and the
    server's own pings do not count): with acks 30 s apart, a third of them came just after the agent had pinged
    (at 5,000 agents: 56 pings a second against 163 acks), a ping in and a pong out where acks 25 s apart cost 27
    acks a second more and no pings."""

    rate: float = 100.0  # acks a second, all connections together
    samples: float = 3.0  # an agent's intervals per ack at most (what it keeps in its spool meanwhile)
    max_wait: float = 25.0  # the longest an agent waits for the ack of a committed sample: 5 s under its keepalive

    def period(self, connections: int, interval: float = 0.0) -> float:
        return min(self.max_wait, max(max(0, connections) / self.rate, self.samples * max(0.0, interval)))


# Sample frames a second one process serving agents takes before it asks them to gather: 5,000 agents at 5 s on 2
# cores with MBOT_LISTENERS=3 (333 a process) committed each sample within 0.78-1.01 s at p99 over three runs, the
# machine nearly full (docs/architecture.md, "Without gathering at 5,000").
FRAMES_PER_PROCESS = 350.0


@dataclass(frozen=True)
class GatherPolicy:
    """When agents are asked to gather their samples (the `gather` field of an ack, docs/protocol.md): a frame costs
    the server far more than a sample in it (TLS record, WebSocket frame, task wakeups, a writer item), so a busy
    server takes at most about `frames` sample frames a second in all by asking each agent to send every
    connections/frames seconds, when that is longer than the agent's interval, and never less often than every
    `max_wait` seconds. The budget is FRAMES_PER_PROCESS per process serving agents (`for_processes`): one process
    gathers from 1,750 agents at 5 s on (3,500 at 5 s: every 10 s), three take 5,000 agents at 5 s each sample in a
    frame of its own. `max_wait` keeps the longest silence between an agent's frames (max_wait + interval) under the
    shortest offline delay (30 s, mbot.alerts.MIN_DELAY), with room for a busy writer: gathering never makes a host
    look offline; it delays what a sample shows (alerts, the card) by up to max_wait."""

    frames: float = FRAMES_PER_PROCESS  # sample frames a second, all connections together
    max_wait: float = 15.0

    @classmethod
    def for_processes(cls, processes: int) -> GatherPolicy:
        return cls(frames=FRAMES_PER_PROCESS * max(1, processes))

    def period(self, connections: int, interval: float) -> float:
        """Seconds an agent with this interval should gather for (0: send each sample at once)."""
        wait = min(self.max_wait, max(0, connections) / self.frames)
        return round(wait, 1) if wait > interval else 0.0


# --- what to do --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSamples:
    samples: Samples
    epoch: int  # the hello's
    wait: float  # seconds to wait before queueing them (backpressure)


@dataclass(frozen=True)
class Ignore:
    """Log `why`, summarised per host and `what` (a fixed word): a result for a command never sent (or no longer
    awaited), a snapshot of a kind this server does not know."""

    what: str
    why: str


@dataclass(frozen=True)
class Close:
    code: int
    reason: str  # for the error frame and the close
    limit: str | None = None  # the host went over this limit: count it, tell the owner
    detail: str = ""  # what the limit's notice says
    quiet: bool = False  # already logged elsewhere (the writer's isolated failure)


@dataclass(frozen=True)
class UploadBytes:
    count: int


# The frames themselves stand for "store this hello / snapshot" and "deliver this result": the session checked them.
Action = Hello | StoreSamples | Snapshot | Result | SpeedReport | UploadBytes | Ignore | Close


class State(enum.Enum):
    AWAITING_HELLO = "awaiting hello"
    OPEN = "open"
    CLOSED = "closed"


# --- the session -------------------------------------------------------------------------------------------------


class AgentSession:
    def __init__(self, *, now: float, sample_budget: Callable[[float], SampleBudget],
                 snapshot_budget: Callable[[float], SnapshotBudget], hello_timeout: float = HELLO_TIMEOUT,
                 frames: FrameBucket | None = None, link: LinkPolicy | None = None, acks: AckPolicy | None = None,
                 gather: GatherPolicy | None = None, connections: Callable[[], int] = lambda: 1) -> None:
        """`sample_budget(interval)` and `snapshot_budget(interval)` lend the host's budgets when the hello
        announces its interval (they belong to the host, not to this connection). `connections()` says how many
        agents the server holds now: acks, gathering and link probes are paced by it."""
        self.state = State.AWAITING_HELLO
        self.hello: Hello | None = None
        self.hello_deadline = now + hello_timeout
        self._hello_timeout = hello_timeout
        self._frames = frames if frames is not None else FrameBucket(now=now)
        self._sample_budget_for = sample_budget
        self._snapshot_budget_for = snapshot_budget
        self._samples: SampleBudget | None = None
        self._snapshots: SnapshotBudget | None = None
        self._committed = 0  # the highest seq committed for this connection's epoch
        self._acked = 0  # the highest seq acked
        self._acked_at = -math.inf  # when the last ack (after the hello's) went
        self._acks = acks or AckPolicy()
        self._gather = gather or GatherPolicy()
        self._gathering = 0.0  # the longest gathering period asked on this connection (live frames are longer)
        self._connections = connections
        self._pending: set[str] = set()  # command ids sent, not answered yet
        self.link = LinkProbe(link or LinkPolicy(), now, connections=connections)
        self._speed_pending: set[str] = set()  # speed tests awaiting the agent's report
        self._upload: tuple[str, int] | None = None  # the upload under way: (test id, bytes it may still send)
        self._fold: dict[str, dict[str, float]] = {}  # server-side values for the next live sample, once

    # --- frames in ---------------------------------------------------------------------------------------------

    def receive(self, message: str | bytes, now: float) -> Action | None:
        """One message from the agent -> what to do (None: nothing)."""
        if self.state is State.CLOSED:
            return None
        try:
            if self.state is State.AWAITING_HELLO:
                return self._first(message)
            return self._next(message, now)
        except ProtocolError as exc:
            return self._close(Close(exc.close_code, exc.reason))

    def timeout(self, now: float) -> Action | None:
        """The driver's wait for a frame ended at hello_deadline: no hello in time closes the connection."""
        if self.state is State.AWAITING_HELLO and now >= self.hello_deadline:
            return self._close(Close(protocol.CLOSE_POLICY, f"no hello within {self._hello_timeout:g} s"))
        return None

    def _first(self, message: str | bytes) -> Hello:
        frame = protocol.parse_agent_frame(message)
        if not isinstance(frame, Hello):
            raise ProtocolError("the first frame must be a hello", protocol.CLOSE_POLICY)
        self.state = State.OPEN
        self.hello = frame
        self.hello_deadline = math.inf
        self._samples = self._sample_budget_for(frame.interval)
        self._snapshots = self._snapshot_budget_for(frame.interval)
        return frame

    def _next(self, message: str | bytes, now: float) -> Action | None:
        assert self.hello is not None and self._samples is not None and self._snapshots is not None
        if isinstance(message, bytes) and self._upload is not None:
            # A speed test's upload: bounded by its bytes, not by the frame rate (it is meant to be fast).
            test_id, left = self._upload
            if len(message) > left:
                return self._over("speed test bytes", "it sent more during a speed test's upload than it was "
                                  "asked to")
            self._upload = (test_id, left - len(message))
            return UploadBytes(len(message))
        if not self._frames.take(now):
            raise ProtocolError("too many frames: over the per-connection rate limit", protocol.CLOSE_POLICY)
        frame = protocol.parse_agent_frame(message, cores=self.hello.facts.get("cpu_count"))
        if isinstance(frame, Samples):
            wait = self._samples.take(self.hello.epoch, [sample.seq for sample in frame.items], now)
            if wait is None:
                return self._over("samples", f"more samples than one per {self._samples.interval:g} s (the "
                                  "interval its hello announced) plus what its time away accounts for")
            live = self._live_items()
            return StoreSamples(self._fold_once(self.link.fold(frame, live), live), self.hello.epoch, wait)
        if isinstance(frame, Snapshot):
            if not self._snapshots.take(frame.kind, now):
                return self._over("snapshots", f"more {frame.kind} snapshots than one per "
                                  f"{self._snapshots.interval:g} s")
            return frame
        if isinstance(frame, UnknownSnapshot):
            # One log key for every unknown kind: kinds are the agent's choice, and a key per kind would let it
            # buy three free log lines with each new name.
            return Ignore("unknown snapshot", f"a snapshot of kind {frame.kind!r} version {frame.v!r}, which this "
                          "server does not know; ignored")
        if isinstance(frame, Hello):
            raise ProtocolError("hello sent twice", protocol.CLOSE_POLICY)
        if isinstance(frame, SpeedReport):
            if frame.test_id in self._speed_pending:
                return frame
            return Ignore("result", f"a speed test report {frame.test_id[:64]!r} nobody asked for; ignored")
        assert isinstance(frame, Result)
        if frame.command_id in self._pending:
            self._pending.discard(frame.command_id)
            return frame
        return Ignore("result", f"a result for command {frame.command_id[:64]!r} it was never sent; ignored")

    def _close(self, close: Close) -> Close:
        self.state = State.CLOSED
        return close

    def _over(self, limit: str, detail: str) -> Close:
        return self._close(Close(protocol.CLOSE_POLICY, f"over the limit of {limit}: {detail}", limit, detail))

    # --- what the writer did -------------------------------------------------------------------------------------

    def hello_stored(self, committed: int) -> str:
        """The hello is recorded; `committed` is the highest seq the server has for its epoch. Returns the first
        ack (always sent, 0 for a new epoch: the agent learns what to replay)."""
        self._committed = self._acked = committed
        return self._ack(committed)

    def committed(self, seq: int) -> bool:
        """The writer committed samples up to `seq`. True when an ack is due (the mark grew)."""
        if seq > self._committed:
            self._committed = seq
            return True
        return False

    @property
    def ack_pending(self) -> bool:
        """Something is committed that no ack has covered yet."""
        return self._committed > self._acked

    def ack_at(self) -> float:
        """When the pending ack may go (AckPolicy): one period after the last ack."""
        return self._acked_at + self._acks.period(self._connections(), self._interval)

    def next_ack(self, now: float) -> str | None:
        """The ack to send now: one for everything committed since the last (coalesced), or None (nothing new, or
        not yet: see ack_at)."""
        if not self.ack_pending or now < self.ack_at():
            return None
        return self.flush_ack(now)

    def flush_ack(self, now: float) -> str | None:
        """The pending ack whatever the pace: before the connection is closed, so the agent knows at once."""
        if not self.ack_pending:
            return None
        self._acked, self._acked_at = self._committed, now
        return self._ack(self._acked)

    @property
    def _interval(self) -> float:
        return self.hello.interval if self.hello is not None else 0.0

    def _ack(self, seq: int) -> str:
        """Every ack says how long the agent should gather its samples now (GatherPolicy): a server that gets
        busier or quieter tells each agent within one ack period."""
        # Frames up to the longest period asked so far on this connection are live (mbot.linkquality): the agent
        # may have sent one before it read a shorter one.
        period = self._gather.period(self._connections(), self._interval)
        self._gathering = max(self._gathering, period)
        return protocol.ack(seq, period)

    def store_failed(self, limit: str | None = None, detail: str = "") -> Close:
        """The writer refused a frame of ours: a limit it enforces (new series names), or a poison item it already
        logged and counted (1011: the agent resends after its backoff)."""
        if limit is not None:
            return self._over(limit, detail)
        return self._close(Close(1011, "the server could not store a frame", quiet=True))

    # --- commands ------------------------------------------------------------------------------------------------

    def command_sent(self, command_id: str) -> None:
        """A command with this id goes to the agent: its result will be delivered."""
        if len(self._pending) >= MAX_PENDING_COMMANDS:
            self._pending.pop()
        self._pending.add(command_id)

    def command_ended(self, command_id: str) -> None:
        """No longer waiting (answered, timed out, connection gone): a late result is ignored."""
        self._pending.discard(command_id)

    @property
    def pending_commands(self) -> frozenset[str]:
        return frozenset(self._pending)

    # --- speed tests (mbot/speedtest.py) --------------------------------------------------------------------------

    def speed_started(self, test_id: str, upload_bytes: int = 0) -> None:
        """A speed test direction starts: its report will be delivered; an upload may send `upload_bytes`."""
        self._speed_pending.add(test_id)
        if upload_bytes:
            self._upload = (test_id, upload_bytes)

    def speed_ended(self, test_id: str) -> None:
        """Reported, timed out or abandoned: a late report is ignored, and binary frames are refused again."""
        self._speed_pending.discard(test_id)
        if self._upload is not None and self._upload[0] == test_id:
            self._upload = None

    def fold_once(self, key: str, values: dict[str, float]) -> None:
        """Add `values` as metrics[key] to the next live sample (server-side values, like the link's)."""
        self._fold[key] = values

    def _live_items(self) -> int:
        """The most samples a live frame holds: LIVE_ITEMS, plus what gathering for the period asked puts in one."""
        return LIVE_ITEMS + math.ceil(self._gathering / self._interval) if self._gathering else LIVE_ITEMS

    def _fold_once(self, samples: Samples, live_items: int) -> Samples:
        if not self._fold or len(samples.items) > live_items:
            return samples
        newest = samples.items[-1]
        extra, self._fold = self._fold, {}
        folded = dataclasses.replace(newest, metrics={**newest.metrics, **extra},
                                     series={**newest.series, **catalogue.flatten(extra)})
        return Samples((*samples.items[:-1], folded))
