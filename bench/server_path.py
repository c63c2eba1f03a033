"""The server's work per sample and per snapshot outside the network: parsing on the event loop, the writer's
transactions, the rollup. No sockets: frames as bench/ingest.py's simulated agents send them, parsed by
protocol.parse_agent_frame and committed by the real Writer into a real sqlite file in a temporary directory.

    .venv/bin/python bench/server_path.py                    # 200 hosts, 24 rounds, batches of 20 items
    .venv/bin/python bench/server_path.py --hosts 1000 --rounds 12 --batch 50 --repeat 3
    .venv/bin/python bench/server_path.py --listener         # with a snapshot listener (the diff is computed)

Each round every host sends one sample (the realistic 40-series sample of bench/ingest.py) and, every other
round, a processes snapshot (30 members, their CPU changing); a services snapshot per host goes with the hellos
before the measured rounds. Items are queued in batches of --batch (one transaction each, as the writer groups
what has queued meanwhile). Every --period seconds of the samples' clock (10 s, as history.maintain) the rollup
runs in steps of history.STEP_ROWS until it has caught up, through the writer, as in the server.

Printed (CPU time of the thread doing the work: the figure that compares two checkouts on a shared machine; run
them back to back): parse per sample and per snapshot (event loop), and in the writer's thread per sample (its
apply), per snapshot (its apply), the rollup per sample, and what is left of the transactions (BEGIN, savepoints,
COMMIT, listeners' bookkeeping) per item. The median of --repeat runs, each run's figures with -v.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import INVENTORY, processes_items, sample_metrics, services_items  # noqa: E402
from mbot import history, protocol, store  # noqa: E402
from mbot.writer import CallWrite, HelloWrite, SamplesWrite, SnapshotWrite, Writer  # noqa: E402

INTERVAL = 5.0


def hello_text(host: int) -> str:
    return json.dumps({"type": "hello", "v": 1, "agent": "0.2.0", "epoch": 1000 + host, "hostname": f"sim{host}",
                       "os": "Linux 6.1.0-18-amd64", "platform": "linux", "arch": "x86_64", "cpu_count": 8,
                       "mem_total": 16_000_000_000, "boot_time": 1764000000.0, "interval": INTERVAL,
                       "disks": ["/", "/home", "/var"], "capabilities": ["speedtest", "checks"],
                       "inventory": INVENTORY})


def snapshot_text(kind: str, items: list[dict[str, Any]], ts: float) -> str:
    return json.dumps({"type": "snapshot", "kind": kind, "v": 1, "ts": ts, "items": items}, separators=(",", ":"))


def make_frames(hosts: int, rounds: int, procs_every: int, start: float,
                rng: random.Random) -> list[list[tuple[int, str, str]]]:
    """Per round, (host, "sample" | "snapshot", frame text) in the order agents would send them."""
    out = []
    for r in range(rounds):
        frames = []
        for h in range(hosts):
            ts = start + r * INTERVAL + h * INTERVAL / hosts  # agents are not in phase
            frames.append((h, "sample", json.dumps({"type": "sample", "seq": r + 1, "ts": ts,
                                                    "metrics": sample_metrics(rng)}, separators=(",", ":"))))
            if r % procs_every == 0:
                frames.append((h, "snapshot", snapshot_text("processes", processes_items(rng), ts)))
        out.append(frames)
    return out


class Clocks:
    """CPU seconds per named part, summed over calls (time.thread_time: the calling thread's own)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[name] += time.thread_time() - started
                self.calls[name] += 1
        return timed


def parse_all(frames: list[list[tuple[int, str, str]]]) -> tuple[list[list[tuple[int, Any]]], Clocks]:
    clocks = Clocks()
    parse = {kind: clocks.wrap(kind, protocol.parse_agent_frame) for kind in ("sample", "snapshot")}
    # Timed with each result let go at once, as the server does (a frame lives until its commit): keeping them all
    # would make the collector walk a growing heap and charge it to parsing. Parsed again, untimed, to be written.
    for frames_of_round in frames:
        for _, kind, text in frames_of_round:
            parse[kind](text, cores=8)
    parsed = [[(h, protocol.parse_agent_frame(text, cores=8)) for h, _, text in frames_of_round]
              for frames_of_round in frames]
    return parsed, clocks


async def write_all(db: Path, hosts: int, parsed: list[list[tuple[int, Any]]], batch: int, period: float,
                    listener: bool) -> tuple[Clocks, int]:
    writer = Writer(db)
    clocks = Clocks()
    writer._commit = clocks.wrap("commit", writer._commit)  # type: ignore[method-assign]
    step = clocks.wrap("rollup", history.rollup_step)
    if listener:
        class Nothing:
            def on_snapshot(self, host_id: int, kind: str, events: list[Any]) -> None:
                pass
        writer.snapshot_listeners.append(Nothing())
    conn = store.connect(db)
    with store.transaction(conn):
        ids = [store.insert_host(conn, name=f"sim{h}", owner=0, key_id=f"k{h}", secret_hash=f"s{h}",
                                 created=time.time()) for h in range(hosts)]
    conn.close()
    hello = protocol.parse_agent_frame(hello_text(0))
    services = protocol.parse_agent_frame(snapshot_text("services", services_items(0), time.time()), cores=8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)

        async def commit(items: list[Any]) -> None:
            for item in items:
                writer._send.send_nowait(item)  # queued together: one transaction, as under load
            barrier = CallWrite(fn=lambda conn: None)
            writer._send.send_nowait(barrier)
            await barrier.wait()

        async def rollup() -> int:
            steps = 0
            while await writer.call(step, history.STEP_ROWS, writer.faults) == history.STEP_ROWS:
                steps += 1
            return steps + 1

        # Not measured: the hellos and a services baseline per host.
        await commit([HelloWrite(host_id=i, hello=hello, seen=time.time()) for i in ids])
        await commit([SnapshotWrite(host_id=i, snapshot=services) for i in ids])
        await rollup()
        # Measured from here.
        writer._apply_samples = clocks.wrap("samples", writer._apply_samples)  # type: ignore[method-assign]
        writer._apply_snapshot = clocks.wrap("snapshots", writer._apply_snapshot)  # type: ignore[method-assign]
        clocks.cpu.clear()
        clocks.calls.clear()
        steps, next_rollup = 0, period
        for r, frames in enumerate(parsed):
            items: list[Any] = []
            for h, frame in frames:
                if isinstance(frame, protocol.Samples):
                    items.append(SamplesWrite(host_id=ids[h], epoch=1000, samples=frame, seen=time.time(),
                                              on_commit=lambda seq: None))
                else:
                    items.append(SnapshotWrite(host_id=ids[h], snapshot=frame))
            for i in range(0, len(items), batch):
                await commit(items[i:i + batch])
            if (r + 1) * INTERVAL >= next_rollup:
                steps += await rollup()
                next_rollup += period
        steps += await rollup()
        writer.close()
    return clocks, steps


def one_run(args: argparse.Namespace, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    start = time.time() - args.rounds * INTERVAL - 60
    frames = make_frames(args.hosts, args.rounds, args.procs_every, start, rng)
    parsed, parse_clocks = parse_all(frames)
    with tempfile.TemporaryDirectory() as tmp:
        write_clocks, steps = trio.run(write_all, Path(tmp) / "mbot.db", args.hosts, parsed, args.batch,
                                       args.period, args.listener)
    samples = parse_clocks.calls["sample"]
    snaps = parse_clocks.calls["snapshot"]
    w = write_clocks.cpu
    batches = write_clocks.calls["commit"]
    rest = w["commit"] - w["samples"] - w["snapshots"] - w["rollup"]
    us = 1e6
    return {
        "samples": samples, "snapshots": snaps, "batches": batches, "rollup steps": steps,
        "parse/sample": parse_clocks.cpu["sample"] / samples * us,
        "parse/snapshot": parse_clocks.cpu["snapshot"] / snaps * us,
        "writer apply/sample": w["samples"] / samples * us,
        "writer apply/snapshot": w["snapshots"] / snaps * us,
        "rollup/sample": w["rollup"] / samples * us,
        "transactions/item": rest / (samples + snaps) * us,
        # What one sample costs the server here, its share of snapshots and transactions included.
        "total/sample": (parse_clocks.cpu["sample"] + parse_clocks.cpu["snapshot"] + w["commit"]) / samples * us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=24, help="intervals of 5 s, every host a sample each")
    parser.add_argument("--procs-every", type=int, default=2, help="a processes snapshot every N samples")
    parser.add_argument("--batch", type=int, default=20, help="items per transaction")
    parser.add_argument("--period", type=float, default=10.0, help="seconds of samples between rollups")
    parser.add_argument("--listener", action="store_true", help="a snapshot listener: the diff is computed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    runs = []
    for i in range(args.repeat):
        runs.append(one_run(args, seed=i))
        if args.verbose:
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[-1].items()))
    first = runs[0]
    print(f"{args.hosts} hosts x {args.rounds} rounds: {first['samples']} samples, {first['snapshots']} snapshots, "
          f"{first['batches']} transactions of up to {args.batch} items, {first['rollup steps']} rollup steps"
          f"{', a snapshot listener' if args.listener else ''}; median of {args.repeat} runs, µs of CPU:")
    for key in ("parse/sample", "parse/snapshot", "writer apply/sample", "writer apply/snapshot", "rollup/sample",
                "transactions/item", "total/sample"):
        print(f"  {key:24} {statistics.median(run[key] for run in runs):8.1f}")


if __name__ == "__main__":
    main()
