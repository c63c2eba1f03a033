"""/metrics render time with N hosts (the text Prometheus scrapes).

    .venv/bin/python bench/metrics.py --hosts 1000

Builds N hosts with a realistic latest sample (8 cores, 3 disks, 2 interfaces, 2 temperatures, 1 GPU) and times
mbot.metrics.render, the work done per scrape besides reading the hosts table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import metrics, store  # noqa: E402
from mbot.metrics import Histogram, ServerStats  # noqa: E402


def host(i: int, now: float) -> store.Host:
    m = {"cpu": 12.5, "cpu_cores": [10.0] * 8, "load": [0.5, 0.4, 0.3], "ram": {"used": 8e9, "total": 16e9},
         "swap": {"used": 0.0, "total": 2e9},
         "disks": {d: {"used": 5e10, "total": 1e11} for d in ("/", "/home", "/var")},
         "disk_io": {"read": 1e5, "write": 2e5}, "net": {n: {"rx": 1e5, "tx": 2e5} for n in ("eth0", "wlan0")},
         "temps": {"cpu": 55.0, "nvme": 40.0}, "uptime": 1e5, "procs": 300,
         "gpus": [{"name": "NVIDIA H100", "util": 50.0, "vram_used": 4e10, "vram_total": 8e10, "temp": 60.0,
                   "power": 300.0}]}
    return store.Host(id=i, name=f"host{i}", owner=1, key_id=f"{i:016x}", created=now, facts={"interval": 5},
                      epoch=1, last_seq=1, last_ts=now, last_seen=now, last_metrics=m, samples_count=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=1000)
    args = parser.parse_args()
    now = time.time()
    hosts = [host(i, now) for i in range(args.hosts)]
    stats = ServerStats(args.hosts, 10**6, Histogram(), {"429": 1}, 0)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        text = metrics.render(hosts, stats, now)
        times.append(time.perf_counter() - t0)
    lines = text.count("\n")
    print(f"/metrics with {args.hosts} hosts: {lines} lines, {len(text) / 2**20:.1f} MiB, render median "
          f"{statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
