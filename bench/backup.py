"""Backup benchmark (issue 19): a server holding 100 hosts x 7 days at 5 s, backed up while 100 agents stream.

    .venv/bin/python bench/backup.py              # the fixture is made once (cached), then a few minutes
    .venv/bin/python bench/backup.py --fresh      # make the fixture again
    .venv/bin/python bench/backup.py --in-server --compare 6c421bf --nice 10
        # also the server's own backup (MBOT_BACKUP_DIR, a worker thread of the server), REV's CLI backup (before
        # gzip level 1) and this one under nice, one after the other in the same run (the load of a shared machine
        # moves too much between runs to compare them)

The fixture is the database such a server holds with the default retentions: raw samples of the last 48 h, the
1-minute tier for 7 days, the 10-minute and 1-hour tiers for the 7 days there are, every sample bench/ingest.py's
40-series one (its generator sampled for each series' range; its values are uniform random, so they compress
worse than real ones do). It is written directly with SQL in batches, as the writer and the rollup would have left
it (rows interleaved by arrival, aggregates computed the way history.rollup_step computes them, the watermark past
the last raw row), and cached in /tmp/mbot-bench-backup/fixture-100x7d; each run works on a copy.

Then: the real server (`python -m mbot`) on the copy, 100 simulated agents (bench/ingest.py's, real TLS WebSocket)
sending a sample every 5 s; send->ack p50/p99/max and the server's receive->commit (its /metrics histogram) for a
baseline, then the same while `python -m mbot backup FILE` runs (the CLI, as a user would); the backup's wall and
CPU time, the archive's and the database's size, the WAL's growth meanwhile. Finally the server is stopped, the
archive restored into a fresh directory (`python -m mbot restore`), a server started on it, and the bench checks
it serves the same hosts (/metrics) and that an agent gets in with its old secret.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ingest  # noqa: E402  (the simulated agents and their sample)
import restart  # noqa: E402  (checkout of another revision)
from mbot import history, protocol, service, store, tls  # noqa: E402
from mbot.rollup import DEFAULT_TIERS  # noqa: E402

HOME = Path("/tmp/mbot-bench-backup")
INTERVAL = 5.0
F32 = np.dtype("<f4")


# --- the fixture ---------------------------------------------------------------------------------------------


def series_model(seed: int = 1, draws: int = 300) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, Any]]:
    """The 40 series of bench/ingest.py's sample and each one's range over many draws of its generator (a constant
    series stays constant). Returns names, low, high and one validated sample (the hosts' latest metrics)."""
    rng = random.Random(seed)
    rows = []
    names: list[str] = []
    latest: dict[str, Any] = {}
    for _ in range(draws):
        latest = protocol.validate_metrics(ingest.metrics(rng))
        flat = protocol.flatten(latest)
        names = names or list(flat)
        rows.append([flat[name] for name in names])
    values = np.array(rows, dtype=np.float64)
    return names, values.min(axis=0), values.max(axis=0), latest


def make_fixture(target: Path, hosts: int, days: float) -> dict[str, Any]:
    started = time.perf_counter()
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True, mode=0o700)
    tls.ensure_certificate(building, ["127.0.0.1"])  # before the hosts, as newkey does
    conn = store.connect(building / "mbot.sqlite3")
    now = time.time()
    per_host = int(days * 86400 / INTERVAL)
    raw_keep = min(per_host, int(next(t.retention for t in DEFAULT_TIERS if t.name == "raw") / INTERVAL))
    start = (now - per_host * INTERVAL) // 3600 * 3600  # buckets of every tier aligned, as by time they are
    ts = start + INTERVAL * np.arange(per_host)
    names, low, high, latest = series_model()
    np_rng = np.random.default_rng(1)
    with store.transaction(conn):
        secrets = [service.new_key(conn, f"sim{i}", now=start - 60).secret for i in range(hosts)]
        host_ids = [h.id for h in store.list_hosts(conn)]
        layout_id = conn.execute("INSERT INTO layouts (names) VALUES (?)", (json.dumps(names),)).lastrowid
        assert layout_id is not None
    raw_parts: list[np.ndarray] = []
    for n, host_id in enumerate(host_ids):
        values = (low + (high - low) * np_rng.random((per_host, len(names)))).astype(F32)
        with store.transaction(conn):
            # The tiers as history.rollup_step leaves them: count, float32 min/avg/max per bucket.
            for table, width in store.AGG_TABLES.items():
                per = int(width / INTERVAL)
                groups = values[: per_host // per * per].reshape(-1, per, len(names))
                mins, maxs = groups.min(axis=1), groups.max(axis=1)
                avgs = groups.astype(np.float64).mean(axis=1).astype(F32)
                for i in range(len(groups)):
                    store.put_agg_row(conn, table, host_id, int(ts[i * per]), layout_id, per, mins[i].tobytes(),
                                      avgs[i].tobytes(), maxs[i].tobytes())
        raw_parts.append(values[-raw_keep:])
        if n % 10 == 9:
            print(f"  fixture: aggregates of {n + 1}/{hosts} hosts, {time.perf_counter() - started:.0f} s", flush=True)
    # Raw rows in arrival order: every host's sample of one instant, then the next instant's (rowid = arrival).
    raw_ts = ts[-raw_keep:]
    rowid = 0
    chunk = 720  # one hour of instants per transaction
    for first in range(0, raw_keep, chunk):
        rows = []
        for i in range(first, min(first + chunk, raw_keep)):
            for h, host_id in enumerate(host_ids):
                rowid += 1
                rows.append((rowid, host_id, float(raw_ts[i]), per_host - raw_keep + i + 1, layout_id,
                             raw_parts[h][i].tobytes()))
        with store.transaction(conn):
            conn.executemany("INSERT INTO samples (rowid, host_id, ts, seq, layout_id, vals) VALUES (?, ?, ?, ?, ?, ?)",
                             rows)
    last_ts = float(ts[-1])
    with store.transaction(conn):
        store.set_kv(conn, store.ROLLUP_WATERMARK, str(rowid))
        facts = json.dumps({"hostname": "sim", "os": "Linux", "agent": "bench", "interval": INTERVAL})
        conn.executemany("UPDATE hosts SET facts = ?, epoch = 7, last_seq = ?, last_ts = ?, last_seen = ?, "
                         "last_metrics = ?, samples_count = ? WHERE id = ?",
                         [(facts, per_host, last_ts, last_ts, json.dumps(latest), per_host, host_id)
                          for host_id in host_ids])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("samples", "agg_1m", "agg_10m", "agg_1h")}
    conn.close()
    seconds = time.perf_counter() - started
    info = {"hosts": hosts, "days": days, "made": now, "seconds": seconds, "rows": counts,
            "bytes": (building / "mbot.sqlite3").stat().st_size, "secrets": secrets}
    secrets_file = building / "bench-secrets.json"  # the bench's own: the agents' secrets (the store has hashes)
    with open(os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(info, out)
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    return info


def fixture(hosts: int, days: float, fresh: bool) -> tuple[Path, dict[str, Any]]:
    target = HOME / f"fixture-{hosts}x{days:g}d"
    info_file = target / "bench-secrets.json"
    if not fresh and info_file.exists():
        info = json.loads(info_file.read_text())
        if info["hosts"] == hosts and info["days"] == days:
            age = (time.time() - info["made"]) / 3600
            print(f"fixture: {target} (cached, made {age:.1f} h ago in {info['seconds']:.0f} s): "
                  f"{info['bytes'] / 2**20:,.0f} MiB, rows {info['rows']}")
            return target, info
    print(f"fixture: making {hosts} hosts x {days:g} days at {INTERVAL:g} s in {target} ...", flush=True)
    info = make_fixture(target, hosts, days)
    print(f"fixture: made in {info['seconds']:.0f} s: {info['bytes'] / 2**20:,.0f} MiB, rows {info['rows']}")
    return target, info


# --- the server and its measurements ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(data: Path, port: int, metrics_port: int) -> dict[str, str]:
    env = {**os.environ, "MBOT_DATA_DIR": str(data), "PORT": str(port), "MBOT_HOST": "127.0.0.1",
           "MBOT_PUBLIC_HOST": "127.0.0.1", "MBOT_LOG_LEVEL": "WARNING", "MBOT_METRICS_PORT": str(metrics_port),
           "MBOT_WATCH_SELF": "0"}
    for name in ("BOT_TOKEN", "MBOT_BACKUP_DIR"):
        env.pop(name, None)
    return env


async def wait_listening(port: int, within: float = 60) -> None:
    with trio.fail_after(within):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.1)


async def scrape(metrics_port: int) -> str:
    import httpx

    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30)).text


def commit_buckets(text: str) -> list[tuple[float, int]]:
    return [(float(m.group(1)), int(m.group(2))) for m in
            re.finditer(r'mbot_ingest_commit_seconds_bucket\{le="([^"]+)"\} (\d+)', text)]


def commit_quantiles(before: list[tuple[float, int]], after: list[tuple[float, int]]) -> str:
    """p50/p99 of the server's receive->commit between two scrapes (bucket bounds: the histogram's resolution)."""
    delta = [(bound, count - old) for (bound, count), (_, old) in zip(after, before)]
    total = delta[-1][1] if delta else 0
    if not total:
        return "no frames"
    out = [f"p{int(q * 100)} <= {next(b for b, c in delta if c >= q * total) * 1000:g} ms" for q in (0.5, 0.99)]
    return ", ".join(out) + f" ({total} frames)"


def latency(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"p50 {ingest.percentile(values, 0.5) * 1000:.0f} ms, p99 {ingest.percentile(values, 0.99) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms ({len(values)} acks)")


def db_bytes(data: Path) -> tuple[int, int]:
    db, wal = data / "mbot.sqlite3", data / "mbot.sqlite3-wal"
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def phase(stats: ingest.Stats, metrics_port: int) -> tuple[list[float], list[tuple[float, int]]]:
    """Start a measuring phase: the agents' acks from now on go to a fresh list; the server's histogram as now."""
    stats.latencies = []
    return stats.latencies, commit_buckets(await scrape(metrics_port))


async def run_backup(data: Path, archive: Path, env: dict[str, str], nice: int, code: Path) -> dict[str, Any]:
    """`python -m mbot backup FILE` as a user runs it (mbot from `code`); its wall time, CPU time (rusage) and the
    WAL's peak meanwhile."""
    cmd = [sys.executable, "-m", "mbot", "backup", str(archive)]
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {}
    wal_peak = 0

    async def reap() -> None:
        _, status, usage = await trio.to_thread.run_sync(os.wait4, child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        result["usage"] = usage
        result["wall"] = time.perf_counter() - t0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reap)
        while "usage" not in result:
            wal_peak = max(wal_peak, db_bytes(data)[1])
            await trio.sleep(0.2)
    assert child.stdout is not None
    result["output"] = child.stdout.read().decode().strip()
    result["rc"] = child.returncode
    result["cpu"] = result["usage"].ru_utime + result["usage"].ru_stime
    result["wal_peak"] = wal_peak
    result["archive"] = archive.stat().st_size if archive.exists() else 0
    return result


SERVER_EVERY = 3600.0


def schedule_server_backup(directory: Path, after: float) -> None:
    """The server (MBOT_BACKUP_DIR, MBOT_BACKUP_EVERY=1h) makes its first backup when the newest in the directory
    is an hour old: an empty stand-in whose time says so `after` seconds from now."""
    directory.mkdir(mode=0o700)
    stand_in = directory / "mbot-backup-19700101-000000.tar.gz"
    stand_in.write_bytes(b"")
    made = time.time() - SERVER_EVERY + after
    os.utime(stand_in, (made, made))


async def server_backup_started(directory: Path, within: float) -> float:
    """When the server's backup starts, its scratch folder appears in the directory."""
    with trio.fail_after(within):
        while not any(directory.glob(".mbot-backup-*")):
            await trio.sleep(0.05)
    return time.perf_counter()


async def watch_server_backup(directory: Path, data: Path, t0: float) -> dict[str, Any]:
    """From its start (t0) until its archive is there."""
    wal_peak = 0
    while any(directory.glob(".mbot-backup-*")):
        wal_peak = max(wal_peak, db_bytes(data)[1])
        await trio.sleep(0.1)
    made = [p for p in directory.glob("mbot-backup-*.tar.gz") if p.stat().st_size]
    return {"wall": time.perf_counter() - t0, "wal_peak": wal_peak, "rc": 0 if made else 1,
            "archive": made[0].stat().st_size if made else 0, "output": ", ".join(str(p) for p in made)}


async def bench(args: argparse.Namespace) -> None:
    HOME.mkdir(parents=True, exist_ok=True)
    lock = open(HOME / ".lock", "w")
    try:  # two runs at once would delete each other's copies
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another bench/backup.py is running on {HOME}") from None
    print(load())
    source, info = fixture(args.hosts, args.days, args.fresh)
    secrets: list[str] = info["secrets"][: args.agents]
    work = HOME / "run"
    shutil.rmtree(work, ignore_errors=True)
    data, restored = work / "data", work / "restored"
    data.mkdir(parents=True, mode=0o700)
    t0 = time.perf_counter()
    for name in ("mbot.sqlite3", tls.CERT_FILE, tls.KEY_FILE):
        shutil.copy2(source / name, data / name)
    print(f"copied the fixture to {data} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    conn = store.connect(data / "mbot.sqlite3")
    while True:  # what aged since the fixture was made goes now, not in the server's first minute (the baseline)
        with store.transaction(conn):
            if history.retention_step(conn, DEFAULT_TIERS, time.time()) < history.DELETE_ROWS:
                break
    conn.close()
    print(f"retention on the copy (as the server's start would do it): {time.perf_counter() - t0:.1f} s")
    archive = work / "backup.tar.gz"
    variants = [(args.compare, restart.checkout(args.compare), 0)] if args.compare else []
    variants.append(("this", ROOT, 0))
    if args.nice:
        variants.append((f"this, nice -n {args.nice}", ROOT, args.nice))

    port, metrics_port = free_port(), free_port()
    env = server_env(data, port, metrics_port)
    server_env_ = dict(env)
    if args.in_server:
        # Due once the agents are connected and the baseline measured (the bench checks it came after).
        schedule_server_backup(work / "backups", 60 + args.settle + args.baseline)
        server_env_.update(MBOT_BACKUP_DIR=str(work / "backups"), MBOT_BACKUP_EVERY=f"{SERVER_EVERY:g}s")
    server = subprocess.Popen([sys.executable, "-m", "mbot"], cwd=ROOT, env=server_env_)
    proc = psutil.Process(server.pid)
    figures: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        await wait_listening(port)
        print(f"server up in {time.perf_counter() - t0:.1f} s")
        stats, stop = ingest.Stats(), trio.Event()
        rng = random.Random(1)
        async with trio.open_nursery() as nursery:
            connecting = trio.CapacityLimiter(50)
            for secret in secrets:
                nursery.start_soon(ingest.agent, secret, port, INTERVAL, stats, random.Random(rng.random()), stop,
                                   connecting)
            while stats.connected + stats.errors < len(secrets):
                await trio.sleep(0.2)
            print(f"{stats.connected} agents connected ({stats.errors} errors); settling {args.settle:g} s")
            await trio.sleep(args.settle)
            stats.measuring = True

            before, hist0 = await phase(stats, metrics_port)
            cpu0 = proc.cpu_times()
            t0 = time.perf_counter()
            if args.in_server:  # the baseline lasts until the server's backup starts
                if any((work / "backups").glob(".mbot-backup-*")):
                    raise SystemExit("the server's backup started before the baseline: raise its delay")
                started = await server_backup_started(work / "backups", args.baseline + 120)
            else:
                await trio.sleep(args.baseline)
            base_s = time.perf_counter() - t0
            cpu1 = proc.cpu_times()
            during, hist1 = await phase(stats, metrics_port)
            hist_base, base_load = hist1, load()
            size_before = db_bytes(data)
            print(f"baseline {base_s:.0f} s: send->ack {latency(before)}; receive->commit "
                  f"{commit_quantiles(hist0, hist1)}; server CPU "
                  f"{(cpu1.user + cpu1.system - cpu0.user - cpu0.system) / base_s * 100:.0f}%; {base_load}")

            if args.in_server:
                made = await watch_server_backup(work / "backups", data, started)
                cpu2 = proc.cpu_times()
                after, hist2 = await phase(stats, metrics_port)
                made["during"], made["commit"], made["load"] = during, commit_quantiles(hist1, hist2), load()
                # The server's CPU over the backup, its backup thread included.
                made["cpu"] = cpu2.user + cpu2.system - cpu1.user - cpu1.system
                print(f"the server's own backup ({made['wall']:.1f} s): {made['output']}; send->ack {latency(during)}; "
                      f"receive->commit {made['commit']}; server CPU {made['cpu']:.1f} s; {made['load']}")
                figures["in the server"] = made
                await trio.sleep(args.after)
                cpu1 = proc.cpu_times()
                during, hist1 = await phase(stats, metrics_port)
                print(f"after it ({args.after:g} s): send->ack {latency(after)}; receive->commit "
                      f"{commit_quantiles(hist2, hist1)}")
            for label, code, nice in variants:
                archive.unlink(missing_ok=True)
                made = await run_backup(data, archive, env, nice, code)
                cpu2 = proc.cpu_times()
                after, hist2 = await phase(stats, metrics_port)
                made["during"], made["commit"], made["load"] = during, commit_quantiles(hist1, hist2), load()
                print(f"backup ({label}): rc {made['rc']}, {made['output']}")
                print(f"during the backup ({label}, {made['wall']:.1f} s): send->ack {latency(during)}; "
                      f"receive->commit {made['commit']}; server CPU "
                      f"{(cpu2.user + cpu2.system - cpu1.user - cpu1.system) / made['wall'] * 100:.0f}%; {load()}")
                await trio.sleep(args.after)
                cpu1 = proc.cpu_times()
                during, hist1 = await phase(stats, metrics_port)
                print(f"after it ({args.after:g} s): send->ack {latency(after)}; receive->commit "
                      f"{commit_quantiles(hist2, hist1)}")
                figures[label] = made
                if made["rc"] != 0:
                    raise SystemExit(f"the backup ({label}) failed")
            stats.measuring = False
            stop.set()
            nursery.cancel_scope.cancel()
        figures.update(base_s=base_s, base=before, base_commit=commit_quantiles(hist0, hist_base), size=size_before,
                       base_load=base_load)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    # Restore into a fresh directory and start a server on it.
    env2 = server_env(restored, free_port(), free_port())
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mbot", "restore", str(archive)], cwd=ROOT, env=env2,
                         capture_output=True, text=True)
    restore_s = time.perf_counter() - t0
    print(f"restore: rc {out.returncode} in {restore_s:.1f} s: {(out.stdout + out.stderr).strip()}")
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "mbot"], cwd=ROOT, env=env2)
    try:
        await wait_listening(int(env2["PORT"]))
        up_s = time.perf_counter() - t0
        served = len(re.findall(r"^mbot_host_up\{", await scrape(int(env2["MBOT_METRICS_PORT"])), re.M))
        stats, stop = ingest.Stats(), trio.Event()
        stats.measuring = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingest.agent, secrets[0], int(env2["PORT"]), 1.0, stats, random.Random(2), stop,
                               trio.CapacityLimiter(1))
            # Its hello answered is the check: its samples' seq start at 1 again, below the mark the restored
            # database holds, so they are acked only once they pass it (a real agent has a new epoch then).
            with trio.move_on_after(30):
                while not stats.connected and not stats.errors:
                    await trio.sleep(0.1)
            stop.set()
            nursery.cancel_scope.cancel()
        print(f"restored server: listening {up_s:.1f} s after start, /metrics serves {served} hosts "
              f"(the fixture has {info['hosts']}); an agent with its old secret: "
              f"{'hello answered' if stats.connected else 'REFUSED'}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    db, wal = figures["size"]
    print()
    print(f"{info['hosts']} hosts x {info['days']:g} d at {INTERVAL:g} s: database {db / 2**20:,.0f} MiB "
          f"(+ WAL {wal / 2**20:.1f} MiB); restore {restore_s:.1f} s, the restored server up in {up_s:.1f} s "
          f"serving {served} hosts")
    print()
    print("| backup | archive | wall | CPU | WAL peak | send->ack | receive->commit | load |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| none (baseline {figures['base_s']:.0f} s) | | | | | {latency(figures['base'])} | {figures['base_commit']} | "
          f"{figures['base_load']} |")
    for label in ["in the server"] * args.in_server + [label for label, _, _ in variants]:
        made = figures[label]
        print(f"| {label} | {made['archive'] / 2**20:,.0f} MiB | {made['wall']:.1f} s | {made['cpu']:.1f} s | "
              f"{made['wal_peak'] / 2**20:.1f} MiB | {latency(made['during'])} | {made['commit']} | {made['load']} |")
    print(load())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--agents", type=int, default=100, help="simulated agents streaming (at most --hosts)")
    parser.add_argument("--baseline", type=float, default=60, help="seconds measured before the backup")
    parser.add_argument("--after", type=float, default=15, help="seconds measured after it")
    parser.add_argument("--settle", type=float, default=15, help="seconds after the agents connect")
    parser.add_argument("--nice", type=int, default=0, help="then back up again under nice -n N")
    parser.add_argument("--fresh", action="store_true", help="make the fixture again")
    parser.add_argument("--in-server", action="store_true",
                        help="first the server's own backup (MBOT_BACKUP_DIR: in a worker thread of the server)")
    parser.add_argument("--compare", metavar="REV", help="first back up with REV's mbot (git archive), then this one")
    parser.add_argument("--keep", action="store_true", help=f"keep {HOME}/run (the copy, archive, restore)")
    trio.run(bench, parser.parse_args())


if __name__ == "__main__":
    main()
