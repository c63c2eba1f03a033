"""Link quality: the round trip from the server to each agent over the WebSocket it already has. Pure: no IO.

The server measures; the agent does nothing new. A probe is a WebSocket ping (an RFC 6455 control frame) with an
unpredictable payload, which the agent's WebSocket library answers with a pong by itself, so every agent version
takes part. Both ends of a round trip are read from the server's monotonic clock, never from anything the agent
says: a hostile agent can delay a pong (the link then looks worse, which is its own chart), but it cannot answer a
ping before it has read the payload, so an RTT is never negative nor shorter than the real path.

Over TCP nothing is lost for good; "lost" means a pong that did not come within `timeout` (a stalled link, an agent
whose loop is stuck, or one that never answers). While a ping is unanswered no new one is sent: each further
period without the pong counts as one more lost probe, so a dead link reads 100 % loss and the server holds one
ping per connection at most, whatever the agent does.

LinkProbe is one connection's side: when to probe (every `every` seconds, spread by +/- `spread` so that 5,000
agents reconnecting together do not probe together), what the last `window` probes say (LinkStats), and how that
reaches history: `fold` adds rtt, jitter and loss to the newest sample of a live frame as server-side values of that
sample (the `link` object of its metrics, which an agent cannot send: validation drops it), so they share its row,
its timestamp and every consumer of the catalogue (card, /plot, /setalert, /metrics).
"""
from __future__ import annotations

import dataclasses
import random
from collections import deque
from dataclasses import dataclass
from typing import Callable

from . import series as catalogue
from .protocol import Samples

# A frame of at most this many samples is live; longer ones are a replay of samples taken long ago, whose rows
# must not get today's round trip.
LIVE_ITEMS = 2


@dataclass(frozen=True)
class LinkPolicy:
    every: float = 10.0  # seconds between probes on one connection (on average) ...
    rate: float = 200.0  # ... or longer, so that all connections together send at most this many probes a second
    spread: float = 0.2  # each wait is every x (1 +/- spread), at random
    timeout: float = 5.0  # a pong later than this is a lost probe
    window: int = 6  # the stats of a sample are those of this many last probes (~1 min)


@dataclass(frozen=True)
class LinkStats:
    rtt: float | None  # ms, mean over the answered probes of the window (None: none answered)
    jitter: float | None  # ms, mean absolute difference of consecutive answered RTTs (RFC 3550's idea)
    loss: float  # percent of the window's probes that were lost
    probes: int

    def metrics(self) -> dict[str, float]:
        """The `link` object of a sample's metrics."""
        out = {"loss": self.loss}
        if self.rtt is not None and self.jitter is not None:
            out.update(rtt=self.rtt, jitter=self.jitter)
        return out


def stats_of(rtts: list[float | None]) -> LinkStats | None:
    """RTTs in seconds, oldest first, None for a lost probe -> the figures people see (ms, %)."""
    if not rtts:
        return None
    answered = [r * 1000.0 for r in rtts if r is not None]
    lost = len(rtts) - len(answered)
    rtt = sum(answered) / len(answered) if answered else None
    jitter = None
    if answered:
        steps = [abs(b - a) for a, b in zip(answered, answered[1:])]
        jitter = sum(steps) / len(steps) if steps else 0.0
    return LinkStats(rtt, jitter, 100.0 * lost / len(rtts), len(rtts))


class LinkProbe:
    """The probing of one connection. The driver (mbot.agents) asks `next_at`, sends a ping and says what happened:
    `answered(sent, now)` or, each time `deadline` passes without the pong, `overdue(now)`."""

    def __init__(self, policy: LinkPolicy, now: float, rng: Callable[[], float] = random.random,
                 connections: Callable[[], int] = lambda: 1) -> None:
        self.policy = policy
        self._rng = rng
        self._connections = connections  # how many agents the server holds: probes are paced by it
        # The first probe after one period, spread like the others (so probes of agents that reconnected together
        # drift apart); never at once, which also keeps short connections free of link figures.
        self.next_at = now + self._wait()
        self.deadline = float("inf")  # when the ping in flight counts as lost (inf: none in flight)
        self._results: deque[float | None] = deque(maxlen=policy.window)
        # The window's `link` object and its series, made once per change of the window rather than per sample.
        self._figures: tuple[dict[str, float], dict[str, float]] | None = None
        self._late = False  # the ping in flight was already counted as lost

    def sent(self, now: float) -> float:
        """A ping went out now; returns its deadline."""
        self.deadline = now + self.policy.timeout
        self._late = False
        return self.deadline

    def answered(self, sent: float, now: float) -> float:
        """Its pong came (possibly after some overdue()s). Returns the RTT in seconds, or -1 when it came too late to
        count (the loss was already counted). Schedules the next probe."""
        late = self._late or now > self.deadline
        rtt = max(0.0, now - sent)  # the clock is monotonic; max() only states the invariant
        if not late:
            self._results.append(rtt)
            self._figures = None
        self.deadline = float("inf")
        self.next_at = now + self._wait()
        return -1.0 if late else rtt

    def skip(self, now: float) -> None:
        """No probe this period (a speed test fills the connection: its queueing is not the link's quality)."""
        self.next_at = now + self._wait()

    def overdue(self, now: float) -> float:
        """The deadline passed without the pong: one lost probe; the next period's deadline (the same ping is still
        awaited: no new one is sent to a link that has not answered the last)."""
        self._results.append(None)
        self._figures = None
        self._late = True
        self.deadline = now + self._wait()
        return self.deadline

    def _wait(self) -> float:
        p = self.policy
        every = max(p.every, self._connections() / p.rate)
        return every * (1.0 + p.spread * (2.0 * self._rng() - 1.0))

    def stats(self) -> LinkStats | None:
        return stats_of(list(self._results))

    def fold(self, samples: Samples, live_items: int = LIVE_ITEMS) -> Samples:
        """Add the window's figures to the newest sample of a live frame (see the module docstring); `live_items`:
        more when the agent was asked to gather samples."""
        if not self._results or len(samples.items) > live_items:
            return samples
        if self._figures is None:
            stats = self.stats()
            assert stats is not None
            link = stats.metrics()
            self._figures = link, catalogue.flatten({"link": link})
        link, series = self._figures
        newest = samples.items[-1]
        folded = dataclasses.replace(newest, metrics={**newest.metrics, "link": link},
                                     series={**newest.series, **series})
        return Samples((*samples.items[:-1], folded))
