"""What the agent costs a monitored host: RSS and CPU time per sample, beside the floor of its imports.

    .venv/bin/python bench/agent_cost.py                  # 2 minutes at the default 5 s interval
    .venv/bin/python bench/agent_cost.py --duration 30 --interval 1
    .venv/bin/python bench/agent_cost.py --no-processes      # AGENT_PROCESSES=0: without the process list
    .venv/bin/python bench/agent_cost.py --services 150   # systemd services from the test fake of systemctl
    .venv/bin/python bench/agent_cost.py --containers /tmp/podman.sock   # with container collection on
    .venv/bin/python bench/agent_cost.py --agent /tmp/old_agent.py   # another version of the agent (a baseline)
    .venv/bin/python bench/agent_cost.py --breakdown      # and where a sample's CPU goes, per function and task

--services N puts tests/fakes/systemctl first on PATH with N running units (3 of them failed), so that the agent
sends `services` snapshots; the CPU of the systemctl processes it starts is shown apart (the fake is a Python
script, dearer than the real systemctl). The inventory's size (what each hello carries) is measured in this process.

Runs the real server and the real agent (agent/mbot_agent.py) as separate processes over real TLS. CPU is measured
from the agent's own counters between the first committed sample and the end (so start-up is not counted), and
divided by the samples the server committed in that window. Two counters: the kernel's utime+stime, which on a
tick-accounting kernel (CONFIG_TICK_CPU_ACCOUNTING) are a sample of who ran at each 10 ms tick, so at 0.1 % of a core
a 150 s window holds ~15 ticks (+-25 %); and the scheduler's exact run time (/proc/PID/task/*/schedstat, ns), read
every second for every thread (a worker thread that exits loses at most its last second, and trio's idle threads
linger 10 s before they exit), which is the figure to trust. The floor is a bare
`python -c "import psutil, trio, trio_websocket"` measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import service, store, tls  # noqa: E402


class RunTime:
    """The scheduler's exact CPU time of a process's threads (ns), polled by a thread every second."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> dict[int, int]:
        found = {}
        try:
            tids = os.listdir(f"/proc/{self._pid}/task")
        except OSError:
            return found
        for tid in tids:
            try:
                with open(f"/proc/{self._pid}/task/{tid}/schedstat") as f:
                    found[int(tid)] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return found

    def start(self) -> None:
        self._first = self._read()
        self._last = dict(self._first)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._last.update(self._read())

    def stop(self) -> tuple[float, float]:
        """Seconds of CPU since start(): all threads, and the main thread (the agent's event loop) alone."""
        self._last.update(self._read())
        self._stop.set()
        self._thread.join()
        spent = {tid: ns - self._first.get(tid, 0) for tid, ns in self._last.items()}
        return sum(spent.values()) / 1e9, spent.get(self._pid, 0) / 1e9


def floor_rss() -> int:
    probe = subprocess.Popen([sys.executable, "-c", "import psutil, trio, trio_websocket, sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        time.sleep(1.5)  # a benchmark, not a test: let the imports finish
        return psutil.Process(probe.pid).memory_info().rss
    finally:
        probe.communicate(b"")


def committed(db: Path) -> int:
    conn = store.connect(db, readonly=True)
    try:
        return conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        conn.close()


def stored_bytes(db: Path) -> int:
    """Bytes the raw samples take (sqlite's dbstat: the table and its index)."""
    conn = store.connect(db, readonly=True)
    try:
        return conn.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN ('samples', "
                            "'samples_host_ts')").fetchone()[0] or 0
    finally:
        conn.close()


def series_per_sample(db: Path) -> int:
    conn = store.connect(db, readonly=True)
    try:
        row = conn.execute("SELECT names FROM layouts ORDER BY id DESC LIMIT 1").fetchone()
        return len(json.loads(row[0])) if row else 0
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds after the first sample before measuring (default: 2 intervals; with many "
                             "containers, first polls inspect every one: ~130 s for 50)")
    parser.add_argument("--containers", default="off", metavar="SOCKET",
                        help="AGENT_CONTAINER_SOCKET: a Docker/Podman socket to watch (default: off)")
    parser.add_argument("--no-processes", action="store_true", help="run the agent with AGENT_PROCESSES=0")
    parser.add_argument("--services", type=int, default=0, help="fake systemd units (0: the host's own systemctl)")
    parser.add_argument("--breakdown", action="store_true",
                        help="run the agent through bench/agent_breakdown.py and print where a sample's CPU goes")
    parser.add_argument("--agent", type=Path, default=ROOT / "agent" / "mbot_agent.py",
                        help="the agent file to run (default: this checkout's)")
    args = parser.parse_args()
    print(f"agent: {args.agent}")
    print(f"inventory in each hello: {inventory_bytes(args.agent)} bytes (JSON)")

    data = Path(tempfile.mkdtemp(prefix="mbot-bench-agent-"))
    db = data / "mbot.sqlite3"
    conn = store.connect(db)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        secret = service.new_key(conn, "box1").secret
    conn.close()
    cert = tls.ensure_certificate(data, ["127.0.0.1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server_env = {**os.environ, "MBOT_DATA_DIR": str(data), "PORT": str(port), "MBOT_HOST": "127.0.0.1",
                  "MBOT_LOG_LEVEL": "WARNING"}
    server_env.pop("BOT_TOKEN", None)
    server = subprocess.Popen([sys.executable, "-m", "mbot"], cwd=ROOT, env=server_env)
    work = data / "agent"
    work.mkdir()
    agent_env = {**os.environ, "AGENT_SECRET": secret, "AGENT_SERVER_IP": "127.0.0.1", "AGENT_PORT": str(port),
                 "AGENT_FINGERPRINT": cert.fingerprint, "AGENT_INTERVAL": str(args.interval),
                 "AGENT_FINGERPRINT_FILE": str(work / "fp.json"),
                 "AGENT_PROCESSES": "0" if args.no_processes else "1", "AGENT_CONTAINER_SOCKET": args.containers}
    if args.services:
        units = [{"unit": f"unit{i}.service", "active": "failed" if i < 3 else "active",
                  "sub": "failed" if i < 3 else "running", "since_mono": 1_000_000} for i in range(args.services)]
        (work / "units.json").write_text(json.dumps(units))
        agent_env.update(PATH=f"{ROOT / 'tests' / 'fakes'}{os.pathsep}{os.environ.get('PATH', '')}",
                         FAKE_SYSTEMCTL_STATE=str(work / "units.json"))
    command = [sys.executable, str(args.agent.resolve())]
    if args.breakdown:
        agent_env.update(AGENT_FILE=str(args.agent.resolve()), BREAKDOWN_OUT=str(work))
        command = [sys.executable, str(ROOT / "bench" / "agent_breakdown.py")]
    agent = subprocess.Popen(command, cwd=work, env=agent_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = psutil.Process(agent.pid)
    try:
        deadline = time.time() + 60
        while committed(db) == 0:
            if time.time() > deadline:
                raise SystemExit("the agent sent nothing within 60 s")
            time.sleep(0.2)
        time.sleep(2 * args.interval if args.warmup is None else args.warmup)
        run_time = RunTime(agent.pid)
        run_time.start()
        if args.breakdown:
            agent.send_signal(signal.SIGUSR1)
        cpu0, count0, t0, size0 = proc.cpu_times(), committed(db), time.time(), stored_bytes(db)
        time.sleep(args.duration)
        cpu1, count1, size1 = proc.cpu_times(), committed(db), stored_bytes(db)
        exact, loop = run_time.stop()
        if args.breakdown:
            agent.send_signal(signal.SIGUSR1)
            time.sleep(1)  # a benchmark, not a test: the dump is a few KB
            breakdown = read_breakdown(work)
        series = series_per_sample(db)
        rss = proc.memory_info().rss
        elapsed = time.time() - t0
    finally:
        agent.terminate()
        agent.wait(10)
        server.terminate()
        server.wait(10)
    floor = floor_rss()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    children = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
    samples = count1 - count0
    print(f"interval={args.interval:g}s window={elapsed:.0f}s samples={samples} "
          f"process list {'off' if args.no_processes else 'on'} ({len(psutil.pids())} processes on this host)")
    print(f"agent RSS {rss / 2**20:.1f} MiB; floor (import psutil, trio, trio_websocket) {floor / 2**20:.1f} MiB; "
          f"ratio {rss / floor:.2f}x (target <= 1.2x)")
    print(f"agent CPU (scheduler's run time) {exact * 1000 / max(samples, 1):.2f} ms per sample = "
          f"{exact / elapsed * 100:.3f} % of one core at this interval (target < 0.1 %); event loop thread "
          f"{loop * 1000 / max(samples, 1):.2f} ms, worker threads {(exact - loop) * 1000 / max(samples, 1):.2f} ms")
    print(f"agent CPU (utime+stime, 10 ms ticks) {cpu * 1000 / max(samples, 1):.2f} ms per sample = "
          f"{cpu / elapsed * 100:.3f} % of one core")
    per_sample = (size1 - size0) / max(samples, 1)
    print(f"server: {series} series per sample ({args.containers != 'off' and 'containers on' or 'containers off'});"
          f" raw rows grow {per_sample:.0f} B per sample = {per_sample * 86400 / args.interval / 2**20:.1f} MiB per "
          "host per day before rollup")
    print(f"processes the agent ran (systemctl): {children * 1000 / max(samples, 1):.2f} ms per sample = "
          f"{children / elapsed * 100:.3f} % of one core")
    if args.breakdown:
        print("where a sample's CPU goes (ms per sample; functions include what they call; the wrappers add ~1 µs a "
              "call, and the agent runs without its re-execution, so RSS is not comparable):")
        for name, (calls, spent) in sorted(breakdown.items(), key=lambda item: -item[1][1]):
            if spent * 1000 / max(samples, 1) >= 0.005:
                print(f"  {spent * 1000 / max(samples, 1):7.3f} ms  {calls / max(samples, 1):6.2f} calls  {name}")
    services = snapshot_size(db, "services")
    if services is not None:
        print(f"latest services snapshot: {services} bytes stored")


def read_breakdown(folder: Path) -> dict[str, tuple[int, float]]:
    """The window's difference of bench/agent_breakdown.py's two dumps: name -> (calls, CPU seconds)."""
    first, last = (json.loads((folder / f"{n}.json").read_text()) for n in (1, 2))
    return {name: (calls - first.get(name, [0, 0.0])[0], spent - first.get(name, [0, 0.0])[1])
            for name, (calls, spent) in last.items()}


def inventory_bytes(agent_file: Path) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("mbot_agent", agent_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mbot_agent"] = module
    spec.loader.exec_module(module)
    collector = module.Collector()
    try:
        return len(json.dumps(collector.inventory(), separators=(",", ":")))
    finally:
        collector.close()


def snapshot_size(db: Path, kind: str) -> int | None:
    conn = store.connect(db, readonly=True)
    try:
        row = conn.execute("SELECT length(items) FROM snapshots WHERE kind = ?", (kind,)).fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]


if __name__ == "__main__":
    main()
