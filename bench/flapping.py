"""Alert messages per host-hour for a flapping host (issue 16): offline and online every PERIOD (default 2 min: half
of it silent, half of it sending a sample every 5 s), for an hour, through the pure engine with its default offline
delay (30 s). Each kind of event becomes one chat message (mbot.alerting), so events are messages.

    .venv/bin/python bench/flapping.py [--period 120] [--hours 1]
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mbot.alerts import AlertEngine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--period", type=float, default=120.0, help="seconds of one offline+online cycle")
    parser.add_argument("--hours", type=float, default=1.0)
    args = parser.parse_args()
    engine = AlertEngine(now=0.0)
    events: list[object] = []
    step, t, end = 5.0, 0.0, args.hours * 3600
    engine.host_seen(1, t, step)
    while t < end:
        if t % args.period < args.period / 2:  # up: a sample every 5 s
            events += engine.observe(1, t, {}, t)
        while (deadline := engine.next_deadline()) is not None and deadline <= t + step:
            events += engine.tick(deadline)
        t += step
    kinds = collections.Counter(type(e).__name__ for e in events)
    print(f"{len(events) / args.hours:.0f} messages per host-hour ({dict(kinds)})")


if __name__ == "__main__":
    main()
