#!/usr/bin/env python3
"""mbot agent: collects this host's metrics and streams them to the mbot server over one TLS WebSocket.

The server's one-line installer (`/newkey` prints it) sets it up as a systemd service in /opt/mbot-agent. By hand:
copy this one file to a host and run `python3 mbot_agent.py`. It needs psutil, trio and trio-websocket (in a venv:
`python3 -m venv venv && venv/bin/pip install psutil trio trio-websocket`; or Debian/Ubuntu's `apt install
python3-psutil python3-trio python3-trio-websocket`), and nvidia-ml-py for NVIDIA GPUs, ROCm's amdsmi for AMD GPUs
(each used only when importable). On systemd hosts it reports the service units that are not inactive (systemctl,
no root). Runs on Python 3.9+ (Linux; macOS and Windows with fewer metrics). `--check-connection` connects once
with the settings, sends the hello and says whether the server accepted it.

Configuration comes from the environment, then from `.env` in the working directory (the environment wins over the
file). The agent writes to `.env` (mode 0600) only what you type at its prompts on a terminal (server, secret,
fingerprint, asked when neither the environment nor the file has them): a variable given in the environment is
used for that run only, so a one-off AGENT_PORT or AGENT_VERIFY_SSL=0 never becomes the host's setting.

    AGENT_SECRET       the secret from /newkey (required)
    AGENT_SERVER_IP    server host name or IP (asked for on a terminal when unset)
    AGENT_PORT         server port, 8000
    AGENT_INTERVAL     seconds between samples, 5
    AGENT_FINGERPRINT  SHA-256 of the server certificate (from /newkey); else trusted on first use and kept in
                       AGENT_FINGERPRINT_FILE (~/.bot_fingerprint.json), or, when that cannot be written (no
                       HOME, HOME not writable), beside the settings file in `.env.fingerprint.json`
    AGENT_VERIFY_SSL   1; 0 turns certificate pinning off (not recommended)
    AGENT_ALLOW_POWER  0; 1 lets the server ask this host to reboot or shut down (the agent must then run as a
                       user allowed to: root, or one with a polkit/sudo rule for `systemctl reboot`). Even then
                       the agent refuses a command whose expiry is past or more than 2 minutes ahead of this
                       host's clock, and more than one power action per 10 minutes or 3 per hour (recorded in
                       `.mbot_agent_power.json` beside the settings file, so that reboots do not reset the count)
    AGENT_POWER_COMMAND  replaces the OS command for reboot/shutdown; `{action}` is replaced by the action
                       (for tests and unusual systems, e.g. "sudo /sbin/shutdown -r now")
    AGENT_SPOOL_MAX    samples kept while the server is away (the spool), 1 to 10000000; default: 24 h of them at
                       AGENT_INTERVAL, at most 100000. When full, the oldest are dropped (and counted, see below)
    AGENT_HOST_PROC    read the machine's figures from this /proc instead of our own (an agent in a container
                       with the host's /proc mounted, e.g. /host/proc; Linux only)
    AGENT_PROCESSES    1; 0 stops sending the top processes (name, user, CPU, memory, VRAM, command line: the
                       15 largest by each, every few intervals, less often on hosts with many processes so
                       that it costs at most 0.015 % of a core). Command lines can hold secrets some programs take as
                       arguments: they reach the server and the chat
    AGENT_CONTAINER_SOCKET  the Docker or Podman Engine API socket whose containers to report (name, image,
                       state, health, restarts, CPU, memory); unset: /var/run/docker.sock,
                       $XDG_RUNTIME_DIR/podman/podman.sock or /run/podman/podman.sock, the first that exists;
                       off: none. The agent's user needs access to it (group docker, or its own podman socket)
    AGENT_SPOOL_FILE   keep the spool in this sqlite3 file too (e.g. /var/lib/mbot-agent/spool.sqlite3), so that
                       unsent samples and the seq counter survive a restart of the agent; unset: in memory only

Every sample gets the next seq and goes into the spool before it is sent; it leaves the spool when the server acks
it (the ack means: committed). After an outage the agent sends the spool oldest first, in batches, then live
samples; collection never waits for the server. With AGENT_SPOOL_FILE the epoch and the seq counter are kept in the
file, so that a restarted agent goes on in the same epoch with the next seq; without it (or when the file is corrupt:
it is moved aside to `<file>.corrupt-<time>`), a new process starts a new epoch, which the server tells apart.

Dropped samples are never a silent loss. A sample can leave the spool unacked: evicted from a full spool, or refused
by the server three times in a row. If it was never sent, it is lost; if it was sent, it waits (in "limbo") for the
server to say: an ack covering it means the server has it, the first ack of the next connection not covering it
means lost. Each lost sample is added to the "unreported" count. When the agent next sends samples, the first of them
carries `"dropped": N` in its metrics, N being the whole unreported count, which goes back to 0. That sample carries
exactly that N every time it is sent again, until an ack covers it: the server commits it with its count, once, and
sums `dropped` per host. If a sample that carries a count is lost itself, its count plus one for itself is
unreported again. With AGENT_SPOOL_FILE all of this survives a restart. (Corner cases can make the count too high,
never too low: more than LIMBO_MAX sent-and-evicted samples waiting for an answer, or a crash between a send and the
next write of the spool file. Without AGENT_SPOOL_FILE, what is still unsent when the agent stops is lost with it,
uncounted: the server only sees a new epoch.)

The wire protocol is docs/protocol.md in the mbot repository. Exit status: 0 on Ctrl-C or SIGTERM, 1 when the server
refuses this agent (secret rejected, key revoked, certificate changed), 2 for a bad configuration.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and os.name == "posix" and "_RERUN" not in globals() and sys.executable \
        and os.path.isfile(__file__):
    # CPython keeps the syntax tree of a script run as `python3 mbot_agent.py` until the script's code returns
    # (pyrun_file frees it after running the module): ~10 MiB for this file, a quarter of the agent's RSS for its
    # whole life. runpy compiles with compile(), which frees the tree at once: one exec at start, same pid.
    import subprocess

    flags = getattr(subprocess, "_args_from_interpreter_flags", list)()
    os.execv(sys.executable, [sys.executable, *flags, "-c", "import runpy, sys; sys.argv = sys.argv[1:]; "
                              "runpy.run_path(sys.argv[0], {'_RERUN': True}, '__main__')",
                              os.path.abspath(__file__), *sys.argv[1:]])
if "_RERUN" in globals() and sys.platform.startswith("linux"):
    try:  # and what compiling took, free now, goes back to the system (glibc; elsewhere it stays with the process)
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass

import calendar
import contextlib
import dataclasses
import functools
import hashlib
import heapq
import http.client
import inspect
import itertools
import json
import logging
import math
import random
import re
import secrets
import select
import socket
import ssl
import subprocess
import sqlite3
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import (Any, Callable, Collection, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple)

import psutil
import trio
import trio_websocket

try:  # Python 3.11+; trio brings the backport on older versions
    BaseExceptionGroup  # noqa: B018
except NameError:  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[no-redef]

__version__ = "0.2.0"  # 0.2: snapshots (processes, containers, services, inventory), checks, speed test
PROTOCOL_VERSION = 1

log = logging.getLogger("mbot.agent")

# --- limits ----------------------------------------------------------------------------------------------------

MAX_FRAME_BYTES = 1 << 20  # the server closes the connection (1009) on a bigger frame
BATCH_MAX_SAMPLES = 500
BATCH_MAX_BYTES = 900_000  # stays under MAX_FRAME_BYTES with room for the envelope
BUFFER_SECONDS = 86_400  # unacked samples kept while the server is away: 24 h ...
BUFFER_MAX_SAMPLES = 100_000  # ... but never more than this many (short intervals), unless AGENT_SPOOL_MAX says
SPOOL_MAX_LIMIT = 10_000_000  # the spool is mirrored in memory: about 1 KB a sample
LIMBO_MAX = 10_000  # samples sent, evicted from a full spool and still waiting for an ack to say their fate
MAX_TEMPS = 16
MAX_NET_IFACES = 64
MAX_DISKS = 64
SERVICES_EVERY = 30.0  # seconds between two looks at systemd (one systemctl call, ~10 ms of CPU, off the event loop)

CLOSE_REVOKED = 4003
_DATA_REJECTED = (1007, 1008, 1009)  # closes that may be caused by a sample the server refuses
_POISON_STRIKES = 3
GATHER_MAX = 60.0  # a busy server may ask for samples every this many seconds at most (an ack's `gather`)

# What the agent takes from a server (the server may be compromised, or just wrong):
COMMAND_MAX_AHEAD = 120.0  # a command's `expires` may lie at most this far ahead of this host's clock
POWER_MIN_GAP = 600.0  # at most one power action per 10 minutes ...
POWER_PER_HOUR = 3  # ... and at most this many in any hour
POWER_LOG_NAME = ".mbot_agent_power.json"  # beside the settings file: the record behind those limits
SERVER_NOISE_EVERY = 60.0  # refused commands, error frames, bad frames: at least one log line a minute, not more
FAILURES_EVERY = 300.0  # repeated connection failures: at least one log line per 5 minutes (plus 1st, 2nd, 4th...)

DEFAULT_FINGERPRINT_FILE = "~/.bot_fingerprint.json"
ENV_FILE = ".env"


# --- configuration ---------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """A variable has a value the agent cannot use; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class AgentConfig:
    secret: str
    server: str
    port: int = 8000
    interval: float = 5.0
    verify_ssl: bool = True
    fingerprint: Optional[str] = None  # normalised: 64 lowercase hex digits
    allow_power: bool = False
    fingerprint_file: str = DEFAULT_FINGERPRINT_FILE
    power_command: Optional[str] = None  # AGENT_POWER_COMMAND; None: the platform's own
    spool_max: Optional[int] = None  # AGENT_SPOOL_MAX; None: 24 h of samples at `interval`
    spool_file: Optional[str] = None  # AGENT_SPOOL_FILE; None: the spool is in memory only
    processes: bool = True  # AGENT_PROCESSES: send the top processes (a `processes` snapshot)
    container_socket: Optional[str] = None  # AGENT_CONTAINER_SOCKET: a path, "off"; None: the usual places
    # The settings file (main() sets it; --env-file). Beside it: the pin saved on first use when the
    # fingerprint file cannot be written, and the record of power actions that makes their limit survive a
    # reboot. None (library use, tests): neither; power actions are then limited in memory only.
    env_file: Optional[str] = None
    # Tuning, not read from the environment (tests shorten them with dataclasses.replace):
    connect_timeout: float = 15.0  # TCP + TLS + HTTP upgrade
    ack_timeout: float = 30.0  # hello -> first ack
    ping_interval: float = 30.0  # WebSocket ping, to notice a silently dead connection
    ping_timeout: float = 30.0
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 30.0  # a connection up this long resets the backoff
    quick_reconnect: Tuple[float, float] = (0.5, 3.0)  # after a restart close: see Reconnect
    fast_retry: Tuple[float, float] = (1.0, 2.0)  # a refusing server, for fast_retry_for s after a restart close
    fast_retry_for: float = 60.0
    temps_every: int = 6  # read temperature sensors on every Nth sample
    services_every: float = SERVICES_EVERY  # look at systemd's services this often (a `services` snapshot)
    check_timeout: float = 10.0  # one probe of a check, redirects and body included (CHECK_TIMEOUT)
    # Containers are polled every max(interval, this): a poll costs about 4 ms of CPU with 50 containers (the list,
    # a few stats and inspects), 0.01 % of a core at this pace, and a state seen within 30 s is soon enough for an
    # alert (the issue's "state changes within ~30 s").
    containers_every: float = 30.0

    @property
    def fingerprint_path(self) -> Path:
        return Path(os.path.expanduser(self.fingerprint_file))

    @property
    def capabilities(self) -> List[str]:
        return (["power"] if self.allow_power else []) + ["speedtest", "checks"]

    @property
    def spool_capacity(self) -> int:
        return self.spool_max or buffer_capacity(self.interval)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def normalize_fingerprint(text: str) -> str:
    """'AB:CD:...' or 'abcd...' -> 64 lowercase hex digits; ValueError otherwise."""
    fp = "".join(text.split()).replace(":", "").lower()
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, colons allowed")
    return fp


def _bool(value: str, name: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(name, f"must be 1 or 0, got {value!r}")


def config_from_env(environ: Mapping[str, str], env_file_values: Mapping[str, str]) -> AgentConfig:
    """The agent's settings from the environment, falling back on the .env file's values, then on defaults.

    An empty value counts as unset. Raises ConfigError naming the first bad variable.
    """

    def get(name: str) -> str:
        value = environ.get(name, "").strip()
        if not value:
            value = env_file_values.get(name, "").strip()
        return value

    secret = get("AGENT_SECRET")
    if not secret:
        raise ConfigError("AGENT_SECRET", "is not set; use the secret the bot's /newkey command gave you")
    if any(ord(c) < 33 or ord(c) > 126 for c in secret):
        raise ConfigError("AGENT_SECRET", "must be printable ASCII without spaces")

    server = get("AGENT_SERVER_IP")
    if not server:
        raise ConfigError("AGENT_SERVER_IP", "is not set; set it to the server's host name or IP address")
    if "://" in server or "/" in server or any(c.isspace() for c in server):
        raise ConfigError("AGENT_SERVER_IP", f"must be a host name or IP address, not {server!r}")
    if server.startswith("[") and server.endswith("]"):
        server = server[1:-1]

    port = 8000
    raw = get("AGENT_PORT")
    if raw:
        try:
            port = int(raw)
        except ValueError:
            raise ConfigError("AGENT_PORT", f"must be a port number (1-65535), got {raw!r}") from None
        if not 1 <= port <= 65535:
            raise ConfigError("AGENT_PORT", f"must be a port number (1-65535), got {raw!r}")

    interval = 5.0
    raw = get("AGENT_INTERVAL")
    if raw:
        try:
            interval = float(raw)
        except ValueError:
            raise ConfigError("AGENT_INTERVAL", f"must be a number of seconds, got {raw!r}") from None
        # The server refuses a hello announcing less than 0.05 s (20 samples a second is its budget ceiling).
        if not (math.isfinite(interval) and 0.05 <= interval <= 86400):
            raise ConfigError("AGENT_INTERVAL", f"must be from 0.05 to 86400 seconds, got {raw!r}")

    raw = get("AGENT_VERIFY_SSL")
    verify_ssl = _bool(raw, "AGENT_VERIFY_SSL") if raw else True
    raw = get("AGENT_ALLOW_POWER")
    allow_power = _bool(raw, "AGENT_ALLOW_POWER") if raw else False

    fingerprint = None
    raw = get("AGENT_FINGERPRINT")
    if raw:
        try:
            fingerprint = normalize_fingerprint(raw)
        except ValueError as exc:
            raise ConfigError("AGENT_FINGERPRINT", str(exc)) from None

    fingerprint_file = get("AGENT_FINGERPRINT_FILE") or DEFAULT_FINGERPRINT_FILE
    power_command = get("AGENT_POWER_COMMAND") or None

    spool_max = None
    raw = get("AGENT_SPOOL_MAX")
    if raw:
        try:
            spool_max = int(raw)
        except ValueError:
            raise ConfigError("AGENT_SPOOL_MAX", f"must be a number of samples, got {raw!r}") from None
        if not 1 <= spool_max <= SPOOL_MAX_LIMIT:
            raise ConfigError("AGENT_SPOOL_MAX", f"must be from 1 to {SPOOL_MAX_LIMIT} samples, got {raw!r}")
    spool_file = get("AGENT_SPOOL_FILE") or None
    raw = get("AGENT_PROCESSES")
    processes = _bool(raw, "AGENT_PROCESSES") if raw else True
    container_socket = get("AGENT_CONTAINER_SOCKET") or None

    return AgentConfig(secret=secret, server=server, port=port, interval=interval, verify_ssl=verify_ssl,
                       fingerprint=fingerprint, allow_power=allow_power, fingerprint_file=fingerprint_file,
                       power_command=power_command, spool_max=spool_max, spool_file=spool_file,
                       processes=processes, container_socket=container_socket)


POWER_ACTIONS = ("reboot", "shutdown")


def power_argv(action: str, platform: str, override: Optional[str] = None) -> List[str]:
    """The OS command for a power action, by platform; AGENT_POWER_COMMAND replaces it (tests use that so that
    nothing real is rebooted)."""
    import shlex

    if override:
        return shlex.split(override.replace("{action}", action))
    if platform.startswith("win"):
        return ["shutdown.exe", "/r" if action == "reboot" else "/s", "/t", "0"]
    if platform == "darwin":
        return ["shutdown", "-r" if action == "reboot" else "-h", "now"]
    # Linux: systemd where present, else the classic shutdown(8).
    import shutil

    if shutil.which("systemctl"):
        return ["systemctl", "reboot" if action == "reboot" else "poweroff"]
    return ["shutdown", "-r" if action == "reboot" else "-h", "now"]


def read_env_file(path: "os.PathLike[str] | str") -> Dict[str, str]:
    """KEY=value lines ('export ', comments, blank lines and matching quotes allowed); a missing file is empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    values: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _temp_suffix() -> str:
    """The random part of a temp file's name (a function so that tests can make it predictable)."""
    return secrets.token_hex(8)


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with a file holding `text`, readable by its owner only (0600) whatever the umask, atomically.

    The text goes to a new temp file in the same directory, created with O_CREAT|O_EXCL|O_NOFOLLOW under a random
    name, fsync'd, then renamed over `path`. So a symlink planted at the temp path cannot redirect the write (the
    open fails on any existing name, and another random name is tried), and one planted at `path` is replaced by the
    file, never written through (rename does not follow it). A reader sees the old file or the new one, never half.
    """
    data = text.encode("utf-8")
    # O_NOFOLLOW does not exist on Windows (O_EXCL alone refuses an existing link there); O_BINARY exists only
    # there, and keeps the C runtime from turning "\n" into "\r\n".
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for attempt in range(10):
        tmp = path.with_name(f".{path.name}.{_temp_suffix()}.tmp")
        try:
            fd = os.open(str(tmp), flags, 0o600)
        except FileExistsError:
            if attempt == 9:
                raise
            continue
        break
    try:
        try:
            if hasattr(os, "fchmod"):  # the mode given to open is filtered by the umask; this is exact
                os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(str(tmp), str(path))
    except BaseException:
        try:
            os.unlink(str(tmp))
        except OSError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; Windows cannot open a directory, and needs nothing)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(str(directory), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _env_line(key: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{key}: a value cannot span lines")
    if value and (value[0] in "'\"" or any(c.isspace() or c == "#" for c in value)):
        value = f'"{value}"'
    return f"{key}={value}"


def write_env_file(path: "os.PathLike[str] | str", values: Mapping[str, str]) -> None:
    """Write KEY=value lines (mode 0600). Values with spaces or quotes are written in double quotes."""
    lines = ["# mbot agent settings, written by mbot_agent.py; variables set in the environment win"]
    lines.extend(_env_line(key, value) for key, value in values.items())
    _write_private(Path(path), "\n".join(lines) + "\n")


def save_env_file(path: "os.PathLike[str] | str", typed: Mapping[str, str]) -> bool:
    """Add what the user typed at the agent's prompts to the .env file; returns whether the file changed.

    Only typed values are ever written: a value that came from the environment may be a one-off (AGENT_PORT for a
    test, AGENT_VERIFY_SSL=0 while debugging) and must not quietly become the host's permanent setting. What the file
    already holds is kept as it is, comments included; a typed key replaces its line (it was empty there).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    current = read_env_file(path) if text is not None else {}
    todo = {k: v for k, v in typed.items() if v and current.get(k) != v}
    if not todo:
        return False
    if text is None:
        write_env_file(path, todo)
        return True
    lines = []
    for line in text.splitlines():
        key = line.strip().partition("=")[0].strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        if "=" in line and key in todo and not line.strip().startswith("#"):
            continue  # replaced below
        lines.append(line)
    lines.extend(_env_line(key, value) for key, value in todo.items())
    _write_private(path, "\n".join(lines) + "\n")
    return True


# --- certificate pinning ---------------------------------------------------------------------------------------


class FingerprintFileError(Exception):
    """The fingerprint file exists but cannot be used."""


def cert_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def server_id(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_fingerprint_file(path: "os.PathLike[str] | str") -> Optional[Tuple[str, Optional[str]]]:
    """(fingerprint, server or None) from a {"fp": ..., "server": ...} file; None when the file does not exist."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # (HOME may be a file: then there is no pin under it either)
        return None
    except OSError as exc:
        raise FingerprintFileError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
        fp = normalize_fingerprint(data["fp"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FingerprintFileError(f"{path} is not a valid fingerprint file; delete it to trust the server's "
                                   "current certificate") from None
    server = data.get("server")
    return fp, server if isinstance(server, str) else None


def write_fingerprint_file(path: "os.PathLike[str] | str", fp: str, server: Optional[str] = None,
                           make_parents: bool = True) -> None:
    """Save a pin in the seed's format, {"fp": ...} (plus the server it was seen on), mode 0600."""
    data: Dict[str, str] = {"fp": fp}
    if server:
        data["server"] = server
    path = Path(path)
    if make_parents and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, json.dumps(data) + "\n")


def pin_files(config: AgentConfig) -> List[Tuple[Path, bool]]:
    """Where a pin trusted on first use is kept, in the order they are read and tried for writing, each with
    whether its folder may be created: AGENT_FINGERPRINT_FILE (~/.bot_fingerprint.json, as the original bot had
    it), then `<settings file>.fingerprint.json` beside the settings file, for hosts where HOME is unset or not
    writable (system users, systemd sandboxes). Both are read, so a pin saved beside .env while HOME was broken
    still holds once HOME works again."""
    files: List[Tuple[Path, bool]] = []
    preferred = os.path.expanduser(config.fingerprint_file)
    if not preferred.startswith("~"):  # "~" left as is: no HOME and no passwd entry, there is no home to use
        # Never create HOME itself (a system user's may be /nonexistent); a folder the user named, yes.
        files.append((Path(preferred), config.fingerprint_file != DEFAULT_FINGERPRINT_FILE))
    if config.env_file:
        env = Path(os.path.abspath(config.env_file))
        beside = env.with_name(env.name + ".fingerprint.json")
        if all(beside != path for path, _ in files):
            files.append((beside, False))
    return files


def read_pin(config: AgentConfig) -> Optional[Tuple[str, Optional[str], Path]]:
    """The pin saved on first use: (fingerprint, server it was saved for, file), from the first of pin_files that
    exists; None when there is none. Raises FingerprintFileError for a file that cannot be used."""
    for path, _ in pin_files(config):
        found = read_fingerprint_file(path)
        if found is not None:
            return found[0], found[1], path
    return None


def make_ssl_context() -> ssl.SSLContext:
    """Pin-only trust: the server's certificate is self-signed, its fingerprint is what the agent checks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# --- the spool: samples the server has not acked yet -----------------------------------------------------------


def buffer_capacity(interval: float) -> int:
    """The default AGENT_SPOOL_MAX: 24 h of samples at `interval` (at most BUFFER_MAX_SAMPLES)."""
    return max(1, min(BUFFER_MAX_SAMPLES, int(math.ceil(BUFFER_SECONDS / interval))))


def with_dropped(text: str, count: int) -> str:
    """A stored sample with `"dropped": count` added to its metrics."""
    obj = json.loads(text)
    obj["metrics"]["dropped"] = count
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class SampleBuffer:
    """The spool, in memory: the samples the server has not acked yet, oldest first, each kept as its encoded JSON
    object, at most `maxlen` of them; the epoch and the seq counter; the count of lost samples (module docstring:
    the dropped-count rule). SqliteSpool keeps the same in a file as well.

    Seqs are consecutive: samples are appended in seq order and leave only from the front, acked or evicted (the
    spool is full, or the server keeps refusing them). An evicted sample that was never sent is lost: counted at
    once. One that was sent may still be committed by the server: it waits in `limbo` until an ack says (an ack of
    the same connection covering it: committed; the first ack of the next connection not covering it: lost).

    Thread-safe: the collector's worker thread appends while the event loop sends, acks and reads.
    """

    persistent = False

    def __init__(self, maxlen: int, epoch: Optional[int] = None) -> None:
        if maxlen < 1:
            raise ValueError("a spool holds at least one sample")
        self._items: "deque[Tuple[int, str]]" = deque()
        self._maxlen = maxlen
        self._lock = threading.Lock()
        self.epoch = epoch if epoch is not None else int(time.time() * 1000)
        self.seq = 0  # the last seq appended: the counter goes on from here
        self.dropped = 0  # samples counted as lost, ever
        self.unreported = 0  # lost samples (and counts of lost carriers) that no sample carries yet
        self.evicted = 0  # samples that left the spool unacked, in this process
        self._reports: Dict[int, int] = {}  # seq -> the dropped count that sample (in the spool) carries
        self._limbo: Dict[int, int] = {}  # seq -> its count: sent, evicted before an ack; fate unknown
        self._sent = 0  # samples up to this seq may have reached the server without an ack yet

    def __len__(self) -> int:
        return len(self._items)

    @property
    def maxlen(self) -> int:
        return self._maxlen

    @property
    def first_seq(self) -> Optional[int]:
        with self._lock:
            return self._items[0][0] if self._items else None

    @property
    def last_seq(self) -> Optional[int]:
        with self._lock:
            return self._items[-1][0] if self._items else None

    @property
    def reports(self) -> Dict[int, int]:
        """seq -> the dropped count that sample carries, for the samples in the spool that carry one."""
        with self._lock:
            return dict(self._reports)

    @property
    def limbo(self) -> Dict[int, int]:
        """seq -> the count it carried, for samples sent and then evicted before an ack."""
        with self._lock:
            return dict(self._limbo)

    def append(self, seq: int, text: str, ts: float = 0.0) -> bool:
        """Add a sample; True when the spool was full and the oldest sample was evicted for it."""
        with self._lock:
            return self._append(seq, text)

    def _append(self, seq: int, text: str) -> bool:
        items = self._items
        if items and seq != items[-1][0] + 1:
            raise ValueError(f"seq {seq} does not follow {items[-1][0]}")
        items.append((seq, text))
        self.seq = seq
        full = False
        while len(items) > self._maxlen:
            self._evict()
            full = True
        return full

    def _evict(self) -> None:
        """The oldest sample leaves the spool unacked."""
        seq = self._items.popleft()[0]
        self.evicted += 1
        carried = self._reports.pop(seq, 0)
        if seq > self._sent:
            self._lose(carried)  # never sent: lost for sure
            return
        self._to_limbo(seq, carried)
        if len(self._limbo) > LIMBO_MAX:  # a server that takes samples but never acks: stop waiting for it
            self._lose(self._from_limbo(min(self._limbo)))

    # Samples enter limbo in seq order and leave it oldest first: what is in limbo is always above what left it.

    def _to_limbo(self, seq: int, carried: int) -> None:
        self._limbo[seq] = carried

    def _from_limbo(self, seq: int) -> int:
        return self._limbo.pop(seq)

    def _lose(self, carried: int) -> None:
        """A sample is lost: count it, and take back the count it carried (it will not arrive)."""
        self.dropped += 1
        self.unreported += 1 + carried

    def mark_sent(self, seq: int) -> None:
        """Samples up to `seq` are going out on the current connection, in order: call it before sending them.
        An evicted sample up to there then waits in limbo for the server's answer instead of being lost at once."""
        with self._lock:
            self._mark_sent(seq)

    def _mark_sent(self, seq: int) -> None:
        if seq > self._sent:
            self._sent = seq

    def ack(self, seq: int, first: bool = False) -> int:
        """The server committed every sample it has up to `seq`: forget those (their counts arrived). `first`: this
        is the ack that answers a hello, so the samples sent before and not covered never arrived. Returns how many
        samples left the spool."""
        with self._lock:
            items = self._items
            removed = 0
            while items and items[0][0] <= seq:
                last = items.popleft()[0]
                self._reports.pop(last, None)
                removed += 1
            if removed:
                self._acked(last)
            # Frames go out in seq order on one connection, so a sample in limbo covered by an ack was committed.
            limbo = self._limbo
            for gone in sorted(s for s in limbo if s <= seq):
                self._from_limbo(gone)
            if first:
                for gone in sorted(limbo):
                    self._lose(self._from_limbo(gone))
                self._sent = seq  # what the server does not have is sent again from here
            return removed

    def _acked(self, seq: int) -> None:
        """Samples up to `seq` left the spool, acked (called with the lock held)."""

    def discard(self, seq: int) -> int:
        """Evict every sample up to `seq` (the server keeps refusing them); returns how many."""
        with self._lock:
            items = self._items
            removed = 0
            while items and items[0][0] <= seq:
                self._evict()
                removed += 1
            return removed

    def attach_unreported(self, seq: int) -> Optional[int]:
        """Make the first sample from `seq` on carry the unreported count (it is about to be sent). Returns that
        sample's seq, or None when nothing was attached. Blocking for a file spool: call it in a worker thread."""
        with self._lock:
            return self._attach(seq)

    def _attach(self, seq: int) -> Optional[int]:
        items = self._items
        if not self.unreported or not items:
            return None
        target = max(seq, items[0][0])
        if target > items[-1][0]:
            return None
        self._reports[target] = self._reports.get(target, 0) + self.unreported
        self.unreported = 0
        return target

    def pending_after(self, seq: int, mark_sent: bool = False) -> List[Tuple[int, str]]:
        """The samples with seq above `seq`, oldest first, as sent (with "dropped" in those that carry a count).
        `mark_sent`: the caller sends them all, in order, before anything newer (see mark_sent)."""
        with self._lock:
            items = self._items
            if not items:
                return []
            start = max(0, seq - items[0][0] + 1)
            pending = list(itertools.islice(items, start, None))
            reports = dict(self._reports) if self._reports else None
            if mark_sent and pending:
                self._mark_sent(pending[-1][0])
        if reports:
            pending = [(s, with_dropped(text, reports[s]) if s in reports else text) for s, text in pending]
        return pending

    def flush(self) -> None:
        """Nothing to do in memory; a file spool writes what acks changed."""

    def close(self) -> None:
        """Nothing to do in memory; a file spool saves what is left to save."""


class SpoolFileError(Exception):
    """The spool file exists but cannot be used (corrupt, unreadable, not a spool)."""


class SpoolInUse(Exception):
    """Another process (another agent?) holds the spool file."""


_SPOOL_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE spool (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, sample TEXT NOT NULL,
                    dropped INTEGER NOT NULL DEFAULT 0);
CREATE TABLE limbo (seq INTEGER PRIMARY KEY, dropped INTEGER NOT NULL DEFAULT 0)
"""
_SPOOL_META = ("epoch", "seq", "unreported", "dropped", "sent")
SPOOL_FORMAT = 1


def _move_aside(path: Path, suffix: str) -> Path:
    """Rename a spool file (and its WAL) to path + suffix; its shared-memory index is just removed."""
    aside = path.with_name(path.name + suffix)
    os.replace(str(path), str(aside))
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        os.replace(str(wal), str(aside) + "-wal")
    try:
        os.unlink(str(path) + "-shm")
    except OSError:
        pass
    return aside


class SqliteSpool(SampleBuffer):
    """The spool in a sqlite3 file as well as in memory (AGENT_SPOOL_FILE), so that it survives a restart.

    Tables: `spool` (seq, ts, the sample's JSON, the dropped count it carries), `limbo` (samples sent, then evicted
    before an ack), `meta`: the epoch and the last seq handed out, so that the next process goes on in the same
    epoch with the next seq (the server sees more samples of the same epoch: no duplicate, no gap), the counts and
    the highest seq sent. Reads come from memory: the file is read once, at open. Writes are small transactions
    (WAL, synchronous=NORMAL): `append` (in the collector's worker thread) inserts the new sample and, in the same
    transaction, deletes what left the spool since the last write, so acks (on the event loop) never touch the disk.
    A crash can leave acked samples in the file: they are sent again, and the server acks them as duplicates. The
    file is locked (exclusive) while open, so two agents cannot share it.

    When a write fails (disk full...), the file is moved aside, so that no later process reuses its stale seq, and
    the spool goes on in memory only.
    """

    persistent = True

    def __init__(self, path: "os.PathLike[str] | str", maxlen: int) -> None:
        super().__init__(maxlen)
        self.path = Path(path)
        self.resumed = False  # True when the file already had an epoch
        self._db_lock = threading.Lock()  # one writer at a time: collector thread, sender's attach, flush, close
        self._delete_upto = 0  # memory no longer has the samples up to here: delete them from the file
        self._deleted_upto = 0  # ... done up to here
        self._limbo_new: List[Tuple[int, int]] = []  # limbo entries to insert
        self._limbo_gone_upto = 0  # limbo entries up to here are settled: delete them from the file
        self._dirty = False
        existed = self.path.exists()
        try:
            self._conn: Optional[sqlite3.Connection] = sqlite3.connect(
                str(self.path), timeout=0.2, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            if existed:
                raise SpoolFileError(_describe(exc)) from None
            raise
        try:
            self._load(existed)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        if self._dirty:  # AGENT_SPOOL_MAX was lowered since: evictions to write
            with self._db_lock:
                self._save()

    def _load(self, existed: bool) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")  # takes the lock now: a second agent on the same file fails here
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise SpoolInUse(f"{self.path} is in use by another process") from None
            if existed:
                raise SpoolFileError(_describe(exc)) from None
            raise
        except sqlite3.DatabaseError as exc:
            raise SpoolFileError(_describe(exc)) from None
        try:
            try:
                check = conn.execute("PRAGMA quick_check").fetchone()
                if not check or check[0] != "ok":
                    raise SpoolFileError(f"integrity check failed: {check[0] if check else '?'}")
                format_version = conn.execute("PRAGMA user_version").fetchone()[0]
                if format_version == 0:  # a new file, or something else than a spool
                    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                        raise SpoolFileError("not an mbot agent spool (a database with other tables)")
                    for statement in _SPOOL_SCHEMA.split(";"):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SPOOL_FORMAT}")
                    self._write_meta(conn)
                elif format_version != SPOOL_FORMAT:
                    raise SpoolFileError(f"spool format {format_version}, this agent knows {SPOOL_FORMAT}")
                else:
                    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                    rows = conn.execute("SELECT seq, sample, dropped FROM spool ORDER BY seq").fetchall()
                    limbo = conn.execute("SELECT seq, dropped FROM limbo ORDER BY seq").fetchall()
                    self._restore(meta, rows, limbo)
                    self.resumed = True
            except sqlite3.DatabaseError as exc:
                raise SpoolFileError(_describe(exc)) from None
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _restore(self, meta: Mapping[str, Any], rows: Sequence[Tuple[Any, ...]],
                 limbo: Sequence[Tuple[Any, ...]]) -> None:
        def count(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        for key in _SPOOL_META:
            if not count(meta.get(key)) or (key == "epoch" and not meta[key]):
                raise SpoolFileError(f"meta {key} is {meta.get(key)!r}")
        self.epoch, self.seq, self._sent = meta["epoch"], meta["seq"], meta["sent"]
        self.unreported, self.dropped = meta["unreported"], meta["dropped"]
        previous = None
        for seq, text, dropped in rows:
            if not isinstance(text, str) or not count(dropped) or not count(seq) or (
                    previous is not None and seq != previous + 1):
                raise SpoolFileError(f"bad sample row at seq {seq!r}")
            previous = seq
            self._items.append((seq, text))
            if dropped:
                self._reports[seq] = dropped
        if previous is not None and previous > self.seq:
            raise SpoolFileError(f"sample seq {previous} is above the last seq handed out ({self.seq})")
        for seq, dropped in limbo:
            if not count(seq) or not count(dropped) or seq > self.seq:
                raise SpoolFileError(f"bad limbo row at seq {seq!r}")
            self._limbo[seq] = dropped
        self._deleted_upto = self._delete_upto = rows[0][0] - 1 if rows else self.seq
        while len(self._items) > self._maxlen:  # AGENT_SPOOL_MAX was lowered since
            self._evict()

    def _write_meta(self, conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         [("epoch", self.epoch), ("seq", self.seq), ("unreported", self.unreported),
                          ("dropped", self.dropped), ("sent", self._sent)])

    # Memory changes take self._lock briefly; the file is written under self._db_lock, outside self._lock, so
    # that the event loop never waits for the disk.

    def _evict(self) -> None:
        seq = self._items[0][0]
        super()._evict()
        if seq > self._delete_upto:
            self._delete_upto = seq
        self._dirty = True

    def _to_limbo(self, seq: int, carried: int) -> None:
        super()._to_limbo(seq, carried)
        self._limbo_new.append((seq, carried))

    def _from_limbo(self, seq: int) -> int:
        self._limbo_gone_upto = max(self._limbo_gone_upto, seq)
        self._dirty = True
        return super()._from_limbo(seq)

    def _acked(self, seq: int) -> None:
        self._delete_upto = max(self._delete_upto, seq)
        self._dirty = True

    def append(self, seq: int, text: str, ts: float = 0.0) -> bool:
        with self._db_lock:
            with self._lock:
                full = self._append(seq, text)
            self._save(row=(seq, ts, text))
        return full

    def _mark_sent(self, seq: int) -> None:
        super()._mark_sent(seq)
        self._dirty = True

    def attach_unreported(self, seq: int) -> Optional[int]:
        with self._db_lock:
            with self._lock:
                target = self._attach(seq)
            if target is not None:
                self._save(report=target)
            return target

    def _save(self, row: Optional[Tuple[int, float, str]] = None, report: Optional[int] = None) -> None:
        """One transaction: delete what left memory, add `row`, store `report`'s count, update limbo and meta.
        Called with self._db_lock held."""
        conn = self._conn
        if conn is None:
            return
        with self._lock:
            delete_upto = self._delete_upto
            limbo_gone = self._limbo_gone_upto
            limbo_new = [(s, c) for s, c in self._limbo_new if s in self._limbo]
            self._limbo_new = []
            meta = [("seq", self.seq), ("unreported", self.unreported), ("dropped", self.dropped),
                    ("sent", self._sent)]
            count = self._reports.get(report, 0) if report is not None else 0
            self._dirty = False
        try:
            conn.execute("BEGIN")
            try:
                if delete_upto > self._deleted_upto:
                    conn.execute("DELETE FROM spool WHERE seq <= ?", (delete_upto,))
                if row is not None and row[0] > delete_upto:
                    conn.execute("INSERT INTO spool (seq, ts, sample) VALUES (?, ?, ?)", row)
                if report is not None:
                    conn.execute("UPDATE spool SET dropped = ? WHERE seq = ?", (count, report))
                if limbo_gone:  # (what is in limbo in memory is above it)
                    conn.execute("DELETE FROM limbo WHERE seq <= ?", (limbo_gone,))
                if limbo_new:
                    conn.executemany("INSERT OR REPLACE INTO limbo (seq, dropped) VALUES (?, ?)", limbo_new)
                conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in meta])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
        else:
            self._deleted_upto = max(self._deleted_upto, delete_upto)

    def _fail(self, exc: BaseException) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.close()
        except sqlite3.Error:
            pass
        try:
            where = f"moved it aside to {_move_aside(self.path, f'.failed-{int(time.time())}')}"
        except OSError as move_exc:
            where = f"cannot move it aside either ({_describe(move_exc)}): delete it before the next start"
        log.error("cannot write the spool file %s (%s); %s. Unsent samples are kept in memory only from now on "
                  "(until this agent restarts)", self.path, _describe(exc), where)

    def flush(self) -> None:
        """Write what acks changed since the last write (blocking)."""
        with self._db_lock:
            if self._dirty:
                self._save()

    def close(self) -> None:
        """Save what is left to save and close the file (blocking). The spool stays usable, in memory only."""
        with self._db_lock:
            if self._dirty:
                self._save()
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    log.warning("closing the spool file %s: %s", self.path, _describe(exc))


def open_spool(path: Optional[str], maxlen: int) -> SampleBuffer:
    """The spool: in memory, or in the file `path` (AGENT_SPOOL_FILE). Never raises for the file: a corrupt one is
    moved aside (`.corrupt-<time>`) for a new one in a new epoch; when no file can be used, the spool is in memory
    only (one log line says why). Blocking: run it in a worker thread."""
    if not path:
        return SampleBuffer(maxlen)
    file = Path(os.path.expanduser(path))
    if file.is_dir():
        log.error("AGENT_SPOOL_FILE %s is a directory; keeping unsent samples in memory only", file)
        return SampleBuffer(maxlen)
    try:
        if not file.parent.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
        try:
            return SqliteSpool(file, maxlen)
        except SpoolFileError as exc:
            aside = _move_aside(file, f".corrupt-{int(time.time())}")
            log.error("the spool file %s is corrupt or unreadable (%s): moved it aside to %s; starting a new spool "
                      "in a new epoch (its unsent samples are not sent)", file, exc, aside)
            return SqliteSpool(file, maxlen)
    except SpoolInUse as exc:
        log.error("%s (another agent with the same AGENT_SPOOL_FILE?); keeping unsent samples in memory only", exc)
    except (SpoolFileError, sqlite3.Error, OSError) as exc:
        log.error("cannot use the spool file %s (%s); keeping unsent samples in memory only", file, _describe(exc))
    return SampleBuffer(maxlen)


def batches(items: Sequence[Tuple[int, str]], max_samples: int = BATCH_MAX_SAMPLES,
            max_bytes: int = BATCH_MAX_BYTES) -> Iterator[List[Tuple[int, str]]]:
    """Consecutive runs of items, each at most max_samples long and (but for a lone giant) max_bytes of text."""
    batch: List[Tuple[int, str]] = []
    size = 0
    for item in items:
        n = len(item[1]) + 1
        if batch and (len(batch) >= max_samples or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield batch


def encode_sample(seq: int, ts: float, metrics: Mapping[str, Any],
                  encoded: Optional[Mapping[str, str]] = None) -> str:
    """The stored form of a sample: '{"seq":..,"ts":..,"metrics":{..}}' (finite numbers only). `encoded`: more
    members of metrics, already JSON (from encode_member): the containers' series are the same in every sample
    between two polls, and were most of a sample's encoding."""
    obj = {"seq": seq, "ts": round(ts, 3), "metrics": metrics}
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or infinity from some sensor: leave those values out
        obj["metrics"] = _finite_only(metrics)
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    if not encoded:
        return text
    # text ends with the closing braces of metrics and of the sample.
    more = ",".join(f"{json.dumps(name)}:{value}" for name, value in encoded.items())
    return text[:-2] + ("," if metrics else "") + more + "}}"


def encode_member(value: Any) -> str:
    """A member of metrics as encode_sample puts it in (finite numbers only)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite_only(value), separators=(",", ":"), allow_nan=False)


def _finite_only(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()
                if not (isinstance(v, float) and not math.isfinite(v))}
    if isinstance(value, list):
        return [_finite_only(v) for v in value if not (isinstance(v, float) and not math.isfinite(v))]
    return value


def sample_frame(text: str) -> str:
    """A `sample` frame from a stored sample."""
    return '{"type":"sample",' + text[1:]


def samples_frame(texts: Iterable[str]) -> str:
    """A `samples` batch frame from stored samples, oldest first."""
    return '{"type":"samples","samples":[' + ",".join(texts) + "]}"


def backoff_delay(attempt: int, rand: Callable[[], float] = random.random, low: float = 1.0,
                  high: float = 60.0) -> float:
    """Exponential backoff with full jitter: attempt 0 -> low, then uniform in [low, min(high, low * 2**attempt)]."""
    cap = min(high, low * 2.0 ** min(attempt, 30))
    return low + (cap - low) * rand()


# --- when to try again, without IO -----------------------------------------------------------------------------

# Closes that say the server is stopping or restarting (1001 going away: older servers; 1012 service restart), and
# 1006, a connection that ended without a close frame (a server killed or crashed, or restarted under a proxy).
_RESTART_CLOSES = (1001, 1006, 1012)
_ANNOUNCED_RESTARTS = (1001, 1012)
# Errors that mean "nothing listens there (yet)" or "it hung up during the handshake": a server that restarts.
_GONE_ERRORS = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                ssl.SSLEOFError)

# Reconnect.closed() and failed(): wait `delay` seconds; `expected`: the server said it was restarting and this is
# part of it (logged at INFO, not as a warning).
Retry = NamedTuple("Retry", [("delay", float), ("expected", bool)])


def server_gone(exc: BaseException) -> bool:
    """Whether a failure to connect says the server is not there: connection refused, or reset or cut during the
    handshake. That is what a restarting server looks like; an unknown name, an unreachable network, a timeout, an
    HTTP refusal or a certificate problem are not."""
    return any(isinstance(error, _GONE_ERRORS) for error in _causes(exc))


def server_busy(exc: BaseException) -> bool:
    """Whether the server refused the connection because too many agents are connecting at once: a TLS alert
    user_canceled instead of its ServerHello (mbot/admission.py). Not a server that went away: the usual backoff."""
    return any(isinstance(error, ssl.SSLError) and error.reason == "TLSV1_ALERT_USER_CANCELLED"
               for error in _causes(exc))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the members of its groups and their causes, each once."""
    todo, seen = [exc], set()
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, BaseExceptionGroup):
            todo.extend(error.exceptions)
        else:
            yield error
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if cause is not None:
            todo.append(cause)


class Reconnect:
    """How long to wait before the next connection attempt, without IO (times are trio's clock): the end of each
    connection or failed attempt in, a Retry out.

    Failures back off exponentially with full jitter (backoff_delay; a connection up `stable_after` seconds starts
    afresh). Except where the server is most likely restarting: when a stable connection ends with 1012 or 1001 (the
    server's shutdown), or without a close frame (1006: killed, crashed), the agent reconnects after a random
    `quick` wait (0.5-3 s), and for `fast_for` seconds (a minute) after that end a server that refuses or resets the
    connection (server_gone) is tried again every `fast` seconds (random, 1-2 s); then the usual backoff. The
    randomness spreads hundreds of agents over the seconds after a restart instead of one instant. A close that
    does not say "restart" (1008 over a limit, 1007/1009 refused data, 1011, 4001 replaced) backs off as before, and
    so does a restart close of a connection that was not stable: a server that keeps closing at once gets the backoff.
    """

    def __init__(self, *, low: float = 1.0, high: float = 60.0, stable_after: float = 30.0,
                 quick: Tuple[float, float] = (0.5, 3.0), fast: Tuple[float, float] = (1.0, 2.0),
                 fast_for: float = 60.0, rand: Callable[[], float] = random.random) -> None:
        self.low, self.high, self.stable_after = low, high, stable_after
        self.quick, self.fast, self.fast_for = quick, fast, fast_for
        self.rand = rand
        self.attempt = 0  # failures since the last stable connection: the backoff's exponent
        self.fast_until = -math.inf  # until then, a server that is not there is taken to be restarting
        self.announced = False  # ... and it said so (1001/1012)

    def closed(self, code: Optional[int], up_for: Optional[float], now: float) -> Retry:
        """A connection that reached the WebSocket ended: `code` is its close code (None: the agent dropped it, for
        a ping without answer), `up_for` how long it was up after the hello's ack (None: never acked)."""
        if up_for is None or up_for < self.stable_after:
            return self._backoff()
        self.attempt = 0
        if code is not None and code not in _RESTART_CLOSES:
            return self._backoff()
        self.fast_until = now + self.fast_for
        self.announced = code in _ANNOUNCED_RESTARTS
        self.attempt = 1  # this wait was the first of a run of failures
        return Retry(self._between(self.quick), self.announced)

    def failed(self, gone: bool, now: float) -> Retry:
        """An attempt failed before the WebSocket was up; `gone`: server_gone() said the server is not there."""
        if gone and now < self.fast_until:
            return Retry(self._between(self.fast), self.announced)
        return self._backoff()

    def _between(self, bounds: Tuple[float, float]) -> float:
        return bounds[0] + (bounds[1] - bounds[0]) * self.rand()

    def _backoff(self) -> Retry:
        delay = backoff_delay(self.attempt, self.rand, self.low, self.high)
        self.attempt += 1
        return Retry(delay, False)


# --- the protocol without IO: what to send, what an ack frees, when to give up on refused samples -------------


# What Link.receive() makes of a frame from the server (an ack is applied to the spool on the way), and what
# Link.closed() did. Acked.first: the answer to the hello (what the server already has of this epoch), after which
# sending starts; freed: samples that left the spool. ServerError.text: why the server is about to close (quoted
# and escaped for the log). CommandRequest: a command with a valid id (its action and expiry are checked by whoever
# runs it). Ignored: a frame the agent does not act on, logged thinned out when `note`, else at debug level.
# Discarded: the server refused the samples up to `last` `strikes` times in a row, and the agent let go of `count`
# of them (evicted: counted as dropped, and the server is told).


Acked = NamedTuple("Acked", [("seq", int), ("first", bool), ("freed", int)])
ServerError = NamedTuple("ServerError", [("text", str)])
CommandRequest = NamedTuple("CommandRequest", [("command_id", str), ("action", Any), ("expires", Any)])
Ignored = NamedTuple("Ignored", [("why", str), ("note", bool)])
Discarded = NamedTuple("Discarded", [("first", Optional[int]), ("last", int), ("strikes", int), ("count", int)])
# The speed test (docs/protocol.md, "Speed test"): the server's request for one direction, the end of its download,
# and a binary frame (only a download's bytes are binary).
SpeedTestRequest = NamedTuple("SpeedTestRequest", [("test_id", str), ("direction", str), ("seconds", float),
                                                   ("max_bytes", int)])
SpeedTestEnd = NamedTuple("SpeedTestEnd", [("test_id", str)])
Binary = NamedTuple("Binary", [("size", int)])
SPEEDTEST_MAX_SECONDS = 30.0  # what a server may ask for, per direction
SPEEDTEST_MAX_BYTES = 1 << 31
SPEEDTEST_CHUNK = 64 * 1024
SPEEDTEST_UPLOAD_EVERY = 60.0  # uploads a server may ask for: one a minute (it cannot use the host's uplink more)


def speedtest_request(kind: str, frame: Mapping[str, Any]) -> "SpeedTestRequest | SpeedTestEnd | Ignored":
    """A speedtest or speedtest_end frame from the server, checked."""
    test_id = frame.get("id")
    if not isinstance(test_id, str) or not test_id or len(test_id) > 64:
        return Ignored("ignoring a speed test frame without a valid id: " + _quote(test_id, 70), True)
    if kind == "speedtest_end":
        return SpeedTestEnd(test_id)
    direction, seconds, max_bytes = frame.get("dir"), frame.get("seconds"), frame.get("bytes")
    if direction not in ("down", "up"):
        return Ignored("ignoring a speed test of unknown direction " + _quote(direction, 20), True)
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds)
            or not 0 < seconds <= SPEEDTEST_MAX_SECONDS):
        return Ignored("ignoring a speed test of %s seconds" % _quote(seconds, 30), True)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 0 < max_bytes <= SPEEDTEST_MAX_BYTES:
        return Ignored("ignoring a speed test of %s bytes" % _quote(max_bytes, 30), True)
    return SpeedTestRequest(test_id, direction, float(seconds), max_bytes)


class Link:
    """The agent's side of the protocol, without IO (h11.Connection is the model): frames from the server in,
    events out; which frames to send next; what the end of a connection means for the spool.

    One Link for the agent's life (strikes count across connections); `connected()` starts each connection. The
    spool is its memory: `receive` applies acks to it (what they free), `frames` takes what to send from it and
    marks it sent, `closed` lets go of samples the server refused max_strikes times in a row (a close for invalid
    data or policy after they were sent, with no ack progress since the hello), so that one sample the server
    cannot take does not hold back every sample after it. The caller does the IO: sends the hello and the frames,
    calls `sent()` after each, runs commands, logs. `report_loss` writes a file spool: call it off the event loop.
    """

    def __init__(self, buffer: SampleBuffer, *, max_strikes: int = _POISON_STRIKES) -> None:
        self.buffer = buffer
        self.max_strikes = max_strikes
        self.strikes = 0  # connections in a row that ended in a refusal of the samples they sent first
        self.connected()

    def connected(self) -> None:
        """A new connection: nothing acked or sent on it yet (call it before sending the hello)."""
        self.hello_acked = False
        self.hello_ack_seq = 0  # what the server had of this epoch when the connection started
        self.acked_seq = 0  # the highest ack on this connection
        self.sent_upto = 0  # samples up to here went out on this connection
        self.first_frame_last_seq: Optional[int] = None  # the last seq of the first frame of samples sent
        self.gather = 0.0  # seconds to gather samples before sending them: what the latest ack asked (0: at once)

    # frames in ------------------------------------------------------------------------------------------------

    def receive(self, message: "str | bytes") -> ("Acked | ServerError | CommandRequest | SpeedTestRequest | "
                                                  "SpeedTestEnd | Binary | CheckList | Ignored"):
        """One frame from the server -> what it means (an ack is applied to the spool here)."""
        if isinstance(message, bytes):
            return Binary(len(message))
        try:
            frame = json.loads(message)
            kind = frame["type"]
        except (ValueError, TypeError, KeyError):
            return Ignored("ignoring a frame from the server that is not a JSON object with a type: "
                           + _quote(message, 100), True)
        if kind == "ack":
            return self._ack(frame.get("seq"), frame.get("gather"))
        if kind == "error":
            # Quoted and escaped: the text is the server's, and goes into this host's log.
            return ServerError(f"{_quote(frame.get('code', '?'), 40)}: {_quote(frame.get('message', ''), 300)}")
        if kind == "command":
            command_id = frame.get("id")
            if not isinstance(command_id, str) or not command_id or len(command_id) > 64:
                return Ignored("ignoring a command without a valid id: " + _quote(command_id, 70), True)
            return CommandRequest(command_id, frame.get("action"), frame.get("expires"))
        if kind in ("speedtest", "speedtest_end"):
            return speedtest_request(kind, frame)
        if kind == "checks":
            return checks_request(frame)
        return Ignored("ignoring a server frame of unknown type %.40r" % (kind,), False)  # newer servers

    def _ack(self, seq: Any, gather: Any = None) -> "Acked | Ignored":
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            return Ignored("ignoring an ack with a bad seq: " + _quote(repr(seq), 40), True)
        # A busy server asks for several samples per frame (docs/protocol.md, "ack"); anything but a sane number
        # of seconds means at once, so a wrong server cannot silence this host.
        wanted = gather if isinstance(gather, (int, float)) and not isinstance(gather, bool) else 0.0
        self.gather = float(wanted) if 0.0 < wanted <= GATHER_MAX else 0.0
        first = not self.hello_acked
        freed = self.buffer.ack(seq, first=first)
        if first:
            self.hello_acked = True
            self.hello_ack_seq = self.acked_seq = self.sent_upto = seq
        elif seq > self.acked_seq:
            self.acked_seq = seq
            self.strikes = 0  # the server takes samples again
        return Acked(seq, first, freed)

    # frames out -----------------------------------------------------------------------------------------------

    @property
    def loss_to_report(self) -> bool:
        """Samples were lost and no sample says so yet: call report_loss() before frames()."""
        return bool(self.buffer.unreported)

    def report_loss(self) -> Optional[int]:
        """Make the next sample to send carry the count of lost samples (module docstring). Blocking with a file
        spool. Returns that sample's seq, or None."""
        return self.buffer.attach_unreported(self.sent_upto + 1)

    def frames(self) -> Iterator[Tuple[str, int]]:
        """The frames to send now, oldest first, as (text, last seq in it): `sample` for one, `samples` batches for
        a backlog. They are marked sent in the spool at once: send them all, in order, or end the connection."""
        pending = self.buffer.pending_after(self.sent_upto, mark_sent=True)
        return self._frames(pending)

    @staticmethod
    def _frames(pending: List[Tuple[int, str]]) -> Iterator[Tuple[str, int]]:
        # One frame at a time: a day's backlog is not copied into frame texts all at once.
        for batch in batches(pending):
            if len(batch) == 1:
                yield sample_frame(batch[0][1]), batch[0][0]
            else:
                yield samples_frame(text for _, text in batch), batch[-1][0]

    def sent(self, last_seq: int) -> None:
        """A frame from frames() went out."""
        if self.first_frame_last_seq is None:
            self.first_frame_last_seq = last_seq
        self.sent_upto = last_seq

    # the end of a connection ----------------------------------------------------------------------------------

    def closed(self, code: Optional[int]) -> Optional[Discarded]:
        """The connection ended with this close code (None: no close frame). A close that may be a refusal of the
        samples sent first (1007, 1008, 1009), with no ack progress since the hello, is a strike against them; at
        max_strikes they are let go of."""
        last = self.first_frame_last_seq
        if code not in _DATA_REJECTED or last is None or self.acked_seq > self.hello_ack_seq:
            return None
        self.strikes += 1
        if self.strikes < self.max_strikes:
            return None
        first = self.buffer.first_seq
        count = self.buffer.discard(last)
        strikes, self.strikes = self.strikes, 0
        return Discarded(first, last, strikes, count)


# --- metrics ---------------------------------------------------------------------------------------------------

_SKIP_FSTYPES = frozenset({
    "tmpfs", "devtmpfs", "squashfs", "overlay", "aufs", "ramfs", "proc", "sysfs", "devfs", "autofs", "iso9660",
    "udf", "nsfs", "cgroup", "cgroup2", "fuse.lxcfs", "fuse.portal", "fuse.gvfsd-fuse", "efivarfs", "tracefs",
    "debugfs", "configfs", "securityfs", "pstore", "bpf", "hugetlbfs", "mqueue", "binfmt_misc", "fusectl",
})
_CPU_SENSOR_GROUPS = frozenset({"coretemp", "k10temp", "k8temp", "zenpower", "cpu_thermal", "cpu-thermal",
                                "cpu_thermal_zone", "soc_thermal"})
_CPU_PACKAGE_LABELS = ("package", "tctl", "tdie", "physical id")
_LOOPBACK = ("lo", "lo0")


def _is_real_filesystem(device: str, mountpoint: str, fstype: str) -> bool:
    if mountpoint == "/":
        return True  # even in a container (overlay), the root filesystem is what people want to see
    fstype = fstype.lower()
    if fstype in _SKIP_FSTYPES or not fstype:
        return False
    if device.startswith("/dev/loop") or mountpoint.startswith(("/snap/", "/var/lib/snapd/")):
        return False
    if mountpoint.startswith("/System/Volumes/") and mountpoint != "/System/Volumes/Data":
        return False  # macOS: system, VM, preboot... volumes of the same APFS container
    return True


def _slug(text: str) -> str:
    return "_".join(text.strip().lower().replace("-", " ").split())


def compact_temps(raw: Mapping[str, Sequence[Any]], limit: int = MAX_TEMPS) -> Dict[str, float]:
    """psutil.sensors_temperatures() -> {label: celsius}: "cpu" for the CPU package, `<group>` for the first sensor
    of every other group, `<group>_<label>` for the rest; implausible readings left out; at most `limit`."""
    primary: List[Tuple[str, float]] = []
    secondary: List[Tuple[str, float]] = []
    for group, entries in raw.items():
        readings = []
        for entry in entries:
            try:
                value = float(entry.current)
            except (TypeError, ValueError, AttributeError):
                continue
            if math.isfinite(value) and -100.0 <= value <= 250.0:
                readings.append((str(getattr(entry, "label", "") or ""), value))
        if not readings:
            continue
        name = _slug(group) or "sensor"
        if group in _CPU_SENSOR_GROUPS:
            packages = [v for label, v in readings if label.lower().startswith(_CPU_PACKAGE_LABELS)]
            primary.append(("cpu", max(packages or [v for _, v in readings])))
            continue
        primary.append((name, readings[0][1]))
        for i, (label, value) in enumerate(readings[1:], start=2):
            secondary.append((f"{name}_{_slug(label) or i}", value))
    out: Dict[str, float] = {}
    for label, value in primary + secondary:
        if len(out) >= limit:
            break
        key, n = label, 2
        while key in out:
            key, n = f"{label}_{n}", n + 1
        out[key] = round(value, 1)
    return out


# --- processes (the `processes` snapshot, docs/protocol.md "Snapshots") -------------------------------------------

TOP_PROCESSES = 15  # per ranking (CPU, memory, VRAM): the snapshot is their union, at most 45 members
PROCESSES_VERSION = 1
PROCESS_NAME_MAX, PROCESS_USER_MAX, PROCESS_CMD_MAX = 128, 64, 512  # the server's bounds (mbot/limits.py)
SNAPSHOT_MIN_INTERVAL = 1.0  # the server takes one snapshot of a kind per max(interval, this) (mbot/limits.py)
SNAPSHOT_MAX_BYTES = 200_000  # under the server's 256 KiB per snapshot, with room for the envelope
# The process list may cost at most this share of one core (the whole agent aims at 0.1 % at a 5 s interval, of
# which the event loop's frames take a third). A list costs about 10 us per process (a pread of each /proc/PID/stat
# kept open, or of the cheaper schedstat of an idle one, most of it the kernel's; 2-3 ms at 250 processes here), so
# one every 20-30 s at a few hundred processes: what the card shows without an age (mbot/processes.py: under
# 30 s); at 2,000 processes one every 3 minutes, shown with its age.
PROCESSES_CPU_SHARE = 0.0001
# /proc/PID/stat (and schedstat) files kept open from one scan to the next: a pread of an open one costs half an
# open+read+close. Bounded (and by a quarter of RLIMIT_NOFILE): on a bigger host the rest are opened for each scan.
PROCESS_FDS_MAX = 1024
# A single-threaded process whose /proc/PID/schedstat (its run time: a quarter of the cost of stat, which the kernel
# sums over threads) reads as before has not run, so its stat is as before; it is read anyway every this many scans
# (its RSS can shrink without it running, when the kernel reclaims or swaps its pages).
PROCESS_RECHECK = 4
DETAILS_TTL = 60.0  # a chosen process's user and command line are read again after this long (process titles)


class ProcessStat(NamedTuple):
    """One process in one scan."""

    pid: int
    start: float  # when it started, in the scan's own unit: a pid reused by the OS is another process
    name: str
    cpu_time: float  # seconds of CPU it used since it started (all threads)
    rss: int  # bytes
    threads: int = 0  # 0: not known


def parse_proc_stat(pid: int, data: bytes, tick: float, page: int) -> Optional[ProcessStat]:
    """/proc/PID/stat -> ProcessStat; None when it is not what Linux writes. The name (comm) sits in parentheses
    and may itself hold spaces and parentheses: the fields after it start after the last ')'."""
    head, sep, rest = data.rpartition(b")")
    if not sep or b"(" not in head:
        return None
    fields = rest.split(None, 22)  # the 50-odd fields after the name: only the first 22 are wanted
    try:  # fields 14, 15 (utime, stime), 20 (threads), 22 (starttime), 24 (rss in pages) of proc(5), from 3 here
        return ProcessStat(pid, float(fields[19]), head.partition(b"(")[2].decode("utf-8", "replace"),
                           (int(fields[11]) + int(fields[12])) / tick, max(0, int(fields[21])) * page,
                           int(fields[17]))
    except (IndexError, ValueError):
        return None


def rank_processes(now: Mapping[int, ProcessStat], before: Mapping[int, ProcessStat], seconds: float, cores: int,
                   vram: Mapping[int, int], top: int = TOP_PROCESSES) -> List[Tuple[ProcessStat, float]]:
    """The processes worth reporting, with their CPU % over the last `seconds`: the union of the `top` by CPU, by
    memory (RSS) and by VRAM (zeros rank nowhere), largest CPU first. CPU % is of one core, summed over threads, as
    top shows it: at most 100 x `cores`. A process that was not there before (or whose pid was reused) started
    within the period: all its CPU time counts."""
    cap = 100.0 * max(1, cores)
    cpu: Dict[int, float] = {}  # the processes that used CPU
    if seconds > 0:
        for pid, proc in now.items():
            old = before.get(pid)
            if old is proc:  # the scan found it as it was (ProcessTable reuses the entry): idle
                continue
            used = proc.cpu_time - (old.cpu_time if old is not None and old.start == proc.start else 0.0)
            if used > 0:
                cpu[pid] = min(cap, used / seconds * 100.0)
    chosen = set(heapq.nlargest(top, cpu, key=cpu.__getitem__))
    chosen.update(p.pid for p in heapq.nlargest(top, now.values(), key=lambda p: p.rss) if p.rss > 0)
    chosen.update(heapq.nlargest(top, (p for p in vram if vram[p] > 0 and p in now), key=vram.__getitem__))
    return sorted(((now[p], cpu.get(p, 0.0)) for p in chosen), key=lambda pc: (-pc[1], -pc[0].rss, pc[0].pid))


_BLANKS = {ord(c): " " for c in "\t\n\r\v\f"}  # `python -c` code and the like: a command line reads as one line


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


class ProcessTable:
    """The top processes by CPU, memory and VRAM, one scan per call to top().

    Linux: /proc/PID/stat only, one pread per process of a file kept open between scans (user and command line for
    the chosen few, kept for a minute), several times cheaper than psutil.process_iter; a process whose stat reads
    as before (idle: no CPU time, no memory change) is not parsed again, and a single-threaded one whose schedstat
    reads as before is not read again (PROCESS_RECHECK). AGENT_HOST_PROC (psutil.PROCFS_PATH) is
    honoured. Elsewhere: psutil. CPU % is the CPU time each process used since the previous call, so the first call
    (made here) only primes. due() paces the calls to PROCESSES_CPU_SHARE of a core. Blocks: run it in a worker
    thread; one call at a time. close() (or garbage collection) closes the files it keeps open.
    """

    def __init__(self, procfs: Optional[str] = None, cores: Optional[int] = None, top: int = TOP_PROCESSES) -> None:
        self._procfs = procfs or getattr(psutil, "PROCFS_PATH", "/proc")
        self._linux = sys.platform.startswith("linux") and os.path.isfile(os.path.join(self._procfs, "stat"))
        self._fds: Dict[int, int] = {}  # pid -> its open /proc/PID/stat (Linux)
        self._sched_fds: Dict[int, int] = {}  # pid -> its open /proc/PID/schedstat (single-threaded ones)
        self._raw: Dict[int, bytes] = {}  # pid -> what its stat said at the last scan
        self._sched_raw: Dict[int, bytes] = {}  # pid -> what its schedstat said at the last scan
        self._unread: Dict[int, int] = {}  # pid -> scans in a row its stat was not read (PROCESS_RECHECK)
        self._fds_max = 0
        if self._linux:
            self._tick = float(os.sysconf("SC_CLK_TCK"))
            self._page = os.sysconf("SC_PAGE_SIZE")
            import resource  # Unix only, like this path

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self._fds_max = PROCESS_FDS_MAX if soft == resource.RLIM_INFINITY else min(PROCESS_FDS_MAX, soft // 4)
        self._cores = cores or psutil.cpu_count(logical=True) or os.cpu_count() or 1
        self._top = top
        self._users: Dict[int, str] = {}
        self._handles: Dict[int, Any] = {}  # psutil: pid -> Process of the latest scan
        # (pid, start) of the chosen -> (read at, user, argv): the chosen change little from one call to the next
        self._details_of: Dict[Tuple[int, float], Tuple[float, str, List[str]]] = {}
        self._before: Dict[int, ProcessStat] = {}
        started = time.thread_time()
        self._before = self._scan()
        self.scanned_at = time.monotonic()  # of the last scan
        self.cost = time.thread_time() - started  # CPU seconds of the last call
        self._listed = False

    def close(self) -> None:
        fds, self._fds, sched_fds, self._sched_fds = self._fds, {}, self._sched_fds, {}
        for fd in itertools.chain(fds.values(), sched_fds.values()):
            try:
                os.close(fd)
            except Exception:  # OSError; or, at interpreter exit (__del__), os already torn down
                pass

    __del__ = close

    def due(self, now: float) -> bool:
        """Whether a call now keeps the list within PROCESSES_CPU_SHARE of a core (`now`: time.monotonic()). The
        first list is due at once: a new host shows its processes with its first sample."""
        return not self._listed or now - self.scanned_at >= self.cost / PROCESSES_CPU_SHARE

    def top(self, vram: Optional[Mapping[int, int]] = None) -> List[Dict[str, Any]]:
        """The `processes` snapshot's items now. `vram`: pid -> bytes of GPU memory it holds (NVML)."""
        started = time.thread_time()
        vram = vram or {}
        now, at = self._scan(), time.monotonic()
        chosen = rank_processes(now, self._before, at - self.scanned_at, self._cores, vram, self._top)
        self._before, self.scanned_at = now, at
        known, self._details_of = self._details_of, {}
        items = []
        for proc, cpu in chosen:
            key = (proc.pid, proc.start)
            details = known.get(key)
            if details is None or at - details[0] >= DETAILS_TTL:
                details = (at, *self._details(proc.pid))
            self._details_of[key] = details
            _, user, argv = details
            name = proc.name
            if len(name) >= 15 and argv:  # Linux cuts comm at 15 bytes: the program's file name says more
                base = os.path.basename(argv[0])
                if base.startswith(name):
                    name = base
            item: Dict[str, Any] = {"pid": proc.pid, "name": _cut(name, PROCESS_NAME_MAX),
                                    "user": _cut(user, PROCESS_USER_MAX),
                                    "cmd": _cut(" ".join(argv).translate(_BLANKS), PROCESS_CMD_MAX),
                                    "cpu": round(cpu, 1),
                                    "rss": proc.rss}
            if vram.get(proc.pid):
                item["vram"] = int(vram[proc.pid])
            items.append(item)
        self.cost = time.thread_time() - started
        self._listed = True
        return items

    # scans ------------------------------------------------------------------------------------------------------

    def _scan(self) -> Dict[int, ProcessStat]:
        return self._scan_proc() if self._linux else self._scan_psutil()

    def _scan_proc(self) -> Dict[int, ProcessStat]:
        out: Dict[int, ProcessStat] = {}
        procfs, tick, page = self._procfs, self._tick, self._page
        kept, self._fds = self._fds, {}
        sched_kept, self._sched_fds = self._sched_fds, {}
        fds, sched_fds, fds_max = self._fds, self._sched_fds, self._fds_max
        raw_before, raw = self._raw, {}
        sched_before, sched_raw = self._sched_raw, {}
        before = self._before
        try:
            for entry in os.listdir(procfs):
                if not entry.isdigit():
                    continue
                pid = int(entry)
                fd = kept.pop(pid, None)
                prev = before.get(pid)
                if prev is not None and prev.threads == 1 and fd is not None:
                    sched = self._read_kept(sched_kept.pop(pid, None), f"{procfs}/{entry}/schedstat", 256)
                    if sched is not None:
                        data, sched_fd, same = sched
                        sched_raw[pid] = data
                        if len(fds) + len(sched_fds) < fds_max - 1:
                            sched_fds[pid] = sched_fd
                        else:
                            os.close(sched_fd)
                        checks = self._unread.get(pid, 0)
                        # The same process (read through the file kept open for it) that has not run:
                        if same and data == sched_before.get(pid) and checks < PROCESS_RECHECK:
                            self._unread[pid] = checks + 1
                            fds[pid] = fd  # its turn to be read comes: the gate above is only for open ones
                            out[pid] = prev
                            raw[pid] = raw_before[pid]
                            continue
                self._unread.pop(pid, None)
                stat = self._read_kept(fd, f"{procfs}/{entry}/stat", 4096)
                if stat is None:  # gone since the listing, or hidden from us (hidepid)
                    continue
                data, fd, _ = stat
                if len(fds) + len(sched_fds) < fds_max:
                    fds[pid] = fd
                else:
                    os.close(fd)
                if raw_before.get(pid) == data and prev is not None:  # unchanged since the last scan
                    proc: Optional[ProcessStat] = prev
                else:
                    proc = parse_proc_stat(pid, data, tick, page)
                if proc is not None:
                    out[pid] = proc
                    raw[pid] = data
        finally:
            for fd in itertools.chain(kept.values(), sched_kept.values()):  # processes that ended
                os.close(fd)
        self._raw, self._sched_raw = raw, sched_raw
        self._unread = {pid: n for pid, n in self._unread.items() if pid in out}
        return out

    @staticmethod
    def _read_kept(fd: Optional[int], path: str, size: int) -> Optional[Tuple[bytes, int, bool]]:
        """(what the file says now, its open descriptor, whether that is `fd`): a pread of `fd` while its process
        lives, else a new open of `path`; None when it cannot be read (the process ended)."""
        if fd is not None:
            try:
                data = os.pread(fd, size, 0)
            except OSError:  # that process ended (ESRCH): the pid is another one's now, or nobody's
                data = b""
            if data:
                return data, fd, True
            os.close(fd)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.read(fd, size)
        except OSError:
            data = b""
        if not data:
            os.close(fd)
            return None
        return data, fd, False

    def _scan_psutil(self) -> Dict[int, ProcessStat]:
        out: Dict[int, ProcessStat] = {}
        handles: Dict[int, Any] = {}
        for p in psutil.process_iter(["name", "cpu_times", "memory_info", "create_time"], ad_value=None):
            if p.pid == 0 and sys.platform == "win32":
                continue  # the System Idle Process: its "CPU" is the idle time
            info = p.info
            times, mem = info.get("cpu_times"), info.get("memory_info")
            out[p.pid] = ProcessStat(p.pid, float(info.get("create_time") or 0.0), str(info.get("name") or ""),
                                     float(times.user + times.system) if times is not None else 0.0,
                                     int(mem.rss) if mem is not None else 0)
            handles[p.pid] = p
        self._handles = handles
        return out

    def _details(self, pid: int) -> Tuple[str, List[str]]:
        """(user, argv) of one chosen process; empty where it is gone or hidden from us."""
        if not self._linux:
            p = self._handles.get(pid)
            user, argv = "", []
            if p is not None:
                try:
                    user = p.username()
                except (psutil.Error, OSError):
                    pass
                try:
                    argv = [str(a) for a in p.cmdline()]
                except (psutil.Error, OSError):
                    pass
            return user, argv
        try:
            uid = os.stat(f"{self._procfs}/{pid}").st_uid
        except OSError:
            return "", []
        argv = []
        try:
            fd = os.open(f"{self._procfs}/{pid}/cmdline", os.O_RDONLY)
            try:
                raw = os.read(fd, 4 * PROCESS_CMD_MAX)
            finally:
                os.close(fd)
            argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        except OSError:
            pass
        return self._user(uid), argv

    def _user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            import pwd  # Unix only, like this path

            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:  # a uid without a name here (a container's user seen through the host's /proc)
                name = str(uid)
            if len(self._users) >= 4096:
                self._users.clear()
            self._users[uid] = name
        return name

# --- inventory: what the machine is (hello's `inventory`; an `inventory` snapshot when it changes) ---------------

# Seconds between checks for a changed inventory (a disk mounted, an address changed): a check costs ~8 ms of CPU
# (psutil's partitions and interfaces, more with dozens of container interfaces), 0.003 % of a core at this pace.
INVENTORY_EVERY = 300.0
MAX_INVENTORY_ITEMS = 64  # disks, interfaces, GPUs (the server refuses more: docs/protocol.md)
MAX_NIC_ADDRS = 16
# systemd-detect-virt's words, and what /sys/class/dmi/id says on hosts without it.
_DMI_VIRT = (("kvm", "kvm"), ("qemu", "qemu"), ("vmware", "vmware"), ("virtualbox", "oracle"), ("xen", "xen"),
             ("microsoft", "microsoft"), ("amazon ec2", "amazon"), ("google", "google"), ("bochs", "bochs"),
             ("parallels", "parallels"), ("openstack", "kvm"))


_MEMINFO_KEYS = frozenset((b"MemTotal", b"MemAvailable", b"SwapTotal", b"SwapFree"))


def _read_proc(path: str, limit: int = 1 << 22) -> bytes:
    """A whole /proc file (os.read: no buffered file object for a file read once)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_text(path: str, limit: int = 1 << 20) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read(limit)
    except OSError:
        return ""


def cpu_model(cpuinfo: Optional[str] = None) -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux (x86 "model name", ARM "Hardware"/"Model"), sysctl on macOS,
    platform.processor() elsewhere; "" when none says."""
    import platform

    if sys.platform.startswith("linux") or cpuinfo is not None:
        text = _read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
        found = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            key = key.strip().lower()
            if sep and value.strip() and key not in found:
                found[key] = " ".join(value.split())
        for key in ("model name", "hardware", "model", "cpu model", "processor"):
            value = found.get(key, "")
            if value and not value.isdigit():  # "processor: 0" is an index on x86
                return value
        return platform.processor() or ""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=2, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        return out or platform.processor() or ""
    return platform.processor() or ""


def os_name() -> str:
    """"Debian GNU/Linux 12 (bookworm)", "macOS 14.4", "Windows 11 (10.0.22631)" ..."""
    import platform

    if sys.platform.startswith("linux"):
        for path in ("/etc/os-release", "/usr/lib/os-release"):
            for line in _read_text(path, 65536).splitlines():
                if line.startswith("PRETTY_NAME="):
                    return line.partition("=")[2].strip().strip("\"'")
        return "Linux"
    if sys.platform == "darwin":
        return f"macOS {platform.mac_ver()[0]}".strip()
    if sys.platform == "win32":
        release, version = platform.release(), platform.version()
        return f"Windows {release} ({version})" if version else f"Windows {release}"
    return platform.system() or sys.platform


def virtualisation(run: Callable[..., Any] = subprocess.run) -> str:
    """"none", a hypervisor ("kvm", "vmware" ...) or a container ("docker", "podman", "lxc" ...): systemd-detect-virt
    when it is there, else /sys/class/dmi/id, the container marker files and the CPU's hypervisor flag ("vm" when
    only the flag says so). "" off Linux or when nothing can tell."""
    if not sys.platform.startswith("linux"):
        return ""
    try:
        done = run(["systemd-detect-virt"], capture_output=True, text=True, timeout=3, check=False)
        word = (done.stdout or "").strip().splitlines()
        # Exit status 1 with "none" means "no virtualisation": an answer too.
        if word and word[0] and len(word[0]) <= 32:
            return word[0]
    except (OSError, subprocess.SubprocessError):
        pass
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    dmi = " ".join(_read_text(f"/sys/class/dmi/id/{name}", 256).strip().lower()
                   for name in ("sys_vendor", "product_name", "bios_vendor"))
    for needle, word in _DMI_VIRT:
        if needle in dmi:
            return word
    flags = next((line for line in _read_text("/proc/cpuinfo").splitlines() if line.startswith("flags")), "")
    if " hypervisor" in flags:
        return "vm"
    return "none" if dmi.strip() or flags else ""


def inventory_differs(old: Optional[Mapping[str, Any]], new: Mapping[str, Any]) -> bool:
    """Whether `new` is worth a snapshot: anything changed but a filesystem's size by less than 5 % (the size of a
    ZFS dataset or a thin volume follows what its neighbours use, minute by minute)."""
    if old is None:
        return True

    def without_sizes(inv: Mapping[str, Any]) -> Dict[str, Any]:
        copy = dict(inv)
        copy["disks"] = [{k: v for k, v in d.items() if k != "total"} for d in inv.get("disks", ())]
        return copy

    if without_sizes(old) != without_sizes(new):
        return True
    for before, after in zip(old.get("disks", ()), new.get("disks", ())):
        a, b = before.get("total"), after.get("total")
        if (a is None) != (b is None) or (a and b and abs(a - b) > 0.05 * max(a, b)):
            return True
    return False


def disk_inventory() -> List[Dict[str, Any]]:
    """Real filesystems: mount, device, filesystem, size."""
    out: List[Dict[str, Any]] = []
    seen = set()
    try:
        parts = psutil.disk_partitions(all=False)
    except Exception:
        return out
    for part in sorted(parts, key=lambda p: (len(p.mountpoint), p.mountpoint)):
        if not _is_real_filesystem(part.device, part.mountpoint, part.fstype) or part.device in seen:
            continue
        seen.add(part.device)
        entry: Dict[str, Any] = {"mount": part.mountpoint, "device": part.device, "fs": part.fstype}
        try:
            entry["total"] = int(psutil.disk_usage(part.mountpoint).total)
        except OSError:
            pass
        out.append(entry)
        if len(out) >= MAX_INVENTORY_ITEMS:
            break
    return out


def nic_inventory() -> List[Dict[str, Any]]:
    """Network interfaces (not loopback): addresses (link-local IPv6 left out: every interface has one), MAC, link
    speed in Mbit/s (0: unknown), up or not."""
    try:
        addrs = psutil.net_if_addrs()
    except Exception:
        return []
    try:
        stats = psutil.net_if_stats()
    except Exception:
        stats = {}
    link_family = getattr(psutil, "AF_LINK", None)
    out: List[Dict[str, Any]] = []
    for name in sorted(addrs):
        if name in _LOOPBACK or name.startswith(("Loopback", "veth")):
            continue  # veth: a container's end of its link, one per container (the inventory's noise)
        entry: Dict[str, Any] = {"name": name, "addrs": []}
        for addr in addrs[name]:
            if addr.family == link_family:
                if addr.address and addr.address.strip("0:-"):
                    entry["mac"] = addr.address
            elif addr.family in (socket.AF_INET, socket.AF_INET6) and addr.address:
                if addr.address.lower().startswith("fe80:"):
                    continue
                text = addr.address.split("%")[0]
                if addr.netmask and addr.family == socket.AF_INET:
                    try:
                        import ipaddress

                        text += f"/{ipaddress.IPv4Network(f'0.0.0.0/{addr.netmask}').prefixlen}"
                    except ValueError:
                        pass
                if len(entry["addrs"]) < MAX_NIC_ADDRS:
                    entry["addrs"].append(text)
        stat = stats.get(name)
        if stat is not None:
            entry["up"] = bool(stat.isup)
            if stat.speed and stat.speed > 0:
                entry["speed"] = int(stat.speed)
        out.append(entry)
        if len(out) >= MAX_INVENTORY_ITEMS:
            break
    return out


# --- systemd services: the `services` snapshot (docs/protocol.md, "Services") -----------------------------------

SYSTEMCTL_TIMEOUT = 10.0
SERVICES_RETRY = 600.0  # systemctl failed (not systemd, or not running it): ask again this much later
MAX_SERVICES = 500  # the server's bound on a snapshot's members
_SERVICE_LIST = ["list-units", "--type=service", "--output=json", "--plain", "--no-legend", "--no-pager"]


def parse_units(text: str) -> List[Dict[str, str]]:
    """`systemctl list-units` output -> [{"unit", "load", "active", "sub"}]: JSON (systemd 246+ honours
    --output=json here) or, from an older systemd that ignores it, the plain table (UNIT LOAD ACTIVE SUB
    DESCRIPTION; a failed unit may start with a bullet)."""
    text = text.strip()
    if text.startswith("["):
        try:
            rows = json.loads(text)
        except ValueError:
            rows = None
        if isinstance(rows, list):
            return [{k: str(row.get(k, "")) for k in ("unit", "load", "active", "sub")}
                    for row in rows if isinstance(row, dict) and row.get("unit")]
    units = []
    for line in text.splitlines():
        words = line.replace("\u25cf", " ").replace("*", " ").split()
        if len(words) >= 4 and "." in words[0]:
            units.append({"unit": words[0], "load": words[1], "active": words[2], "sub": words[3]})
    return units


class ServiceWatcher:
    """Reads the state of systemd's service units with systemctl (no root needed). collect() blocks (a subprocess):
    run it in a worker thread. Hosts without systemd: one info line, then nothing."""

    def __init__(self, boot_time: Optional[float] = None, systemctl: Optional[str] = None,
                 run: Callable[..., Any] = subprocess.run) -> None:
        import shutil

        self._systemctl = systemctl if systemctl is not None else shutil.which("systemctl")
        self._run = run
        self._boot_time = psutil.boot_time() if boot_time is None else boot_time
        self._said_why = False
        self._quiet_until = -math.inf  # after a failure, systemctl is asked again only every SERVICES_RETRY s
        if not self._systemctl and sys.platform.startswith("linux"):
            log.info("service states off: no systemctl on this host")

    @property
    def available(self) -> bool:
        return bool(self._systemctl) and time.monotonic() >= self._quiet_until

    def _systemctl_out(self, args: List[str]) -> Optional[str]:
        assert self._systemctl is not None
        try:
            done = self._run([self._systemctl, *args], capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT,
                             check=False, env={**os.environ, "SYSTEMD_COLORS": "0", "LC_ALL": "C"})
        except (OSError, subprocess.SubprocessError) as exc:
            self._off(_describe(exc))
            return None
        if done.returncode != 0:
            self._off(_one_line((done.stderr or "").strip()[:200]) or f"exit status {done.returncode}")
            return None
        return done.stdout or ""

    def _off(self, why: str) -> None:
        self._quiet_until = time.monotonic() + SERVICES_RETRY
        if not self._said_why:
            self._said_why = True
            log.info("service states off: systemctl does not answer (%s); not systemd, or not running it", why)

    def collect(self) -> Optional[List[Dict[str, Any]]]:
        """Every loaded service that is not inactive (active, failed, activating ...): {"unit", "state", "sub"},
        with "since" (when it entered that state) for the ones that are not active. None: systemctl is not
        usable. A unit missing from the list is stopped or not loaded: the server reads it as not running."""
        if not self._systemctl:
            return None
        text = self._systemctl_out(_SERVICE_LIST)
        if text is None:
            return None
        units = [u for u in parse_units(text) if u["load"] == "loaded" and u["active"] != "inactive"]
        # Failed first: if a host ever had more than the bound, what matters most is kept.
        units.sort(key=lambda u: (u["active"] != "failed", u["unit"]))
        if len(units) > MAX_SERVICES:
            log.debug("%d services, %d sent", len(units), MAX_SERVICES)
            units = units[:MAX_SERVICES]
        items = [{"unit": u["unit"][:256], "state": u["active"][:32], "sub": u["sub"][:32]} for u in units]
        troubled = [item for item in items if item["state"] != "active"]
        if troubled:
            since = self._since([item["unit"] for item in troubled])
            for item in troubled:
                if item["unit"] in since:
                    item["since"] = since[item["unit"]]
        return items

    def _since(self, units: List[str]) -> Dict[str, float]:
        """When each unit entered its state (StateChangeTimestampMonotonic: microseconds since boot)."""
        text = self._systemctl_out(["show", "--property=Id,StateChangeTimestampMonotonic", "--", *units[:100]])
        out: Dict[str, float] = {}
        unit = None
        for line in (text or "").splitlines():
            key, _, value = line.partition("=")
            if key == "Id":
                unit = value.strip()
            elif key == "StateChangeTimestampMonotonic" and unit and value.strip().isdigit() and int(value):
                out[unit] = round(self._boot_time + int(value) / 1e6, 1)
        return out


class MountWatch:
    """Whether the mount table changed since the last call. Linux's /proc/self/mounts is pollable (proc(5): a mount
    or an unmount gives its open file POLLPRI until it is read again), so each sample asks the kernel with one
    poll(0) instead of listing the partitions again every minute (~1.5 ms with a few dozen container mounts): a
    new disk shows at once, and a still table costs nothing. Also True every `max_age` seconds, in case; without
    a pollable table (`path` None, other systems, an error): every `ttl` seconds."""

    def __init__(self, path: Optional[str], ttl: float, max_age: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ttl = self._fallback_ttl = ttl
        self._at = -math.inf
        self._fd: Optional[int] = None
        self._poll: Any = None
        if path is not None and hasattr(select, "poll"):
            try:
                self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._poll = select.poll()
                self._poll.register(self._fd, select.POLLPRI | select.POLLERR)
                self._ttl = max_age
            except OSError:
                self.close()

    def changed(self) -> bool:
        now = self._clock()
        due = now - self._at >= self._ttl
        if self._fd is not None:
            try:
                if self._poll.poll(0) or due:
                    os.lseek(self._fd, 0, os.SEEK_SET)
                    while os.read(self._fd, 1 << 16):  # read to the end: that clears the mark
                        pass
                    due = True
            except OSError:
                self.close()
                self._ttl = self._fallback_ttl
                due = True
        if due:
            self._at = now
        return due

    def close(self) -> None:
        fd, self._fd = self._fd, None
        self._poll = None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class Collector:
    """Reads this host's metrics with psutil (and NVML). `collect()` blocks: run it in a worker thread.

    Not thread-safe: one collect() at a time.
    """

    def __init__(self, *, gpu: bool = True, temps_every: int = 6, partitions_ttl: float = 60.0,
                 processes: bool = True) -> None:
        self._temps_every = max(1, temps_every)
        self._partitions: List[str] = []
        self._count = 0
        self._temps: Dict[str, float] = {}
        self._prev_disk: Optional[Tuple[int, int]] = None
        self._prev_net: Dict[str, Tuple[int, int]] = {}
        self._prev_at: Optional[float] = None
        self._failed: set = set()
        self._has_temps = hasattr(psutil, "sensors_temperatures")
        self._has_load = hasattr(os, "getloadavg")  # psutil emulates it on Windows with a thread: not wanted
        # Linux: memory and network counters read straight from /proc (where psutil reads them, AGENT_HOST_PROC
        # included): a third of psutil's cost, which builds tuples of fields the agent never sends (and with dozens
        # of container interfaces, net_io_counters alone was a third of a sample's CPU).
        procfs = getattr(psutil, "PROCFS_PATH", "/proc")
        self._procfs, self._meminfo_path, self._netdev_path = procfs, f"{procfs}/meminfo", f"{procfs}/net/dev"
        self._from_proc = sys.platform.startswith("linux") and os.path.isfile(self._meminfo_path)
        self._stat_path, self._diskstats_path = f"{procfs}/stat", f"{procfs}/diskstats"
        self._mounts = MountWatch(f"{procfs}/self/mounts" if self._from_proc else None, partitions_ttl)
        # /sys/block's names (whole disks, re-read with the partitions); None: psutil counts the disks' I/O
        self._block_devices: Optional[set] = None
        self._diskstats = self._from_proc
        # CPU times at the previous sample, "cpu" and each core -> its fields, idle and iowait last. Kept here rather
        # than in psutil.cpu_percent, whose memory is per thread: samples taken more than 10 s apart run in a new
        # worker thread each (trio's thread cache), and would all read 0 %.
        self._prev_cpu: Dict[str, List[float]] = {}
        self._cpu_percent()  # prime: the first sample measures from here
        self.boot_time = psutil.boot_time()
        self._nvml: Any = None
        self._gpus: List[Tuple[Any, str]] = []  # (handle, name)
        self._static: Optional[Dict[str, Any]] = None  # the parts of the inventory that never change while we run
        self._amd: Any = None
        self._amd_gpus: List[Tuple[Any, str, str]] = []  # (handle, name, driver version)
        self._processes: Optional[ProcessTable] = None
        if gpu:
            self._init_gpus()
            self._init_amd_gpus()
        if processes:
            try:
                self._processes = ProcessTable()
            except Exception as exc:
                self._note_failure("processes", exc)

    # GPUs ------------------------------------------------------------------------------------------------------

    def _init_gpus(self) -> None:
        try:
            import pynvml  # imported here, not at the top: optional, and tests put a fake first on sys.path
        except ImportError:
            log.info("GPU metrics off: pynvml (pip install nvidia-ml-py) is not installed")
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            log.info("GPU metrics off: no NVIDIA driver or GPU (%s)", _describe(exc))
            return
        self._nvml = pynvml
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(handle)
                if isinstance(name, bytes):
                    name = name.decode("utf-8", "replace")
                self._gpus.append((handle, str(name)[:200]))
        except Exception as exc:
            log.info("GPU metrics off: NVML cannot list the GPUs (%s)", _describe(exc))
            self.close()
            return
        if self._gpus:
            log.info("GPU metrics on: %s", ", ".join(name for _, name in self._gpus))
        else:
            log.info("GPU metrics off: NVML found no NVIDIA GPU")
            self.close()

    def _gpu_metrics(self) -> List[Dict[str, Any]]:
        nv = self._nvml
        out = []
        for i, (handle, name) in enumerate(self._gpus):
            gpu: Dict[str, Any] = {"name": name}
            try:
                gpu["util"] = min(100.0, max(0.0, float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)))
            except Exception as exc:
                log.debug("GPU %d utilisation: %s", i, _describe(exc))
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                total = int(mem.total)
                gpu["vram_used"] = min(int(mem.used), total)
                gpu["vram_total"] = total
            except Exception as exc:
                log.debug("GPU %d memory: %s", i, _describe(exc))
            try:
                gpu["temp"] = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
            except Exception as exc:
                log.debug("GPU %d temperature: %s", i, _describe(exc))
            try:
                gpu["power"] = round(max(0.0, nv.nvmlDeviceGetPowerUsage(handle) / 1000.0), 1)  # mW -> W
            except Exception as exc:
                log.debug("GPU %d power: %s", i, _describe(exc))
            out.append(gpu)
        return out

    def gpu_processes(self) -> Dict[int, int]:
        """pid -> bytes of VRAM it holds, summed over the GPUs. A process with both a compute and a graphics
        context on one GPU is in both of NVML's lists with the same memory: counted once. Where NVML cannot say
        (Windows WDDM: usedGpuMemory None; NotSupported on some boards) the process is left out."""
        nv = self._nvml
        out: Dict[int, int] = {}
        for i, (handle, _) in enumerate(self._gpus):
            on_gpu: Dict[int, int] = {}
            for call in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    running = getattr(nv, call)(handle)
                except Exception as exc:
                    log.debug("GPU %d %s: %s", i, call, _describe(exc))
                    continue
                for proc in running:
                    pid, used = getattr(proc, "pid", None), getattr(proc, "usedGpuMemory", None)
                    if isinstance(pid, int) and isinstance(used, int) and pid >= 0 and used > 0:
                        on_gpu[pid] = max(on_gpu.get(pid, 0), used)
            for pid, used in on_gpu.items():
                out[pid] = out.get(pid, 0) + used
        return out

    @property
    def gpu_names(self) -> List[str]:
        """NVIDIA GPUs first, then AMD ones: the order of `gpus` in samples (GPU N is the Nth here)."""
        return [name for _, name in self._gpus] + [name for _, name, _ in self._amd_gpus]

    def close(self) -> None:
        """Release NVML and amdsmi, and the process list's and the mount table's open files. Safe to call more than
        once."""
        if self._processes is not None:
            self._processes.close()
        self._mounts.close()
        nv, self._nvml = self._nvml, None
        self._gpus = []
        if nv is not None:
            try:
                nv.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown: %s", _describe(exc))
        self._close_amd()

    # AMD GPUs (amdsmi, ROCm's Python bindings: used only when they import) --------------------------------------

    def _init_amd_gpus(self) -> None:
        try:
            import amdsmi  # optional, like pynvml; tests put a fake first on sys.path
        except ImportError:
            return  # most hosts have no AMD GPU: nothing worth a line
        try:
            amdsmi.amdsmi_init()
        except Exception as exc:
            log.info("AMD GPU metrics off: amdsmi cannot start (%s)", _describe(exc))
            return
        self._amd = amdsmi
        try:
            for handle in amdsmi.amdsmi_get_processor_handles():
                self._amd_gpus.append((handle, self._amd_name(handle), self._amd_driver(handle)))
        except Exception as exc:
            log.info("AMD GPU metrics off: amdsmi cannot list the GPUs (%s)", _describe(exc))
            self._close_amd()
            return
        if self._amd_gpus:
            log.info("AMD GPU metrics on: %s", ", ".join(name for _, name, _ in self._amd_gpus))
        else:
            log.info("AMD GPU metrics off: amdsmi found no AMD GPU")
            self._close_amd()

    def _amd_name(self, handle: Any) -> str:
        try:
            name = str(self._amd.amdsmi_get_gpu_asic_info(handle).get("market_name") or "")
        except Exception as exc:
            log.debug("AMD GPU name: %s", _describe(exc))
            name = ""
        return (name if name and name != "N/A" else "AMD GPU")[:200]

    def _amd_driver(self, handle: Any) -> str:
        amd = self._amd
        try:  # amdsmi 6.x: a dict; 5.x: the version string
            if hasattr(amd, "amdsmi_get_gpu_driver_info"):
                return str(amd.amdsmi_get_gpu_driver_info(handle).get("driver_version") or "")[:64]
            return str(amd.amdsmi_get_gpu_driver_version(handle))[:64]
        except Exception as exc:
            log.debug("AMD driver version: %s", _describe(exc))
            return ""

    def _close_amd(self) -> None:
        amd, self._amd = self._amd, None
        self._amd_gpus = []
        if amd is not None:
            try:
                amd.amdsmi_shut_down()
            except Exception as exc:
                log.debug("amdsmi_shut_down: %s", _describe(exc))

    def _amd_metrics(self) -> List[Dict[str, Any]]:
        """Each AMD GPU in the units of `gpus` (amdsmi: VRAM in MB, temperature in C, power in W; a field it
        cannot read is "N/A" or an exception, and is then left out)."""
        amd = self._amd
        out = []
        for i, (handle, name, _) in enumerate(self._amd_gpus):
            gpu: Dict[str, Any] = {"name": name}
            try:
                util = _reading(amd.amdsmi_get_gpu_activity(handle).get("gfx_activity"))
                if util is not None:
                    gpu["util"] = min(100.0, max(0.0, util))
            except Exception as exc:
                log.debug("AMD GPU %d activity: %s", i, _describe(exc))
            try:
                vram = amd.amdsmi_get_gpu_vram_usage(handle)
                total, used = _reading(vram.get("vram_total")), _reading(vram.get("vram_used"))
                if total is not None and used is not None and total > 0:
                    gpu["vram_total"] = int(total) << 20
                    gpu["vram_used"] = min(max(0, int(used)) << 20, gpu["vram_total"])
            except Exception as exc:
                log.debug("AMD GPU %d memory: %s", i, _describe(exc))
            # Data-centre GPUs (MI200, MI300) have no edge sensor: the hotspot (junction) one stands in.
            for sensor in ("EDGE", "HOTSPOT"):
                try:
                    temp = _reading(amd.amdsmi_get_temp_metric(handle, getattr(amd.AmdSmiTemperatureType, sensor),
                                                               amd.AmdSmiTemperatureMetric.CURRENT))
                except Exception as exc:
                    log.debug("AMD GPU %d %s temperature: %s", i, sensor.lower(), _describe(exc))
                    continue
                if temp is not None and -50 <= temp <= 250:
                    gpu["temp"] = float(temp)
                    break
            try:
                power = amd.amdsmi_get_power_info(handle)
                watts = _reading(power.get("current_socket_power"))
                if watts is None:  # older GPUs and drivers report only the average
                    watts = _reading(power.get("average_socket_power"))
                if watts is not None:
                    gpu["power"] = round(min(max(0.0, watts), 100_000.0), 1)
            except Exception as exc:
                log.debug("AMD GPU %d power: %s", i, _describe(exc))
            out.append(gpu)
        return out

    # the rest --------------------------------------------------------------------------------------------------

    def disks(self) -> List[str]:
        """Mount points of real filesystems, one per device (listed again when the mount table changed)."""
        if self._mounts.changed():
            seen = set()
            mounts = []
            try:
                parts = psutil.disk_partitions(all=False)
            except Exception as exc:
                self._note_failure("disks", exc)
                parts = []
            for part in sorted(parts, key=lambda p: (len(p.mountpoint), p.mountpoint)):
                if not _is_real_filesystem(part.device, part.mountpoint, part.fstype):
                    continue
                if part.device in seen:
                    continue  # bind mounts and btrfs subvolumes: the same space again
                seen.add(part.device)
                mounts.append(part.mountpoint)
            self._partitions = mounts[:MAX_DISKS]
            if self._diskstats:
                try:
                    self._block_devices = {name.encode() for name in os.listdir("/sys/block")}
                except OSError:
                    self._block_devices, self._diskstats = None, False
        return self._partitions

    def host_facts(self) -> Dict[str, Any]:
        """What `hello` tells about this host (besides the protocol fields)."""
        import platform

        try:
            mem_total = int(psutil.virtual_memory().total)
        except Exception:
            mem_total = 0
        facts: Dict[str, Any] = {
            "hostname": socket.gethostname()[:256],
            "os": f"{platform.system()} {platform.release()}".strip()[:256],
            "platform": sys.platform[:32],
            "arch": (platform.machine() or "unknown")[:32],
            "cpu_count": psutil.cpu_count(logical=True) or os.cpu_count() or 1,
            "boot_time": float(self.boot_time),
            "disks": list(self.disks()),
            "gpus": self.gpu_names,
            "inventory": self.inventory(),
        }
        if mem_total:
            facts["mem_total"] = mem_total
        return facts

    def snapshots(self) -> Dict[str, Tuple[int, List[Dict[str, Any]]]]:
        """The lists this host has now, by snapshot kind: kind -> (version, items) (docs/protocol.md,
        "Snapshots"). Blocks like collect()."""
        out: Dict[str, Tuple[int, List[Dict[str, Any]]]] = {}
        if self._processes is not None and self._processes.due(time.monotonic()):
            try:
                vram = self.gpu_processes() if self._gpus else {}
                out["processes"] = (PROCESSES_VERSION, self._processes.top(vram))
            except Exception as exc:
                self._note_failure("processes", exc)
        return out

    def inventory(self) -> Dict[str, Any]:
        """The machine as the Diagnostics view shows it (docs/protocol.md, "Inventory"). Blocks (a subprocess the
        first time): run it in a worker thread."""
        import platform

        if self._static is None:
            self._static = {
                "cpu": {"model": cpu_model()[:128], "cores": psutil.cpu_count(logical=False) or 0,
                        "threads": psutil.cpu_count(logical=True) or os.cpu_count() or 0},
                "os": os_name()[:128], "kernel": platform.release()[:128],
                "arch": (platform.machine() or "")[:32], "virt": virtualisation(),
                "boot_time": float(self.boot_time), "agent": __version__,
            }
        inv: Dict[str, Any] = json.loads(json.dumps(self._static))  # a copy the caller may keep
        try:
            inv["mem_total"] = int(psutil.virtual_memory().total)
            inv["swap_total"] = int(psutil.swap_memory().total)
        except Exception as exc:
            log.debug("inventory memory: %s", _describe(exc))
        inv["disks"] = disk_inventory()
        inv["nics"] = nic_inventory()
        inv["gpus"] = self.gpu_inventory()
        return inv

    def gpu_inventory(self) -> List[Dict[str, Any]]:
        """Each GPU's model, vendor, driver version and VRAM size."""
        out: List[Dict[str, Any]] = []
        nv = self._nvml
        driver = ""
        if nv is not None:
            try:
                driver = nv.nvmlSystemGetDriverVersion()
                driver = driver.decode("utf-8", "replace") if isinstance(driver, bytes) else str(driver)
            except Exception as exc:
                log.debug("NVIDIA driver version: %s", _describe(exc))
        for handle, name in self._gpus:
            entry: Dict[str, Any] = {"name": name[:128], "vendor": "nvidia", "driver": driver[:64]}
            try:
                entry["vram"] = int(nv.nvmlDeviceGetMemoryInfo(handle).total)
            except Exception as exc:
                log.debug("GPU memory size: %s", _describe(exc))
            out.append(entry)
        for handle, name, driver in self._amd_gpus:
            entry = {"name": name[:128], "vendor": "amd", "driver": driver[:64]}
            try:
                total = _reading(self._amd.amdsmi_get_gpu_vram_usage(handle).get("vram_total"))
                if total is not None and total > 0:
                    entry["vram"] = int(total) << 20
            except Exception as exc:
                log.debug("AMD GPU memory size: %s", _describe(exc))
            out.append(entry)
        return out[:MAX_INVENTORY_ITEMS]

    def _note_failure(self, what: str, exc: BaseException) -> None:
        if what not in self._failed:
            self._failed.add(what)
            log.warning("cannot read %s on this host, leaving it out: %s", what, _describe(exc))
        else:
            log.debug("cannot read %s: %s", what, _describe(exc))

    def _meminfo(self) -> Optional[Tuple[int, int, int, int]]:
        """(RAM total, available, swap total, free) in bytes from /proc/meminfo; None where it does not say them
        all (kernels before 3.14 have no MemAvailable: psutil estimates it), or cannot be read."""
        try:
            text = _read_proc(self._meminfo_path)
        except OSError:
            return None
        values: Dict[bytes, int] = {}
        for line in text.splitlines():
            key, _, rest = line.partition(b":")
            if key in _MEMINFO_KEYS:
                try:
                    values[key] = int(rest.split()[0]) * 1024
                except (IndexError, ValueError):
                    return None
        if len(values) < len(_MEMINFO_KEYS):
            return None
        return values[b"MemTotal"], values[b"MemAvailable"], values[b"SwapTotal"], values[b"SwapFree"]

    def _cpu_percent(self) -> Tuple[float, List[float]]:
        """Busy % of the whole CPU and of each core since the previous call, as psutil.cpu_percent counts it (busy:
        all but idle and iowait; guest time is already inside user and nice). 0 where there is no previous."""
        now: Dict[str, List[float]] = {}
        if self._from_proc:  # one read of /proc/stat for both (psutil reads it twice)
            for line in _read_proc(self._stat_path).split(b"\n"):
                if not line.startswith(b"cpu"):
                    break  # the cpu lines come first
                name, *fields = line.decode("ascii", "replace").split()
                # user nice system idle iowait irq softirq steal (guest guest_nice): idle and iowait last
                times = [float(f) for f in fields[:8]]
                now[name] = times[:3] + times[5:] + times[3:5]
        else:
            for name, times in [("cpu", psutil.cpu_times())] + [
                    (f"cpu{i}", t) for i, t in enumerate(psutil.cpu_times(percpu=True))]:
                fields = times._asdict()
                idle = [fields.pop("idle"), fields.pop("iowait", 0.0)]
                fields.pop("guest", None)
                fields.pop("guest_nice", None)
                now[name] = list(fields.values()) + idle
        prev, self._prev_cpu = self._prev_cpu, now

        def percent(name: str) -> float:
            before, after = prev.get(name), now[name]
            if before is None or len(before) != len(after):
                return 0.0
            deltas = [max(0.0, b - a) for a, b in zip(before, after)]  # iowait can go backwards
            total = sum(deltas)
            return (total - deltas[-2] - deltas[-1]) / total * 100.0 if total > 0 else 0.0

        return percent("cpu"), [percent(name) for name in now if name != "cpu"]

    def _disk_counters(self) -> Tuple[int, int]:
        """(bytes read, bytes written) by the whole disks so far, as psutil.disk_io_counters(perdisk=False) counts
        them (/proc/diskstats' lines for the names in /sys/block, 512-byte sectors)."""
        if self._block_devices is not None:
            read = written = 0
            for line in _read_proc(self._diskstats_path).split(b"\n"):
                fields = line.split()
                if len(fields) == 14 or len(fields) >= 18:  # kernels since 2.6.25 (18 since 4.18, 20 since 5.5)
                    if fields[2].replace(b"/", b"!") in self._block_devices:
                        read += int(fields[5])
                        written += int(fields[9])
                elif fields:  # a format this does not know: psutil's way from now on
                    self._block_devices, self._diskstats = None, False
                    break
            else:
                return read * 512, written * 512
        io = psutil.disk_io_counters(perdisk=False)
        return io.read_bytes, io.write_bytes

    def _net_counters(self) -> Dict[str, Tuple[int, int]]:
        """Interface -> (bytes received, bytes sent), in the order the system lists them."""
        if self._from_proc:
            out: Dict[str, Tuple[int, int]] = {}
            for line in _read_proc(self._netdev_path).decode("utf-8", "replace").splitlines()[2:]:
                if line.lstrip().startswith("veth"):  # a container's end of its link (left out, see collect)
                    continue
                name, _, rest = line.rpartition(":")  # "  eth0: 123 ..." (proc(5): /proc/net/dev)
                fields = rest.split()
                if name and len(fields) >= 9:
                    out[name.strip()] = (int(fields[0]), int(fields[8]))
            return out
        return {name: (c.bytes_recv, c.bytes_sent) for name, c in psutil.net_io_counters(pernic=True).items()}

    def collect(self) -> Dict[str, Any]:
        """One sample's `metrics` object (docs/protocol.md). Rates are absent in the first sample."""
        m: Dict[str, Any] = {}
        now = time.monotonic()
        dt = None if self._prev_at is None else now - self._prev_at
        self._prev_at = now
        self._count += 1

        try:
            total, cores = self._cpu_percent()
            m["cpu"] = round(min(100.0, max(0.0, total)), 1)
            m["cpu_cores"] = [round(min(100.0, max(0.0, v)), 1) for v in cores]
        except Exception as exc:
            self._note_failure("cpu", exc)
        if self._has_load:
            try:
                m["load"] = [round(max(0.0, v), 2) for v in os.getloadavg()]
            except Exception as exc:
                self._note_failure("load", exc)
        memory = self._meminfo() if self._from_proc else None
        if memory is not None:
            ram_total, available, swap_total, swap_free = memory
            m["ram"] = {"used": max(0, ram_total - available), "total": ram_total}
            m["swap"] = {"used": min(max(0, swap_total - swap_free), swap_total), "total": swap_total}
        else:
            try:
                vm = psutil.virtual_memory()
                m["ram"] = {"used": max(0, vm.total - vm.available), "total": vm.total}
            except Exception as exc:
                self._note_failure("ram", exc)
            try:
                sw = psutil.swap_memory()
                m["swap"] = {"used": min(sw.used, sw.total), "total": sw.total}
            except Exception as exc:
                self._note_failure("swap", exc)

        disks = {}
        for mount in self.disks():
            try:
                usage = psutil.disk_usage(mount)
            except OSError:  # PermissionError, a drive without media, gone since the last partition scan
                continue
            if usage.total > 0:
                disks[mount] = {"used": min(usage.used, usage.total), "total": usage.total}
        if disks:
            m["disks"] = disks

        try:
            current = self._disk_counters()
        except Exception as exc:
            current = None
            self._note_failure("disk I/O", exc)
        if current is not None:
            prev, self._prev_disk = self._prev_disk, current
            if prev is not None and dt:
                rates = {}
                for key, now_v, prev_v in (("read", current[0], prev[0]), ("write", current[1], prev[1])):
                    if now_v >= prev_v:  # a counter reset: skip this one
                        rates[key] = round((now_v - prev_v) / dt, 1)
                if rates:
                    m["disk_io"] = rates

        try:
            nics = self._net_counters()
        except Exception as exc:
            nics = {}
            self._note_failure("network", exc)
        if nics:
            prev_net = self._prev_net
            self._prev_net = {}
            net = {}
            for name, current in nics.items():
                # veth*: a container's end of its link. Its traffic is counted again on the bridge and the uplink,
                # and its name is new each time the container starts (a new series every restart); what a
                # container sends belongs to the containers snapshot, not to the host's network.
                if name in _LOOPBACK or name.startswith(("Loopback", "veth")):
                    continue
                if len(self._prev_net) >= MAX_NET_IFACES:
                    break
                self._prev_net[name] = current
                prev = prev_net.get(name)
                if prev is None or not dt:
                    continue
                rates = {}
                if current[0] >= prev[0]:
                    rates["rx"] = round((current[0] - prev[0]) / dt, 1)
                if current[1] >= prev[1]:
                    rates["tx"] = round((current[1] - prev[1]) / dt, 1)
                if rates:
                    net[name] = rates
            if net:
                m["net"] = net

        if self._has_temps:
            if self._count % self._temps_every == 1 or self._temps_every == 1:
                try:
                    self._temps = compact_temps(psutil.sensors_temperatures())
                except Exception as exc:
                    self._temps = {}
                    self._note_failure("temperatures", exc)
            if self._temps:
                m["temps"] = dict(self._temps)

        m["uptime"] = round(max(0.0, time.time() - self.boot_time), 1)
        try:  # on Linux without psutil's list of ints
            m["procs"] = (sum(map(str.isdigit, os.listdir(self._procfs))) if self._from_proc
                          else len(psutil.pids()))
        except Exception as exc:
            self._note_failure("process count", exc)
        if self._gpus or self._amd_gpus:
            m["gpus"] = self._gpu_metrics() + self._amd_metrics()
        return m


# --- containers (Docker or Podman Engine API over a unix socket) ------------------------------------------------
#
# Stdlib only: HTTP/1.0 over AF_UNIX, in worker threads, with short timeouts and bounded reads. Each poll (every
# max(interval, 30 s)): GET /containers/json?all=1 (unless the event stream says nothing changed: see
# CONTAINER_EVENTS), then stats (one-shot, so the engine does not wait a second for a second reading: the agent
# keeps the previous reading itself) for a bounded number of running containers, and an inspect (restart count,
# health) for the ones whose state changed. What goes out: the `containers` snapshot (up to
# MAX_CONTAINERS, by name) and, in each sample, series for a bounded label set: `down` for MAX_CONTAINER_DOWN of
# them, CPU and memory for MAX_CONTAINER_SERIES.

CONTAINER_SOCKETS = ("/var/run/docker.sock", "{XDG_RUNTIME_DIR}/podman/podman.sock", "/run/podman/podman.sock")
MAX_CONTAINERS = 500  # members in the snapshot (the server's bound)
MAX_CONTAINER_SERIES = 50  # containers with CPU and memory series in samples (the first by name)
MAX_CONTAINER_DOWN = 200  # containers with a `down` series (what alerts watch): one value each, so more of them
MAX_CONTAINER_NAME = 128
MAX_CONTAINER_IMAGE = 256
MAX_CONTAINER_STATE = 32
CONTAINER_TIMEOUT = 2.0  # seconds for one Engine API request, connect to last byte
CONTAINER_LIST_BYTES = 8 << 20  # /containers/json with 500 containers and their labels: well under this
CONTAINER_ITEM_BYTES = 1 << 20  # one stats or inspect answer (a few KB normally)
# A running container's CPU and memory are read from its cgroup (CgroupReader), every poll for every container
# with series: ~18 µs a container, where one stats request costs the agent ~0.3 ms. Where its cgroup cannot be
# read (an agent in another pid or cgroup namespace, macOS, a container not inspected yet), from the engine's stats
# instead, round robin: 4 per poll, so with 50 such containers each is measured every ~6 minutes. Each inspect
# costs as much as a stats request: new and changed containers are inspected at once (up to a poll's worth of
# series), the others every CONTAINER_REFRESH, 4 a poll. A poll happens every max(AGENT_INTERVAL,
# AgentConfig.containers_every) seconds.
CONTAINER_STATS_PER_POLL = 4  # stats requests per poll at most
CONTAINER_INSPECTS_PER_POLL = 4  # refreshing inspects (restart count, health) per poll at most
CONTAINER_NEWS_PER_POLL = MAX_CONTAINER_SERIES  # inspects of new and changed containers per poll at most
CGROUP_FDS_MAX = 3 * MAX_CONTAINER_SERIES  # cgroup files kept open (and at most an eighth of RLIMIT_NOFILE)
CONTAINER_REFRESH = 600.0  # an inspect is redone at least this often (a restart between two polls changes no state)
# The engine's event stream (GET /events, filtered to these actions) says at once when a container starts, stops,
# restarts or changes health: the list is then read again within seconds (no sooner than a sample interval after
# the previous poll: one snapshot per interval is what the server takes), and otherwise only every
# CONTAINER_RESYNC (events can be lost: an engine restart, a filter an old engine does not know). Stats still go
# every poll period. Without the stream (an engine without it, a dropped connection): the list every poll.
CONTAINER_EVENTS = ("create", "start", "restart", "die", "destroy", "rename", "pause", "unpause", "oom",
                    "health_status")
CONTAINER_RESYNC = 120.0
CONTAINER_EVENT_SETTLE = 0.5  # seconds from an event to the poll: a restart is several events (die, start)
CONTAINER_EVENT_BYTES = 64 << 10  # one event (a JSON line of a few hundred bytes, its labels included)
CONTAINER_EVENT_IDS = 500  # containers remembered between two polls as having had events (more: list them all)
CONTAINER_EVENTS_RETRY = (5.0, 300.0)  # seconds before following the stream again, doubling while it fails
RESTART_LOOP = (3, 600.0)  # restarted this many times within these seconds: down (code 3) until it calms down
DOWN_UP, DOWN_STOPPED, DOWN_UNHEALTHY, DOWN_RESTARTING = 0, 1, 2, 3


class EngineError(Exception):
    """The container engine did not answer as expected (the message says how)."""


def engine_get(socket_path: str, path: str, max_bytes: int, timeout: float = CONTAINER_TIMEOUT) -> Any:
    """GET `path` from the Engine API at `socket_path`: the parsed JSON. The whole exchange is bounded in time
    (`timeout`, also across a slow trickle) and size (`max_bytes`); anything else is an EngineError.

    HTTP/1.0, one request per connection, read to the end: both engines then answer with a plain body (no chunks,
    no keep-alive), and a unix socket costs nothing to open. Half the CPU of http.client per request, which counts
    at 50 containers every few seconds."""
    deadline = time.monotonic() + timeout
    chunks: List[bytes] = []
    size = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\nAccept: application/json\r\n\r\n".encode())
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineError(f"GET {path}: no complete answer within {timeout:g} s")
                sock.settimeout(left)
                chunk = sock.recv(262144)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes + 8192:  # the body's bound, plus room for the headers
                    raise EngineError(f"GET {path}: answer over {max_bytes} bytes")
                chunks.append(chunk)
    except OSError as exc:
        raise EngineError(f"GET {path}: {_describe(exc)}") from None
    head, gap, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not gap or len(status) < 2 or not status[0].startswith(b"HTTP/"):
        raise EngineError(f"GET {path}: not an HTTP answer")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    if len(body) > max_bytes:
        raise EngineError(f"GET {path}: answer over {max_bytes} bytes")
    if status[1] != b"200":
        code = status[1].decode("latin-1") if status[1].isdigit() else "?"
        raise EngineError(f"GET {path}: HTTP {code[:3]} {_quote(body[:200].decode('utf-8', 'replace'))}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EngineError(f"GET {path}: not JSON ({_quote(str(exc), 80)})") from None


class EventLines:
    """The answer to GET /events, fed as it arrives: the ids of the containers each piece's events are about.
    Bounded: the head at 16 KiB, an event line at CONTAINER_EVENT_BYTES (a longer one is an EngineError, so a
    stream that never sends a newline cannot grow the buffer); a line that is not a container event is skipped."""

    def __init__(self) -> None:
        self._buffer = b""
        self.opened = False  # the head said 200: events follow

    def feed(self, data: bytes) -> List[str]:
        self._buffer += data
        if not self.opened:
            head, gap, rest = self._buffer.partition(b"\r\n\r\n")
            if not gap:
                if len(self._buffer) > 16384:
                    raise EngineError("GET /events: no end to the answer's head")
                return []
            status = head.split(b"\r\n", 1)[0].split()
            if len(status) < 2 or not status[0].startswith(b"HTTP/") or status[1] != b"200":
                raise EngineError(f"GET /events: {_quote(head[:80].decode('latin-1'))}")
            if b"transfer-encoding: chunked" in head.lower():  # we asked in HTTP/1.0: both engines stream plainly
                raise EngineError("GET /events: a chunked stream")
            self.opened = True
            self._buffer = rest
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > CONTAINER_EVENT_BYTES:
            raise EngineError(f"GET /events: an event over {CONTAINER_EVENT_BYTES} bytes")
        ids = []
        for line in lines:
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(event, dict) or event.get("Type", "container") != "container":
                continue
            actor = event.get("Actor") if isinstance(event.get("Actor"), dict) else {}
            cid = event.get("id") or actor.get("ID")
            if isinstance(cid, str) and 0 < len(cid) <= 128:
                ids.append(cid)
        return ids


def follow_events(socket_path: str, opened: Callable[[socket.socket], None],
                  deliver: Callable[[List[str]], None]) -> None:
    """Follow the engine's container events (blocking: a worker thread, for as long as the engine keeps the stream
    open). `opened(sock)` once the engine said yes (closing that socket from another thread ends this), then
    `deliver(ids)` for each read that held events. Returns when the engine ends the stream; EngineError when it
    cannot be followed."""
    filters = json.dumps({"type": ["container"], "event": list(CONTAINER_EVENTS)}, separators=(",", ":"))
    path = "/events?filters=" + urllib.parse.quote(filters)
    lines = EventLines()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONTAINER_TIMEOUT)
            sock.connect(socket_path)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\nAccept: application/json\r\n\r\n".encode())
            while not lines.opened:
                chunk = sock.recv(16384)
                if not chunk:
                    raise EngineError("GET /events: closed before an answer")
                ids = lines.feed(chunk)
            sock.settimeout(None)  # events come when they come; the periodic list notices an engine that hangs
            opened(sock)
            while True:
                if ids:
                    deliver(ids)
                chunk = sock.recv(65536)
                if not chunk:
                    return
                ids = lines.feed(chunk)
    except OSError as exc:
        raise EngineError(f"GET /events: {_describe(exc)}") from None


def _unchunk(body: bytes) -> bytes:
    """A chunked body (an engine that answers HTTP/1.0 that way anyway)."""
    out = []
    while body:
        line, _, rest = body.partition(b"\r\n")
        try:
            length = int(line.split(b";")[0], 16)
        except ValueError:
            raise EngineError("a malformed chunked answer") from None
        if length == 0:
            break
        out.append(rest[:length])
        body = rest[length + 2:]
    return b"".join(out)


def find_container_socket(setting: Optional[str], environ: Mapping[str, str]) -> Tuple[Optional[str], str]:
    """(the socket to use or None, a line for the log). `setting` is AGENT_CONTAINER_SOCKET: a path, "off", or
    None to look in the usual places."""
    if setting is not None and setting.lower() in _FALSE:
        return None, "containers: not watched (AGENT_CONTAINER_SOCKET=off)"
    if setting:
        candidates = [setting.removeprefix("unix://")]
    else:
        runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}" if hasattr(os, "getuid") else ""
        candidates = [c.format(XDG_RUNTIME_DIR=runtime) for c in CONTAINER_SOCKETS if runtime or "{" not in c]
    denied = []
    for path in candidates:
        if not os.path.exists(path):
            continue
        if os.access(path, os.R_OK | os.W_OK):
            return path, f"containers: watching the engine at {path}"
        denied.append(path)
    if denied:
        return None, (f"containers: not watched: no permission on {', '.join(denied)}. To grant it: add this "
                      "agent's user to the docker group (usermod -aG docker USER, then restart the agent), or use "
                      "rootless Podman's socket (systemctl --user enable --now podman.socket) or set "
                      "AGENT_CONTAINER_SOCKET to a socket the user can open")
    if setting:
        return None, f"containers: not watched: AGENT_CONTAINER_SOCKET={setting} does not exist"
    return None, ("containers: no Docker or Podman socket found (" + ", ".join(candidates) + "); to watch "
                  "containers, start the engine's socket (systemctl enable --now docker, or podman.socket) or set "
                  "AGENT_CONTAINER_SOCKET")


_HEALTH_IN_STATUS = (("(unhealthy)", "unhealthy"), ("(healthy)", "healthy"), ("(health: starting)", "starting"))


def _cut(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def container_summary(raw: Any) -> Optional[Dict[str, Any]]:
    """One entry of GET /containers/json -> {id, name, image, state, health}, or None when it is not one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("Id"), str):
        return None
    names = raw.get("Names")
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else raw["Id"][:12]
    health = ""
    if isinstance(raw.get("Health"), dict):  # newer Docker APIs say it in the list
        health = raw["Health"].get("Status") or ""
    else:  # older ones in the status text: "Up 2 hours (healthy)"
        status = raw.get("Status") if isinstance(raw.get("Status"), str) else ""
        health = next((h for marker, h in _HEALTH_IN_STATUS if marker in status), "")
    return {"id": raw["Id"][:128], "name": _cut(name.lstrip("/"), MAX_CONTAINER_NAME) or raw["Id"][:12],
            "image": _cut(raw.get("Image"), MAX_CONTAINER_IMAGE),
            "state": _cut(raw.get("State"), MAX_CONTAINER_STATE).lower(),
            "health": _cut(health if isinstance(health, str) else "", MAX_CONTAINER_STATE).lower()}


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def stats_reading(raw: Any) -> Tuple[Optional[Tuple[int, int]], Optional[int]]:
    """GET /containers/{id}/stats?stream=false&one-shot=true -> ((container CPU ns, system CPU ns) or None,
    memory in use or None). Memory is what `docker stats` shows: usage less the inactive page cache
    (total_inactive_file on cgroup v1, inactive_file on v2, `cache` on old engines)."""
    if not isinstance(raw, dict):
        return None, None
    cpu_stats = raw.get("cpu_stats") if isinstance(raw.get("cpu_stats"), dict) else {}
    usage = cpu_stats.get("cpu_usage") if isinstance(cpu_stats.get("cpu_usage"), dict) else {}
    total, system = _int(usage.get("total_usage")), _int(cpu_stats.get("system_cpu_usage"))
    cpu = (total, system) if total is not None and system is not None else None
    memory = raw.get("memory_stats") if isinstance(raw.get("memory_stats"), dict) else {}
    used = _int(memory.get("usage"))
    if used is not None:
        details = memory.get("stats") if isinstance(memory.get("stats"), dict) else {}
        for key in ("total_inactive_file", "inactive_file", "cache"):
            cache = _int(details.get(key))
            if cache is not None:
                if cache < used:
                    used -= cache
                break
    return cpu, used


def cpu_percent(before: Tuple[int, int], after: Tuple[int, int]) -> Optional[float]:
    """Percent of the whole host between two readings: container CPU time over system CPU time (all cores), like
    the host's `cpu`. (`docker stats` multiplies this by the number of CPUs: percent of one core.)"""
    spent, elapsed = after[0] - before[0], after[1] - before[1]
    if elapsed <= 0 or spent < 0:
        return None
    return round(min(100.0, 100.0 * spent / elapsed), 2)


def fit_snapshot(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The containers' items cut (from the end: the list is by name) to what one snapshot may carry: MAX_CONTAINERS
    members, and its frame within SNAPSHOT_MAX_BYTES (_put_snapshot leaves out a bigger one whole)."""
    items = items[:MAX_CONTAINERS]
    while items and len(json.dumps(items, separators=(",", ":"))) > SNAPSHOT_MAX_BYTES - 200:
        items = items[:len(items) * 3 // 4]
    return items


def down_code(state: str, health: str, restart_loop: bool) -> int:
    """What the `down` series says of a container: 0 up, 1 not running, 2 unhealthy, 3 restarting over and over."""
    if restart_loop:
        return DOWN_RESTARTING
    if state != "running":
        return DOWN_STOPPED
    return DOWN_UNHEALTHY if health == "unhealthy" else DOWN_UP


@dataclass
class ContainerReport:
    items: List[Dict[str, Any]]  # the snapshot's members
    series: Dict[str, Dict[str, float]]  # a sample's metrics["containers"]
    taken: float  # time.time() of the poll
    series_json: str = ""  # series, encoded once for all the samples until the next poll

    def __post_init__(self) -> None:
        self.series_json = encode_member(self.series)


@dataclass
class _Seen:
    """What the watcher remembers of one container (by id)."""
    state: str = ""
    restarts: int = 0
    health: str = ""
    inspected: float = -math.inf  # monotonic
    cpu_reading: Optional[Tuple[int, int]] = None
    from_cgroup: bool = False  # where cpu_reading came from: two readings compare only from the same source
    cpu: Optional[float] = None
    mem: Optional[int] = None
    stats_turn: int = -1
    pid: int = 0  # its main process, from the latest inspect (0: not running or not known)

    def measured(self, reading: Optional[Tuple[int, int]], mem: Optional[int], from_cgroup: bool) -> None:
        if reading is not None:
            if self.cpu_reading is not None and self.from_cgroup == from_cgroup:
                self.cpu = cpu_percent(self.cpu_reading, reading)
            self.cpu_reading, self.from_cgroup = reading, from_cgroup
        self.mem = mem


class ContainerEvents:
    """What the event stream told the poll loop (on the event loop): whether it is followed now, whether something
    happened since the last poll, and about which containers (bounded: past CONTAINER_EVENT_IDS, the list alone
    says what changed)."""

    def __init__(self) -> None:
        self.live = False
        self.news = False
        self._ids: set = set()
        self._woken = trio.Event()

    def start(self) -> None:
        self.live = True
        self._happened()

    def stop(self) -> None:
        self.live = False

    def add(self, ids: List[str]) -> None:
        for cid in ids:
            if len(self._ids) >= CONTAINER_EVENT_IDS:
                break
            self._ids.add(cid)
        self._happened()

    def _happened(self) -> None:
        self.news = True
        self._woken.set()

    async def wait(self) -> None:
        await self._woken.wait()

    def take(self) -> Collection[str]:
        """The containers named since the last take, which the poll about to start answers."""
        ids, self._ids = self._ids, set()
        self.news = False
        self._woken = trio.Event()
        return ids


def _stat_value(text: bytes, key: bytes) -> Optional[int]:
    """The value of `key` in a cgroup's memory.stat (lines of "key value"), or None when it has none."""
    at = (b"\n" + text).find(b"\n" + key + b" ")  # where the key starts in text
    if at < 0:
        return None
    end = text.find(b"\n", at)
    return int(text[at + len(key) + 1:end if end >= 0 else None])


_CONTAINER_ID = re.compile(r"[0-9a-f]{32,128}")  # Docker's and Podman's ids: 64 hex digits


class _CgroupFiles(NamedTuple):
    """One container's cgroup counters, kept open (a pread costs a third of open, read, close)."""
    pid: int
    cpu: int  # fd: cpuacct.usage (v1, ns) or cpu.stat (v2, "usage_usec N" first)
    mem: int  # fd: memory.usage_in_bytes (v1) or memory.current (v2)
    stat: int  # fd: memory.stat
    inactive: bytes  # memory.stat's key for the inactive page cache: "total_inactive_file" (v1), "inactive_file"
    v2: bool


class CgroupReader:
    """Running containers' CPU and memory straight from their cgroups, the files the engine's stats come from.

    Found through the container's main process (/proc/PID/cgroup, PID from its inspect), and taken only when that
    path names the container's id: an agent in another pid namespace sees some other process under that pid, and an
    agent in another cgroup namespace finds no such files. Whatever cannot be read gives None, and the watcher asks
    the engine's stats for that container instead. Memory as `docker stats` shows it: usage less the inactive page
    cache. At most CGROUP_FDS_MAX files open (and an eighth of RLIMIT_NOFILE); past that, None as well."""

    def __init__(self, procfs: str = "/proc", root: str = "/sys/fs/cgroup", *,
                 clock: Callable[[], int] = time.monotonic_ns, cpus: Optional[int] = None,
                 fds_max: Optional[int] = None) -> None:
        self._procfs = procfs
        self._root = root
        self._clock = clock
        self._cpus = cpus or os.cpu_count() or 1
        if fds_max is None:
            fds_max = CGROUP_FDS_MAX
            with contextlib.suppress(ImportError, ValueError, OSError):
                import resource  # Unix only, like cgroups

                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                if soft != resource.RLIM_INFINITY:
                    fds_max = min(fds_max, soft // 8)
        self._open_max = fds_max // 3
        self._open: Dict[str, _CgroupFiles] = {}  # container id -> its files

    def read(self, cid: str, pid: int) -> Optional[Tuple[Tuple[int, int], int]]:
        """((the container's CPU ns, all cores' ns since an arbitrary start), memory in use), or None."""
        files = self._open.get(cid)
        if files is None or files.pid != pid:
            self.forget(cid)
            if len(self._open) >= self._open_max:
                return None
            files = self._locate(cid, pid)
            if files is None:
                return None
            self._open[cid] = files
        try:
            now = self._clock()
            if files.v2:
                head = os.pread(files.cpu, 256, 0)
                key, _, value = head.split(b"\n", 1)[0].partition(b" ")
                if key != b"usage_usec":
                    raise ValueError("cpu.stat does not start with usage_usec")
                used_ns = int(value) * 1000
            else:
                used_ns = int(os.pread(files.cpu, 64, 0))
            mem = int(os.pread(files.mem, 64, 0))
            inactive = _stat_value(os.pread(files.stat, 16384, 0), files.inactive)
            if inactive is not None and 0 <= inactive < mem:
                mem -= inactive
            if used_ns < 0 or mem < 0:
                raise ValueError("a negative counter")
        except (OSError, ValueError):  # gone (the container stopped: ENODEV), or not what a cgroup file says
            self.forget(cid)
            return None
        return (used_ns, now * self._cpus), mem

    def _locate(self, cid: str, pid: int) -> Optional[_CgroupFiles]:
        if not _CONTAINER_ID.fullmatch(cid):  # a short or odd id could match part of any path
            return None
        try:
            text = _read_proc(f"{self._procfs}/{pid}/cgroup", 65536).decode("utf-8", "replace")
        except OSError:
            return None
        v1: Dict[str, Tuple[str, str]] = {}  # controller -> (its hierarchy's directory, the path in it)
        unified = None
        for line in text.splitlines():
            _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if not path.startswith("/") or ".." in path.split("/"):
                continue
            if controllers == "":
                unified = path
                continue
            for controller in controllers.split(","):
                v1.setdefault(controller, (controllers, path))
        if "cpuacct" in v1 and "memory" in v1:
            (cpu_dir, cpu_path), (_, mem_path) = v1["cpuacct"], v1["memory"]
            names = (f"{cpu_dir}{cpu_path}/cpuacct.usage", f"memory{mem_path}/memory.usage_in_bytes",
                     f"memory{mem_path}/memory.stat")
            inactive, v2 = b"total_inactive_file", False
        elif unified is not None and not v1.keys() - {"name=systemd"}:
            names = (f"{unified}/cpu.stat", f"{unified}/memory.current", f"{unified}/memory.stat")
            inactive, v2 = b"inactive_file", True
        else:
            return None
        if cid not in names[0] or cid not in names[1]:  # someone else's process, or a cgroup we cannot tell apart
            return None
        fds: List[int] = []
        try:
            for name in names:
                fds.append(os.open(f"{self._root}/{name.lstrip('/')}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
        except OSError:
            for fd in fds:
                os.close(fd)
            return None
        return _CgroupFiles(pid, fds[0], fds[1], fds[2], inactive, v2)

    def forget(self, cid: str) -> None:
        files = self._open.pop(cid, None)
        if files is not None:
            for fd in (files.cpu, files.mem, files.stat):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def keep_only(self, ids: Collection[str]) -> None:
        """Close the files of the containers not in `ids` (stopped, gone, no longer among those with series)."""
        for cid in [cid for cid in self._open if cid not in ids]:
            self.forget(cid)

    def close(self) -> None:
        self.keep_only(())


def host_cgroups() -> Optional[CgroupReader]:
    """The host's cgroups, where the agent can read them (Linux; the /proc of AGENT_HOST_PROC)."""
    if not sys.platform.startswith("linux"):
        return None
    return CgroupReader(getattr(psutil, "PROCFS_PATH", "/proc"))


class ContainerWatcher:
    """One poll per interval of a Docker/Podman engine: `poll()` blocks (run it in a worker thread), never more
    than a few CONTAINER_TIMEOUTs. `get(path, max_bytes)` is the HTTP call (engine_get on a socket; tests inject)."""

    def __init__(self, get: Callable[[str, int], Any], *, clock: Callable[[], float] = time.monotonic,
                 cgroups: Optional[CgroupReader] = None) -> None:
        self._get = get
        self._clock = clock
        self._cgroups = cgroups
        self._seen: Dict[str, _Seen] = {}
        self._restarts: Dict[str, deque] = {}  # name -> (time, restart count) within RESTART_LOOP's window
        self._turn = 0
        self._chosen: Optional[List[Dict[str, Any]]] = None  # the last list's containers, by name

    def _try(self, path: str) -> Any:
        try:
            return self._get(path, CONTAINER_ITEM_BYTES)
        except EngineError as exc:
            log.debug("containers: %s", exc)
            return None

    def _listed(self, listed: List[Any], now: float, touched: Collection[str]) -> List[Dict[str, Any]]:
        """The list's containers (by name, bounded), with inspects (restart count, health) for the ones that are
        new, changed or named by events first, then the stalest, bounded."""
        containers: Dict[str, Dict[str, Any]] = {}
        for raw in listed:
            summary = container_summary(raw)
            if summary is not None and summary["name"] not in containers:
                containers[summary["name"]] = summary
        chosen = [containers[name] for name in sorted(containers)[:MAX_CONTAINERS]]
        seen = {c["id"]: self._seen.get(c["id"]) or _Seen() for c in chosen}
        self._seen = seen

        def news(c: Dict[str, Any]) -> bool:
            return seen[c["id"]].state != c["state"] or c["id"] in touched

        fresh = [c for c in chosen if news(c)][:CONTAINER_NEWS_PER_POLL]
        stale = sorted((c for c in chosen if not news(c) and now - seen[c["id"]].inspected >= CONTAINER_REFRESH),
                       key=lambda c: seen[c["id"]].inspected)
        # One request after the other: threads to overlap them saved no CPU, and each cost the agent memory.
        for c in fresh + stale[:CONTAINER_INSPECTS_PER_POLL]:
            answer = self._try(f"/containers/{c['id']}/json")
            known = seen[c["id"]]
            known.inspected = now
            known.state = c["state"]
            if isinstance(answer, dict):
                known.restarts = _int(answer.get("RestartCount")) or 0
                state = answer.get("State") if isinstance(answer.get("State"), dict) else {}
                known.pid = _int(state.get("Pid")) or 0
                health = state.get("Health") if isinstance(state.get("Health"), dict) else {}
                status = health.get("Status")
                known.health = _cut(status, MAX_CONTAINER_STATE).lower() if isinstance(status, str) else ""
        return chosen

    def close(self) -> None:
        if self._cgroups is not None:
            self._cgroups.close()

    def poll(self, listing: bool = True, touched: Collection[str] = ()) -> ContainerReport:
        """Raises EngineError when the list itself fails; a failed stats or inspect only leaves that one out.
        `listing` False: the states are the last list's (the event stream said nothing changed since), and only
        stats are read. `touched`: ids the events named since the last poll, inspected first (a restart that was
        over before the list was read leaves the state as it was, but not the restart count)."""
        taken = time.time()
        now = self._clock()
        self._turn += 1
        if listing or self._chosen is None:
            listed = self._get("/containers/json?all=1", CONTAINER_LIST_BYTES)
            if not isinstance(listed, list):
                raise EngineError("GET /containers/json: not a list")
            self._chosen = self._listed(listed, now, touched)
        chosen, seen = self._chosen, self._seen

        # The containers with series that run: from their cgroups, the others' stats round robin.
        running = [c for c in chosen[:MAX_CONTAINER_SERIES] if c["state"] == "running"]
        if self._cgroups is not None:
            cgroups = self._cgroups
            read = {c["id"]: cgroups.read(c["id"], seen[c["id"]].pid) for c in running if seen[c["id"]].pid}
            read = {cid: got for cid, got in read.items() if got is not None}
            for cid, (reading, mem) in read.items():
                seen[cid].measured(reading, mem, from_cgroup=True)
            cgroups.keep_only(read)
            running = [c for c in running if c["id"] not in read]
        running.sort(key=lambda c: seen[c["id"]].stats_turn)
        for c in running[:CONTAINER_STATS_PER_POLL]:
            answer = self._try(f"/containers/{c['id']}/stats?stream=false&one-shot=true")
            known = seen[c["id"]]
            known.stats_turn = self._turn
            known.measured(*stats_reading(answer), from_cgroup=False)

        items: List[Dict[str, Any]] = []
        series: Dict[str, Dict[str, float]] = {}
        windows: Dict[str, deque] = {}
        for index, c in enumerate(chosen):
            known = seen[c["id"]]
            health = c["health"] or known.health
            # The restart counts seen, one entry per change: the first one is the count as of the window's start.
            window = self._restarts.get(c["name"]) or deque()
            if window and known.restarts < window[-1][1]:
                window.clear()  # a new container under the same name counts from 0
            if not window or window[-1][1] != known.restarts:
                window.append((now, known.restarts))
            while len(window) > 1 and now - window[1][0] >= RESTART_LOOP[1]:
                window.popleft()
            windows[c["name"]] = window
            looping = known.restarts - window[0][1] >= RESTART_LOOP[0]
            item: Dict[str, Any] = {"name": c["name"], "image": c["image"], "state": c["state"], "health": health,
                                    "restarts": known.restarts}
            running_now = c["state"] == "running"
            if running_now and known.cpu is not None:
                item["cpu"] = known.cpu
            if running_now and known.mem is not None:
                item["mem"] = known.mem
            items.append(item)
            if index < MAX_CONTAINER_DOWN:
                entry: Dict[str, float] = {"down": down_code(c["state"], health, looping)}
                if index < MAX_CONTAINER_SERIES:
                    entry.update({k: item[k] for k in ("cpu", "mem") if k in item})
                series[c["name"]] = entry
        self._restarts = windows
        return ContainerReport(items, series, taken)


def _reading(value: Any) -> Optional[float]:
    """A number from amdsmi, or None for its "N/A" (and anything else that is not a finite number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _describe(exc: BaseException, _seen: Optional[set] = None) -> str:
    """One line about an exception, with the root causes trio hides behind generic messages."""
    # Exception chains can loop (an error re-raised out of the group that holds it has that group as context):
    # each exception is described once.
    seen = set() if _seen is None else _seen
    seen.add(id(exc))
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e, seen) for e in list(_leaves(exc))[:3] if id(e) not in seen) or "errors"
    text = str(exc)
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and id(cause) not in seen:
        return f"{line} ({_describe(cause, seen)})" if text else f"{type(exc).__name__}: {_describe(cause, seen)}"
    return line


# --- what the agent does not take from the server on trust -----------------------------------------------------


def _quote(value: Any, limit: int = 200) -> str:
    """Text that came from the server, for the log: cut to `limit` characters, quoted and escaped like repr(), so a
    newline or a control character in it cannot start a forged log line or rewrite the terminal."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def _one_line(text: str) -> str:
    """`text` with every non-printable character (newlines, escapes, Unicode line separators) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class Repeats:
    """Thins out a repeating event in the log. Of a run of them, the 1st, 2nd, 4th, 8th... are logged, and at least
    one every `every` seconds; each logged one can say how many were left out since the previous line. So the first
    failures of an outage are all there, a long outage costs a line per `every`, and a server that repeats itself
    cannot fill the disk."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.reset()

    def reset(self) -> None:
        """The run is over (e.g. a connection stayed up): the next event is logged, as the first of a new run."""
        self.count = 0  # events in this run
        self.left_out = 0  # events not logged since the last one that was
        self.started: Optional[float] = None
        self._logged_at = -math.inf

    def admit(self, now: float) -> Optional[int]:
        """Count one event at `now`. None: leave it out of the log (or log it at debug level); else log it, and the
        number returned is how many were left out before it."""
        self.count += 1
        if self.started is None:
            self.started = now
        first_of_power_of_two = (self.count & (self.count - 1)) == 0
        if not first_of_power_of_two and now - self._logged_at < self.every:
            self.left_out += 1
            return None
        left_out, self.left_out, self._logged_at = self.left_out, 0, now
        return left_out


def _left_out(count: Optional[int]) -> str:
    return f" [{count} more since the previous line, not logged]" if count else ""


class PowerLimiter:
    """How often a server may have this host rebooted or shut down: at most one action per `min_gap` seconds and
    `per_hour` in any hour. Actions are recorded (wall-clock times) in `path`, beside the settings file: a limit kept
    in memory would start afresh with every reboot it allowed, and let a server reboot the host each time its agent
    came back. The record is written (fsync'd) before the action runs; when it cannot be written, the action is
    refused. Without a path (library use, tests) the record is in memory only."""

    def __init__(self, path: Optional[Path], min_gap: float = POWER_MIN_GAP, per_hour: int = POWER_PER_HOUR,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.min_gap = min_gap
        self.per_hour = per_hour
        self._clock = clock
        self._memory: List[float] = []

    def _recent(self, now: float) -> List[float]:
        """Actions of the last hour. Times ahead of now count too (the clock went back), unless absurdly far."""
        times = list(self._memory)
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                times += [float(t) for t in data.get("power_actions", [])
                          if isinstance(t, (int, float)) and not isinstance(t, bool)]
            except FileNotFoundError:
                pass
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                # A record that cannot be read fails closed: it may hold an action of a minute ago.
                raise OSError(f"cannot read {self.path}: {_describe(exc)}") from None
        return sorted({t for t in times if math.isfinite(t) and now - 3600.0 < t < now + 3600.0})

    def check(self) -> Optional[str]:
        """Why an action now would be refused (a sentence for the chat), or None when it is allowed."""
        now = self._clock()
        try:
            recent = self._recent(now)
        except OSError as exc:
            return f"refused by the agent: {exc}"
        if recent and now - recent[-1] < self.min_gap:
            ago = max(0.0, now - recent[-1])
            return (f"refused by the agent: at most one power action per {self.min_gap / 60:g} min, the last was "
                    f"{_minutes(ago)} ago (next possible in {_minutes(self.min_gap - ago)})")
        if len(recent) >= self.per_hour:
            return (f"refused by the agent: at most {self.per_hour} power actions per hour, and there were "
                    f"{len(recent)} (next possible in {_minutes(recent[-self.per_hour] + 3600.0 - now)})")
        return None

    def record(self) -> Optional[str]:
        """Note an action about to run. Returns why it must not run (the record cannot be kept), or None."""
        now = self._clock()
        self._memory.append(now)
        if self.path is None:
            return None
        try:
            times = self._recent(now)
            _write_private(self.path, json.dumps({"power_actions": times}) + "\n")
        except OSError as exc:
            return f"refused by the agent: cannot record the action in {self.path} ({_describe(exc)})"
        return None


def _minutes(seconds: float) -> str:
    return f"{max(1, int(math.ceil(seconds / 60.0)))} min" if seconds >= 60 else f"{max(0, int(seconds))} s"


def command_expiry_problem(expires: Any, now: float, max_ahead: float = COMMAND_MAX_AHEAD) -> Optional[str]:
    """Why a command with this `expires` must not run now, or None.

    The agent acts on a command the moment it arrives, so clamping a far-off expiry would change nothing; what such
    an expiry does say is that the server's clock and this host's disagree by minutes (and then "never late" cannot
    be judged), or that the server meant the command to wait somewhere, which the protocol forbids. Refusing with a
    clear message, which the chat shows, is the safe answer to both.
    """
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
        return "refused by the agent: the command has no valid expiry time"
    if now > expires:
        return "expired"  # never fire late, e.g. after a reconnect
    if expires - now > max_ahead:
        return (f"refused by the agent: the command expires {expires - now:.0f} s from now by this host's clock; "
                f"at most {max_ahead:g} s is accepted (are the server's and this host's clocks set right?)")
    return None


# --- the agent -------------------------------------------------------------------------------------------------


class AgentStop(Exception):
    """The server refuses this agent; retrying cannot help. The message says why and what to do."""


@dataclass
class _Connection:
    """One WebSocket connection's IO state, shared by its sender and receiver tasks (the protocol's is in Link)."""

    ws: trio_websocket.WebSocketConnection
    cancel_scope: trio.CancelScope  # cancel to drop this connection (the agent then reconnects)
    hello_acked: trio.Event = field(default_factory=trio.Event)  # set on Link's first Acked: sending may start
    up_since: Optional[float] = None
    last_error: str = ""  # the server's last `error` frame
    dropped_because: str = ""  # set when the agent itself ends the connection
    snapshots_sent: Dict[str, str] = field(default_factory=dict)  # kind -> items JSON sent on this connection
    tasks: Optional[trio.Nursery] = None  # the connection's nursery (a speed test's upload runs in it)
    download: Optional[List[Any]] = None  # the speed test's download under way: [test id, bytes received]
    heard_at: float = -math.inf  # trio.current_time() of the server's latest frame (the keepalive's clue)


# How a connection that reached the WebSocket ended: seconds it was up after the hello's ack (None: never acked),
# the close code as Reconnect reads it, the line for the log and its level.
Ended = NamedTuple("Ended", [("up_for", Optional[float]), ("code", Optional[int]), ("what", str), ("level", int)])


def _leaves(group: BaseException) -> Iterator[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        for exc in group.exceptions:
            yield from _leaves(exc)
    else:
        yield group


# --- checks from the host (docs/protocol.md, "Checks") -------------------------------------------------------------
#
# The server sends the whole list of this host's checks (a `checks` frame after the hello's ack, and again when it
# changes); the agent probes each target every `every` seconds in worker threads (http.client, ssl, socket: no
# new dependency), and reports results in its samples (`checks`: up, ms, cert) and as a `checks` snapshot (state,
# HTTP status, error). A check runs with this agent's network access, private addresses included (the host's own
# network is what checks are for); every probe is bounded here, whatever the server asks: CHECKS_MAX checks, at
# least CHECK_MIN_EVERY apart, CHECK_CONCURRENCY at once, CHECK_TIMEOUT each (redirects and body included),
# CHECK_MAX_BODY bytes read, CHECK_MAX_REDIRECTS redirects. A probe is a fresh connection that carries no mbot
# header and never the secret: only a User-Agent, Accept and Host.

CHECKS_MAX = 20
CHECK_MIN_EVERY = 1.0
CHECK_MAX_EVERY = 86_400.0
CHECK_TIMEOUT = 10.0
CHECK_MAX_BODY = 64 * 1024
CHECK_MAX_REDIRECTS = 5
CHECK_CONCURRENCY = 4
CHECK_MAX_RATE = 20.0  # probes started per second at most, however often the server changes the list
CHECK_MAX_TARGET = 2048
CHECK_ERROR_CHARS = 200
_CHECK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,39}")
_REDIRECTS = (301, 302, 303, 307, 308)

CheckSpec = NamedTuple("CheckSpec", [("name", str), ("target", str), ("every", float), ("down_after", int)])
CheckList = NamedTuple("CheckList", [("checks", List[CheckSpec]), ("skipped", List[str])])


def check_target_problem(target: Any) -> Optional[str]:
    """Why the agent will not probe `target` (None: it will): http, https and tcp://HOST:PORT only."""
    if not isinstance(target, str) or not target or len(target) > CHECK_MAX_TARGET:
        return "a target is a URL of 1 to %d characters" % CHECK_MAX_TARGET
    if any(ord(c) < 33 or ord(c) == 127 for c in target):
        return "a target has no spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(target)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https", "tcp"):
        return "only http, https and tcp targets are checked"
    if not parts.hostname:
        return "the target names no host"
    if parts.scheme == "tcp" and not port:
        return "a tcp target needs a port"
    return None


def checks_request(frame: Mapping[str, Any]) -> "CheckList | Ignored":
    """The server's `checks` frame, checked: entries the agent will not run are skipped (and said why)."""
    raw = frame.get("checks")
    if not isinstance(raw, list):
        return Ignored("ignoring a checks frame without a list of checks", True)
    specs: List[CheckSpec] = []
    skipped: List[str] = []
    for entry in raw:
        if not isinstance(entry, dict):
            skipped.append("an entry that is not an object")
            continue
        name, target, every = entry.get("name"), entry.get("target"), entry.get("every", 60.0)
        down_after = entry.get("down_after", 3)
        problem = check_target_problem(target)
        if not isinstance(name, str) or not _CHECK_NAME.fullmatch(name) or any(s.name == name for s in specs):
            problem = "a missing, odd or repeated name"
        elif (isinstance(every, bool) or not isinstance(every, (int, float)) or not math.isfinite(every)
              or isinstance(down_after, bool) or not isinstance(down_after, int) or not 1 <= down_after <= 100):
            problem = "a bad every or down_after"
        elif len(specs) >= CHECKS_MAX:
            problem = "more than %d checks" % CHECKS_MAX
        if problem is not None:
            skipped.append("%s (%s)" % (_quote(name, 50), problem))
            continue
        specs.append(CheckSpec(name, target, min(max(float(every), CHECK_MIN_EVERY), CHECK_MAX_EVERY), down_after))
    return CheckList(specs, skipped)


def _tlv(data: bytes, pos: int) -> Tuple[int, int, int]:
    """One DER element at `pos`: (tag, start of its content, end of its content)."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def cert_not_after(der: bytes) -> Optional[float]:
    """A certificate's notAfter (seconds since 1970) from its DER bytes, or None. The agent does not judge trust
    (self-signed certificates are common on a host's own network), so ssl's verified getpeercert() is no help:
    this reads the one field it needs from the X.509 structure."""
    try:
        _, pos, _ = _tlv(der, 0)  # Certificate
        _, pos, _ = _tlv(der, pos)  # tbsCertificate
        tag, _, end = _tlv(der, pos)
        if tag == 0xA0:  # [0] version
            pos = end
        for _ in range(3):  # serialNumber, signature, issuer
            _, _, pos = _tlv(der, pos)
        _, pos, _ = _tlv(der, pos)  # validity
        _, _, pos = _tlv(der, pos)  # notBefore
        tag, start, end = _tlv(der, pos)  # notAfter
        text = der[start:end].decode("ascii")
        if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ
            year = int(text[:2])
            text = ("20" if year < 50 else "19") + text
        elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
            return None
        return float(calendar.timegm(time.strptime(text[:14], "%Y%m%d%H%M%S")))
    except (IndexError, ValueError):
        return None


def _check_error(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "name not resolved"
    return _one_line(_describe(exc))[:CHECK_ERROR_CHARS]


class _Deadline:
    """The whole probe's time limit: a timer that shuts the socket down when it passes, because per-operation
    socket timeouts alone let a server that sends one byte every few seconds hold a probe for ever."""

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.at = self.started + seconds
        self.passed = False
        self._socks: List[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0 or self.passed:
            raise socket.timeout("timed out")
        return left

    def watch(self, sock: Optional[socket.socket]) -> None:
        with self._lock:
            if sock is not None:
                self._socks.append(sock)
            if self.passed:
                self._fire()

    def _fire(self) -> None:
        self.passed = True
        for sock in list(self._socks):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


_CHECK_CONTEXT: List[ssl.SSLContext] = []


def _check_context() -> ssl.SSLContext:
    """One context for every probe, made once: it loads no CA store, which trust is not judged with (loading the
    system's CAs would cost ~50 ms of CPU per probe)."""
    if not _CHECK_CONTEXT:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _CHECK_CONTEXT.append(ctx)
    return _CHECK_CONTEXT[0]


def probe(target: str, timeout: float = CHECK_TIMEOUT, max_body: int = CHECK_MAX_BODY,
          max_redirects: int = CHECK_MAX_REDIRECTS, now: Callable[[], float] = time.time) -> Dict[str, Any]:
    """Probe a target once (blocking: a worker thread): {"ok", "ms", "status", "cert_days", "error"}. `ms` is the
    time to the final answer (HTTP headers, redirects included; a TCP connect), or to the failure: always there,
    so that a check going down and up does not change which series a sample has (each new set of names is a
    layout the server stores and budgets)."""
    deadline = _Deadline(timeout)
    result: Dict[str, Any] = {"ok": False}
    try:
        _probe(target, deadline, max_body, max_redirects, result, now)
    except Exception as exc:  # everything a target can do to a probe ends as its error text
        # Every socket timeout is set to what is left of the deadline: either way, the probe's time is up.
        timed_out = deadline.passed or isinstance(exc, socket.timeout)
        result["error"] = "no answer within %g s" % timeout if timed_out else _check_error(exc)
        result.pop("_ms", None)  # an earlier hop's answer: the time to fail is what counts
    finally:
        deadline.cancel()
    answered = result.pop("_ms", None)
    result["ms"] = answered if answered is not None else (time.monotonic() - deadline.started) * 1000.0
    return result


def _probe(target: str, deadline: _Deadline, max_body: int, max_redirects: int, result: Dict[str, Any],
           now: Callable[[], float]) -> None:
    parts = urllib.parse.urlsplit(target)
    if parts.scheme == "tcp":
        sock = socket.create_connection((parts.hostname, parts.port), timeout=deadline.left())
        sock.close()
        result["ok"] = True
        return
    url = target
    for hop in range(max_redirects + 1):
        status, location = _http_once(url, deadline, max_body, result, now)
        result["status"] = status
        if status in _REDIRECTS and location:
            if hop == max_redirects:
                result["error"] = "more than %d redirects" % max_redirects
                return
            url = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                result["error"] = "a redirect to a non-HTTP URL"
                return
            continue
        result["ok"] = 200 <= status < 400
        if not result["ok"]:
            result["error"] = "HTTP %d" % status
        return


def _http_once(url: str, deadline: _Deadline, max_body: int, result: Dict[str, Any],
               now: Callable[[], float]) -> Tuple[int, Optional[str]]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, parts.port, timeout=deadline.left(), context=_check_context())
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=deadline.left())
    sock: Optional[socket.socket] = None
    try:
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        conn.connect()
        sock = conn.sock
        assert sock is not None  # kept: http.client lets go of it once a response says the connection will close
        deadline.watch(sock)
        if parts.scheme == "https" and "cert_days" not in result:
            der = sock.getpeercert(binary_form=True)
            expires = cert_not_after(der) if der else None
            if expires is not None:
                result["cert_days"] = round((expires - now()) / 86400.0, 2)
        conn.request("GET", path, headers={"User-Agent": "mbot-agent/%s (check)" % __version__, "Accept": "*/*",
                                           "Connection": "close"})
        sock.settimeout(deadline.left())
        response = conn.getresponse()
        result["_ms"] = (time.monotonic() - deadline.started) * 1000.0  # to the final answer, redirects included
        read = 0
        while read < max_body:
            sock.settimeout(deadline.left())
            chunk = response.read1(min(16384, max_body - read))
            if not chunk:
                break
            read += len(chunk)
        response.close()
        return response.status, response.getheader("Location")
    finally:
        conn.close()
        if sock is not None:
            sock.close()


if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters:
    _ABANDON: Dict[str, bool] = {"abandon_on_cancel": True}
else:  # trio before 0.23
    _ABANDON = {"cancellable": True}


class CheckRunner:
    """The checks the server gave this host, run on their schedule (each probe in a worker thread, at most
    `concurrency` at once), and their latest results: `report()` gives what the next sample and the `checks`
    snapshot carry. A check is down after `down_after` failures in a row; the certificate's days left are kept from
    the last probe that saw one (a check that is down cannot see it, and the certificate has not changed)."""

    def __init__(self, timeout: float = CHECK_TIMEOUT, concurrency: int = CHECK_CONCURRENCY,
                 run_probe: Callable[[str, float], Dict[str, Any]] = probe) -> None:
        self.timeout = timeout
        self._probe = run_probe
        self._limiter = trio.CapacityLimiter(concurrency)
        self.specs: Dict[str, CheckSpec] = {}
        self._due: Dict[str, float] = {}
        self._running: set = set()
        self._results: Dict[str, Dict[str, Any]] = {}  # name -> the snapshot's item
        self._figures: Dict[str, Dict[str, float]] = {}  # name -> the sample's up, ms, cert
        self._lock = threading.Lock()  # the results are read by the collector's thread
        self._told = False  # the server sent a list (an old server never does: then nothing is reported)
        self._next_slot = -math.inf  # when the next probe may start (CHECK_MAX_RATE)
        self._changed = trio.Event()
        self.on_result: Optional[Callable[[], None]] = None

    def set_checks(self, specs: Sequence[CheckSpec]) -> None:
        """The server's new list: new and changed checks run at once, removed ones are forgotten."""
        now = trio.current_time()
        new = {spec.name: spec for spec in specs}
        with self._lock:
            for name in list(self._results):
                if name not in new or new[name].target != self.specs.get(name, new[name]).target:
                    self._results.pop(name, None)
                    self._figures.pop(name, None)
            for name, spec in new.items():
                if self.specs.get(name) != spec:
                    self._due[name] = now
            self._due = {name: due for name, due in self._due.items() if name in new}
            self.specs = new
            self._told = True
        self._changed.set()

    def report(self) -> Tuple[Optional[Dict[str, Dict[str, float]]], Optional[List[Dict[str, Any]]]]:
        """(the sample's `checks`, the snapshot's items); None for what there is nothing to say about."""
        with self._lock:
            if not self._told:
                return None, None
            figures = {name: dict(f) for name, f in self._figures.items() if name in self.specs}
            items = [dict(self._results[name]) for name in sorted(self._results) if name in self.specs]
        return figures or None, items

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                changed = self._changed = trio.Event()
                now = trio.current_time()
                for name, due in list(self._due.items()):
                    if due <= now and name not in self._running:
                        self._running.add(name)
                        nursery.start_soon(self._run_one, self.specs[name])
                waiting = [due for name, due in self._due.items() if name not in self._running]
                with trio.move_on_at(min(waiting, default=math.inf)):
                    await changed.wait()

    async def _run_one(self, spec: CheckSpec) -> None:
        # Evenly spaced starts: a server that sends new lists as fast as it can gets CHECK_MAX_RATE probes a second.
        self._next_slot = max(trio.current_time(), self._next_slot + 1.0 / CHECK_MAX_RATE)
        await trio.sleep_until(self._next_slot)
        if self.specs.get(spec.name) != spec:  # removed or changed while it waited
            self._running.discard(spec.name)
            return
        started = trio.current_time()
        outcome: Dict[str, Any] = {"ok": False, "error": "no answer within %g s" % self.timeout}
        try:
            # The probe bounds itself, but not a name lookup that hangs (getaddrinfo has no timeout): such a
            # thread is left to finish on its own, holding its place in the limiter meanwhile.
            with trio.move_on_after(self.timeout + 5.0):
                outcome = await trio.to_thread.run_sync(self._probe, spec.target, self.timeout,
                                                        limiter=self._limiter, **_ABANDON)
        except Exception as exc:  # a bug, not a target: the schedule goes on
            outcome = {"ok": False, "error": _check_error(exc)}
        finally:
            self._running.discard(spec.name)
        with self._lock:
            if self.specs.get(spec.name) != spec:  # removed or changed while it ran
                return
            self._record(spec, outcome)
            self._due[spec.name] = started + spec.every
        self._changed.set()
        if self.on_result is not None:
            self.on_result()

    def _record(self, spec: CheckSpec, outcome: Dict[str, Any]) -> None:
        before = self._results.get(spec.name, {})
        fails = 0 if outcome.get("ok") else int(before.get("fails", 0)) + 1
        state = "up" if not fails else "down" if fails >= spec.down_after else "failing"
        item: Dict[str, Any] = {"name": spec.name, "state": state, "fails": fails}
        figures: Dict[str, float] = {"up": 0.0 if fails else 100.0}
        for key in ("status", "error"):
            if outcome.get(key) is not None:
                item[key] = outcome[key]
        if "ms" in outcome:
            item["ms"] = figures["ms"] = round(min(float(outcome["ms"]), 60_000.0), 2)
        cert = outcome.get("cert_days", before.get("cert_days"))
        if cert is not None:
            item["cert_days"] = figures["cert"] = max(-36_500.0, min(float(cert), 36_500.0))
        if before.get("state") != state:
            level = logging.WARNING if state == "down" else logging.INFO
            log.log(level, "check %s (%s): %s%s", spec.name, spec.target, state,
                    ": " + item["error"] if "error" in item else "")
        self._results[spec.name] = item
        self._figures[spec.name] = figures


class Agent:
    """The process: a collector task for its whole life, a connection loop beside it."""

    def __init__(self, config: AgentConfig, collector: Collector, spool: Optional[SampleBuffer] = None,
                 services: Optional[ServiceWatcher] = None) -> None:
        self.config = config
        self.collector = collector
        self.services = services if services is not None else ServiceWatcher()
        # What to send, what acks free, when to give up on refused samples; it holds the spool (self.buffer).
        self.link = Link(spool if spool is not None else SampleBuffer(config.spool_capacity))
        self.epoch = self.buffer.epoch
        self.seq = self.buffer.seq
        self.server = server_id(config.server, config.port)
        self._new_sample = trio.Event()
        self._snapshot_at = -math.inf  # monotonic time of the last collection of snapshots
        self._to_thread = trio.to_thread.run_sync  # psutil calls block: never on the event loop (tests: inline)
        self._ssl = make_ssl_context()
        self._facts: Dict[str, Any] = {}
        self._last_drop_log = -math.inf
        self._pinned: Optional[str] = None  # the fingerprint trusted on first use in this run
        env_dir = Path(os.path.abspath(config.env_file)).parent if config.env_file else None
        self.power_limits = PowerLimiter(env_dir / POWER_LOG_NAME if env_dir else None)
        self._server_noise = Repeats(SERVER_NOISE_EVERY)
        self._last_upload = -math.inf  # when the server last had a speed test upload (trio clock)
        self._failures = Repeats(FAILURES_EVERY)  # connection failures since the last stable connection
        # The latest snapshot of each kind: (items as JSON, the frame). Only the latest counts, so nothing is
        # spooled: each connection sends the ones whose items it has not sent yet (docs/protocol.md, Snapshots).
        # Written by the collector's thread and the event loop (one assignment each), read by the sender.
        self._snapshots: Dict[str, Tuple[str, str]] = {}
        self.checks = CheckRunner(timeout=config.check_timeout)  # the server's list of checks (docs/protocol.md)
        self.reconnect = Reconnect(low=config.backoff_min, high=config.backoff_max, stable_after=config.stable_after,
                                   quick=config.quick_reconnect, fast=config.fast_retry,
                                   fast_for=config.fast_retry_for)
        self.container_watcher: Optional[ContainerWatcher] = None  # set by _container_loop (tests: injected)
        self._containers: Optional[ContainerReport] = None  # the latest poll, for the next samples' series
        self._container_events = ContainerEvents()

    @property
    def buffer(self) -> SampleBuffer:
        """The spool: unacked samples, and the epoch and seq counter (kept across restarts with AGENT_SPOOL_FILE)."""
        return self.link.buffer

    @buffer.setter
    def buffer(self, spool: SampleBuffer) -> None:
        self.link.buffer = spool

    async def run(self) -> int:
        if not self.config.verify_ssl:
            log.warning("AGENT_VERIFY_SSL=0: the server's certificate is NOT checked; anyone on the network path "
                        "can read this host's secret and metrics. Set AGENT_VERIFY_SSL=1.")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._collect_loop)
            nursery.start_soon(self._host_state_loop)
            nursery.start_soon(self.checks.run)
            nursery.start_soon(self._container_loop)
            status = await self._connection_loop()
            nursery.cancel_scope.cancel()
        return status

    # collection ------------------------------------------------------------------------------------------------

    async def _collect_loop(self) -> None:
        interval = self.config.interval
        # cpu_percent and the rates were primed when the collector was made; a second is enough to measure them,
        # so a new host shows figures at once instead of after a whole (possibly long) interval.
        next_at = trio.current_time() + min(interval, 1.0)
        while True:
            await trio.sleep_until(next_at)
            if await self._to_thread(self._collect_and_store, time.time()):
                self._wake_sender()
            next_at += interval
            now = trio.current_time()
            if next_at <= now:  # fell behind (suspended laptop, slow host): skip, do not burst
                next_at = now + interval

    def _collect_and_store(self, ts: float) -> bool:
        """Collect and spool one sample, and the snapshots when due (in a worker thread: all of it blocks).
        Returns whether there is something new to send."""
        try:
            metrics = self.collector.collect()
        except Exception as exc:
            log.error("collecting metrics failed: %s", _describe(exc))
            added = False
        else:
            figures, items = self.checks.report()  # the latest results of the checks, on every sample
            if figures:
                metrics = {**metrics, "checks": figures}
            report = self._containers  # the latest poll's series, while it is recent
            encoded = None
            if report is not None and report.series and ts - report.taken <= 2 * self._containers_period + 5:
                encoded = {"containers": report.series_json}
            added = self._store_sample(ts, metrics, encoded)
            if items is not None:  # sent when it differs from what this connection sent
                added = self._put_snapshot("checks", 1, items, ts) or added
        return self._collect_snapshots(ts) or added

    def _collect_snapshots(self, ts: float) -> bool:
        """At most one collection per max(interval, SNAPSHOT_MIN_INTERVAL): the server's budget for each kind.
        Sending never outpaces collecting, so however the connection comes and goes, the budget holds."""
        collect = getattr(self.collector, "snapshots", None)  # a collector without lists (tests' stubs) sends none
        now = time.monotonic()
        if collect is None or now - self._snapshot_at < 0.9 * SNAPSHOT_MIN_INTERVAL:  # 0.9: a tick's jitter
            return False
        self._snapshot_at = now
        try:
            lists = collect()
        except Exception as exc:  # a bug or a library surprise: the samples go on
            log.error("collecting snapshots failed: %s", _describe(exc))
            return False
        return any([self._put_snapshot(kind, version, items, ts) for kind, (version, items) in lists.items()])

    def _store_sample(self, ts: float, metrics: Mapping[str, Any],
                      encoded: Optional[Mapping[str, str]] = None) -> bool:
        """Give the sample the next seq and put it in the spool (any thread; one at a time)."""
        seq = self.seq + 1
        text = encode_sample(seq, ts, metrics, encoded)
        if len(text) > BATCH_MAX_BYTES:
            log.error("a sample of %d bytes is too big to send; left out", len(text))
            return False
        self.seq = seq
        if self.buffer.append(seq, text, ts):
            now = time.monotonic()
            if now - self._last_drop_log >= 60.0:
                log.warning("unsent samples spool full (%d samples): dropped the oldest, %d sample(s) so far; the "
                            "server will be told how many", self.buffer.maxlen, self.buffer.evicted)
                self._last_drop_log = now
        return True

    def add_sample(self, ts: float, metrics: Mapping[str, Any]) -> None:
        """Spool a sample and wake the sender (on the event loop; the collect loop does the same off it)."""
        if self._store_sample(ts, metrics):
            self._wake_sender()

    # containers ------------------------------------------------------------------------------------------------

    async def _container_loop(self) -> None:
        """Poll the container engine in a worker thread (never on the event loop): stats every _containers_period,
        the list then too unless the engine's event stream is followed (then on its events, and every
        CONTAINER_RESYNC). Keep the latest report for the samples and queue its snapshot. Without a usable socket:
        one line, then nothing."""
        watcher = self.container_watcher
        path = None
        if watcher is None:
            path, line = await trio.to_thread.run_sync(find_container_socket, self.config.container_socket,
                                                       dict(os.environ))
            log.info("%s", line)
            if path is None:
                return
            watcher = self.container_watcher = ContainerWatcher(functools.partial(engine_get, path),
                                                                cgroups=host_cgroups())
        async with trio.open_nursery() as nursery:
            if path is not None:
                nursery.start_soon(self._follow_container_events, path)
            await self._poll_containers(watcher)

    async def _poll_containers(self, watcher: ContainerWatcher) -> None:
        failing = False
        listed_at = -math.inf
        # One poll (one snapshot) per interval at most, events or not: what the server's budget allows.
        gap = max(self.config.interval, SNAPSHOT_MIN_INTERVAL)
        while True:
            started = trio.current_time()
            listing = not self._container_events.live or self._container_events.news or \
                started - listed_at >= CONTAINER_RESYNC
            touched = self._container_events.take()
            try:
                report = await trio.to_thread.run_sync(self._poll_and_put, watcher, listing, touched)
            except EngineError as exc:
                self._containers = None
                listed_at = -math.inf
                if not failing:
                    log.warning("containers: the engine does not answer, left out until it does: %s", exc)
                failing = True
            else:
                if failing:
                    log.info("containers: the engine answers again (%d containers)", len(report.items))
                failing = False
                if listing:
                    listed_at = started
                self._containers = report
                self._wake_sender()
            with trio.move_on_at(started + self._containers_period):
                await self._container_events.wait()
                await trio.sleep_until(max(trio.current_time() + CONTAINER_EVENT_SETTLE, started + gap))

    def _poll_and_put(self, watcher: ContainerWatcher, listing: bool, touched: Collection[str]) -> ContainerReport:
        """A poll and its snapshot made ready to send (a worker thread)."""
        report = watcher.poll(listing, touched)
        self._put_snapshot("containers", 1, fit_snapshot(report.items), report.taken)
        return report

    async def _follow_container_events(self, path: str) -> None:
        """Follow the engine's event stream for as long as it lasts, and again after a pause when it ends or
        fails (an engine without one is simply polled). Each (re)start is news: events may have been missed."""
        events = self._container_events
        pause = CONTAINER_EVENTS_RETRY[0]
        token = trio.lowlevel.current_trio_token()
        while True:
            opened: List[socket.socket] = []

            def on_open(sock: socket.socket) -> None:
                opened.append(sock)
                trio.from_thread.run_sync(events.start, trio_token=token)

            def deliver(ids: List[str]) -> None:
                trio.from_thread.run_sync(events.add, ids, trio_token=token)

            began = trio.current_time()
            try:
                await trio.to_thread.run_sync(follow_events, path, on_open, deliver, **_ABANDON)
                log.debug("containers: the engine ended its event stream")
            except EngineError as exc:
                log.debug("containers: %s", exc)
            finally:
                events.stop()
                for sock in opened:  # on cancellation: the abandoned thread's recv returns at once
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            pause = CONTAINER_EVENTS_RETRY[0] if trio.current_time() - began > CONTAINER_RESYNC else \
                min(2 * pause, CONTAINER_EVENTS_RETRY[1])
            await trio.sleep(pause)

    @property
    def _containers_period(self) -> float:
        # One snapshot per poll: never more often than the server takes them (over its budget it closes the
        # connection, and the samples in flight would take the blame).
        return max(self.config.interval, self.config.containers_every, SNAPSHOT_MIN_INTERVAL)

    def _wake_sender(self) -> None:
        self._new_sample.set()
        self._new_sample = trio.Event()

    # snapshots and the inventory -------------------------------------------------------------------------------

    def queue_snapshot(self, kind: str, version: int, items: List[Dict[str, Any]], ts: float) -> None:
        """Make this the latest snapshot of `kind` (on the event loop); the sender sends it unless this connection
        already sent the same items (so an unchanged list costs nothing on the wire)."""
        if self._put_snapshot(kind, version, items, ts):
            self._wake_sender()

    def _put_snapshot(self, kind: str, version: int, items: List[Dict[str, Any]], ts: float) -> bool:
        """Make this the latest snapshot of `kind` (any thread); False when it is too big to send."""
        items_json = json.dumps(items, separators=(",", ":"), sort_keys=True)
        frame = json.dumps({"type": "snapshot", "kind": kind, "v": version, "ts": round(ts, 3), "items": items},
                           separators=(",", ":"))
        if len(frame) > SNAPSHOT_MAX_BYTES:
            log.error("a %s snapshot of %d bytes is too big to send; left out", kind, len(frame))
            return False
        self._snapshots[kind] = (items_json, frame)
        return True

    def _unsent_snapshots(self, conn: _Connection) -> List[Tuple[str, str, str]]:
        return [(kind, items_json, frame) for kind, (items_json, frame) in self._snapshots.items()
                if conn.snapshots_sent.get(kind) != items_json]

    async def _host_state_loop(self) -> None:
        """What the host is and runs, checked less often than samples (each check in a worker thread): systemd's
        services every services_every seconds, the inventory every INVENTORY_EVERY seconds (each sent as a snapshot
        when it changed)."""
        now = trio.current_time()
        next_services = now + min(self.config.interval, 1.0)
        next_inventory = now + INVENTORY_EVERY
        while True:
            await trio.sleep_until(min(next_services, next_inventory))
            now = trio.current_time()
            if now >= next_services:
                # Never more often than samples: the server allows one snapshot of a kind per interval.
                next_services = now + max(self.config.services_every, self.config.interval)
                if self.services.available:
                    await self.check_services()
            if now >= next_inventory:
                next_inventory = now + INVENTORY_EVERY
                await self.check_inventory()

    async def check_services(self) -> None:
        try:
            items = await self._to_thread(self.services.collect)
        except Exception as exc:
            log.warning("reading service states failed: %s", _describe(exc))
            return
        if items is not None:
            self.queue_snapshot("services", 1, items, time.time())

    async def check_inventory(self) -> None:
        try:
            inventory = await self._to_thread(self.collector.inventory)
        except Exception as exc:
            log.warning("reading the inventory failed: %s", _describe(exc))
            return
        if inventory_differs(self._facts.get("inventory"), inventory):
            self._facts["inventory"] = inventory  # the next hello carries it too
            self.queue_snapshot("inventory", 1, [inventory], time.time())

    # connections -----------------------------------------------------------------------------------------------

    async def _connection_loop(self) -> int:
        cfg = self.config
        while True:
            ended: Optional[Ended] = None
            gone = False
            level = logging.WARNING
            try:
                ended = await self._connect_and_serve()
                what, level = ended.what, ended.level
            except AgentStop as exc:
                log.error("%s", _one_line(str(exc)))
                return 1
            except trio_websocket.ConnectionRejected as exc:
                if exc.status_code == 401:
                    log.error("secret rejected by %s (HTTP 401): check AGENT_SECRET (a new one comes from the "
                              "bot's /newkey command); stopping", self.server)
                    return 1
                what = f"{self.server} refused the connection: HTTP {exc.status_code}"
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                    trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, ssl.SSLError) as exc:
                if isinstance(exc, trio.TooSlowError):
                    reason = f"no answer within {cfg.connect_timeout:g} s"
                elif server_busy(exc):
                    reason, level = "the server is busy (too many agents connecting at once)", logging.INFO
                else:
                    reason = _describe(exc)
                    gone = server_gone(exc)
                what = f"cannot connect to {self.server}: {reason}"
            except Exception as exc:  # a bug or a library surprise: keep the host monitored, say what happened
                log.debug("connection failure", exc_info=True)
                what = f"connection to {self.server} failed unexpectedly: {_describe(exc)}"
                level = logging.ERROR
            now = trio.current_time()
            if ended is None:
                retry = self.reconnect.failed(gone, now)
            else:
                if ended.up_for is not None and ended.up_for >= cfg.stable_after:
                    self._failures.reset()  # a new run of failures starts: this one is logged in full
                retry = self.reconnect.closed(ended.code, ended.up_for, now)
            if retry.expected and level == logging.WARNING:
                level = logging.INFO  # the server said it was restarting: refusals meanwhile are no surprise
            # One line per retry would be a line a second at first, and a server could provoke them at will:
            # thinned out (Repeats), each logged line saying how many were left out. _one_line: the text may hold
            # what the server sent (close reasons, HTTP responses in exception messages).
            line = _one_line(f"{what}; retrying in {retry.delay:.1f} s ({len(self.buffer)} samples waiting)")
            left_out = self._failures.admit(now)
            if left_out is None:
                log.debug("%s", line)
            else:
                log.log(level, "%s%s", line, _left_out(left_out))
            await trio.sleep(retry.delay)

    def _check_pin(self, der: Optional[bytes]) -> Optional[str]:
        """Raise AgentStop when the certificate is not the pinned one. Returns a fingerprint to save (TOFU)."""
        if not self.config.verify_ssl:
            return None
        if not der:
            raise trio.BrokenResourceError("the server sent no certificate")
        seen = cert_fingerprint(der)
        where: Optional[Path] = None
        if self.config.fingerprint:
            expected, source = self.config.fingerprint, "AGENT_FINGERPRINT"
        else:
            try:
                stored = read_pin(self.config)
            except FingerprintFileError as exc:
                raise AgentStop(f"{exc}; stopping") from None
            if stored is not None:
                expected, stored_server, where = stored
                source = str(where)
                if stored_server is not None and stored_server != self.server:
                    source += f", saved for {stored_server}"
            elif self._pinned is not None:  # trusted earlier in this run, but no file could keep it
                expected, source = self._pinned, "trusted on first use earlier in this run"
            else:
                return seen
        if seen != expected:
            fix = ("set AGENT_FINGERPRINT (in the environment or .env) to the value `python -m mbot fingerprint` "
                   "prints on the server")
            if where is not None:
                fix = f"delete {where} to trust the new certificate on first use, or {fix}"
            raise AgentStop(
                f"the server certificate changed: {self.server} presented fingerprint {seen}, expected {expected} "
                f"(from {source}). Nothing was sent. If the server was reinstalled, {fix}; then restart the agent")
        return None

    async def _open_stream(self) -> Tuple[trio.SSLStream, Optional[str]]:
        cfg = self.config
        stream = await trio.open_ssl_over_tcp_stream(cfg.server, cfg.port, ssl_context=self._ssl,
                                                     https_compatible=True)
        try:
            await stream.do_handshake()
            to_save = self._check_pin(stream.getpeercert(binary_form=True))
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream, to_save

    async def _connect_and_serve(self) -> Ended:
        """One connection, from TCP connect to close: see _after_close for what it returns. Raises on a failure to
        connect, AgentStop when the server refuses this agent for good."""
        cfg = self.config
        deadline = trio.current_time() + cfg.connect_timeout
        with trio.fail_at(deadline):
            stream, to_save = await self._open_stream()
        host_header, headers = self._upgrade_request()
        conn = None
        close_wait = 1.0
        try:
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_at(deadline):
                        ws = await trio_websocket.wrap_client_stream(nursery, stream, host_header, "/agent",
                                                                     extra_headers=headers)
                    if to_save:
                        self._save_fingerprint(to_save)
                    conn = _Connection(ws, nursery.cancel_scope)
                    await self._serve(conn)
                except BaseException as exc:
                    if any(isinstance(e, trio.Cancelled) for e in _leaves(exc)):
                        close_wait = 0.25  # shutting down: say goodbye, but do not linger
                    raise
                finally:
                    with trio.CancelScope(shield=True):
                        if conn is not None:
                            with trio.move_on_after(close_wait):
                                await conn.ws.aclose()
                        await trio.aclose_forcefully(stream)
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One real error, maybe beside the Cancelled of the tasks it brought down: raise that error alone, so
            # the connection loop sees what happened and retries. A cancellation from outside (shutdown) is not
            # lost: trio delivers it again at the loop's next checkpoint.
            errors = [leaf for leaf in _leaves(group) if not isinstance(leaf, trio.Cancelled)]
            if len(errors) == 1:
                raise errors[0] from None
            raise
        if conn is None:  # pragma: no cover - the nursery raises when the upgrade does not finish
            raise trio.BrokenResourceError("the connection ended during the WebSocket upgrade")
        return self._after_close(conn)

    def _upgrade_request(self) -> Tuple[str, List[Tuple[bytes, bytes]]]:
        """(Host header, extra headers) of the WebSocket upgrade."""
        cfg = self.config
        host_header = self.server if cfg.port not in (80, 443) else cfg.server
        return host_header, [(b"Authorization", b"Bearer " + cfg.secret.encode("ascii"))]

    async def check_connection(self) -> None:
        """Connect once, send the hello, wait for the server's first ack, close (1000): `--check-connection`, which
        the installer runs to say at once whether these settings work. Raises what a connection attempt raises
        (AgentStop, ConnectionRejected, OSError, TooSlowError...; explain_failure() words it); a trusted-on-first-use
        fingerprint is not saved."""
        cfg = self.config
        with trio.fail_after(cfg.connect_timeout + cfg.ack_timeout):
            stream, _ = await self._open_stream()
            try:
                async with trio.open_nursery() as nursery:
                    host_header, headers = self._upgrade_request()
                    ws = await trio_websocket.wrap_client_stream(nursery, stream, host_header, "/agent",
                                                                 extra_headers=headers)
                    self.link.connected()
                    await ws.send_message(json.dumps(self.hello(), separators=(",", ":")))
                    last_error = ""
                    while True:
                        try:
                            event = self.link.receive(await ws.get_message())
                        except trio_websocket.ConnectionClosed as exc:
                            reason = exc.reason
                            raise AgentStop(f"{self.server} closed the connection before acknowledging the hello: "
                                            f"code {reason.code}" + (f" ({_quote(reason.reason, 120)})" if reason.reason
                                                                     else "")
                                            + (f"; server said: {last_error}" if last_error else "")) from None
                        if isinstance(event, Acked) and event.first:
                            break
                        if isinstance(event, ServerError):
                            last_error = event.text
                    await ws.aclose()
                    nursery.cancel_scope.cancel()
            finally:
                await trio.aclose_forcefully(stream)

    def _save_fingerprint(self, fp: str) -> None:
        """Keep a pin trusted on first use: in the first of pin_files that can be written, and in memory. It is
        never dropped silently: when no file takes it, this run still holds it and the log says so."""
        self._pinned = fp
        failed = []
        for path, make_parents in pin_files(self.config):
            try:
                write_fingerprint_file(path, fp, self.server, make_parents=make_parents)
            except OSError as exc:
                failed.append(f"not {path}: {_describe(exc)}")
                continue
            log.info("trusting %s's certificate from now on (first use): fingerprint %s saved to %s%s", self.server,
                     fp, path, f" ({'; '.join(failed)})" if failed else "")
            return
        if not pin_files(self.config):
            failed.append("HOME is not set and there is no settings file")
        log.error("trusting %s's certificate (first use), fingerprint %s, for this run only: it could not be saved "
                  "(%s). After a restart the agent would trust whatever certificate it sees first: set "
                  "AGENT_FINGERPRINT=%s in .env", self.server, fp, "; ".join(failed), fp)

    def _after_close(self, conn: _Connection) -> Ended:
        """After a connection: how long it was up, its close code, what happened and at which log level."""
        closed = conn.ws.closed
        code = closed.code if closed is not None else None
        reason = (closed.reason or "") if closed is not None else ""
        detail = f"code {code}" + (f" ({_quote(reason, 120)})" if reason else "") + (
            f"; server said: {conn.last_error}" if conn.last_error else "")
        if code == CLOSE_REVOKED:
            raise AgentStop(f"{self.server} revoked this agent's key ({detail}); get a new secret with /newkey, "
                            "set AGENT_SECRET and restart; stopping")
        level = logging.INFO if code in (1000, 1001, 1012, 4001) else logging.WARNING
        if conn.dropped_because:
            # The agent closed it (its own close says 1000): to Reconnect, a connection gone without a close frame.
            detail, level, code = conn.dropped_because, logging.WARNING, None
        discarded = self.link.closed(code)
        if discarded is not None:
            log.error("the server refused samples %s..%d %d times in a row; dropped those %d samples (the server "
                      "will be told how many)", discarded.first, discarded.last, discarded.strikes, discarded.count)
        up_for = None if conn.up_since is None else trio.current_time() - conn.up_since
        return Ended(up_for, code, f"disconnected from {self.server}: {detail}", level)

    async def _serve(self, conn: _Connection) -> None:
        self.link.connected()
        await self.refresh_facts()  # disks come and go
        if "inventory" in self._facts:  # the hello carries it: no snapshot of it needed on this connection
            self._snapshots.pop("inventory", None)
            conn.snapshots_sent["inventory"] = json.dumps([self._facts["inventory"]], separators=(",", ":"),
                                                          sort_keys=True)
        await conn.ws.send_message(json.dumps(self.hello(), separators=(",", ":")))
        async with trio.open_nursery() as nursery:
            # Either task ending (connection closed, timeout) ends the connection.
            conn.tasks = nursery
            nursery.start_soon(self._receiver, conn, nursery.cancel_scope)
            nursery.start_soon(self._sender, conn, nursery.cancel_scope)
            nursery.start_soon(self._keepalive, conn, nursery.cancel_scope)

    def hello(self) -> Dict[str, Any]:
        frame: Dict[str, Any] = {"type": "hello", "v": PROTOCOL_VERSION, "agent": __version__, "epoch": self.epoch}
        frame.update(self._facts)
        frame["interval"] = self.config.interval
        frame["capabilities"] = self.config.capabilities
        return frame

    async def refresh_facts(self) -> None:
        self._facts = await self._to_thread(self.collector.host_facts)

    async def _sender(self, conn: _Connection, done: trio.CancelScope) -> None:
        ws = conn.ws
        try:
            with trio.move_on_after(self.config.ack_timeout):
                await conn.hello_acked.wait()
            if not conn.hello_acked.is_set():
                conn.dropped_because = f"no answer to the hello within {self.config.ack_timeout:g} s"
                return
            link = self.link
            backlog = len(self.buffer)
            conn.up_since = trio.current_time()
            failures = self._failures
            since = (f"; after {failures.count} failures in {trio.current_time() - failures.started:.0f} s"
                     if failures.count > 1 and failures.started is not None else "")
            log.info("connected to %s (epoch %d; server has up to seq %d; %d samples to send%s)", self.server,
                     self.epoch, link.hello_ack_seq, backlog, since)
            while True:
                new_sample = self._new_sample
                if link.loss_to_report:  # samples were lost: the next one sent says how many (module doc)
                    await self._to_thread(link.report_loss)
                # All of these are sent, in order (even if the spool evicts some meanwhile), or the connection ends.
                sent_any = False
                for frame, last_seq in link.frames():
                    await ws.send_message(frame)
                    link.sent(last_seq)
                    sent_any = True
                for kind, items_json, frame in self._unsent_snapshots(conn):
                    await ws.send_message(frame)
                    conn.snapshots_sent[kind] = items_json
                    sent_any = True
                if not sent_any:
                    await new_sample.wait()
                    if link.gather:  # a busy server: what comes meanwhile goes in the same frame
                        await trio.sleep(link.gather)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            done.cancel()

    async def _receiver(self, conn: _Connection, done: trio.CancelScope) -> None:
        try:
            while True:
                message = await conn.ws.get_message()
                conn.heard_at = trio.current_time()
                event = self.link.receive(message)
                if isinstance(event, Acked):
                    if event.first:
                        conn.hello_acked.set()
                elif isinstance(event, CommandRequest):
                    await self._on_command(conn, event)
                elif isinstance(event, (SpeedTestRequest, SpeedTestEnd, Binary)):
                    await self._on_speedtest(conn, event)
                elif isinstance(event, CheckList):
                    for why in event.skipped:
                        self._note_server_noise("not running a check the server sent: %s", why)
                    if {s.name: s for s in event.checks} != self.checks.specs:
                        log.info("checks from the server: %d (%s)", len(event.checks),
                                 ", ".join(s.name for s in event.checks[:5]) or "none")
                    self.checks.set_checks(event.checks)
                elif isinstance(event, ServerError):
                    conn.last_error = event.text
                    self._note_server_noise("server error %s", event.text)
                elif event.note:
                    self._note_server_noise("%s", event.why)
                else:
                    log.debug("%s", event.why)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            done.cancel()

    async def _keepalive(self, conn: _Connection, done: trio.CancelScope) -> None:
        """Ping when the server said nothing for ping_interval: its acks (every few intervals) already show that
        the connection lives, and each ping costs both ends a frame each way."""
        try:
            while True:
                await trio.sleep(self.config.ping_interval)
                while (quiet_since := conn.heard_at) + self.config.ping_interval > trio.current_time():
                    await trio.sleep_until(quiet_since + self.config.ping_interval)
                with trio.move_on_after(self.config.ping_timeout):
                    await conn.ws.ping()
                    continue
                conn.dropped_because = f"no answer to a ping within {self.config.ping_timeout:g} s"
                done.cancel()
                return
        except trio_websocket.ConnectionClosed:
            done.cancel()

    async def _on_speedtest(self, conn: _Connection, event: "SpeedTestRequest | SpeedTestEnd | Binary") -> None:
        """The speed test (docs/protocol.md): count a download's bytes and say how many; send an upload."""
        if isinstance(event, Binary):
            if conn.download is not None:
                conn.download[1] += event.size
            else:
                self._note_server_noise("ignoring a binary frame of %d bytes from the server", event.size)
        elif isinstance(event, SpeedTestEnd):
            if conn.download is not None and conn.download[0] == event.test_id:
                test_id, received = conn.download
                conn.download = None
                await conn.ws.send_message(json.dumps({"type": "speedtest", "id": test_id, "bytes": received}))
        elif event.direction == "down":
            conn.download = [event.test_id, 0]
        elif trio.current_time() - self._last_upload < SPEEDTEST_UPLOAD_EVERY or conn.tasks is None:
            self._note_server_noise("the server asked for a speed test upload within %g s of the last; refused",
                                    SPEEDTEST_UPLOAD_EVERY)
            await conn.ws.send_message(json.dumps({"type": "speedtest", "id": event.test_id, "bytes": 0}))
        else:
            self._last_upload = trio.current_time()
            conn.tasks.start_soon(self._upload, conn, event)

    async def _upload(self, conn: _Connection, request: "SpeedTestRequest") -> None:
        chunk = os.urandom(SPEEDTEST_CHUNK)  # random: nothing on the way can compress it
        sent, deadline = 0, trio.current_time() + request.seconds
        try:
            while sent + len(chunk) <= request.max_bytes and trio.current_time() < deadline:
                await conn.ws.send_message(chunk)  # samples interleave: the socket's lock is fair
                sent += len(chunk)
            await conn.ws.send_message(json.dumps({"type": "speedtest", "id": request.test_id, "bytes": sent}))
        except trio_websocket.ConnectionClosed:
            pass
        log.info("speed test: sent %d bytes to the server (for up to %g s)", sent, request.seconds)

    def _note_server_noise(self, message: str, *args: Any) -> None:
        """Log something the server sent that the agent did not act on, thinned out (Repeats): a server that sends
        the same bad thing a thousand times costs a few lines."""
        left_out = self._server_noise.admit(trio.current_time())
        if left_out is None:
            log.debug(message, *args)
        else:
            log.warning(message + "%s", *args, _left_out(left_out))

    async def _on_command(self, conn: _Connection, command: CommandRequest) -> None:
        command_id, action, expires = command.command_id, command.action, command.expires
        ok, message, ran = await self._run_power(action, expires)
        if ran:  # what the host did is always in its log
            log.warning("the server asked for %s (command %s): %s", _quote(action, 20), _quote(command_id, 64),
                        message)
        else:
            self._note_server_noise("the server asked for %s (command %s): %s", _quote(action, 20),
                                    _quote(command_id, 64), message)
        await conn.ws.send_message(json.dumps({"type": "result", "id": command_id, "ok": ok, "message": message}))

    async def _run_power(self, action: Any, expires: Any) -> Tuple[bool, str, bool]:
        """(ok, message for the result, whether the agent went as far as running the OS command: then the line
        is always logged, since it is what the host did, while refusals are thinned out)."""
        if action not in POWER_ACTIONS:
            return False, "unknown action", False
        problem = command_expiry_problem(expires, time.time())
        if problem:
            return False, problem, False
        if not self.config.allow_power:
            return False, "disabled", False
        problem = await self._to_thread(self.power_limits.check)
        if problem is None:
            problem = await self._to_thread(self.power_limits.record)
        if problem:
            return False, problem, False
        argv = power_argv(action, sys.platform, self.config.power_command)
        try:
            process = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.PIPE)
        except OSError as exc:
            return False, f"cannot run {argv[0]}: {exc.strerror or exc}", True
        # Answer as soon as the OS accepted the request: a reboot may not leave time to answer afterwards. A
        # command still running after a few seconds is left to finish (it is the shutdown itself).
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            return True, f"{action} started", True
        error = b""
        if process.stderr is not None:
            with trio.move_on_after(1):
                error = await process.stderr.receive_some(2000)
            await process.stderr.aclose()
        if process.returncode != 0:
            detail = error.decode(errors="replace").strip().splitlines()
            return False, f"{argv[0]} exited with {process.returncode}" + (f": {detail[-1]}" if detail else ""), True
        return True, f"{action} started", True


async def run_agent(config: AgentConfig, collector: Optional[Collector] = None) -> int:
    """Run until the server refuses this agent (returns 1) or until cancelled. Collection never stops while the
    server is away; samples wait in the spool (memory, or AGENT_SPOOL_FILE) and are sent once it is back."""
    log.info("mbot agent %s on %s: a sample every %g s to %s", __version__, socket.gethostname(), config.interval,
             server_id(config.server, config.port))
    log.info("server certificate: %s", _pin_description(config))
    spool = await trio.to_thread.run_sync(open_spool, config.spool_file, config.spool_capacity)
    try:
        if isinstance(spool, SqliteSpool):
            if spool.resumed:
                log.info("spool %s: going on with epoch %d after seq %d, %d unsent sample(s)", spool.path,
                         spool.epoch, spool.seq, len(spool))
            else:
                log.info("spool %s: new, epoch %d", spool.path, spool.epoch)
        own = collector is None
        if collector is None:
            collector = await trio.to_thread.run_sync(lambda: Collector(temps_every=config.temps_every,
                                                                        processes=config.processes))
        try:
            agent = Agent(config, collector, spool)
            await agent.refresh_facts()
            return await agent.run()
        finally:
            if own:
                collector.close()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(spool.close)


# --- command line ----------------------------------------------------------------------------------------------


def _pin_description(config: AgentConfig) -> str:
    if not config.verify_ssl:
        return "NOT checked (AGENT_VERIFY_SSL=0)"
    if config.fingerprint:
        return f"pinned to {config.fingerprint} (AGENT_FINGERPRINT)"
    try:
        saved = read_pin(config)
    except FingerprintFileError as exc:
        return str(exc)
    if saved:
        return f"pinned to {saved[0]} ({saved[2]})"
    files = pin_files(config)
    return "trusted on first use and saved to " + (" or, failing that, ".join(str(p) for p, _ in files) or
                                                   "nowhere (no HOME, no settings file): set AGENT_FINGERPRINT")


def _check() -> int:
    """What this host would send, without sending anything (the sample needs one second to measure CPU), and
    whether the agent can see containers (AGENT_CONTAINER_SOCKET from the environment)."""
    collector = Collector()
    try:
        time.sleep(1.0)
        report: Dict[str, Any] = {"agent": __version__, "host": collector.host_facts(),
                                  "metrics": collector.collect(),
                                  "snapshots": {kind: items for kind, (_, items) in collector.snapshots().items()}}
    finally:
        collector.close()
    path, line = find_container_socket(os.environ.get("AGENT_CONTAINER_SOCKET", "").strip() or None, os.environ)
    report["containers"] = line
    if path is not None:
        watcher = ContainerWatcher(functools.partial(engine_get, path), cgroups=host_cgroups())
        try:
            polled = watcher.poll()
            report["containers"] = polled.items
            report["metrics"]["containers"] = polled.series
        except EngineError as exc:
            report["containers"] = f"{line}, but it does not answer: {exc}"
        finally:
            watcher.close()
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def _check_failure(server: str, exc: BaseException, timeout: float) -> Optional[str]:
    """One line saying why --check-connection failed; None for what is not a connection failure (a bug)."""
    errors = [leaf for leaf in _leaves(exc) if not isinstance(leaf, trio.Cancelled)]
    exc = errors[0] if errors else exc
    if isinstance(exc, AgentStop):
        return _one_line(str(exc))
    if isinstance(exc, trio_websocket.ConnectionRejected):
        if exc.status_code == 401:
            return (f"secret rejected by {server} (HTTP 401): check AGENT_SECRET (a new one comes from the bot's "
                    "/newkey command)")
        return f"{server} refused the connection: HTTP {exc.status_code}"
    if isinstance(exc, trio.TooSlowError):
        return f"cannot connect to {server}: no answer within {timeout:g} s"
    if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.HandshakeError,
                        trio_websocket.ConnectionClosed, ssl.SSLError)):
        return _one_line(f"cannot connect to {server}: {_describe(exc)}")
    return None


async def _check_connection(config: AgentConfig) -> int:
    collector = await trio.to_thread.run_sync(lambda: Collector(temps_every=config.temps_every))
    try:
        agent = Agent(config, collector)
        await agent.refresh_facts()
        try:
            await agent.check_connection()
        except BaseException as exc:
            problem = _check_failure(agent.server, exc, config.connect_timeout + config.ack_timeout)
            if problem is None:
                raise
            print(f"mbot agent: {problem}", file=sys.stderr)
            return 1
    finally:
        collector.close()
    print(f"mbot agent: connected to {agent.server}; the server accepted this agent's secret and hello")
    return 0


def systemd_unit(python: str, script: str, workdir: str, env_file: str, user: str) -> str:
    """The unit deploy/mbot-agent.service shows, for this file's location."""
    return f"""[Unit]
Description=mbot agent: streams this host's metrics to an mbot server
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
WorkingDirectory={workdir}
EnvironmentFile={env_file}
ExecStart={python} {script}
Restart=always
RestartSec=5
# 1: the server refused this agent (secret rejected, key revoked, certificate changed); 2: bad settings.
# Restarting cannot fix either: fix the settings, then `systemctl restart mbot-agent`.
RestartPreventExitStatus=1 2
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes
# AGENT_ALLOW_POWER=1 only lets the agent pass a reboot/shutdown request to the OS. An unprivileged user also
# needs the right to do it: a polkit rule granting org.freedesktop.login1.reboot and .power-off to User=, or
# User=root (not recommended). Without it the chat shows the OS's refusal.

[Install]
WantedBy=multi-user.target
"""


def _install_systemd(env_file: str, unit_dir: str) -> int:
    script = os.path.abspath(__file__)
    env_path = os.path.abspath(env_file)
    if not os.path.exists(env_path):
        print(f"mbot agent: {env_path} does not exist yet: run the agent once on a terminal (it asks for its "
              "settings and saves them there), or save there the .env that /newkey sends; then --install-systemd",
              file=sys.stderr)
        return 2
    # Run as whoever owns the settings (the user who set the agent up), never root by default.
    import pwd

    user = os.environ.get("SUDO_USER") or pwd.getpwuid(os.stat(env_path).st_uid).pw_name
    unit = systemd_unit(sys.executable, script, os.path.dirname(env_path), env_path, user)
    target = os.path.join(unit_dir, "mbot-agent.service")
    if os.geteuid() != 0:
        print(f"# Not root: to install, run this as root (or with sudo):\n\ncat > {target} <<'UNIT'\n{unit}UNIT\n"
              "systemctl daemon-reload && systemctl enable --now mbot-agent")
        return 0
    with open(target, "w") as out:
        out.write(unit)
    print(f"wrote {target} (runs as {user}); now: systemctl daemon-reload && systemctl enable --now mbot-agent")
    if user == "root":
        print("note: it runs as root because root owns the settings; better: useradd --system mbot-agent, "
              f"chown -R mbot-agent {os.path.dirname(env_path)}, and set User=mbot-agent in {target}")
    return 0


# Asked on a terminal when neither the environment nor .env has them. The fingerprint only while setting up.
_PROMPTS = (("AGENT_SERVER_IP", "mbot server address (host name or IP): ", False),
            ("AGENT_SECRET", "agent secret (from the bot's /newkey): ", True),
            ("AGENT_FINGERPRINT", "server fingerprint (from /newkey; Enter: trust the server on first use): ", False))


def _ask(prompt: str, secret: bool = False) -> str:
    if secret:
        import getpass

        return getpass.getpass(prompt).strip()
    return input(prompt).strip()


async def _run_until_signal(config: AgentConfig) -> int:
    import signal

    status = 0

    async def agent(cancel_scope: trio.CancelScope) -> None:
        nonlocal status
        status = await run_agent(config)
        cancel_scope.cancel()

    async def on_sigterm(cancel_scope: trio.CancelScope) -> None:
        try:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("SIGTERM: stopping")
                    cancel_scope.cancel()
                    return
        except (ValueError, RuntimeError, AttributeError):  # not the main thread, or no SIGTERM here
            return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent, nursery.cancel_scope)
        nursery.start_soon(on_sigterm, nursery.cancel_scope)
    return status


class _OneLineFormatter(logging.Formatter):
    """One log line per event, whatever a message holds: non-printable characters in it are escaped. The agent
    quotes what the server sends itself; this also covers what a library logs. (Tracebacks keep their lines.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:
        original = record.message
        record.message = _one_line(original)
        try:
            return super().formatMessage(record)
        finally:
            record.message = original


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mbot_agent.py", description="mbot agent: streams this host's metrics "
                                     "to an mbot server. Settings come from AGENT_* variables and ./.env.")
    parser.add_argument("--env-file", default=ENV_FILE, help="settings file (default: ./.env)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"mbot agent {__version__}")
    parser.add_argument("--check", action="store_true",
                        help="collect one sample, print it (what would be sent) and exit; sends nothing")
    parser.add_argument("--check-connection", action="store_true",
                        help="connect to the server once with these settings, send the hello, wait for its answer "
                             "and exit: 0 when it accepted the agent, 1 (with the reason) when not; sends no "
                             "samples")
    parser.add_argument("--install-systemd", action="store_true",
                        help="write a systemd unit for this file and its settings (as root), or print what to run")
    parser.add_argument("--systemd-dir", default="/etc/systemd/system", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        return _check()
    if args.install_systemd:
        return _install_systemd(args.env_file, args.systemd_dir)

    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    logging.getLogger("trio-websocket").setLevel(logging.INFO)

    try:
        file_values = read_env_file(args.env_file)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"mbot agent: cannot read {args.env_file}: {exc}", file=sys.stderr)
        return 2
    environ = dict(os.environ)
    typed: Dict[str, str] = {}  # what the user answers at the prompts: the only values ever saved to .env
    try:
        if sys.stdin.isatty():
            for name, question, secret in _PROMPTS:
                if name == "AGENT_FINGERPRINT" and not typed:
                    break  # asked only while setting up (server or secret asked): not on every start
                if not environ.get(name, "").strip() and not file_values.get(name, "").strip():
                    answer = _ask(question, secret)
                    if answer:
                        environ[name] = typed[name] = answer
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return 2
    try:
        config = config_from_env(environ, file_values)
    except ConfigError as exc:
        print(f"mbot agent: {exc}", file=sys.stderr)
        return 2
    config = dataclasses.replace(config, env_file=os.path.abspath(args.env_file))
    if typed:
        if config.fingerprint and "AGENT_FINGERPRINT" in typed:
            typed["AGENT_FINGERPRINT"] = config.fingerprint
        try:
            if save_env_file(args.env_file, typed):
                log.info("settings saved to %s: %s", os.path.abspath(args.env_file), ", ".join(sorted(typed)))
        except (OSError, ValueError) as exc:
            log.warning("cannot save settings to %s: %s", args.env_file, _describe(exc))

    host_proc = os.environ.get("AGENT_HOST_PROC", "").strip()
    if host_proc and hasattr(psutil, "PROCFS_PATH"):
        psutil.PROCFS_PATH = host_proc
    if args.check_connection:
        try:
            return trio.run(_check_connection, config)
        except KeyboardInterrupt:
            return 1
    try:
        return trio.run(_run_until_signal, config)
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        if all(isinstance(e, (KeyboardInterrupt, trio.Cancelled)) for e in _leaves(group)):
            return 0
        raise


if __name__ == "__main__":
    sys.exit(main())
