"""Restart benchmark: 100 real agents, the real server restarted under them (issue 13, "fast, polite reconnects").

    .venv/bin/python bench/restart.py                      # about 40 s
    .venv/bin/python bench/restart.py --compare 436e8fb    # and the same with that revision's server and agent

The server is `python -m mbot` in a process of its own (its own MBOT_DATA_DIR, no BOT_TOKEN, its INFO log in a
file), every host with an offline alert of 30 s (the shortest /setalert allows; the default is the same for
intervals up to 10 s). The agents are the agent's own code (agent/mbot_agent.py's Agent: connection loop, reconnect
policy, spool, Link), one trio task each in this process, with a stub collector (psutil is not what is measured) and
a sample every --interval seconds. Their stable_after is 5 s instead of 30 s, so that the bench need not wait half a
minute before each restart: a connection up that long counts as an established one, as after hours in real life.

Each restart: SIGTERM to the server, wait for it to exit, --downtime seconds with nothing listening (0: a plain
restart; 10: a slow start, an upgrade), then the server again on the same port and data directory. Printed per
restart: the stop and start times, the seconds from SIGTERM (and from the new server's "listening" line) until every
agent is connected again (hello acked) and until each has a sample acked on its new connection (p50 / max),
connection attempts and agent log lines per agent, and the offline / back-online alerts the new server sent.
With --compare REV the same runs with REV's server and agent (`git archive`), for the behaviour before.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import service, store, tls  # noqa: E402
from mbot.alerting import save_rule  # noqa: E402
from mbot.alerts import OfflineRule  # noqa: E402

OFFLINE_DELAY = 30.0
STABLE_AFTER = 5.0


class StubCollector:
    def collect(self) -> dict[str, Any]:
        return {"cpu": random.uniform(0, 100), "ram": {"used": 1e9, "total": 4e9}, "uptime": 1e5, "procs": 100}

    def host_facts(self) -> dict[str, Any]:
        return {"hostname": "sim", "os": "Linux", "platform": "linux", "arch": "x86_64", "cpu_count": 2,
                "boot_time": 1.0, "disks": ["/"], "gpus": []}

    def close(self) -> None:
        pass


class Tracker:
    """What each agent did, from its Link's acks and its connection attempts (times: time.monotonic())."""

    def __init__(self, n: int) -> None:
        self.hello_at = [-1.0] * n  # the latest hello ack: a connection is up
        self.sample_at = [-1.0] * n  # the first sample ack on that connection (-1: none yet)
        self.attempts = 0
        self.log_lines = 0

    def watch(self, mod: ModuleType, a: Any, i: int) -> None:
        receive, connect = a.link.receive, a._connect_and_serve

        def receive_and_note(message: Any) -> Any:
            event = receive(message)
            if isinstance(event, mod.Acked):
                if event.first:
                    self.hello_at[i], self.sample_at[i] = time.monotonic(), -1.0
                elif self.sample_at[i] < 0:
                    self.sample_at[i] = time.monotonic()
            return event

        async def connect_and_count() -> Any:
            self.attempts += 1
            return await connect()

        a.link.receive = receive_and_note
        a._connect_and_serve = connect_and_count

    def back(self, since: float) -> bool:
        return all(h > since and s > 0 for h, s in zip(self.hello_at, self.sample_at))

    def stable(self) -> bool:
        now = time.monotonic()
        return all(h > 0 and now - h >= STABLE_AFTER + 0.5 for h in self.hello_at)


class CountLines(logging.Handler):
    def __init__(self, tracker: Tracker) -> None:
        super().__init__(logging.INFO)
        self.tracker = tracker

    def emit(self, record: logging.LogRecord) -> None:
        self.tracker.log_lines += 1


def load_agent(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def checkout(rev: str) -> Path:
    """REV's mbot/ and agent/ in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"mbot-{rev}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "mbot", "agent"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Server:
    def __init__(self, code: Path, data: Path, port: int) -> None:
        self.code, self.data, self.port = code, data, port
        self.env = {**os.environ, "MBOT_DATA_DIR": str(data), "PORT": str(port), "MBOT_HOST": "127.0.0.1",
                    "MBOT_PUBLIC_HOST": "127.0.0.1", "MBOT_LOG_LEVEL": "INFO"}
        self.env.pop("BOT_TOKEN", None)
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data / f"server-{self.runs}.log"

    async def start(self) -> float:
        """Start; returns the seconds until its "listening" line."""
        self.runs += 1
        started = time.monotonic()
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "mbot"], cwd=self.code, env=self.env,
                                            stdout=out, stderr=subprocess.STDOUT)
        with trio.fail_after(60):
            while "listening for agents" not in self.log_path.read_text(errors="replace"):
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited: {self.log_path.read_text(errors='replace')}")
                await trio.sleep(0.01)
        return time.monotonic() - started

    async def stop(self) -> float:
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        status = await trio.to_thread.run_sync(self.process.wait)
        if status != 0:
            print(f"  the server exited with {status}: see {self.log_path}")
        return time.monotonic() - started

    def alerts(self) -> tuple[int, int]:
        """(offline, back online) alerts in the current run's log."""
        text = self.log_path.read_text(errors="replace")
        lines = re.findall(r"alert: (.*)", text)
        return (sum(" is offline" in line for line in lines), sum(" is back online" in line for line in lines))


async def scenario(label: str, code: Path, agent_path: Path, args: argparse.Namespace) -> None:
    mod = load_agent(agent_path, f"mbot_agent_{label}")
    data = Path(tempfile.mkdtemp(prefix="mbot-restart-"))
    cert = tls.ensure_certificate(data, ["127.0.0.1", "localhost"])
    conn = store.connect(data / "mbot.sqlite3")
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        keys = [service.new_key(conn, f"sim{i}") for i in range(args.agents)]
        for key in keys:
            save_rule(conn, OfflineRule(key.host_id, delay=OFFLINE_DELAY))
    conn.close()
    server = Server(code, data, free_port())
    tracker = Tracker(args.agents)
    counter = CountLines(tracker)
    agent_log = logging.getLogger("mbot.agent")
    agent_log.addHandler(counter)
    agent_log.setLevel(logging.INFO)
    agent_log.propagate = False

    async def inline(fn: Any, *a: Any) -> Any:
        return fn(*a)

    print(f"{label}: {args.agents} agents ({agent_path.relative_to(agent_path.parents[1])} of {code}), "
          f"a sample every {args.interval:g} s, offline alerts after {OFFLINE_DELAY:g} s")
    try:
        await server.start()
        async with trio.open_nursery() as nursery:
            for i, key in enumerate(keys):
                config = mod.AgentConfig(secret=key.secret, server="127.0.0.1", port=server.port,
                                         interval=args.interval, fingerprint=cert.fingerprint,
                                         fingerprint_file=str(data / "fp.json"), stable_after=STABLE_AFTER)
                a = mod.Agent(config, StubCollector())
                a._to_thread = inline  # the stub collector does not block
                tracker.watch(mod, a, i)
                await a.refresh_facts()
                nursery.start_soon(a.run)
            for downtime in args.downtimes:
                with trio.fail_after(120):
                    while not tracker.stable():
                        await trio.sleep(0.05)
                attempts0, lines0 = tracker.attempts, tracker.log_lines
                restart = time.monotonic()
                stop_s = await server.stop()
                await trio.sleep(downtime)
                spawned = time.monotonic()
                start_s = await server.start()
                listening = spawned + start_s
                with trio.fail_after(300):
                    while not tracker.back(spawned):
                        await trio.sleep(0.01)
                await trio.sleep(1.0)  # the alert lines of the last arrivals
                hello = [h - restart for h in tracker.hello_at]
                sample = [s - restart for s in tracker.sample_at]
                offline, back_online = server.alerts()
                print(f"  restart, {downtime:g} s down: server stopped in {stop_s:.2f} s, listening "
                      f"{start_s:.2f} s after its start")
                print(f"    all connected {max(hello):.2f} s after SIGTERM ({max(hello) - (listening - restart):.2f}"
                      f" s after listening), p50 {pct(hello, 0.5):.2f} s")
                print(f"    first sample acked: p50 {pct(sample, 0.5):.2f} s, max {max(sample):.2f} s after SIGTERM "
                      f"({max(sample) - (listening - restart):.2f} s after listening)")
                print(f"    {(tracker.attempts - attempts0) / args.agents:.1f} connection attempts and "
                      f"{(tracker.log_lines - lines0) / args.agents:.1f} log lines per agent; alerts: {offline} "
                      f"offline, {back_online} back online")
            nursery.cancel_scope.cancel()
    finally:
        agent_log.removeHandler(counter)
        if server.process is not None and server.process.poll() is None:
            await server.stop()


async def run(args: argparse.Namespace) -> None:
    await scenario("now", ROOT, ROOT / "agent" / "mbot_agent.py", args)
    if args.compare:
        old = checkout(args.compare)
        await scenario(args.compare, old, old / "agent" / "mbot_agent.py", args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--downtimes", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 10.0],
                        help="seconds with no server between stop and start, one restart each (default 0,10)")
    parser.add_argument("--compare", metavar="REV", help="also run REV's server and agent (git archive)")
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
