"""The stability test: a burst of timed probes to one agent, and what they say. Pure: no IO.

`/stability NAME [INTERVAL] [DURATION]` (and the card's Stability button): the server sends a WebSocket ping every
INTERVAL (1 ms to 1 s, default 100 ms) for DURATION (up to 10 min, default 60 s), and the agent's WebSocket library
answers each with a pong, as it does the link probes (mbot/linkquality.py). Who sends decides who can lie: here both
ends of every round trip are the server's monotonic clock and each payload is unpredictable, so an agent can only
make its link look worse, never better, and no RTT is negative. (An agent that sent timestamped probes itself would
report figures the server could only believe.) Any agent version takes part; nothing new runs on the host.

StabilityRun is the test's bookkeeping: when probe i is due, how many may be in flight at once (a stalled link, or
a server too busy to keep up, does not pile up pings: a slot with too many in flight is skipped, not sent, and said
so apart from the losses), each probe's RTT or its loss, the figures (p50, p95, max, jitter, loss) and the progress
line. Bounds that keep one user's test from starving
other agents (one test per host, a total probe rate per server) live in StabilityBudget.
"""
from __future__ import annotations

import math
import re
from array import array
from dataclasses import dataclass, field
from typing import Sequence

from .durations import format_duration, parse_duration
from .i18n import _, decimal, n_, number

MIN_INTERVAL, MAX_INTERVAL, DEFAULT_INTERVAL = 0.001, 1.0, 0.1
MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 1.0, 600.0, 60.0
PROBE_TIMEOUT = 2.0  # a pong later than this is a lost probe
MAX_IN_FLIGHT = 256  # unanswered pings at once, per test
MAX_RATE = 1000.0  # probes per second, all running tests of the server together (one at 1 ms)

USAGE = "Usage: /stability NAME [INTERVAL] [DURATION]"  # the syntax is the same in every language
_INTERVAL = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s)?", re.IGNORECASE)


class StabilityUsageError(ValueError):
    """Bad arguments; str(self) starts with the usage line and says what is wrong."""


@dataclass(frozen=True)
class StabilitySpec:
    name: str
    interval: float  # seconds
    duration: float  # seconds

    @property
    def count(self) -> int:
        return max(1, int(round(self.duration / self.interval)))


def _usage(problem: str) -> StabilityUsageError:
    return StabilityUsageError(_("Usage: {usage}", usage=USAGE.removeprefix("Usage: ")) + "\n" + problem)


def parse_interval(text: str) -> float:
    """"100ms", "0.5s", "1s", or a plain number of milliseconds -> seconds, within 1 ms and 1 s."""
    match = _INTERVAL.fullmatch(text.strip())
    if match is None:
        raise _usage(_("INTERVAL {text!r} is not valid: try 100ms, 1ms or 1s.", text=text[:32]))
    seconds = float(match[1]) / (1 if (match[2] or "ms").lower() == "s" else 1000)
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise _usage(_("INTERVAL must be between 1 ms and 1 s, got {interval}.", interval=interval_text(seconds)))
    return seconds


def parse_stability(args: Sequence[str]) -> StabilitySpec:
    """/stability NAME [INTERVAL] [DURATION]."""
    if not 1 <= len(args) <= 3:
        raise _usage(_("e.g. /stability box1, /stability box1 10ms 2m; INTERVAL 1ms to 1s (default 100ms), "
                       "DURATION up to 10m (default 60s)."))
    interval = parse_interval(args[1]) if len(args) > 1 else DEFAULT_INTERVAL
    duration = DEFAULT_DURATION
    if len(args) > 2:
        try:
            duration = parse_duration(args[2])
        except ValueError:
            raise _usage(_("DURATION {text!r} is not a duration: e.g. 30s, 2m, 10m.", text=args[2][:32])) from None
        if not MIN_DURATION <= duration <= MAX_DURATION:
            raise _usage(_("DURATION must be between 1 s and 10 min, got {duration}.",
                           duration=format_duration(duration)))
    return StabilitySpec(args[0], interval, duration)


def interval_text(seconds: float) -> str:
    """An interval as typed: 1 ms, 100 ms, 1000 ms."""
    return _("{ms} ms", ms=decimal(f"{seconds * 1000:g}"))


def ms_text(ms: float) -> str:
    return _("{ms} ms", ms=decimal(f"{ms:.2f}" if ms < 1 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"))


def progress_every(duration: float) -> float:
    """Seconds between edits of the progress message: a few per test, at most one every 5 s (Telegram allows about
    one edit a second per chat), at least one every second."""
    return min(5.0, max(1.0, duration / 4))


# --- one run -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    sent: int  # probes sent
    answered: int
    lost: int  # sent, not answered within PROBE_TIMEOUT
    skipped: int  # not sent: MAX_IN_FLIGHT were unanswered when their time came
    p50: float  # ms (NaN when nothing was answered)
    p95: float
    max: float
    jitter: float  # ms, mean absolute change between consecutive answered probes
    elapsed: float  # seconds the test ran

    @property
    def loss(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0

    @property
    def slots(self) -> int:
        return self.sent + self.skipped

    @property
    def rate(self) -> float:
        """Probes sent per second."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


PROGRESS_WINDOW = 5000  # the progress line's p50 is over the last this many answers (cheap: no full sort)


@dataclass
class StabilityRun:
    spec: StabilitySpec
    start: float  # the server's monotonic clock
    # Per slot, in ms; NaN: lost, skipped or awaited. An array, not a list of floats: 600,000 slots (1 ms for 10
    # min) take 4.8 MB.
    rtts: array[float] = field(default_factory=lambda: array("d"))
    skipped: list[int] = field(default_factory=list)  # slots not sent
    in_flight: int = 0
    answers: int = 0
    worst: float = 0.0  # ms
    ended: float | None = None

    def due(self, i: int) -> float:
        return self.start + i * self.spec.interval

    def offset(self, i: int) -> float:
        """When slot i was due, in seconds after the start."""
        return i * self.spec.interval

    def slot(self, i: int) -> bool:
        """Probe i's time came: True to send it, False when too many are in flight (skipped)."""
        self.rtts.append(math.nan)
        if self.in_flight >= MAX_IN_FLIGHT:
            self.skipped.append(i)
            return False
        self.in_flight += 1
        return True

    def answered(self, i: int, sent: float, now: float) -> None:
        self.in_flight -= 1
        rtt = now - sent
        if 0 <= rtt <= PROBE_TIMEOUT:  # monotonic clock: never negative; later than the timeout is lost
            self.rtts[i] = rtt * 1000.0
            self.answers += 1
            self.worst = max(self.worst, rtt * 1000.0)

    def given_up(self, i: int) -> None:
        """No pong within the timeout (or the test ended first): lost."""
        self.in_flight -= 1

    def end(self, now: float) -> None:
        self.ended = now

    def answered_points(self) -> list[tuple[float, float]]:
        """(seconds after the start, RTT ms) of each answered probe."""
        return [(self.offset(i), r) for i, r in enumerate(self.rtts) if not math.isnan(r)]

    def lost_offsets(self) -> list[float]:
        """When each probe that was sent and not answered was due."""
        skipped = set(self.skipped)
        return [self.offset(i) for i, r in enumerate(self.rtts) if math.isnan(r) and i not in skipped]

    def figures(self, now: float | None = None) -> Figures:
        """The whole test's figures: a sort of every answer (run it off the event loop for a long test)."""
        answered = [r for r in self.rtts if not math.isnan(r)]
        ordered = sorted(answered)
        steps = [abs(b - a) for a, b in zip(answered, answered[1:])]
        end = self.ended if self.ended is not None else (now if now is not None else self.start)
        sent = len(self.rtts) - len(self.skipped)
        return Figures(sent, len(answered), sent - len(answered), len(self.skipped), _quantile(ordered, 0.5),
                       _quantile(ordered, 0.95), ordered[-1] if ordered else math.nan,
                       sum(steps) / len(steps) if steps else 0.0, max(0.0, end - self.start))

    def progress(self, now: float) -> str:
        """The progress line, cheap enough for the event loop whatever the test's size."""
        sent = len(self.rtts) - len(self.skipped)
        lost = sent - self.answers - self.in_flight
        done = min(100, int(100 * (now - self.start) / self.spec.duration))
        # English keeps "probes" for one too: the CLI's nettest shows these lines as they always were.
        line = n_("{done} %: {n} probes", "{done} %: {n} probes", sent, done=done)
        if self.answers:
            recent: list[float] = []
            for r in reversed(self.rtts):
                if not math.isnan(r):
                    recent.append(r)
                    if len(recent) == PROGRESS_WINDOW:
                        break
            line += ", " + _("p50 {p50} lately, max {max}", p50=ms_text(_quantile(sorted(recent), 0.5)),
                             max=ms_text(self.worst))
        line += ", " + _("{n} lost so far", n=lost)
        return line + (", " + _("{n} skipped", n=len(self.skipped)) if self.skipped else "")


def caption(host_name: str, spec: StabilitySpec, f: Figures) -> str:
    """The chart's caption: the figures people asked for, and what was measured."""
    lines = [n_("Stability of {name}: {n} probes every {interval} for {duration}",
                "Stability of {name}: {n} probes every {interval} for {duration}", f.sent, name=host_name,
                interval=interval_text(spec.interval), duration=format_duration(round(f.elapsed)))]
    if f.answered:
        lines.append(_("RTT p50 {p50} · p95 {p95} · max {max} · jitter {jitter}", p50=ms_text(f.p50),
                       p95=ms_text(f.p95), max=ms_text(f.max), jitter=ms_text(f.jitter)))
    lines.append(_("Loss {loss} % ({lost} of {sent} not answered within {timeout} s)", loss=number(f.loss),
                   lost=f.lost, sent=f.sent, timeout=f"{PROBE_TIMEOUT:g}"))
    if f.skipped:
        lines.append(n_("{n} probes not sent: {limit} were unanswered when their time came (a stalled link, or a "
                        "server too busy for this INTERVAL)",
                        "{n} probes not sent: {limit} were unanswered when their time came (a stalled link, or a "
                        "server too busy for this INTERVAL)", f.skipped, limit=MAX_IN_FLIGHT))
    lines.append(_("Measured: the server's WebSocket to the agent (its TLS connection), not the internet."))
    return "\n".join(lines)


# --- who may run one ---------------------------------------------------------------------------------------------


class StabilityBudget:
    """One test per host at a time, and at most MAX_RATE probes per second over all running tests."""

    def __init__(self, max_rate: float = MAX_RATE) -> None:
        self.max_rate = max_rate
        self._running: dict[int, float] = {}  # host id -> its probe rate

    def refusal(self, host_id: int, interval: float) -> str | None:
        """Why a test cannot start now (None: it may; call take())."""
        if host_id in self._running:
            return _("a stability test of this host is already running; wait until it ends.")
        if sum(self._running.values()) + 1.0 / interval > self.max_rate:
            return _("the server is running other stability tests at its limit of {rate} probes/s; try again when "
                     "they end, or with a longer INTERVAL.", rate=f"{self.max_rate:.0f}")
        return None

    def take(self, host_id: int, interval: float) -> None:
        self._running[host_id] = 1.0 / interval

    def release(self, host_id: int) -> None:
        self._running.pop(host_id, None)

    def running(self, host_id: int) -> bool:
        return host_id in self._running
