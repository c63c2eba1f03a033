"""Replay benchmark: one real agent replays 24 h of 5-second samples (17,280) after an outage.

    .venv/bin/python bench/replay.py
    .venv/bin/python bench/replay.py --hours 1 --interval 5 --live 3

The server is `python -m mbot` in a process of its own; the agent is agent/mbot_agent.py, run in this process. Its
buffer is pre-filled with the outage: real metrics from its Collector, added through Agent.add_sample (what its
collection loop calls) and dated over the past 24 h. The agent reaches the server through tests/tcpproxy.py, which
refuses connections (the outage) until shortly before the agent's next collection, so that a live sample is taken
while the replay runs: the worst moment for it.

Prints the time to drain (proxy opens -> every buffered sample acked; an ack follows the commit), the server's peak
RSS (psutil every 10 ms, and the kernel's VmHWM), and each live sample's delay from being taken to being acked.
Targets: drained in under 10 s; no live sample delayed by more than one interval.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mbot import service, store, tls  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402


def load_agent():
    spec = importlib.util.spec_from_file_location("mbot_agent", ROOT / "agent" / "mbot_agent.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mbot_agent"] = module
    spec.loader.exec_module(module)
    return module


def acked(a) -> int:
    first = a.buffer.first_seq
    return a.seq if first is None else first - 1


def vm_hwm(pid: int) -> int:
    """The kernel's peak resident set size of a process, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text)[1]) * 1024


async def main(args: argparse.Namespace) -> None:
    agent = load_agent()
    count = int(args.hours * 3600 / args.interval)
    data = Path(tempfile.mkdtemp(prefix="mbot-bench-replay-"))
    conn = store.connect(data / "mbot.sqlite3")
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        key = service.new_key(conn, "box1")
    conn.close()
    cert = tls.ensure_certificate(data, ["127.0.0.1", "localhost"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    env = {**os.environ, "MBOT_DATA_DIR": str(data), "PORT": str(port), "MBOT_HOST": "127.0.0.1",
           "MBOT_PUBLIC_HOST": "127.0.0.1", "MPLCONFIGDIR": str(data / "mpl")}
    env.pop("BOT_TOKEN", None)
    log_path = data / "server.log"
    with open(log_path, "wb") as log_file:
        server = await trio.lowlevel.open_process([sys.executable, "-m", "mbot"], env=env, cwd=ROOT,
                                                  stderr=log_file, stdin=subprocess.DEVNULL)
    try:
        with trio.fail_after(30):
            while b"mbot is up" not in log_path.read_bytes():
                await trio.sleep(0.05)  # a benchmark's set-up: the log file is polled
        proc = psutil.Process(server.pid)
        idle_rss = proc.memory_info().rss

        # The outage: `count` samples of real metrics in the agent's buffer, dated over the past hours.
        collector = agent.Collector(gpu=False)
        t0 = time.perf_counter()
        metrics = await trio.to_thread.run_sync(lambda: [collector.collect() for _ in range(count)])
        proxy = TcpProxy(port)
        proxy.refuse = True
        config = agent.AgentConfig(secret=key.secret, server="127.0.0.1", port=0, interval=args.interval,
                                   fingerprint=cert.fingerprint, fingerprint_file=str(data / "fp.json"),
                                   backoff_min=0.05, backoff_max=0.1, spool_max=count + 1000)
        a = None
        now = time.time()
        prefill_s = time.perf_counter() - t0

        connected_at: list[float] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda r: connected_at.append(time.time()) if r.getMessage().startswith("connected") else None
        logging.getLogger("mbot.agent").addHandler(handler)
        logging.getLogger("mbot.agent").setLevel(logging.INFO)

        acks: list[tuple[float, int]] = []  # (wall time, acked seq), whenever it changes
        rss_peak = 0
        cpu_before = None

        async def sample_rss() -> None:
            nonlocal rss_peak
            while True:
                rss_peak = max(rss_peak, proc.memory_info().rss)
                await trio.sleep(0.01)

        async def record_acks() -> None:
            last = -1
            while True:
                seq = acked(a)
                if seq != last:
                    acks.append((time.time(), seq))
                    last = seq
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            a = agent.Agent(dataclasses.replace(config, port=proxy.port), collector)
            for i, m in enumerate(metrics):
                a.add_sample(now - (count - i) * args.interval, m)
            del metrics
            await a.refresh_facts()
            agent_scope = trio.CancelScope()

            async def run_agent() -> None:
                with agent_scope:
                    await a.run()

            started = trio.current_time()
            nursery.start_soon(run_agent)  # its collection loop takes a sample every interval from now on
            nursery.start_soon(sample_rss)
            nursery.start_soon(record_acks)
            # The server comes back shortly before the agent's next collection (it keeps retrying meanwhile).
            await trio.sleep_until(started + args.interval - args.lead)
            cpu_before = proc.cpu_times()
            proxy.refuse = False
            opened = time.time()
            with trio.fail_after(120):
                while not acks or acks[-1][1] < count:
                    await trio.sleep(0.005)
            drained = next(t for t, s in acks if s >= count)
            cpu_after = proc.cpu_times()
            live_target = a.seq + args.live
            with trio.fail_after(args.interval * (args.live + 2) + 30):
                while acks[-1][1] < live_target:
                    await trio.sleep(0.005)
            agent_scope.cancel()
            nursery.cancel_scope.cancel()

        hwm = vm_hwm(server.pid)
        server.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await server.wait()
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()

    conn = store.connect(data / "mbot.sqlite3", readonly=True)
    seqs = [r[0] for r in conn.execute("SELECT seq FROM samples ORDER BY seq")]
    live = conn.execute("SELECT seq, ts FROM samples WHERE seq > ? ORDER BY seq", (count,)).fetchall()
    conn.close()
    delays = []
    for seq, ts in live:
        acked_at = next((t for t, s in acks if s >= seq), None)
        if acked_at is not None:
            delays.append((seq, ts, acked_at - ts))

    mib = 1 << 20
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    print(f"replay of {count} samples ({args.hours:g} h at {args.interval:g} s), agent in-process, server "
          f"`python -m mbot` (exit {code})")
    print(f"  pre-fill (collect {count} real samples): {prefill_s:.1f} s")
    print(f"  stored: {len(seqs)} samples, seqs 1..{seqs[-1] if seqs else 0} "
          f"{'exactly once, no gaps' if seqs == list(range(1, len(seqs) + 1)) else 'WITH GAPS OR DUPLICATES'}")
    first = connected_at[0] - opened if connected_at else float("nan")
    print(f"  drain: {drained - opened:.2f} s from the proxy opening to every buffered sample acked "
          f"(connected after {first:.2f} s; {count / (drained - opened):,.0f} samples/s)")
    print(f"  server CPU during the drain: {cpu:.2f} s")
    print(f"  server RSS: idle {idle_rss / mib:.1f} MiB, peak {rss_peak / mib:.1f} MiB (psutil every 10 ms), "
          f"VmHWM {hwm / mib:.1f} MiB")
    during = [d for d in delays if opened <= d[1] <= drained]
    print(f"  live samples: {len(delays)} (interval {args.interval:g} s), {len(during)} taken while the replay ran")
    for seq, ts, delay in delays:
        tag = " (taken during the replay)" if opened <= ts <= drained else ""
        print(f"    seq {seq}: taken {ts - opened:+.2f} s after the proxy opened, acked {delay:.2f} s later{tag}")
    worst = max((d for _, _, d in delays), default=float("nan"))
    print(f"  worst live delay: {worst:.2f} s ({'within' if worst <= args.interval else 'OVER'} one interval)")
    if args.keep:
        print(f"  data: {data}")
    else:
        shutil.rmtree(data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="length of the outage (default 24)")
    parser.add_argument("--interval", type=float, default=5.0, help="the agent's interval, s (default 5)")
    parser.add_argument("--live", type=int, default=2, help="live samples to wait for after the drain (default 2)")
    parser.add_argument("--lead", type=float, default=0.3,
                        help="open the proxy this long before the agent's next collection (default 0.3 s)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (server log, database)")
    trio.run(main, parser.parse_args())
