"""Flap damping: an alert that keeps starting and ending is told once as flapping, then kept quiet until it is
steady. Pure: alert lives (starts and ends of one alert key, with times) in, decisions and deadlines out
(mbot/telegram/alert_delivery.py does the telling).

- The FLAP_STARTS-th start of one alert within FLAP_WINDOW is not told as such: one "flapping" message instead, and
  from then on its starts and ends are quiet.
- Steady again: STEADY after its last end with no new start (STEADY_OK: the flapping message ends, a reply says so);
  or STEADY after a start that has not ended (STEADY_BAD: it has settled in trouble, and is told as a new alert).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)

FLAP_STARTS = 3  # the start that makes an alert flapping ...
FLAP_WINDOW = 30 * 60.0  # ... within this many seconds of the first of them
STEADY = 30 * 60.0  # a flapping alert is over once its state held this long

TELL, FLAPPING, QUIET = "tell", "flapping", "quiet"
STEADY_OK, STEADY_BAD = "steady ok", "steady bad"


@dataclass
class _Life:
    starts: deque[float] = field(default_factory=deque)
    flapping: bool = False
    open: bool = False
    changed: float = 0.0  # the last start or end
    count: int = 0  # lives while flapping, for the messages


class FlapDamper(Generic[K]):
    def __init__(self, starts: int = FLAP_STARTS, window: float = FLAP_WINDOW, steady: float = STEADY) -> None:
        self.starts, self.window, self.steady = starts, window, steady
        self._lives: dict[K, _Life] = {}

    def start(self, key: K, now: float) -> str:
        """TELL it as usual, FLAPPING (tell that instead), or QUIET."""
        life = self._lives.setdefault(key, _Life())
        life.open, life.changed = True, now
        if life.flapping:
            life.count += 1
            return QUIET
        life.starts.append(now)
        while life.starts and life.starts[0] < now - self.window:
            life.starts.popleft()
        if len(life.starts) >= self.starts:
            life.flapping, life.count = True, len(life.starts)
            life.starts.clear()
            return FLAPPING
        return TELL

    def end(self, key: K, now: float) -> str:
        """TELL it as usual, or QUIET (it is flapping)."""
        life = self._lives.get(key)
        if life is None:
            return TELL
        life.open, life.changed = False, now
        if life.flapping:
            return QUIET
        if not life.starts:
            del self._lives[key]  # nothing to remember
        return TELL

    def flapping(self, key: K) -> bool:
        life = self._lives.get(key)
        return life is not None and life.flapping

    def count(self, key: K) -> int:
        life = self._lives.get(key)
        return 0 if life is None else life.count

    def next_deadline(self) -> float | None:
        return min((life.changed + self.steady for life in self._lives.values() if life.flapping), default=None)

    def due(self, now: float) -> list[tuple[K, str, int]]:
        """Flapping alerts steady since STEADY: (key, STEADY_OK or STEADY_BAD, how many times it started while
        flapping); they are ordinary alerts again."""
        out = []
        for key, life in list(self._lives.items()):
            if life.flapping and life.changed + self.steady <= now:
                out.append((key, STEADY_BAD if life.open else STEADY_OK, life.count))
                del self._lives[key]
        return out

    def forget(self, key: K) -> None:
        self._lives.pop(key, None)
