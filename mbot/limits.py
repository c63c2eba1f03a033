"""Limits against hostile or broken peers. Pure: time is passed in, nothing is read from a clock here.

- AuthThrottle: repeated wrong secrets from one address are answered ever more slowly, so guessing is pointless and
  a misconfigured agent cannot hammer the database; memory stays bounded whatever the number of addresses.
- FrameBucket: a token bucket per connection; an agent sends one frame per interval (and a few dozen batches when
  it replays an outage), so a flood far beyond that is closed instead of being fed to the writer.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


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
        return min(self.max_delay, 0.25 * 2 ** (entry.count - self.free))

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
