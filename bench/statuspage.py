"""What one look at a status page costs: its hosts' uptime over 24 h and 30 d from a real sqlite file.

    .venv/bin/python bench/statuspage.py                 # 50 hosts, full history (a sample every minute)
    .venv/bin/python bench/statuspage.py --hosts 100 --looks 20

Fills agg_1m (24 h) and agg_10m (30 d) with one row per bucket and host, with a ten-minute hole a day, then times
the page's measurement (mbot/telegram/statuspages.py `_measure`: two index scans per host, in the worker thread that
the server would use) and the rendering of its text. A page is looked at once a minute at most, more often only
when its hosts' alert events wake it (then every 5 s at most).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import statuspage, store  # noqa: E402
from mbot.model import StatusPage  # noqa: E402
from mbot.telegram import views  # noqa: E402
from mbot.telegram.statuspages import _measure  # noqa: E402


def fill(conn, hosts: int, now: float) -> None:
    blob = b"\0\0\0\0"
    with store.transaction(conn):
        for i in range(hosts):
            store.insert_host(conn, name=f"box{i}", owner=1, key_id=f"k{i:08d}", secret_hash=f"h{i}",
                              created=now - 60 * 86400)
        conn.execute("UPDATE hosts SET last_seen = ?", (now - 2,))
        for host_id in range(1, hosts + 1):
            for table, width, span in (("agg_1m", 60, 86400), ("agg_10m", 600, 30 * 86400)):
                first = int(now - span) // width * width
                for bucket in range(first, int(now), width):
                    if (bucket // width) % (86400 // width) in range(0, max(1, 600 // width)):
                        continue  # the daily ten-minute hole
                    store.put_agg_row(conn, table, host_id, bucket, 1, 1, blob, blob, blob)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--looks", type=int, default=10)
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        conn = store.connect(Path(tmp) / "bench.sqlite3")
        store.migrate(conn)
        started = time.perf_counter()
        fill(conn, args.hosts, now)
        print(f"filled {args.hosts} hosts in {time.perf_counter() - started:.1f} s")
        page = StatusPage(-100, 1, None, 1, None, "", 0.0)
        times, render = [], []
        for _ in range(args.looks):
            t0 = time.perf_counter()
            rows = _measure(conn, page, now, {})  # no cache: every read is a first one
            t1 = time.perf_counter()
            text = statuspage.page_text([statuspage.HostFigures(h, True, d, m) for h, d, m in rows], timezone.utc,
                                        views.e)
            times.append(t1 - t0)
            render.append(time.perf_counter() - t1)
        print(f"one look at a page of {len(rows)} hosts: measure median {statistics.median(times) * 1000:.1f} ms "
              f"(max {max(times) * 1000:.1f}), text {statistics.median(render) * 1000:.2f} ms, "
              f"{len(text)} characters")
        print(rows[0][1], rows[0][2], sep="\n")
        cache: dict = {}
        _measure(conn, page, now, cache)
        t0 = time.perf_counter()
        _measure(conn, page, now + 30, cache)
        print(f"a look within the minute after (30 d read from the cache, 24 h too): "
              f"{(time.perf_counter() - t0) * 1000:.1f} ms")
        t0 = time.perf_counter()
        _measure(conn, page, now + 90, cache)
        print(f"a look 90 s later (24 h read again, 30 d from the cache): {(time.perf_counter() - t0) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
