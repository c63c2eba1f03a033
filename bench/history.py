"""History benchmark: 30 days of 5-second samples for one host, rolled up, kept, and charted.

    .venv/bin/python bench/history.py                 # 30 days, 1,000 charts for the memory figure
    .venv/bin/python bench/history.py --days 7 --charts 200

Inserts through the store API (the single writer, in replay-sized batches), runs the rollups and the retention at
the default tiers as the server's task does, then prints the bytes on disk per host, the warm time of 1h, 24h, 7d
and 30d charts (query + render), and the RSS after N charts. Targets: a 30-day chart under 0.5 s warm; under 20 MB
on disk per host for 30 days at the default retention.
"""
from __future__ import annotations

import argparse
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import charts, history, plotting, protocol, service, store  # noqa: E402
from mbot.rollup import DEFAULT_TIERS  # noqa: E402
from mbot.writer import Writer  # noqa: E402

INTERVAL = 5.0


def metrics(rng: random.Random, t: float) -> dict:
    """A realistic host: 8 cores, 2 disks, 2 interfaces, 2 temperatures, 1 GPU (~45 series)."""
    daily = 0.5 + 0.5 * math.sin(t / 86400 * 2 * math.pi)
    return {
        "cpu": min(100.0, 30 * daily + rng.uniform(0, 20)), "cpu_cores": [rng.uniform(0, 100) for _ in range(8)],
        "load": [rng.uniform(0, 4) for _ in range(3)],
        "ram": {"used": 8e9 + 4e9 * daily, "total": 16e9}, "swap": {"used": 1e8, "total": 2e9},
        "disks": {"/": {"used": 5e10, "total": 1e11}, "/home": {"used": 2e11, "total": 5e11}},
        "disk_io": {"read": rng.uniform(0, 1e7), "write": rng.uniform(0, 1e7)},
        "net": {"eth0": {"rx": rng.uniform(0, 1e6), "tx": rng.uniform(0, 1e6)},
                "wlan0": {"rx": rng.uniform(0, 1e4), "tx": rng.uniform(0, 1e4)}},
        "temps": {"cpu": rng.uniform(40, 70), "nvme": rng.uniform(30, 50)},
        "uptime": t, "procs": 300,
        "gpus": [{"name": "NVIDIA H100", "util": rng.uniform(0, 100), "vram_used": 4e10, "vram_total": 8e10,
                  "temp": rng.uniform(40, 80), "power": rng.uniform(100, 600)}],
    }


async def insert(db: Path, host_id: int, start: float, count: int) -> float:
    writer = Writer(db)
    rng = random.Random(1)
    template = protocol.validate_metrics(metrics(rng, start))
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.hello(host_id, protocol.Hello("bench", 1, INTERVAL, {"agent": "bench", "interval": INTERVAL}))
        batch: list[protocol.Sample] = []
        for seq in range(1, count + 1):
            ts = start + seq * INTERVAL
            m = protocol.validate_metrics(metrics(rng, ts)) if seq % 60 == 0 else template
            batch.append(protocol.Sample(seq, ts, m, protocol.flatten(m)))
            if len(batch) == 500:
                await writer.samples(host_id, 1, protocol.Samples(tuple(batch)), lambda seq: None)
                batch = []
        if batch:
            await writer.samples(host_id, 1, protocol.Samples(tuple(batch)), lambda seq: None)
        await writer.call(lambda conn: None)
        writer.close()
    return time.perf_counter() - started


def maintain(db: Path, now: float) -> tuple[float, float]:
    conn = store.connect(db)
    t0 = time.perf_counter()
    steps = []
    while True:
        step_start = time.perf_counter()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            folded = history.rollup_step(conn)
        steps.append(time.perf_counter() - step_start)
        if folded == 0:
            break
    t1 = time.perf_counter()
    steps.sort()
    # What ingest can wait behind: one step holds the write lock (the server runs steps on its single writer).
    print(f"rollup steps of {history.STEP_ROWS} rows: median {statistics.median(steps) * 1000:.1f} ms, "
          f"max {steps[-1] * 1000:.1f} ms (the longest the writer is held)")
    while True:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if history.retention_step(conn, DEFAULT_TIERS, now) < history.DELETE_ROWS:
                break
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--charts", type=int, default=1000)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="mbot-bench-history-"))
    db = data / "mbot.sqlite3"
    conn = store.connect(db)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        host_id = service.new_key(conn, "box1").host_id
    conn.close()
    count = int(args.days * 86400 / INTERVAL)
    now = time.time()
    start = now - count * INTERVAL
    inserted = trio.run(insert, db, host_id, start, count)
    print(f"inserted {count} samples ({args.days:g} days at {INTERVAL:g} s) through the writer in {inserted:.1f} s "
          f"= {count / inserted:,.0f} samples/s")
    rolled, retained = maintain(db, now)
    print(f"rollup of all of it: {rolled:.1f} s ({count / rolled:,.0f} samples/s); retention + VACUUM {retained:.1f} s")
    size = sum(f.stat().st_size for f in data.glob("mbot.sqlite3*"))
    conn = store.connect(db, readonly=True)
    rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("samples", "agg_1m", "agg_10m",
                                                                                   "agg_1h")}
    print(f"on disk for this host at default retention: {size / 2**20:.1f} MiB (target < 20 MB); rows {rows}")

    host = store.host_by_id(conn, host_id)
    for label, span in (("1h", 3600), ("24h", 86400), ("7d", 7 * 86400), ("30d", 30 * 86400)):
        times = []
        for _ in range(6):  # the first is the cold one
            t0 = time.perf_counter()
            spec = plotting.build_spec(conn, host, ["cpu", "ram"], span, None, None, DEFAULT_TIERS,
                                       ZoneInfo("UTC"), now)
            t1 = time.perf_counter()
            charts.render(spec)
            times.append((t1 - t0, time.perf_counter() - t1))
        query = statistics.median(t[0] for t in times[1:])
        render = statistics.median(t[1] for t in times[1:])
        points = max(len(line.points) for line in spec.lines)
        print(f"chart {label:>3}: warm {1000 * (query + render):.0f} ms (query {1000 * query:.0f} ms, render "
              f"{1000 * render:.0f} ms), {points} points per line")

    process = psutil.Process()
    rss_before = process.memory_info().rss
    spans = (3600, 86400, 7 * 86400, 30 * 86400)
    for i in range(args.charts):
        spec = plotting.build_spec(conn, host, ["cpu", "ram"], spans[i % 4], None, None, DEFAULT_TIERS,
                                   ZoneInfo("UTC"), now)
        charts.render(spec)
        if i == 99:
            rss_100 = process.memory_info().rss
    rss_after = process.memory_info().rss
    print(f"RSS: before charts {rss_before / 2**20:.0f} MiB, after 100 {rss_100 / 2**20:.0f} MiB, "
          f"after {args.charts} {rss_after / 2**20:.0f} MiB")
    conn.close()


if __name__ == "__main__":
    main()
