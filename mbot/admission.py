"""Admission of new agent connections under load, without IO: how many handshakes run at once, which connections
wait for one, and which are refused at once because they could not be served before their agent gives up.

Why it exists: a handshake (TLS, the HTTP upgrade, authentication) costs the server CPU and several trips through
the event loop. On a saturated loop each of those trips waits behind everything else that is runnable, so a
handshake's duration grows with the number of handshakes running beside it; a storm of agents connecting at once
(the restart of a server holding thousands) then makes every handshake slower than the agents' timeout and none
finishes: the CPU is spent on both sides for nothing, and every agent tries again. Bounded, the handshakes that
start finish in a bounded time, the others wait in order, and a connection whose wait would outlast the agent's
patience is told at once, for the price of a few bytes, so that its agent backs off (with its jitter) instead of
timing out.

A connection asks for a slot only once it has sent its first bytes (the edge waits for them first): idle sockets
hold no slot. A slot holder that takes far longer than handshakes do now (a client that sends its TLS records a
byte at a time) is evicted when someone else waits, so slow clients cannot hold the door shut.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

# The cheap refusal: a TLS alert record (content type 21, version TLS 1.2, length 2) at level fatal (2) with the
# description user_canceled (90), "the handshake is cancelled for a reason unrelated to a protocol failure", sent
# in the clear instead of a ServerHello. No TLS state is made for it. OpenSSL clients raise an SSLError whose
# reason is TLSV1_ALERT_USER_CANCELLED: the agent takes it for "busy" and backs off; older agents back off too (an
# SSLError that is not an EOF is not a server that went away, so it gets the ordinary backoff, never the fast
# retries of a restart).
BUSY_ALERT = bytes((21, 3, 3, 0, 2, 2, 90))

HANDSHAKE_SLOTS = 128  # handshakes under way at once
# The longest wait for a slot: a connection expected to wait longer is refused when it asks, and one that has waited
# this long is refused then. The agent gives TCP, TLS and the upgrade 15 s (AgentConfig.connect_timeout), and the
# handshake's own deadline starts once it has a slot.
MAX_WAIT = 6.0
INITIAL_HANDSHAKE = 0.05  # seconds a slot is held, until handshakes have been measured
SMOOTHING = 0.1  # the weight of the latest handshake in the running mean
HOLD_FLOOR = 2.0  # a slot holder is never evicted before this ...
HOLD_FACTOR = 8.0  # ... nor before this many times the mean handshake

GO, WAIT, REFUSE = "go", "wait", "refuse"


@dataclass
class Admission:
    """What arrive() decided for the connection that asked (`verdict`), and what it did to others: holders to cancel
    (`evict`: their slots are already given on) and waiting connections that now hold a slot (`granted`: wake them)."""
    verdict: str
    evict: list[object] = field(default_factory=list)
    granted: list[object] = field(default_factory=list)


class HandshakeGate:
    """At most `slots` handshakes under way; the others wait first come, first served, unless their expected wait
    is over `max_wait` seconds: then they are refused. Times are the caller's clock (trio's)."""

    def __init__(self, *, slots: int = HANDSHAKE_SLOTS, max_wait: float = MAX_WAIT,
                 initial: float = INITIAL_HANDSHAKE, hold_floor: float = HOLD_FLOOR) -> None:
        self.slots, self.max_wait, self.hold_floor = slots, max_wait, hold_floor
        self.mean = initial  # seconds a slot is held by a handshake that finishes (running mean)
        self._holding: OrderedDict[object, float] = OrderedDict()  # token -> when it got its slot, oldest first
        self._queue: OrderedDict[object, float] = OrderedDict()  # token -> when it asked, first come first
        self.refused = 0
        self.evicted = 0

    @property
    def holding(self) -> int:
        return len(self._holding)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def expected_wait(self) -> float:
        """How long a connection asking now would wait for a slot: the queue ahead of it, served `slots` at a time.
        A guess on the short side (while handshakes slow down, the mean lags): a connection that turns out to wait
        longer is refused then, having cost nothing but its socket meanwhile."""
        if len(self._holding) < self.slots and not self._queue:
            return 0.0
        return (len(self._queue) + 1) * self.mean / self.slots

    def arrive(self, token: object, now: float) -> Admission:
        """A connection that has sent its first bytes asks for a slot."""
        if len(self._holding) < self.slots and not self._queue:
            self._holding[token] = now
            return Admission(GO)
        admission = Admission(REFUSE)
        if self.expected_wait() > self.max_wait:
            self._evict_stalled(now, admission)
            if self.expected_wait() > self.max_wait:
                self.refused += 1
                return admission
        admission.verdict = WAIT
        self._queue[token] = now
        admission.granted += self._grant(now)
        if token in self._holding:  # the eviction freed a slot and nobody waited before it
            admission.granted.remove(token)
            admission.verdict = GO
        return admission

    def gave_up(self, token: object) -> bool:
        """A connection waited max_wait without getting a slot: True when it is refused now (it left the line)."""
        if self._queue.pop(token, None) is None:
            return False
        self.refused += 1
        return True

    def leave(self, token: object, now: float, *, completed: bool) -> list[object]:
        """A connection's handshake is over (`completed`: it finished, however it was answered) or it went away
        (failed, timed out, evicted; calling it again is harmless). Returns the waiting connections that now hold a
        slot."""
        started = self._holding.pop(token, None)
        if started is None:
            self._queue.pop(token, None)
            return []
        if completed:
            self.mean += SMOOTHING * ((now - started) - self.mean)
        return self._grant(now)

    def evict_at(self) -> float:
        """When the oldest holder will have stalled, if it still holds its slot then (inf: no holder). A waiting
        connection that is not woken by then calls evict_stalled()."""
        if not self._holding:
            return math.inf
        return next(iter(self._holding.values())) + self._hold_limit()

    def evict_stalled(self, now: float) -> Admission:
        """Holders that have taken far longer than handshakes take now lose their slots to those waiting."""
        admission = Admission(WAIT)
        if self._queue:
            self._evict_stalled(now, admission)
        return admission

    def _hold_limit(self) -> float:
        return max(self.hold_floor, HOLD_FACTOR * self.mean)

    def _evict_stalled(self, now: float, admission: Admission) -> None:
        limit = self._hold_limit()
        while self._holding:
            token, started = next(iter(self._holding.items()))
            if now - started < limit:
                break
            del self._holding[token]
            self.evicted += 1
            admission.evict.append(token)
            admission.granted += self._grant(now)

    def _grant(self, now: float) -> list[object]:
        granted = []
        while self._queue and len(self._holding) < self.slots:
            token, _asked = self._queue.popitem(last=False)
            self._holding[token] = now
            granted.append(token)
        return granted
