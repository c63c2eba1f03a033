"""Ingest benchmark: N simulated agents, each a real TLS WebSocket, against the real server in its own process.

    .venv/bin/python bench/ingest.py --agents 100 --interval 5 --duration 60
    .venv/bin/python bench/ingest.py --agents 1000 --interval 5 --duration 60

Prints committed samples/s, p50/p99 from send to ack (the ack follows the commit), and the server's RSS and CPU.
The simulated agents share this machine's cores with the server, so figures are conservative.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio
import trio_websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import service, store, tls  # noqa: E402


def metrics(rng: random.Random) -> dict:
    """A realistic sample: 8 cores, 3 disks, 2 interfaces, 2 temperatures (about 40 series)."""
    return {
        "cpu": rng.uniform(0, 100), "cpu_cores": [rng.uniform(0, 100) for _ in range(8)],
        "load": [rng.uniform(0, 4) for _ in range(3)],
        "ram": {"used": 8e9, "total": 16e9}, "swap": {"used": 1e8, "total": 2e9},
        "disks": {m: {"used": 5e10, "total": 1e11} for m in ("/", "/home", "/var")},
        "disk_io": {"read": rng.uniform(0, 1e7), "write": rng.uniform(0, 1e7)},
        "net": {i: {"rx": rng.uniform(0, 1e6), "tx": rng.uniform(0, 1e6)} for i in ("eth0", "wlan0")},
        "temps": {"cpu": rng.uniform(30, 80), "nvme": rng.uniform(30, 60)},
        "uptime": 1e5, "procs": 300,
    }


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.acked = 0
        self.connected = 0
        self.errors = 0
        self.measuring = False


async def agent(secret: str, port: int, interval: float, stats: Stats, rng: random.Random,
                stop: trio.Event, connecting: trio.CapacityLimiter) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    sent: dict[int, float] = {}
    try:
        async with trio.open_nursery() as nursery:
            # Real agents reconnect with jittered backoff, not all in the same instant: connect a few at a time.
            async with connecting:
                with trio.fail_after(60):
                    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx,
                                                                 https_compatible=True)
                    ws = await trio_websocket.wrap_client_stream(
                        nursery, stream, "127.0.0.1", "/agent",
                        extra_headers=[(b"Authorization", f"Bearer {secret}".encode())])
                    await ws.send_message(json.dumps({"type": "hello", "v": 1, "agent": "bench", "epoch": 1,
                                                      "hostname": "sim", "interval": interval}))
                    await ws.get_message()
            stats.connected += 1

            async def receive_acks() -> None:
                while True:
                    frame = json.loads(await ws.get_message())
                    now = time.perf_counter()
                    for seq in [s for s in sent if s <= frame["seq"]]:
                        if stats.measuring:
                            stats.latencies.append(now - sent[seq])
                            stats.acked += 1
                        del sent[seq]

            nursery.start_soon(receive_acks)
            await trio.sleep(rng.uniform(0, interval))  # agents are not in phase
            seq = 0
            while not stop.is_set():
                seq += 1
                frame = json.dumps({"type": "sample", "seq": seq, "ts": time.time(), "metrics": metrics(rng)})
                sent[seq] = time.perf_counter()
                await ws.send_message(frame)
                await trio.sleep(interval)
            nursery.cancel_scope.cancel()
    except* (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError, OSError, trio.BrokenResourceError,
             trio.TooSlowError):
        stats.errors += 1


async def commit_quantiles(port: int) -> str:
    """p50/p99 of the server's own receive->commit histogram: the server's share of the latency, without the
    simulator's (which shares this machine's two cores)."""
    import httpx

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=30)).text
    buckets = [(float(m.group(1)), int(m.group(2))) for m in
               re.finditer(r'mbot_ingest_commit_seconds_bucket\{le="([^"]+)"\} (\d+)', text)]
    total = buckets[-1][1]
    out = []
    for q in (0.5, 0.99):
        bound = next(b for b, c in buckets if c >= q * total)
        out.append(f"p{int(q * 100)} <= {bound * 1000:g} ms")
    return ", ".join(out) + f" ({total} frames)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="mbot-bench-"))
    tls.ensure_certificate(data, ["127.0.0.1"])  # before the hosts, as newkey does: the server refuses to replace it
    conn = store.connect(data / "mbot.sqlite3")
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        secrets = [service.new_key(conn, f"sim{i}").secret for i in range(args.agents)]
    conn.close()
    env = {**os.environ, "MBOT_DATA_DIR": str(data), "PORT": "0", "MBOT_HOST": "127.0.0.1",
           "MBOT_PUBLIC_HOST": "127.0.0.1", "MBOT_LOG_LEVEL": "WARNING"}
    env.pop("BOT_TOKEN", None)
    # WARNING level hides the "listening" line, so ask the kernel for a free port instead.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["PORT"] = str(s.getsockname()[1])
    port = int(env["PORT"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["MBOT_METRICS_PORT"] = str(s.getsockname()[1])
    server = subprocess.Popen([sys.executable, "-m", "mbot"], cwd=ROOT, env=env)
    proc = psutil.Process(server.pid)
    try:
        with trio.fail_after(30):
            while True:
                try:
                    await trio.open_tcp_stream("127.0.0.1", port)
                    break
                except OSError:
                    await trio.sleep(0.1)
        stats, stop = Stats(), trio.Event()
        rng = random.Random(1)
        started = time.perf_counter()
        connecting = trio.CapacityLimiter(args.connect_concurrency)
        async with trio.open_nursery() as nursery:
            for secret in secrets:
                nursery.start_soon(agent, secret, port, args.interval, stats, random.Random(rng.random()), stop,
                                   connecting)
            while stats.connected + stats.errors < args.agents:
                await trio.sleep(0.2)
            connect_s = time.perf_counter() - started
            await trio.sleep(args.interval)  # let every agent reach its steady rhythm
            conn = store.connect(data / "mbot.sqlite3", readonly=True)
            count0 = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            cpu0 = proc.cpu_times()
            stats.measuring, t0 = True, time.perf_counter()
            peak_rss = 0
            while time.perf_counter() - t0 < args.duration:
                await trio.sleep(1)
                peak_rss = max(peak_rss, proc.memory_info().rss)
            elapsed = time.perf_counter() - t0
            cpu1 = proc.cpu_times()
            server_side = await commit_quantiles(int(env["MBOT_METRICS_PORT"]))
            count1 = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            conn.close()
            stats.measuring = False
            stop.set()
            nursery.cancel_scope.cancel()
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed * 100
        size = sum(f.stat().st_size for f in data.glob("mbot.sqlite3*"))
        print(f"agents={args.agents} interval={args.interval:g}s duration={elapsed:.0f}s "
              f"connected={stats.connected} errors={stats.errors} connect_all={connect_s:.1f}s")
        print(f"committed {(count1 - count0) / elapsed:.1f} samples/s "
              f"(expected {args.agents / args.interval:.1f}); acked {stats.acked}")
        print(f"send->ack latency p50={percentile(stats.latencies, 0.5) * 1000:.1f} ms "
              f"p99={percentile(stats.latencies, 0.99) * 1000:.1f} ms "
              f"max={max(stats.latencies, default=float('nan')) * 1000:.1f} ms")
        print(f"server-side receive->commit (its /metrics histogram, bucket bounds): {server_side}")
        print(f"server RSS peak={peak_rss / 2**20:.1f} MiB, CPU={cpu:.1f}% of one core; db {size / 2**20:.1f} MiB")
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--connect-concurrency", type=int, default=50)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
