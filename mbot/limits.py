"""Limits against hostile or broken peers. Pure: time is passed in, nothing is read from a clock here.

- AuthThrottle: repeated wrong secrets from one address are answered ever more slowly, so guessing is pointless and
  a misconfigured agent cannot hammer the database; memory stays bounded whatever the number of addresses.
- FrameBucket: a token bucket per connection; an agent sends one frame per interval (and a few dozen batches when
  it replays an outage), so a flood far beyond that is closed instead of being fed to the writer.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence


@dataclass
class _Failures:
    count: int
    last: float


class AuthThrottle:
    def __init__(self, *, free: int = 5, window: float = 300.0, max_delay: float = 8.0,
                 max_addresses: int = 10_000) -> None:
        self.free = free  # failures allowed before answers slow down (typos, a restart with an old .env)
        self.window = window  # failures older than this are forgotten
        self.max_delay = max_delay  # stays inside the 10 s handshake deadline
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, _Failures] = OrderedDict()

    def delay(self, address: str, now: float) -> float:
        """Seconds to wait before answering this address's next failed attempt."""
        entry = self._seen.get(address)
        if entry is None or now - entry.last > self.window or entry.count < self.free:
            return 0.0
        return min(self.max_delay, 0.25 * 2.0 ** (entry.count - self.free))

    def failed(self, address: str, now: float) -> None:
        entry = self._seen.pop(address, None)
        if entry is None or now - entry.last > self.window:
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        self._seen[address] = entry  # most recent last: eviction drops the stalest address
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._seen.pop(address, None)


class FrameBucket:
    def __init__(self, *, rate: float = 20.0, burst: float = 200.0, now: float = 0.0) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at = burst, now

    def take(self, now: float) -> bool:
        """False when the connection is over its rate: the caller closes it."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


# --- the table of bounds on what an agent may send ------------------------------------------------------------
#
# One place for every number the server accepts from the network (docs/protocol.md, "Limits", mirrors it). A frame
# that breaks a structural bound is refused with a close code; labels are cleaned rather than refused, because a
# host with one odd mount name must not be locked out; samples outside the time window are acked but not stored,
# and counted (never dropped silently).

MAX_FRAME_BYTES = 1 << 20  # one WebSocket message
MAX_BATCH = 1000  # samples in one `samples` frame
MAX_SERIES = 4096  # series in one sample, after flattening
MAX_ITEMS = 256  # entries in any one list or map (cores, disks, interfaces, sensors, GPUs)
MAX_CORES = 1024  # cpu_cores is the one list that can legitimately be longer
MAX_LABEL = 128  # characters of a label (mount, interface, sensor, GPU name) or hello string; longer is cut
MAX_INT = 2**53  # integers above this lose precision in JSON and float storage

MAX_SAMPLE_AGE = 7 * 86400.0  # older samples (a replay after more than a week away) are acked, counted, not stored
MAX_SAMPLE_AHEAD = 300.0  # samples from further in the future (a clock far ahead) are acked, counted, not stored
TS_FLOOR, TS_CEILING = 1e9, 4e9  # 2001 .. 2096: a timestamp outside is garbage, not a clock problem

# Sane ranges of values, by unit. Out of range is an invalid frame (1007): a broken collector, not a reading.
PERCENT = (0.0, 100.0)
BYTES = (0.0, 2.0**60)  # an exbibyte
BYTE_RATE = (0.0, 2.0**44)  # 16 TiB/s
CELSIUS = (-273.15, 1000.0)
LOAD = (0.0, 1e6)
SECONDS = (0.0, 1e10)  # uptime: three centuries
COUNT = (0.0, 1e9)  # processes, dropped samples
WATTS = (0.0, 1e5)
MILLISECONDS = (0.0, 60_000.0)  # link round trips (measured by the server, bounded by its probe timeout)
DAYS = (-36_500.0, 36_500.0)  # a TLS certificate's days left (negative: expired), a century either way
INTERVAL = (0.05, 86400.0)  # seconds between samples (hello.interval); see MIN_BUDGET_INTERVAL

# Volume per host.
MIN_BUDGET_INTERVAL = 0.05  # the shortest interval a hello may announce: 20 samples/s
BUDGET_SLACK = 1.25  # live samples may arrive this much faster than the interval (timer jitter, clock drift)
BUDGET_BURST = 30.0  # samples a connection may send at once beyond what its absence earned
REPLAY_RATE = 2000.0  # samples/s at most, replays included
LAYOUT_BUDGET_BYTES = 1 << 20  # new series-name sets a host may introduce at once (JSON bytes) ...
LAYOUT_REFILL_PER_S = (1 << 20) / 3600.0  # ... and afterwards per second: 1 MiB an hour, about 24 MiB a day

# Connections before authentication.
PREAUTH_PER_ADDRESS = 64
PREAUTH_TOTAL_MAX = 1024  # also at most a quarter of RLIMIT_NOFILE (see preauth_total)


def clean_label(value: str, limit: int = MAX_LABEL) -> str:
    """A label as it will be stored, charted and exported: control characters and lone surrogates (which no UTF-8
    encoder accepts, so they would break /metrics and Telegram) become U+FFFD; over-long labels are cut with '…'."""
    # isascii() is a flag CPython keeps on the string: most labels skip the encode that finds lone surrogates.
    if value.isprintable() and (value.isascii() or not _has_surrogate(value)):
        cleaned = value
    else:
        cleaned = "".join("\ufffd" if not ch.isprintable() or "\ud800" <= ch <= "\udfff" else ch for ch in value)
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def preauth_total(nofile_soft: int) -> int:
    """How many connections may wait for authentication at once: enough for a reconnect storm, never so many that
    they take the file descriptors authenticated agents need."""
    return max(16, min(PREAUTH_TOTAL_MAX, nofile_soft // 4))


class TokenBucket:
    """Tokens refill at `rate` per second up to `capacity`; `take(n)` spends them or says no (spending nothing)."""

    def __init__(self, *, rate: float, capacity: float, tokens: float | None = None, now: float = 0.0) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens = capacity if tokens is None else min(capacity, tokens)
        self._at = now

    def take(self, amount: float, now: float) -> bool:
        self._refill(now)
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True

    def reserve(self, amount: float, now: float) -> float:
        """Spend `amount` even if it is not there yet; returns the seconds until the bucket is back in credit."""
        self._refill(now)
        self.tokens -= amount
        return max(0.0, -self.tokens / self.rate)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self._at) * self.rate)
        self._at = now


class SampleBudget:
    """How many samples a host may send: one per announced interval (with slack), and what its time away earned.

    Credit accrues at the announced rate whether the host is connected or not, up to MAX_SAMPLE_AGE of samples (the
    oldest a server stores): a host away for an hour at 5 s may then replay its 720 samples, and in the long run no
    host stores more than one sample per interval (plus BUDGET_BURST), however it reconnects. The budget belongs to
    the host, not to a connection. It starts with the credit the time since the host was last seen (never seen:
    since its key was made) accounts for. Only seqs above the highest one already charged in the same epoch cost
    anything: a sample resent after a cut connection is stored at most once, so it is paid for once. A second
    bucket caps the speed of any sending, replays included, at REPLAY_RATE; over it the reader slows down.
    """

    def __init__(self, interval: float, *, since: float, now: float, wall_now: float) -> None:
        self._live = TokenBucket(rate=1.0, capacity=1.0, now=now)
        self.set_interval(interval)
        self._live.tokens = min(self._live.capacity, max(0.0, wall_now - since) / self.interval + BUDGET_BURST)
        self._speed = TokenBucket(rate=REPLAY_RATE, capacity=REPLAY_RATE, now=now)
        self._epoch, self._charged = 0, 0

    def set_interval(self, interval: float) -> None:
        """A new hello: the rate follows the interval it announces; credit already earned stays."""
        self.interval = max(MIN_BUDGET_INTERVAL, interval)
        self._live.rate = BUDGET_SLACK / self.interval
        self._live.capacity = MAX_SAMPLE_AGE / self.interval + BUDGET_BURST

    def take(self, epoch: int, seqs: Sequence[int], now: float) -> float | None:
        """Charge the samples with these seqs (increasing). None: over budget (the caller closes the connection;
        nothing is charged). Otherwise how many seconds to wait before reading on: speed over REPLAY_RATE is
        slowed down (backpressure), not punished."""
        if epoch != self._epoch:
            self._epoch, self._charged = epoch, 0
        new = [seq for seq in seqs if seq > self._charged]
        if not new:
            return 0.0
        if not self._live.take(len(new), now):
            return None
        self._charged = new[-1]
        return self._speed.reserve(len(new), now)


class PreAuthGate:
    """Connections that have not authenticated yet: at most `per_address` from one address and `total` in all.

    Over the per-address cap a new connection is refused at once (one address cannot hold more). Over the total,
    the OLDEST waiting connection is evicted to make room: an attacker with many addresses then only churns its own
    sockets, while a real agent, which authenticates within milliseconds, still gets through.
    """

    def __init__(self, *, per_address: int = PREAUTH_PER_ADDRESS, total: int = PREAUTH_TOTAL_MAX) -> None:
        self.per_address, self.total = per_address, total
        self._by_address: dict[str, int] = {}
        self._waiting: OrderedDict[object, str] = OrderedDict()
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, token: object, address: str) -> list[object] | None:
        """None: refuse this connection. Otherwise it is admitted, and the returned tokens must be evicted."""
        if self._by_address.get(address, 0) >= self.per_address:
            self.refused += 1
            return None
        evict = []
        while len(self._waiting) >= self.total:
            oldest, oldest_address = self._waiting.popitem(last=False)
            self._forget(oldest_address)
            evict.append(oldest)
        self.evicted += len(evict)
        self._waiting[token] = address
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return evict

    def release(self, token: object) -> None:
        """The connection authenticated, failed or closed (calling it twice, or after eviction, is harmless)."""
        address = self._waiting.pop(token, None)
        if address is not None:
            self._forget(address)

    def _forget(self, address: str) -> None:
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]


class LogSummary:
    """Repeated events of one key (a flapping host, a misconfigured agent) are logged the first `free` times in a
    window, then summarised: `check` says whether to log this one and how many were held back since the last."""

    def __init__(self, *, free: int = 3, window: float = 600.0, max_keys: int = 10_000) -> None:
        self.free, self.window, self.max_keys = free, window, max_keys
        self._keys: OrderedDict[object, list[float]] = OrderedDict()  # key -> [window start, logged, held]

    def check(self, key: object, now: float) -> tuple[bool, int]:
        entry = self._keys.pop(key, None)
        if entry is None or now - entry[0] >= self.window:
            held = int(entry[2]) if entry is not None else 0
            entry = [now, 0.0, 0.0]
        else:
            held = 0
        self._keys[key] = entry
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        if entry[1] < self.free:
            entry[1] += 1
            return True, held
        entry[2] += 1
        return False, held


# --- snapshots: lists whose members come and go (docs/protocol.md, "Snapshots") --------------------------------
#
# A snapshot is the whole current list of one kind (processes now), replacing the previous one; it is never a float
# series. Bounded like everything else an agent sends: a snapshot that breaks a bound is refused (1008 for size and
# rate, 1007 for a field no working collector produces); one of a kind or version this server does not know is
# ignored (a newer agent talking to an older server keeps its samples flowing).

MAX_SNAPSHOT_ITEMS = 500  # members in one snapshot
MAX_SNAPSHOT_BYTES = 256 * 1024  # its items as stored (UTF-8 JSON)
MAX_PID = 2**32  # Linux pid_max is at most 2^22; Windows process ids are 32-bit
MAX_PROCESS_NAME = MAX_LABEL
MAX_PROCESS_USER = 64
MAX_PROCESS_CMD = 512  # a command line is cut here (the agent sends less)
MAX_CONTAINER_IMAGE = 256  # an image reference (registry/path:tag@digest) is cut here
MAX_CONTAINER_STATE = 32  # Engine API states: running, exited, restarting ...; health: healthy, unhealthy, starting
STATE = (0.0, 3.0)  # a container's `down`: 0 up, 1 not running, 2 unhealthy, 3 restarting over and over
SNAPSHOT_MIN_INTERVAL = 1.0  # per kind at most one snapshot per max(interval, this) (x BUDGET_SLACK) ...
SNAPSHOT_BURST = 10.0  # ... plus this many at once (a reconnect sends the current one again)


class SnapshotBudget:
    """How many snapshots of each kind a host may send: one per announced interval (at least SNAPSHOT_MIN_INTERVAL)
    with slack, bursts of SNAPSHOT_BURST. Per host, across its connections, like SampleBudget: reconnecting earns
    nothing. Only kinds the server knows reach it, so it holds a bucket per known kind at most."""

    def __init__(self, interval: float) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self.set_interval(interval)

    def set_interval(self, interval: float) -> None:
        self.interval = max(SNAPSHOT_MIN_INTERVAL, interval)
        for bucket in self._buckets.values():
            bucket.rate = BUDGET_SLACK / self.interval

    def take(self, kind: str, now: float) -> bool:
        """False: over budget (the caller closes the connection; nothing is charged)."""
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = TokenBucket(rate=BUDGET_SLACK / self.interval, capacity=SNAPSHOT_BURST,
                                                       now=now)
        return bucket.take(1.0, now)

# The inventory (hello's `inventory`, the `inventory` snapshot; docs/protocol.md, "Inventory").
MAX_INVENTORY_ITEMS = 64  # disks, interfaces, GPUs
MAX_NIC_ADDRS = 16  # addresses of one interface
MAX_INVENTORY_BYTES = 64 * 1024  # the whole object as stored (UTF-8 JSON); a real one is 1 to 10 KiB
MAX_LINK_SPEED = 10.0**7  # Mbit/s: 10 Tbit/s

# systemd services (the `services` snapshot; docs/protocol.md, "Services").
MAX_UNIT_NAME = 256  # systemd's own limit on a unit name
MAX_UNIT_STATE = 32

# Checks from the host (the samples' `checks` and the `checks` snapshot; docs/protocol.md, "Checks").
MAX_CHECKS = 20  # checks of one host (mbot.checks.MAX_PER_HOST): entries in a sample's `checks`, snapshot members
MAX_CHECK_NAME = 40
MAX_CHECK_ERROR = 200  # characters of a check's error text
