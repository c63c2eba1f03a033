"""Alert benchmark: 1,000 hosts with 10 rules each, samples at 5 s.

    .venv/bin/python bench/alerts.py
    .venv/bin/python bench/alerts.py --hosts 1000 --rounds 24

Prints (1) the engine's evaluation cost per sample (pure AlertEngine.observe, 10 rules, ~45 series), and (2) the
latency from a sample's commit to its alert reaching the outbox, through the real writer and sqlite file: the
alert engine runs on the writer's commit callback, so this is what a user waits beyond the agent's interval.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import alerts, protocol, service, store  # noqa: E402
from mbot.alerting import Alerting  # noqa: E402
from mbot.alerts import AlertEngine, AlertRule  # noqa: E402
from mbot.store import Database  # noqa: E402
from mbot.writer import Writer  # noqa: E402

RULES = (("cpu", 90, 30), ("ram", 90, 0), ("swap", 50, 0), ("disk", 90, 0), ("temp", 80, 0), ("load", 8, 0),
         ("net_down", 100 * 2**20, 0), ("gpu", 95, 300), ("vram", 95, 0), ("gputemp", 85, 0))


def series(rng: random.Random, hot: bool) -> dict[str, float]:
    s = {"cpu": 99.0 if hot else rng.uniform(0, 60), "load1": rng.uniform(0, 2), "load5": 1.0, "load15": 1.0,
         "ram": rng.uniform(20, 60), "ram_used": 8e9, "ram_total": 16e9, "swap": 1.0, "swap_used": 1e7,
         "swap_total": 2e9, "disk_read": 1e5, "disk_write": 1e5, "net_rx": rng.uniform(0, 1e6), "net_tx": 1e5,
         "uptime": 1e5, "procs": 300.0, "gpu0": rng.uniform(0, 90), "vram0": 40.0, "vram_used0": 4e10,
         "vram_total0": 8e10, "gputemp0": 60.0, "power0": 300.0}
    for i in range(8):
        s[f"cpu:{i}"] = rng.uniform(0, 100)
    for mount in ("/", "/home", "/var"):
        s[f"disk:{mount}"] = 50.0
        s[f"disk_used:{mount}"] = 5e10
        s[f"disk_total:{mount}"] = 1e11
    for label in ("cpu", "nvme"):
        s[f"temp:{label}"] = rng.uniform(40, 70)
    for iface in ("eth0", "wlan0"):
        s[f"net_rx:{iface}"] = 1e5
        s[f"net_tx:{iface}"] = 1e5
    return s


def engine_cost(hosts: int, rounds: int) -> None:
    rng = random.Random(1)
    rules = [AlertRule(h, m, t, False, f) for h in range(hosts) for m, t, f in RULES]
    now = time.time()
    engine = AlertEngine(rules, now=now)
    samples = [(h, series(rng, hot=rng.random() < 0.01)) for h in range(hosts)]
    for h in range(hosts):
        engine.host_seen(h, now, 5.0)
    events = 0
    started = time.perf_counter()
    for r in range(rounds):
        ts = now + r * 5
        for h, s in samples:
            events += len(engine.observe(h, ts, s, ts))
    elapsed = time.perf_counter() - started
    n = hosts * rounds
    print(f"engine: {n} samples x {len(RULES)} rules, {events} events: {elapsed / n * 1e6:.1f} µs per sample "
          f"({elapsed / rounds * 1000:.1f} ms of CPU per 5 s round of {hosts} hosts)")


async def commit_to_outbox(hosts: int, rounds: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="mbot-bench-alerts-"))
    db_path = data / "mbot.sqlite3"
    conn = store.connect(db_path)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        ids = [service.new_key(conn, f"h{i}", owner=1).host_id for i in range(hosts)]
    conn.close()
    db, writer = Database(db_path), Writer(db_path)
    committed: dict[tuple[int, float], float] = {}
    latencies: list[float] = []
    rng = random.Random(2)

    class Probe:  # records when each sample's commit came back to the trio thread
        def on_hello(self, host_id, hello):
            pass

        def on_samples(self, host_id, samples):
            for s in samples:
                committed[(host_id, s.ts)] = time.perf_counter()

    pending_seq: dict[int, int] = {}

    def notify(owner: int, text: str, event: alerts.Event) -> None:
        if isinstance(event, alerts.Firing):
            # Delivery reads the host's name and owner from the store first (mbot.alerting): that is included.
            latencies.append(time.perf_counter() - committed[(event.host_id, event.at)])

    async with trio.open_nursery() as root:
        root.start_soon(writer.run)
        async with trio.open_nursery() as nursery:
            await run_rounds(nursery, writer, db, ids, rounds, rng, Probe(), notify, pending_seq)
            nursery.cancel_scope.cancel()
        writer.close()
    latencies.sort()
    print(f"commit -> outbox: {len(latencies)} alerts from {hosts * rounds} samples: "
          f"p50 {statistics.median(latencies) * 1e6:.0f} µs, p99 {latencies[int(0.99 * len(latencies))] * 1e6:.0f} µs, "
          f"max {latencies[-1] * 1e6:.0f} µs")


async def run_rounds(nursery, writer, db, ids, rounds, rng, probe, notify, pending_seq) -> None:
    writer.listeners.append(probe)  # before the engine's listener: it stamps the commit first
    alerting = Alerting(db, writer)
    alerting.set_notify(notify)
    await nursery.start(alerting.run)
    for host_id in ids:
        for metric, threshold, _ in RULES:
            await alerting.set_rule(AlertRule(host_id, metric, threshold, False, 0.0))
        await writer.hello(host_id, protocol.Hello("b", 1, 5.0, {"agent": "b", "interval": 5.0}))
    t0 = time.time()
    for r in range(1, rounds + 1):
        for host_id in ids:
            hot = rng.random() < 0.05 and r % 2 == 0  # fires now and then, resolves a round later
            m = {"cpu": 99.0 if hot else 10.0, "ram": {"used": 1.0, "total": 4.0}}
            sample = protocol.Sample(r, t0 + r * 5, m, series(rng, hot))
            pending_seq[host_id] = r
            await writer.samples(host_id, 1, protocol.Samples((sample,)), lambda seq: None)
        await writer.call(lambda conn: None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    engine_cost(args.hosts, args.rounds)
    trio.run(commit_to_outbox, args.hosts, args.rounds)


if __name__ == "__main__":
    main()
