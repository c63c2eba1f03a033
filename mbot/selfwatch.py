"""The server watches its own machine: the real agent, run as a child process against this server over loopback TLS.

A monitoring server whose own disk fills up should say so, and a fresh install should show live figures before any
other host exists. So, unless MBOT_WATCH_SELF=0, the server keeps one ordinary host (named after the machine, owned
by the admin) and runs agent/mbot_agent.py for it, pinned to the server's own certificate. Nothing about it is
special once it is running: the card, charts, alerts and /metrics treat it like any other host.

The agent's secret never touches the disk: each start of the child gets a fresh one, whose hash replaces the host's
(so the secret of a previous run is dead). Which host is ours is kept in the kv table; a user who revoked or deleted
that host is obeyed (the server stops watching itself rather than bringing it back), and says so once.

Inside a container the "machine" would be the container itself, which is not what anyone wants to watch: there the
default is off, unless the host's /proc is mounted at /host/proc (as for Netdata or node-exporter), which the agent
then reads instead of its own.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from . import service, store, users
from .config import Settings
from .model import Host, secret_hash

log = logging.getLogger(__name__)

HOST_KEY = "selfwatch.host_id"  # kv: the id of the host this server watches itself as
HOST_PROC = Path("/host/proc")  # where containers conventionally get the host's /proc
RESTART_MIN, RESTART_MAX = 2.0, 300.0  # an agent that keeps dying is restarted ever more slowly
STABLE_AFTER = 60.0  # an agent that ran this long starts the backoff afresh when it ends
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}


def agent_file() -> Path | None:
    """The agent next to the package: agent/ beside mbot/ in a checkout and in the image (/app/agent)."""
    path = Path(__file__).resolve().parent.parent / "agent" / "mbot_agent.py"
    return path if path.is_file() else None


def in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


@dataclass(frozen=True)
class Plan:
    """Whether to watch this machine, and the one line that says why (logged at start)."""

    watch: bool
    why: str
    host_proc: Path | None = None  # the host's /proc when it is not our own (a container with it mounted)


def plan(setting: bool | None, *, container: bool, host_proc: bool, agent: Path | None, psutil: bool) -> Plan:
    """The decision as a table: the setting, where we run, and whether the agent can run at all."""
    if setting is False:
        return Plan(False, "MBOT_WATCH_SELF=0: not watching this machine")
    if agent is None:
        return Plan(False, "not watching this machine: agent/mbot_agent.py is not installed beside the mbot package")
    if not psutil:
        return Plan(False, "not watching this machine: the agent needs psutil (pip install psutil, or "
                           "`make run`, which installs it)")
    if container and host_proc:
        return Plan(True, f"watching this machine through {HOST_PROC} (MBOT_WATCH_SELF=0 turns it off)", HOST_PROC)
    if container and setting is None:
        return Plan(False, f"inside a container: not watching this machine (mount the host's /proc at {HOST_PROC} "
                           "to watch the host, or set MBOT_WATCH_SELF=1 to watch the container)")
    return Plan(True, "watching this machine as one of its hosts (MBOT_WATCH_SELF=0 turns it off)")


def plan_for(settings: Settings) -> Plan:
    return plan(settings.watch_self, container=in_container(), host_proc=(HOST_PROC / "stat").exists(),
                agent=agent_file(), psutil=importlib.util.find_spec("psutil") is not None)


def machine_name(hostname: str) -> str:
    """The machine's name as a host name mbot accepts (service.NAME_RULE): 'web 01.lan' -> 'web-01'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname.split(".")[0]).strip("-.")[:32]
    return name or "mbot-server"


def admin_of(conn: sqlite3.Connection, allowed_users: tuple[int, ...] | None) -> int:
    """The admin's Telegram id (the first of ALLOWED_USERS, else whoever claimed the bot), 0 while there is none."""
    if allowed_users:
        return allowed_users[0]
    return users.first_admin(conn) or 0


@dataclass(frozen=True)
class Ready:
    host: Host
    secret: str  # for this run of the agent only


def prepare(conn: sqlite3.Connection, hostname: str, allowed_users: tuple[int, ...] | None,
            now: float) -> Ready | str:
    """The host to watch ourselves as, with a fresh secret; or why not (a user removed it). In the caller's
    transaction, so that the kv record and the host appear together."""
    owner = admin_of(conn, allowed_users)
    recorded = store.get_kv(conn, HOST_KEY)
    secret = secrets.token_urlsafe(32)
    if recorded is None:
        name = machine_name(hostname)
        for candidate in (name, f"{name[:25]}-server", f"{name[:22]}-{secrets.token_hex(4)}"):
            if not store.hosts_named(conn, candidate, owner):
                break
        key = service.new_key(conn, candidate, owner, now)
        store.set_kv(conn, HOST_KEY, str(key.host_id))
        host = store.host_by_id(conn, key.host_id)
        assert host is not None
        return Ready(host, key.secret)
    host = store.host_by_id(conn, int(recorded))
    if host is None:
        return "not watching this machine: its host was deleted (MBOT_WATCH_SELF=0 silences this line)"
    if host.revoked is not None:
        return (f"not watching this machine: the key of its host {host.name!r} was revoked (/rotate gives it a new "
                "one; MBOT_WATCH_SELF=0 silences this line)")
    if host.owner == 0 and owner:
        adopt(conn, owner)
    store.set_secret(conn, host.id, secret_hash(secret), revoked=None)
    return Ready(host, secret)


def adopt(conn: sqlite3.Connection, admin: int) -> None:
    """Give the server's own host to the admin once there is one (the claim came after the first start)."""
    recorded = store.get_kv(conn, HOST_KEY)
    if recorded is None:
        return
    host = store.host_by_id(conn, int(recorded))
    if host is None or host.owner != 0:
        return
    name = host.name if not store.hosts_named(conn, host.name, admin) else f"{host.name[:25]}-server"
    store.set_owner(conn, host.id, admin, name)


def remote_hosts(conn: sqlite3.Connection) -> int:
    """Hosts other than the server's own: none yet means a newcomer who still has to add the first one."""
    own = store.get_kv(conn, HOST_KEY)
    return store.count_hosts(conn) - (1 if own and store.host_by_id(conn, int(own)) else 0)


def agent_address(bind: str) -> str:
    """Where the agent finds the listener: loopback for a wildcard bind, else the bound address itself."""
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind == "::":
        return "::1"
    return bind


def agent_environment(base: dict[str, str], *, address: str, port: int, secret: str, fingerprint: str,
                      interval: float | None, host_proc: Path | None) -> dict[str, str]:
    """The child's environment: ours without any AGENT_* (an operator's own agent settings are not for it), plus
    exactly what it needs. The fingerprint pins our own certificate, so nothing is trusted on first use."""
    env = {k: v for k, v in base.items() if not k.startswith("AGENT_") and not k.startswith("MBOT_")}
    env.update(AGENT_SERVER_IP=address, AGENT_PORT=str(port), AGENT_SECRET=secret, AGENT_FINGERPRINT=fingerprint,
               PYTHONUNBUFFERED="1")
    if interval is not None:
        env["AGENT_INTERVAL"] = f"{interval:g}"
    if host_proc is not None:
        env["AGENT_HOST_PROC"] = str(host_proc)
    return env


def forward(line: str) -> None:
    """One line of the agent's log into ours: its own level, without its timestamp (ours has one)."""
    parts = line.rstrip().split(" ", 3)
    if len(parts) == 4 and parts[2] in _LEVELS:
        log.log(_LEVELS[parts[2]], "own agent: %s", parts[3][:1000])
    elif line.strip():
        log.info("own agent: %s", line.rstrip()[:1000])


def restart_delay(failures: int) -> float:
    return min(RESTART_MAX, RESTART_MIN * 2 ** max(0, failures - 1))


@dataclass
class SelfWatch:
    settings: Settings
    port: int
    fingerprint: str
    call: Callable[..., Awaitable[Any]]  # the writer's call(fn, *args): prepare() runs in its transaction
    interval: float | None = None  # AGENT_INTERVAL for the child; None: the agent's default
    clock: Callable[[], float] = time.time
    starts: int = 0  # children started (for tests and the log)

    async def run(self, plan: Plan, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the agent running until cancelled; restarts it (with backoff) when it ends on its own."""
        task_status.started()
        agent = agent_file()
        assert agent is not None  # plan() said so
        failures = 0
        while True:
            ready = await self.call(prepare, socket.gethostname(), self.settings.allowed_users, self.clock())
            if isinstance(ready, str):
                log.info("%s", ready)
                return
            assert isinstance(ready, Ready)
            if self.starts == 0:
                log.info("watching this machine as host %r (owner %s)", ready.host.name,
                         ready.host.owner or "none yet: the admin gets it when the bot is claimed")
            self.starts += 1
            started = trio.current_time()
            status = await self._run_once(agent, ready.secret, plan.host_proc)
            failures = 1 if trio.current_time() - started >= STABLE_AFTER else failures + 1
            delay = restart_delay(failures)
            log.warning("own agent exited with status %s; starting it again in %.0f s", status, delay)
            await trio.sleep(delay)

    async def _run_once(self, agent: Path, secret: str, host_proc: Path | None) -> int:
        env = agent_environment(dict(os.environ), address=agent_address(self.settings.host), port=self.port,
                                secret=secret, fingerprint=self.fingerprint, interval=self.interval,
                                host_proc=host_proc)
        # Its working directory is a folder of its own in the data directory, with no settings file: what the
        # environment says is all it knows, and whatever it would write stays out of the operator's way.
        workdir = self.settings.data_dir / "own-agent"
        workdir.mkdir(mode=0o700, exist_ok=True)
        command = [sys.executable, str(agent), "--env-file", str(workdir / "settings.env")]
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(lambda task_status: trio.run_process(
                command, env=env, cwd=str(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, check=False, task_status=task_status))
            assert process.stderr is not None
            await _forward_lines(process.stderr)
            status = await process.wait()
        return status


async def _forward_lines(stream: trio.abc.ReceiveStream) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            forward(line.decode("utf-8", "replace"))
        if len(pending) > 65536:  # a line without end: logged in pieces rather than held without bound
            forward(pending.decode("utf-8", "replace"))
            pending = b""
    if pending:
        forward(pending.decode("utf-8", "replace"))

