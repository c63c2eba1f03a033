"""Ingest benchmark: N simulated agents against the real server, each a real TLS WebSocket, the agents spread over
several processes of their own, the server (`python -m mbot`) in its own process, from any checkout.

    .venv/bin/python bench/ingest.py --agents 1000                       # this checkout, one point
    .venv/bin/python bench/ingest.py --agents 1000,2500,5000 --repo /work/main --repo .
                                                                         # main and this checkout, side by side
    .venv/bin/python bench/ingest.py --agents 1000 --rev HEAD~3          # a git revision, exported to a temp dir

Each point runs the checkout's server with a fresh data directory (N hosts, the first 20 owned by the chat user),
BOT_TOKEN and TELEGRAM_API_URL pointing at the tests' fake Bot API server (tests/fakebot.py), /metrics off and
MBOT_WATCH_SELF=0. The simulated agents behave as agent/mbot_agent.py does on the wire: a hello with an inventory
and capabilities, the 40-series sample every interval (random phase), a processes snapshot every other interval
(30 members, their CPU changing), a services snapshot after each hello (40 units) and when one changes (every 10
minutes or so), a keepalive ping every 30 s, the spool (samples stay until an ack covers them; a reconnect replays
what the first ack does not cover, in one `samples` frame); they answer the server's link probes (WebSocket pings,
every 10 s) as any WebSocket library does. They connect at --connect-rate per second in all (a real fleet after a
restart arrives over seconds, not in one instant) and retry with backoff when a connection fails.

Printed per point (after a warm-up of two intervals, over --duration seconds):
- committed samples/s (rows appearing in the database) against the expected agents/interval;
- send->commit (the sample's ts, taken just before the send, to the moment a reader polling the database every
  0.1 s sees the row: up to 0.1 s late) p50/p99/max: how fresh the data is, the figure the target is about; and
  send->ack (in the simulator: from the send to the ack that covers the sample), which on a server that paces its
  acks (docs/architecture.md, "Acks and probes under load") measures that pace, not the server's speed;
- the server's CPU per committed sample (all its threads, over the window): the figure that compares two checkouts
  best on a machine whose load drifts, since it does not depend on how much CPU the server was given;
- the chat's /status latency (the fake Bot API queues the update; the clock stops when the reply reaches it), one
  every 2 s during the window;
- the CPU of every server process (its event loop thread apart) and of the simulators (per process), the server's
  peak RSS, the load average of the machine over the window;
- samples not stored: after the window the simulators stop sampling and wait (up to 60 s) until everything is
  acked; then every sample they took should be in the database exactly once (what is not is still in a spool:
  a server that fell behind, not a loss).
A summary table of every point ends the run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio_websocket
import wsproto.utilities

ROOT = Path(__file__).resolve().parent.parent
CHAT_USER = 4242
OWNED = 20  # hosts owned by the chat user: what /status summarises
STATUS_EVERY = 2.0
POLL_EVERY = 0.1


# --- the simulated agents (one process runs many: `ingest.py --sim`, its orders on stdin) -----------------------


def sample_metrics(rng: random.Random) -> dict[str, Any]:
    """A realistic sample: 8 cores, 3 disks, 2 interfaces, 2 temperatures (about 40 series)."""
    return {
        "cpu": round(rng.uniform(0, 100), 1), "cpu_cores": [round(rng.uniform(0, 100), 1) for _ in range(8)],
        "load": [round(rng.uniform(0, 4), 2) for _ in range(3)],
        "ram": {"used": 8_000_000_000 + rng.randrange(10**8), "total": 16_000_000_000},
        "swap": {"used": 100_000_000, "total": 2_000_000_000},
        "disks": {m: {"used": 50_000_000_000 + rng.randrange(10**6), "total": 100_000_000_000}
                  for m in ("/", "/home", "/var")},
        "disk_io": {"read": round(rng.uniform(0, 1e7), 1), "write": round(rng.uniform(0, 1e7), 1)},
        "net": {i: {"rx": round(rng.uniform(0, 1e6), 1), "tx": round(rng.uniform(0, 1e6), 1)}
                for i in ("eth0", "wlan0")},
        "temps": {"cpu": round(rng.uniform(30, 80), 1), "nvme": round(rng.uniform(30, 60), 1)},
        "uptime": 100000.0, "procs": 300,
    }


INVENTORY = {"cpu": {"model": "AMD EPYC 7763 64-Core Processor", "cores": 8, "threads": 8},
             "mem_total": 16_000_000_000, "swap_total": 2_000_000_000, "os": "Debian GNU/Linux 12 (bookworm)",
             "kernel": "6.1.0-18-amd64", "arch": "x86_64", "virt": "kvm", "boot_time": 1764000000.0,
             "agent": "0.2.0",
             "disks": [{"mount": m, "device": f"/dev/vda{i}", "fs": "ext4", "total": 100_000_000_000}
                       for i, m in enumerate(("/", "/home", "/var"))],
             "nics": [{"name": "eth0", "addrs": ["192.0.2.2/24", "fd00::2"], "mac": "02:fc:00:00:00:01",
                       "speed": 10000, "up": True}]}


def processes_items(rng: random.Random) -> list[dict[str, Any]]:
    names = ["postgres", "python3", "nginx", "systemd", "sshd", "containerd", "dockerd", "node", "java", "redis"]
    return [{"pid": 1000 + i, "name": names[i % len(names)], "user": "root" if i % 3 else "app",
             "cmd": f"/usr/bin/{names[i % len(names)]} --worker {i} --config /etc/app/{i}.conf",
             "cpu": round(rng.uniform(0, 50), 1), "rss": 50_000_000 + 1_000_000 * i} for i in range(30)]


def services_items(changed: int) -> list[dict[str, Any]]:
    units = [{"unit": f"unit{i}.service", "state": "active", "sub": "running"} for i in range(40)]
    units[changed % 40] = {**units[changed % 40], "state": "failed", "sub": "failed", "since": 1764012210.0}
    return units


# One context per process, as an agent has (making one loads the system's CA store: milliseconds of CPU).
CLIENT_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CLIENT_TLS.check_hostname, CLIENT_TLS.verify_mode = False, ssl.CERT_NONE


@dataclass
class SimStats:
    connected: int = 0  # agents whose hello was acked at least once
    connects: int = 0  # hellos acked, reconnects included
    failures: int = 0  # connection attempts or connections that failed
    acks: list[tuple[float, float]] = field(default_factory=list)  # (send wall time, send->ack seconds)
    sent: int = 0  # samples taken (each exactly once in the database at the end)
    unacked: int = 0  # samples still unacked at the end
    snapshots: int = 0
    why: dict[str, int] = field(default_factory=dict)  # failures by exception type


class SimAgent:
    def __init__(self, secret: str, port: int, interval: float, rng: random.Random, stats: SimStats,
                 procs_every: int, address: str) -> None:
        self.address = address
        self.secret, self.port, self.interval, self.rng, self.stats = secret, port, interval, rng, stats
        self.procs_every = procs_every
        self.epoch = int(time.time() * 1000) + rng.randrange(1000)
        self.seq = 0
        self.spool: dict[int, tuple[str, float, float]] = {}  # seq -> (sample text, wall ts, monotonic send)
        self.sent_upto = 0
        self.new_sample = trio.Event()
        self.ever_connected = False
        self.services_change = 0

    def take_sample(self) -> None:
        self.seq += 1
        ts = time.time()
        text = json.dumps({"seq": self.seq, "ts": ts, "metrics": sample_metrics(self.rng)}, separators=(",", ":"))
        self.spool[self.seq] = (text, ts, 0.0)
        self.stats.sent += 1
        self.new_sample.set()
        self.new_sample = trio.Event()

    async def run(self, stopping: trio.Event) -> None:
        """Connect, serve, reconnect with backoff, until `stopping` and everything is acked."""
        attempt = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sampler, stopping)
            while not (stopping.is_set() and not self.spool):
                try:
                    await self._connection(stopping)
                    attempt = 0
                except* (OSError, trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError,
                         trio_websocket.HandshakeError, trio_websocket.ConnectionClosed,
                         trio_websocket.ConnectionRejected, wsproto.utilities.LocalProtocolError) as group:
                    self.stats.failures += 1
                    first = group.exceptions[0]
                    while isinstance(first, BaseExceptionGroup):
                        first = first.exceptions[0]
                    why = type(first).__name__
                    self.stats.why[why] = self.stats.why.get(why, 0) + 1
                if stopping.is_set() and not self.spool:
                    break
                await trio.sleep(1.0 + self.rng.uniform(0, min(30.0, 2.0 ** attempt)))
                attempt += 1
            nursery.cancel_scope.cancel()

    async def _sampler(self, stopping: trio.Event) -> None:
        await trio.sleep(self.rng.uniform(0, self.interval))  # agents are not in phase
        next_at = trio.current_time()
        while not stopping.is_set():
            self.take_sample()
            next_at += self.interval
            await trio.sleep_until(next_at)

    async def _connection(self, stopping: trio.Event) -> None:
        with trio.fail_after(30):
            # Each agent from an address of its own (127.0.0.0/8 is all loopback), as a real fleet: the server
            # bounds connections waiting for their handshake per address.
            tcp = await trio.open_tcp_stream("127.0.0.1", self.port, local_address=self.address)
        stream = trio.SSLStream(tcp, CLIENT_TLS, server_hostname="127.0.0.1", https_compatible=True)
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(30):
                    ws = await trio_websocket.wrap_client_stream(
                        nursery, stream, "127.0.0.1", "/agent",
                        extra_headers=[(b"Authorization", f"Bearer {self.secret}".encode())])
                    await ws.send_message(json.dumps({
                        "type": "hello", "v": 1, "agent": "0.2.0", "epoch": self.epoch, "hostname": "sim",
                        "os": "Linux 6.1.0-18-amd64", "platform": "linux", "arch": "x86_64", "cpu_count": 8,
                        "mem_total": 16_000_000_000, "boot_time": 1764000000.0, "interval": self.interval,
                        "disks": ["/", "/home", "/var"], "capabilities": ["speedtest", "checks"],
                        "inventory": INVENTORY}))
                    first = json.loads(await ws.get_message())
                while first.get("type") != "ack":
                    first = json.loads(await ws.get_message())
                self._acked(first["seq"])
                self.sent_upto = first["seq"]
                self.stats.connects += 1
                if not self.ever_connected:
                    self.ever_connected = True
                    self.stats.connected += 1
                nursery.start_soon(self._receiver, ws)
                nursery.start_soon(self._keepalive, ws)
                await self._sender(ws, stopping)
                await ws.aclose()
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _sender(self, ws: trio_websocket.WebSocketConnection, stopping: trio.Event) -> None:
        await self._send_snapshot(ws, "services", services_items(self.services_change))
        samples_sent = 0
        next_services = trio.current_time() + self.rng.uniform(300, 900)
        while True:
            pending = [s for s in sorted(self.spool) if s > self.sent_upto]
            if pending:
                now = time.monotonic()
                for s in pending:
                    text, ts, _ = self.spool[s]
                    self.spool[s] = (text, ts, now)
                texts = [self.spool[s][0] for s in pending]
                frame = ('{"type":"sample",' + texts[0][1:] if len(texts) == 1
                         else '{"type":"samples","samples":[' + ",".join(texts) + "]}")
                await ws.send_message(frame)
                self.sent_upto = pending[-1]
                samples_sent += 1
                if samples_sent % self.procs_every == 1 or self.procs_every == 1:
                    await self._send_snapshot(ws, "processes", processes_items(self.rng))
                if trio.current_time() >= next_services:
                    self.services_change += 1
                    next_services = trio.current_time() + self.rng.uniform(300, 900)
                    await self._send_snapshot(ws, "services", services_items(self.services_change))
                continue
            if stopping.is_set():
                if not self.spool:
                    return
                await trio.sleep(0.2)
                continue
            await self.new_sample.wait()

    async def _send_snapshot(self, ws: trio_websocket.WebSocketConnection, kind: str, items: list) -> None:
        await ws.send_message(json.dumps({"type": "snapshot", "kind": kind, "v": 1, "ts": time.time(),
                                          "items": items}, separators=(",", ":")))
        self.stats.snapshots += 1

    def _acked(self, seq: int) -> None:
        now, wall = time.monotonic(), time.time()
        for s in [s for s in self.spool if s <= seq]:
            _, ts, sent = self.spool.pop(s)
            if sent:
                self.stats.acks.append((round(wall - (now - sent), 3), round(now - sent, 4)))

    async def _receiver(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            frame = json.loads(await ws.get_message())
            if frame.get("type") == "ack":
                self._acked(frame["seq"])

    async def _keepalive(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            await trio.sleep(30)
            await ws.ping()


async def simulate(orders: dict[str, Any]) -> None:
    """One simulator process: its agents, started at `rate` per second; reports on stdout (JSON lines); a line on
    stdin says stop (sampling ends, the spool drains, results are printed)."""
    stats = SimStats()
    stopping = trio.Event()
    rng = random.Random(orders["seed"])
    agents = [SimAgent(secret, orders["port"], orders["interval"], random.Random(rng.random()), stats,
                       orders["procs_every"], f"127.{orders['seed'] + 1}.{i // 250}.{i % 250 + 1}")
              for i, secret in enumerate(orders["secrets"])]
    out = sys.stdout

    def report(**kw: Any) -> None:
        out.write(json.dumps(kw) + "\n")
        out.flush()

    async def watch_stdin() -> None:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        await stdin.receive_some()  # any line (or EOF): stop
        stopping.set()

    async def progress() -> None:
        last = None
        while True:
            now = (stats.connected, stats.failures)
            if now != last:
                report(connected=stats.connected, failures=stats.failures)
                last = now
            await trio.sleep(0.5)

    async with trio.open_nursery() as outer:
        outer.start_soon(watch_stdin)
        outer.start_soon(progress)
        async with trio.open_nursery() as nursery:
            pause = 1.0 / orders["rate"]
            for agent in agents:
                nursery.start_soon(agent.run, stopping)
                await trio.sleep(pause)
            await stopping.wait()
            with trio.move_on_after(orders["drain"]):
                while any(a.spool for a in agents):
                    await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        stats.unacked = sum(len(a.spool) for a in agents)
        report(result=True, sent=stats.sent, unacked=stats.unacked, failures=stats.failures,
               connects=stats.connects, connected=stats.connected, acks=stats.acks, snapshots=stats.snapshots,
               why=stats.why)
        outer.cancel_scope.cancel()


# --- the bench: a checkout's server, the simulators, the measurements ---------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEYS = """
import json, sys
from pathlib import Path
from mbot import service, store, tls
data, n, owner, owned = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tls.ensure_certificate(data, ["127.0.0.1"])  # before the hosts, as newkey does
conn = store.connect(data / "mbot.sqlite3")
with conn:
    conn.execute("BEGIN IMMEDIATE")
    secrets = [service.new_key(conn, f"sim{i}", owner if i < owned else 0).secret for i in range(n)]
conn.close()
json.dump(secrets, sys.stdout)
"""


def export_rev(rev: str) -> Path:
    """A git revision of this repository as a plain directory (removed at exit by the caller)."""
    target = Path(tempfile.mkdtemp(prefix="mbot-bench-rev-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def quantiles(values: list[float]) -> str:
    if not values:
        return "p50=- p99=- max=- (none)"
    return (f"p50={percentile(values, 0.5) * 1000:.0f} ms p99={percentile(values, 0.99) * 1000:.0f} ms "
            f"max={max(values) * 1000:.0f} ms (n={len(values)})")


def describe_checkout(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return f"{repo} @ {head}{'+dirty' if dirty else ''}"
    except (subprocess.CalledProcessError, OSError):
        return str(repo)


class Sims:
    """The simulator processes and what they report."""

    def __init__(self) -> None:
        self.procs: list[trio.Process] = []
        self.connected: dict[int, int] = {}
        self.failures: dict[int, int] = {}
        self.results: dict[int, dict[str, Any]] = {}

    async def start(self, nursery: trio.Nursery, secrets: list[str], port: int, args: argparse.Namespace) -> None:
        count = max(1, min(args.procs, len(secrets)))
        for i in range(count):
            orders = {"secrets": secrets[i::count], "port": port, "interval": args.interval, "seed": i,
                      "rate": args.connect_rate / count, "procs_every": args.procs_every, "drain": 60.0}
            proc = await trio.lowlevel.open_process([sys.executable, str(Path(__file__).resolve()), "--sim"],
                                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert proc.stdin is not None
            await proc.stdin.send_all(json.dumps(orders).encode() + b"\n")
            self.procs.append(proc)
            nursery.start_soon(self._read, i, proc)

    async def _read(self, i: int, proc: trio.Process) -> None:
        assert proc.stdout is not None
        buffer = b""
        while True:
            data = await proc.stdout.receive_some(1 << 20)
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = json.loads(line)
                if event.get("result"):
                    self.results[i] = event
                else:
                    self.connected[i], self.failures[i] = event["connected"], event["failures"]

    async def stop(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            try:
                await proc.stdin.send_all(b"stop\n")
            except trio.BrokenResourceError:
                pass
        with trio.move_on_after(90):
            while len(self.results) < len(self.procs):
                await trio.sleep(0.2)
        for proc in self.procs:
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()


def cpu_of(proc: Any) -> tuple[float, float]:
    """(process CPU seconds, its main thread's: the event loop)"""
    times = proc.cpu_times()
    main = next((t for t in proc.threads() if t.id == proc.pid), None)
    return times.user + times.system, (main.user_time + main.system_time) if main else 0.0


async def run_point(repo: Path, agents: int, args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    sys.path.insert(0, str(ROOT / "tests"))
    from fakebot import FakeBot

    data = Path(tempfile.mkdtemp(prefix="mbot-bench-"))
    made = subprocess.run([sys.executable, "-c", KEYS, str(data), str(agents), str(CHAT_USER), str(OWNED)],
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
    if made.returncode:
        raise SystemExit(f"cannot make the hosts with {repo}: {made.stderr}")
    secrets = json.loads(made.stdout)
    port = free_port()
    fake = FakeBot()
    point: dict[str, Any] = {"repo": describe_checkout(repo), "agents": agents}
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        env = {**os.environ, "PYTHONPATH": str(repo), "MBOT_DATA_DIR": str(data), "PORT": str(port),
               "MBOT_HOST": "127.0.0.1", "MBOT_PUBLIC_HOST": "127.0.0.1", "MBOT_LOG_LEVEL": "WARNING",
               "MBOT_WATCH_SELF": "0", "BOT_TOKEN": fake.token, "TELEGRAM_API_URL": fake.url,
               "ALLOWED_USERS": str(CHAT_USER)}
        env.pop("MBOT_METRICS_PORT", None)
        log = open(data / "server.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "mbot"], cwd=repo, env=env, stdout=log, stderr=log)
        sims = Sims()
        try:
            with trio.fail_after(60):
                while True:
                    try:
                        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await trio.sleep(0.1)
            started = time.monotonic()
            await sims.start(nursery, secrets, port, args)
            with trio.move_on_after(agents / args.connect_rate * 3 + 120):
                while sum(sims.connected.values()) < agents:
                    await trio.sleep(0.2)
            point["connect_s"] = time.monotonic() - started
            point["connected"] = sum(sims.connected.values())
            await trio.sleep(2 * args.interval)  # every agent in its rhythm, the first snapshots stored
            point.update(await measure(data, server.pid, sims, fake, args))
            await sims.stop()
            results = list(sims.results.values())
            sent = sum(r["sent"] for r in results)
            point["unacked"] = sum(r["unacked"] for r in results)
            point["failures"] = sum(r["failures"] for r in results)
            point["why"] = {k: sum(r["why"].get(k, 0) for r in results) for r in results for k in r["why"]}
            point["reconnects"] = sum(r["connects"] for r in results) - sum(r["connected"] for r in results)
            acks = [(w, lat) for r in results for w, lat in r["acks"]]
            point["ack"] = [lat for w, lat in acks if point["t0"] <= w < point["t1"]]
            with sqlite3.connect(f"file:{data / 'mbot.sqlite3'}?mode=ro", uri=True) as conn:
                stored = conn.execute("SELECT count(*), count(DISTINCT host_id || ':' || seq) FROM samples").fetchone()
            point["sent"], point["stored"], point["distinct"] = sent, stored[0], stored[1]
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
            for proc in sims.procs:
                if proc.returncode is None:
                    proc.kill()
            nursery.cancel_scope.cancel()
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    else:
        point["data"] = str(data)
    report(point, args)
    return point


async def measure(data: Path, pid: int, sims: Sims, fake: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The window: rows appearing in the database, /status every 2 s, CPU, RSS, load."""
    import psutil

    server = psutil.Process(pid)
    server_procs = [server, *server.children(recursive=True)]
    sim_procs = [psutil.Process(p.pid) for p in sims.procs]
    conn = sqlite3.connect(f"file:{data / 'mbot.sqlite3'}?mode=ro", uri=True, check_same_thread=False)
    last_rowid = conn.execute("SELECT coalesce(max(rowid), 0) FROM samples").fetchone()[0]
    commit: list[float] = []
    status: list[float] = []
    status_timeouts = 0
    rows = 0
    peak_rss = 0
    t0 = time.time()
    cpu0 = {p.pid: cpu_of(p) for p in server_procs}
    sim0 = {p.pid: cpu_of(p)[0] for p in sim_procs}
    spy = None
    if args.py_spy:
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(args.duration)),
                                "--rate", "50", "--format", "raw", "--nonblocking", "-o", args.py_spy],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = t0 + args.duration

    def poll(last: int) -> tuple[int, list[float]]:
        got = conn.execute("SELECT rowid, ts FROM samples WHERE rowid > ? ORDER BY rowid", (last,)).fetchall()
        now = time.time()
        return (got[-1][0] if got else last), [now - ts for _, ts in got]

    async def poller() -> None:
        nonlocal last_rowid, rows
        while time.time() < end:
            last_rowid, latencies = await trio.to_thread.run_sync(poll, last_rowid)
            rows += len(latencies)
            commit.extend(latencies)
            await trio.sleep(POLL_EVERY)

    async def prober() -> None:
        nonlocal status_timeouts
        while time.time() < end - 1:
            before = len(fake.calls("sendMessage"))
            asked = time.monotonic()
            fake.push_message(CHAT_USER, "/status")
            with trio.move_on_after(30) as waited:
                while not any(c.params.get("chat_id") == CHAT_USER for c in fake.calls("sendMessage")[before:]):
                    await trio.sleep(0.01)
            if waited.cancelled_caught:
                status_timeouts += 1
            else:
                status.append(time.monotonic() - asked)
            await trio.sleep(max(0.0, STATUS_EVERY - (time.monotonic() - asked)))

    async def sampler() -> None:
        nonlocal peak_rss
        while time.time() < end:
            peak_rss = max(peak_rss, sum(p.memory_info().rss for p in server_procs))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller)
        nursery.start_soon(prober)
        nursery.start_soon(sampler)
    t1 = time.time()
    elapsed = t1 - t0
    load = os.getloadavg()
    cpu = {}
    for p in server_procs:
        total, main = cpu_of(p)
        cpu[f"{p.pid}"] = ((total - cpu0[p.pid][0]) / elapsed * 100, (main - cpu0[p.pid][1]) / elapsed * 100)
    sims_cpu = [(cpu_of(p)[0] - sim0[p.pid]) / elapsed * 100 for p in sim_procs]
    conn.close()
    if spy is not None:
        spy.wait()
    return {"t0": t0, "t1": t1, "elapsed": elapsed, "rows": rows, "commit": commit, "status": status,
            "status_timeouts": status_timeouts, "server_cpu": cpu, "sims_cpu": sims_cpu, "rss": peak_rss,
            "load": load}


def report(p: dict[str, Any], args: argparse.Namespace) -> None:
    expected = p["agents"] / args.interval
    lost = p["sent"] - p["distinct"]
    print(f"\n== {p['repo']}: {p['agents']} agents every {args.interval:g} s, window {p['elapsed']:.0f} s")
    print(f"connected {p['connected']}/{p['agents']} in {p['connect_s']:.1f} s (at {args.connect_rate:g}/s); "
          f"failed attempts {p['failures']} {p['why'] or ''}, reconnects {p['reconnects']}")
    print(f"committed {p['rows'] / p['elapsed']:.1f} samples/s (expected {expected:.1f})")
    print(f"send->ack    {quantiles(p['ack'])}")
    print(f"send->commit {quantiles(p['commit'])}")
    print(f"chat /status {quantiles(p['status'])}, {p['status_timeouts']} without an answer in 30 s")
    cpus = ", ".join(f"pid {pid}: {total:.0f}% (loop thread {main:.0f}%)" for pid, (total, main)
                     in p["server_cpu"].items())
    per_sample = sum(c for c, _ in p["server_cpu"].values()) / 100 * p["elapsed"] / max(1, p["rows"]) * 1000
    print(f"server CPU {cpus}; {per_sample:.2f} ms of CPU per committed sample; peak RSS {p['rss'] / 2**20:.0f} MiB")
    print(f"simulators CPU {' + '.join(f'{c:.0f}%' for c in p['sims_cpu'])} = {sum(p['sims_cpu']):.0f}%; "
          f"load average {p['load'][0]:.2f} {p['load'][1]:.2f} {p['load'][2]:.2f}")
    if "data" in p:
        print(f"data directory (server.log): {p['data']}")
    print(f"samples taken {p['sent']}, in the database {p['stored']} ({p['distinct']} distinct), not stored by "
          f"the end {lost} (still in the agents' spools: unacked {p['unacked']})")
    sys.stdout.flush()


def summary(points: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print("\n== summary (interval %g s; latencies in ms; CPU %% of one core; ms/smp: server CPU per committed "
          "sample)" % args.interval)
    print(f"{'checkout':<34} {'agents':>6} {'commit/s':>9} {'expect':>7} {'ack p99':>8} {'commit p99':>10} "
          f"{'commit max':>10} {'status p99':>10} {'srv CPU':>7} {'loop':>5} {'ms/smp':>6} {'RSS MiB':>7} {'sims':>5} "
          f"{'load1':>5} {'unstored':>8}")
    for p in points:
        total = sum(c for c, _ in p["server_cpu"].values())
        loop = max((m for _, m in p["server_cpu"].values()), default=0)

        def ms(values: list[float], q: float | None = 0.99) -> str:
            if not values:
                return "-"
            return f"{(percentile(values, q) if q is not None else max(values)) * 1000:.0f}"

        print(f"{p['repo'][-34:]:<34} {p['agents']:>6} {p['rows'] / p['elapsed']:>9.1f} "
              f"{p['agents'] / args.interval:>7.0f} {ms(p['ack']):>8} {ms(p['commit']):>10} "
              f"{ms(p['commit'], None):>10} {ms(p['status']):>10} {total:>7.0f} {loop:>5.0f} "
              f"{total / 100 * p['elapsed'] / max(1, p['rows']) * 1000:>6.2f} "
              f"{p['rss'] / 2**20:>7.0f} {sum(p['sims_cpu']):>5.0f} {p['load'][0]:>5.2f} "
              f"{p['sent'] - p['distinct']:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="100", help="comma-separated counts, e.g. 1000,2500,5000")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0, help="the measured window, seconds")
    parser.add_argument("--procs", type=int, default=4, help="simulator processes")
    parser.add_argument("--connect-rate", type=float, default=100.0, help="new agents per second, in all")
    parser.add_argument("--procs-every", type=int, default=2, help="a processes snapshot every N samples")
    parser.add_argument("--repo", action="append", default=[], help="a checkout whose server to run (repeat it "
                        "to compare; default: this one)")
    parser.add_argument("--rev", action="append", default=[], help="a git revision of this repository, exported "
                        "to a temporary directory (repeatable)")
    parser.add_argument("--py-spy", metavar="FILE", help="record the server with py-spy (raw) during the window")
    parser.add_argument("--keep", action="store_true", help="keep the data directories (server.log is there)")
    parser.add_argument("--sim", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sim:
        trio.run(simulate, json.loads(sys.stdin.readline()))
        return
    exported = [export_rev(rev) for rev in args.rev]
    repos = [Path(r).resolve() for r in args.repo] + exported or [ROOT]
    points = []
    try:
        for n in [int(x) for x in args.agents.split(",")]:
            for repo in repos:  # back to back per count: the machine's load drifts less between the two
                points.append(trio.run(run_point, repo, n, args))
    finally:
        for path in exported:
            shutil.rmtree(path, ignore_errors=True)
    if len(points) > 1:
        summary(points, args)

if __name__ == "__main__":
    main()
