"""Charts over years: two years of 1-hour rollups for one host, then 30d, 90d, 1y and 2y charts as /plot and
`python -m mbot plot` draw them.

    .venv/bin/python bench/long_charts.py                 # 2 years of hourly buckets, ~45 series (bench/history.py's host)
    .venv/bin/python bench/long_charts.py --years 1

Writes the agg_1h rows directly (rolling up two years of 5-second samples would take an hour and measure the rollup,
which bench/history.py does), at the default tiers, then prints for each span the tier plotting chose, the points
per line, and the warm time of the query and of the render. Target: a 2y chart of cpu and ram under 1 s warm.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import charts, plotting, protocol, rollup, service, store  # noqa: E402
from mbot.rollup import DEFAULT_TIERS  # noqa: E402


def bench_host_metrics() -> dict:
    """The realistic host of bench/history.py (8 cores, 2 disks, 2 interfaces, 1 GPU)."""
    spec = importlib.util.spec_from_file_location("bench_history", ROOT / "bench" / "history.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.metrics(random.Random(1), time.time())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--years", type=float, default=2)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="mbot-bench-long-"))
    db = data / "mbot.sqlite3"
    conn = store.connect(db)
    metrics = protocol.validate_metrics(bench_host_metrics())
    names = list(protocol.flatten(metrics))
    now = time.time()
    buckets = int(args.years * 365 * 24)
    first = (int(now) // 3600 - buckets) * 3600
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    with store.transaction(conn):
        host_id = service.new_key(conn, "box1").host_id
        conn.execute("UPDATE hosts SET last_metrics = ? WHERE id = ?", (json.dumps(metrics), host_id))
        layout_id = conn.execute("INSERT INTO layouts (names) VALUES (?)", (json.dumps(names),)).lastrowid
        for i in range(buckets):
            avgs = rng.uniform(0, 100, len(names)).astype("<f4")
            store.put_agg_row(conn, "agg_1h", host_id, first + i * 3600, layout_id, 720, (avgs * 0.5).tobytes(),
                              avgs.tobytes(), (avgs * 1.5).tobytes())
    print(f"{buckets} hourly buckets x {len(names)} series written in {time.perf_counter() - started:.1f} s; "
          f"database {db.stat().st_size / 2**20:.0f} MiB")

    host = store.host_by_id(conn, host_id)
    assert host is not None
    spans = [("30d", 30), ("90d", 90), ("1y", 365), ("2y", 730)]
    for label, days in spans:
        span = days * 86400.0
        if span > args.years * 365 * 86400 + 3600:
            continue
        tier = rollup.choose_tier(now - span, now, DEFAULT_TIERS, now, interval=host.interval)
        times = []
        for _ in range(4):  # the first is the cold one
            t0 = time.perf_counter()
            spec = plotting.build_spec(conn, host, ["cpu", "ram"], span, None, None, DEFAULT_TIERS, ZoneInfo("UTC"),
                                       now)
            t1 = time.perf_counter()
            png = charts.render(spec)
            times.append((t1 - t0, time.perf_counter() - t1))
        query = statistics.median(t[0] for t in times[1:])
        render = statistics.median(t[1] for t in times[1:])
        points = max(len(line.points) for line in spec.lines)
        print(f"chart {label:>3}: tier {tier.name}, {points} points per line, warm {1000 * (query + render):.0f} ms "
              f"(query {1000 * query:.0f} ms, render {1000 * render:.0f} ms), cold {1000 * sum(times[0]):.0f} ms, "
              f"{len(png) // 1024} KiB PNG")
    conn.close()


if __name__ == "__main__":
    main()
