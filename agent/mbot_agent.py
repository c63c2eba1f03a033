#!/usr/bin/env python3
"""mbot agent: collects this host's metrics and streams them to the mbot server over one TLS WebSocket.

Copy this one file to a host and run `python mbot_agent.py`. It needs psutil, trio and trio-websocket
(`pip install psutil trio trio-websocket`), and nvidia-ml-py for NVIDIA GPUs (used only when importable).
Runs on Python 3.9+ (Linux; macOS and Windows with fewer metrics).

Configuration comes from the environment, then from `.env` in the working directory (written after the first
run, mode 0600; the environment wins over the file):

    AGENT_SECRET       the secret from /newkey (required)
    AGENT_SERVER_IP    server host name or IP (asked for on a terminal when unset)
    AGENT_PORT         server port, 8000
    AGENT_INTERVAL     seconds between samples, 5
    AGENT_FINGERPRINT  SHA-256 of the server certificate (from /newkey); else trusted on first use and kept in
                       AGENT_FINGERPRINT_FILE (~/.bot_fingerprint.json)
    AGENT_VERIFY_SSL   1; 0 turns certificate pinning off (not recommended)
    AGENT_ALLOW_POWER  0; 1 lets the server ask this host to reboot or shut down (the agent must then run as a
                       user allowed to: root, or one with a polkit/sudo rule for `systemctl reboot`)
    AGENT_POWER_COMMAND  replaces the OS command for reboot/shutdown; `{action}` is replaced by the action
                       (for tests and unusual systems, e.g. "sudo /sbin/shutdown -r now")

The wire protocol is docs/protocol.md in the mbot repository. Exit status: 0 on Ctrl-C or SIGTERM, 1 when the server
refuses this agent (secret rejected, key revoked, certificate changed), 2 for a bad configuration.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import socket
import ssl
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import psutil
import trio
import trio_websocket

try:  # Python 3.11+; trio brings the backport on older versions
    BaseExceptionGroup  # noqa: B018
except NameError:  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[no-redef]

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

log = logging.getLogger("mbot.agent")

# --- limits ----------------------------------------------------------------------------------------------------

MAX_FRAME_BYTES = 1 << 20  # the server closes the connection (1009) on a bigger frame
BATCH_MAX_SAMPLES = 500
BATCH_MAX_BYTES = 900_000  # stays under MAX_FRAME_BYTES with room for the envelope
BUFFER_SECONDS = 86_400  # unacked samples kept while the server is away: 24 h ...
BUFFER_MAX_SAMPLES = 100_000  # ... but never more than this many (short intervals)
MAX_TEMPS = 16
MAX_NET_IFACES = 64
MAX_DISKS = 64

CLOSE_REVOKED = 4003
_DATA_REJECTED = (1007, 1008, 1009)  # closes that may be caused by a sample the server refuses
_POISON_STRIKES = 3

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
    # Tuning, not read from the environment (tests shorten them with dataclasses.replace):
    connect_timeout: float = 15.0  # TCP + TLS + HTTP upgrade
    ack_timeout: float = 30.0  # hello -> first ack
    ping_interval: float = 30.0  # WebSocket ping, to notice a silently dead connection
    ping_timeout: float = 30.0
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 30.0  # a connection up this long resets the backoff
    buffer_max: Optional[int] = None  # default: 24 h of samples at `interval`
    temps_every: int = 6  # read temperature sensors on every Nth sample

    @property
    def fingerprint_path(self) -> Path:
        return Path(os.path.expanduser(self.fingerprint_file))

    @property
    def capabilities(self) -> List[str]:
        return ["power"] if self.allow_power else []


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
        if not (math.isfinite(interval) and 0 < interval <= 86400):
            raise ConfigError("AGENT_INTERVAL", f"must be more than 0 and at most 86400 seconds, got {raw!r}")

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

    return AgentConfig(secret=secret, server=server, port=port, interval=interval, verify_ssl=verify_ssl,
                       fingerprint=fingerprint, allow_power=allow_power, fingerprint_file=fingerprint_file,
                       power_command=power_command)


def config_to_env(config: AgentConfig) -> Dict[str, str]:
    """What the .env file keeps so that the next start needs no variables."""
    values = {
        "AGENT_SECRET": config.secret,
        "AGENT_SERVER_IP": config.server,
        "AGENT_PORT": str(config.port),
        "AGENT_INTERVAL": f"{config.interval:g}",
        "AGENT_VERIFY_SSL": "1" if config.verify_ssl else "0",
        "AGENT_ALLOW_POWER": "1" if config.allow_power else "0",
    }
    if config.fingerprint:
        values["AGENT_FINGERPRINT"] = config.fingerprint
    if config.fingerprint_file != DEFAULT_FINGERPRINT_FILE:
        values["AGENT_FINGERPRINT_FILE"] = config.fingerprint_file
    if config.power_command:
        values["AGENT_POWER_COMMAND"] = config.power_command
    return values


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


def _write_private(path: Path, text: str) -> None:
    """Write text to path atomically, readable by its owner only (0600) whatever the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(str(tmp), 0o600)
        os.replace(str(tmp), str(path))
    except BaseException:
        try:
            os.unlink(str(tmp))
        except OSError:
            pass
        raise


def write_env_file(path: "os.PathLike[str] | str", values: Mapping[str, str]) -> None:
    """Write KEY=value lines (mode 0600). Values with spaces or quotes are written in double quotes."""
    lines = ["# mbot agent settings, written by mbot_agent.py; variables set in the environment win"]
    for key, value in values.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"{key}: a value cannot span lines")
        if value and (value[0] in "'\"" or any(c.isspace() or c == "#" for c in value)):
            value = f'"{value}"'
        lines.append(f"{key}={value}")
    _write_private(Path(path), "\n".join(lines) + "\n")


def save_env_file(path: "os.PathLike[str] | str", config: AgentConfig) -> bool:
    """Keep config in the .env file (other keys in it are kept). Returns whether the file changed."""
    current = read_env_file(path)
    merged = dict(current)
    merged.update(config_to_env(config))
    if merged == current and Path(path).exists():
        return False
    write_env_file(path, merged)
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
    except FileNotFoundError:
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


def write_fingerprint_file(path: "os.PathLike[str] | str", fp: str, server: Optional[str] = None) -> None:
    data: Dict[str, str] = {"fp": fp}
    if server:
        data["server"] = server
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, json.dumps(data) + "\n")


def make_ssl_context() -> ssl.SSLContext:
    """Pin-only trust: the server's certificate is self-signed, its fingerprint is what the agent checks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# --- unacked samples -------------------------------------------------------------------------------------------


def buffer_capacity(interval: float) -> int:
    return max(1, min(BUFFER_MAX_SAMPLES, int(math.ceil(BUFFER_SECONDS / interval))))


class SampleBuffer:
    """Samples the server has not acked yet, oldest first, each kept as its encoded JSON object.

    Seqs are consecutive: samples are appended in seq order and leave only from the front (ack or overflow).
    """

    def __init__(self, maxlen: int) -> None:
        self._items: "deque[Tuple[int, str]]" = deque(maxlen=maxlen)
        self.dropped = 0  # samples lost to overflow, ever

    def __len__(self) -> int:
        return len(self._items)

    @property
    def maxlen(self) -> int:
        return self._items.maxlen or 0

    @property
    def first_seq(self) -> Optional[int]:
        return self._items[0][0] if self._items else None

    @property
    def last_seq(self) -> Optional[int]:
        return self._items[-1][0] if self._items else None

    def append(self, seq: int, text: str) -> bool:
        """Add a sample; True when the buffer was full and the oldest sample was dropped for it."""
        if self._items and seq != self._items[-1][0] + 1:
            raise ValueError(f"seq {seq} does not follow {self._items[-1][0]}")
        full = len(self._items) == self._items.maxlen
        if full:
            self.dropped += 1
        self._items.append((seq, text))
        return full

    def ack(self, seq: int) -> int:
        """Forget every sample with seq <= `seq`; returns how many."""
        items = self._items
        removed = 0
        while items and items[0][0] <= seq:
            items.popleft()
            removed += 1
        return removed

    def pending_after(self, seq: int) -> List[Tuple[int, str]]:
        """The samples with seq above `seq`, oldest first."""
        if not self._items:
            return []
        start = max(0, seq - self._items[0][0] + 1)
        return list(itertools.islice(self._items, start, None))


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


def encode_sample(seq: int, ts: float, metrics: Mapping[str, Any]) -> str:
    """The stored form of a sample: '{"seq":..,"ts":..,"metrics":{..}}' (finite numbers only)."""
    obj = {"seq": seq, "ts": round(ts, 3), "metrics": metrics}
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or infinity from some sensor: leave those values out
        obj["metrics"] = _finite_only(metrics)
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)


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


class Collector:
    """Reads this host's metrics with psutil (and NVML). `collect()` blocks: run it in a worker thread.

    Not thread-safe: one collect() at a time.
    """

    def __init__(self, *, gpu: bool = True, temps_every: int = 6, partitions_ttl: float = 60.0) -> None:
        self._temps_every = max(1, temps_every)
        self._partitions_ttl = partitions_ttl
        self._partitions: List[str] = []
        self._partitions_at = -math.inf
        self._count = 0
        self._temps: Dict[str, float] = {}
        self._prev_disk: Optional[Tuple[int, int]] = None
        self._prev_net: Dict[str, Tuple[int, int]] = {}
        self._prev_at: Optional[float] = None
        self._failed: set = set()
        self._has_temps = hasattr(psutil, "sensors_temperatures")
        self._has_load = hasattr(os, "getloadavg")  # psutil emulates it on Windows with a thread: not wanted
        self.boot_time = psutil.boot_time()
        psutil.cpu_percent(interval=None)  # prime: the first sample measures from here
        psutil.cpu_percent(interval=None, percpu=True)
        self._nvml: Any = None
        self._gpus: List[Tuple[Any, str]] = []  # (handle, name)
        if gpu:
            self._init_gpus()

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

    @property
    def gpu_names(self) -> List[str]:
        return [name for _, name in self._gpus]

    def close(self) -> None:
        """Release NVML. Safe to call more than once."""
        nv, self._nvml = self._nvml, None
        self._gpus = []
        if nv is not None:
            try:
                nv.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown: %s", _describe(exc))

    # the rest --------------------------------------------------------------------------------------------------

    def disks(self) -> List[str]:
        """Mount points of real filesystems, one per device (cached for partitions_ttl seconds)."""
        now = time.monotonic()
        if now - self._partitions_at >= self._partitions_ttl:
            self._partitions_at = now
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
        }
        if mem_total:
            facts["mem_total"] = mem_total
        return facts

    def _note_failure(self, what: str, exc: BaseException) -> None:
        if what not in self._failed:
            self._failed.add(what)
            log.warning("cannot read %s on this host, leaving it out: %s", what, _describe(exc))
        else:
            log.debug("cannot read %s: %s", what, _describe(exc))

    def collect(self) -> Dict[str, Any]:
        """One sample's `metrics` object (docs/protocol.md). Rates are absent in the first sample."""
        m: Dict[str, Any] = {}
        now = time.monotonic()
        dt = None if self._prev_at is None else now - self._prev_at
        self._prev_at = now
        self._count += 1

        try:
            m["cpu"] = round(min(100.0, max(0.0, psutil.cpu_percent(interval=None))), 1)
            m["cpu_cores"] = [round(min(100.0, max(0.0, v)), 1) for v in psutil.cpu_percent(interval=None,
                                                                                             percpu=True)]
        except Exception as exc:
            self._note_failure("cpu", exc)
        if self._has_load:
            try:
                m["load"] = [round(max(0.0, v), 2) for v in os.getloadavg()]
            except Exception as exc:
                self._note_failure("load", exc)
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
            io = psutil.disk_io_counters(perdisk=False)
        except Exception as exc:
            io = None
            self._note_failure("disk I/O", exc)
        if io is not None:
            current = (io.read_bytes, io.write_bytes)
            prev, self._prev_disk = self._prev_disk, current
            if prev is not None and dt:
                rates = {}
                for key, now_v, prev_v in (("read", current[0], prev[0]), ("write", current[1], prev[1])):
                    if now_v >= prev_v:  # a counter reset: skip this one
                        rates[key] = round((now_v - prev_v) / dt, 1)
                if rates:
                    m["disk_io"] = rates

        try:
            nics = psutil.net_io_counters(pernic=True)
        except Exception as exc:
            nics = {}
            self._note_failure("network", exc)
        if nics:
            prev_net = self._prev_net
            self._prev_net = {}
            net = {}
            for name, counters in nics.items():
                if name in _LOOPBACK or name.startswith("Loopback"):
                    continue
                if len(self._prev_net) >= MAX_NET_IFACES:
                    break
                current = (counters.bytes_recv, counters.bytes_sent)
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
        try:
            m["procs"] = len(psutil.pids())
        except Exception as exc:
            self._note_failure("process count", exc)
        if self._gpus:
            m["gpus"] = self._gpu_metrics()
        return m


def _describe(exc: BaseException) -> str:
    """One line about an exception, with the root causes trio hides behind generic messages."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in list(_leaves(exc))[:3])
    text = str(exc)
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return f"{line} ({_describe(cause)})" if text else f"{type(exc).__name__}: {_describe(cause)}"
    return line


# --- the agent -------------------------------------------------------------------------------------------------


class AgentStop(Exception):
    """The server refuses this agent; retrying cannot help. The message says why and what to do."""


@dataclass
class _Connection:
    """One WebSocket connection's state, shared by its sender and receiver tasks."""

    ws: trio_websocket.WebSocketConnection
    cancel_scope: trio.CancelScope  # cancel to drop this connection (the agent then reconnects)
    hello_acked: trio.Event = field(default_factory=trio.Event)
    hello_ack_seq: int = 0
    acked_seq: int = 0  # highest ack seen on this connection
    first_frame_last_seq: Optional[int] = None  # the last seq of the first frame of samples sent
    up_since: Optional[float] = None
    last_error: str = ""  # the server's last `error` frame
    dropped_because: str = ""  # set when the agent itself ends the connection


def _leaves(group: BaseException) -> Iterator[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        for exc in group.exceptions:
            yield from _leaves(exc)
    else:
        yield group


class Agent:
    """The process: a collector task for its whole life, a connection loop beside it."""

    def __init__(self, config: AgentConfig, collector: Collector) -> None:
        self.config = config
        self.collector = collector
        self.epoch = int(time.time() * 1000)
        self.seq = 0
        self.buffer = SampleBuffer(config.buffer_max or buffer_capacity(config.interval))
        self.server = server_id(config.server, config.port)
        self._new_sample = trio.Event()
        self._to_thread = trio.to_thread.run_sync  # psutil calls block: never on the event loop (tests: inline)
        self._ssl = make_ssl_context()
        self._strikes = 0
        self._facts: Dict[str, Any] = {}
        self._last_drop_log = -math.inf
        # Server frame type -> handler(connection, frame). Add "command" here.
        self._handlers: Dict[str, Callable[[_Connection, Dict[str, Any]], Any]] = {
            "ack": self._on_ack,
            "error": self._on_error,
            "command": self._on_command,
        }

    async def run(self) -> int:
        if not self.config.verify_ssl:
            log.warning("AGENT_VERIFY_SSL=0: the server's certificate is NOT checked; anyone on the network path "
                        "can read this host's secret and metrics. Set AGENT_VERIFY_SSL=1.")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._collect_loop)
            status = await self._connection_loop()
            nursery.cancel_scope.cancel()
        return status

    # collection ------------------------------------------------------------------------------------------------

    async def _collect_loop(self) -> None:
        interval = self.config.interval
        next_at = trio.current_time() + interval  # cpu_percent was primed when the collector was made
        while True:
            await trio.sleep_until(next_at)
            ts = time.time()
            try:
                metrics = await self._to_thread(self.collector.collect)
            except Exception as exc:
                log.error("collecting metrics failed: %s", _describe(exc))
            else:
                self.add_sample(ts, metrics)
            next_at += interval
            now = trio.current_time()
            if next_at <= now:  # fell behind (suspended laptop, slow host): skip, do not burst
                next_at = now + interval

    def add_sample(self, ts: float, metrics: Mapping[str, Any]) -> None:
        seq = self.seq + 1
        text = encode_sample(seq, ts, metrics)
        if len(text) > BATCH_MAX_BYTES:
            log.error("a sample of %d bytes is too big to send; left out", len(text))
            return
        self.seq = seq
        if self.buffer.append(seq, text):
            now = time.monotonic()
            if now - self._last_drop_log >= 60.0:
                log.warning("unsent samples buffer full (%d samples): dropped %d oldest sample(s) so far",
                            self.buffer.maxlen, self.buffer.dropped)
                self._last_drop_log = now
        self._new_sample.set()
        self._new_sample = trio.Event()

    # connections -----------------------------------------------------------------------------------------------

    async def _connection_loop(self) -> int:
        cfg = self.config
        attempt = 0
        while True:
            up_for: Optional[float] = None
            level = logging.WARNING
            try:
                up_for, what, level = await self._connect_and_serve()
            except AgentStop as exc:
                log.error("%s", exc)
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
                else:
                    reason = _describe(exc)
                what = f"cannot connect to {self.server}: {reason}"
            except Exception as exc:  # a bug or a library surprise: keep the host monitored, say what happened
                log.debug("connection failure", exc_info=True)
                what = f"connection to {self.server} failed unexpectedly: {_describe(exc)}"
                level = logging.ERROR
            if up_for is not None and up_for >= cfg.stable_after:
                attempt = 0
            delay = backoff_delay(attempt, low=cfg.backoff_min, high=cfg.backoff_max)
            attempt += 1
            log.log(level, "%s; retrying in %.1f s (%d samples waiting)", what, delay, len(self.buffer))
            await trio.sleep(delay)

    def _check_pin(self, der: Optional[bytes]) -> Optional[str]:
        """Raise AgentStop when the certificate is not the pinned one. Returns a fingerprint to save (TOFU)."""
        if not self.config.verify_ssl:
            return None
        if not der:
            raise trio.BrokenResourceError("the server sent no certificate")
        seen = cert_fingerprint(der)
        path = self.config.fingerprint_path
        if self.config.fingerprint:
            expected, source = self.config.fingerprint, "AGENT_FINGERPRINT"
        else:
            try:
                stored = read_fingerprint_file(path)
            except FingerprintFileError as exc:
                raise AgentStop(f"{exc}; stopping") from None
            if stored is None:
                return seen
            expected, stored_server = stored
            source = str(path)
            if stored_server is not None and stored_server != self.server:
                source += f", saved for {stored_server}"
        if seen != expected:
            fix = ("set AGENT_FINGERPRINT (in the environment or .env) to the value `python -m mbot fingerprint` "
                   "prints on the server")
            if not self.config.fingerprint:
                fix = f"delete {path} to trust the new certificate on first use, or {fix}"
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

    async def _connect_and_serve(self) -> Tuple[Optional[float], str, int]:
        """One connection, from TCP connect to close: see _after_close for what it returns. Raises on a failure to
        connect, AgentStop when the server refuses this agent for good."""
        cfg = self.config
        deadline = trio.current_time() + cfg.connect_timeout
        with trio.fail_at(deadline):
            stream, to_save = await self._open_stream()
        host_header = self.server if cfg.port not in (80, 443) else cfg.server
        headers = [(b"Authorization", b"Bearer " + cfg.secret.encode("ascii"))]
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
            leaves = list(_leaves(group))
            if len(leaves) == 1 and not isinstance(leaves[0], trio.Cancelled):
                raise leaves[0] from None
            raise
        if conn is None:  # pragma: no cover - the nursery raises when the upgrade does not finish
            raise trio.BrokenResourceError("the connection ended during the WebSocket upgrade")
        return self._after_close(conn)

    def _save_fingerprint(self, fp: str) -> None:
        path = self.config.fingerprint_path
        try:
            write_fingerprint_file(path, fp, self.server)
        except OSError as exc:
            log.warning("cannot save the server's fingerprint to %s: %s", path, _describe(exc))
        else:
            log.info("trusting %s's certificate from now on (first use): fingerprint %s saved to %s", self.server,
                     fp, path)

    def _after_close(self, conn: _Connection) -> Tuple[Optional[float], str, int]:
        """After a connection: (seconds it was up after the hello's ack or None, what happened, log level)."""
        closed = conn.ws.closed
        code = closed.code if closed is not None else None
        reason = (closed.reason or "") if closed is not None else ""
        detail = f"code {code}" + (f" ({reason})" if reason else "") + (
            f"; server said: {conn.last_error}" if conn.last_error else "")
        if code == CLOSE_REVOKED:
            raise AgentStop(f"{self.server} revoked this agent's key ({detail}); get a new secret with /newkey, "
                            "set AGENT_SECRET and restart; stopping")
        level = logging.INFO if code in (1000, 1001, 4001) else logging.WARNING
        if conn.dropped_because:
            detail, level = conn.dropped_because, logging.WARNING
        sent_but_no_progress = conn.first_frame_last_seq is not None and conn.acked_seq <= conn.hello_ack_seq
        if code in _DATA_REJECTED and sent_but_no_progress:
            self._strikes += 1
            if self._strikes >= _POISON_STRIKES:
                first = self.buffer.first_seq
                dropped = self.buffer.ack(conn.first_frame_last_seq)
                log.error("the server refused samples %s..%d %d times in a row; dropped those %d samples",
                          first, conn.first_frame_last_seq, self._strikes, dropped)
                self._strikes = 0
        up_for = None if conn.up_since is None else trio.current_time() - conn.up_since
        return up_for, f"disconnected from {self.server}: {detail}", level

    async def _serve(self, conn: _Connection) -> None:
        await self.refresh_facts()  # disks come and go
        await conn.ws.send_message(json.dumps(self.hello(), separators=(",", ":")))
        async with trio.open_nursery() as nursery:
            # Either task ending (connection closed, timeout) ends the connection.
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
            sent_upto = conn.hello_ack_seq
            backlog = len(self.buffer)
            conn.up_since = trio.current_time()
            log.info("connected to %s (epoch %d; server has up to seq %d; %d samples to send)", self.server,
                     self.epoch, conn.hello_ack_seq, backlog)
            while True:
                new_sample = self._new_sample
                pending = self.buffer.pending_after(sent_upto)
                if not pending:
                    await new_sample.wait()
                    continue
                for batch in batches(pending):
                    if len(batch) == 1:
                        frame = sample_frame(batch[0][1])
                    else:
                        frame = samples_frame(text for _, text in batch)
                    await ws.send_message(frame)
                    if conn.first_frame_last_seq is None:
                        conn.first_frame_last_seq = batch[-1][0]
                    sent_upto = batch[-1][0]
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            done.cancel()

    async def _receiver(self, conn: _Connection, done: trio.CancelScope) -> None:
        try:
            while True:
                message = await conn.ws.get_message()
                try:
                    frame = json.loads(message)
                    kind = frame["type"]
                except (ValueError, TypeError, KeyError):
                    log.warning("ignoring a frame from the server that is not a JSON object with a type: %.100r",
                                message)
                    continue
                handler = self._handlers.get(kind) if isinstance(kind, str) else None
                if handler is None:
                    log.debug("ignoring a server frame of unknown type %.40r", kind)
                    continue
                await handler(conn, frame)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            done.cancel()

    async def _keepalive(self, conn: _Connection, done: trio.CancelScope) -> None:
        try:
            while True:
                await trio.sleep(self.config.ping_interval)
                with trio.move_on_after(self.config.ping_timeout):
                    await conn.ws.ping()
                    continue
                conn.dropped_because = f"no answer to a ping within {self.config.ping_timeout:g} s"
                done.cancel()
                return
        except trio_websocket.ConnectionClosed:
            done.cancel()

    async def _on_ack(self, conn: _Connection, frame: Dict[str, Any]) -> None:
        seq = frame.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            log.warning("ignoring an ack with a bad seq: %.40r", seq)
            return
        self.buffer.ack(seq)
        if not conn.hello_acked.is_set():
            conn.hello_ack_seq = conn.acked_seq = seq
            conn.hello_acked.set()
            return
        if seq > conn.acked_seq:
            conn.acked_seq = seq
            self._strikes = 0

    async def _on_error(self, conn: _Connection, frame: Dict[str, Any]) -> None:
        conn.last_error = f"{frame.get('code', '?')}: {frame.get('message', '')}"[:300]
        log.warning("server error %s", conn.last_error)

    async def _on_command(self, conn: _Connection, frame: Dict[str, Any]) -> None:
        command_id, action, expires = frame.get("id"), frame.get("action"), frame.get("expires")
        if not isinstance(command_id, str) or len(command_id) > 64:
            log.warning("ignoring a command without a valid id")
            return
        ok, message = await self._run_power(action, expires)
        log.warning("the server asked for %.20r: %s", action, message)
        await conn.ws.send_message(json.dumps({"type": "result", "id": command_id, "ok": ok, "message": message}))

    async def _run_power(self, action: Any, expires: Any) -> Tuple[bool, str]:
        if action not in POWER_ACTIONS:
            return False, "unknown action"
        if not isinstance(expires, (int, float)) or time.time() > expires:
            return False, "expired"  # never fire late, e.g. after a reconnect
        if not self.config.allow_power:
            return False, "disabled"
        argv = power_argv(action, sys.platform, self.config.power_command)
        try:
            process = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.PIPE)
        except OSError as exc:
            return False, f"cannot run {argv[0]}: {exc.strerror or exc}"
        # Answer as soon as the OS accepted the request: a reboot may not leave time to answer afterwards. A
        # command still running after a few seconds is left to finish (it is the shutdown itself).
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            return True, f"{action} started"
        error = b""
        if process.stderr is not None:
            with trio.move_on_after(1):
                error = await process.stderr.receive_some(2000)
            await process.stderr.aclose()
        if process.returncode != 0:
            detail = error.decode(errors="replace").strip().splitlines()
            return False, f"{argv[0]} exited with {process.returncode}" + (f": {detail[-1]}" if detail else "")
        return True, f"{action} started"


async def run_agent(config: AgentConfig, collector: Optional[Collector] = None) -> int:
    """Run until the server refuses this agent (returns 1) or until cancelled. Collection never stops while the
    server is away; samples wait in memory and are sent once it is back."""
    log.info("mbot agent %s on %s: a sample every %g s to %s", __version__, socket.gethostname(), config.interval,
             server_id(config.server, config.port))
    own = collector is None
    if collector is None:
        collector = await trio.to_thread.run_sync(lambda: Collector(temps_every=config.temps_every))
    try:
        agent = Agent(config, collector)
        await agent.refresh_facts()
        return await agent.run()
    finally:
        if own:
            collector.close()


# --- command line ----------------------------------------------------------------------------------------------


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mbot_agent.py", description="mbot agent: streams this host's metrics "
                                     "to an mbot server. Settings come from AGENT_* variables and ./.env.")
    parser.add_argument("--env-file", default=ENV_FILE, help="settings file (default: ./.env)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"mbot agent {__version__}")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("trio-websocket").setLevel(logging.INFO)

    try:
        file_values = read_env_file(args.env_file)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"mbot agent: cannot read {args.env_file}: {exc}", file=sys.stderr)
        return 2
    environ = dict(os.environ)
    try:
        for name, question, secret in (("AGENT_SERVER_IP", "mbot server address (host name or IP): ", False),
                                       ("AGENT_SECRET", "agent secret (from the bot's /newkey): ", True)):
            if not environ.get(name, "").strip() and not file_values.get(name, "").strip() and sys.stdin.isatty():
                environ[name] = _ask(question, secret)
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return 2
    try:
        config = config_from_env(environ, file_values)
    except ConfigError as exc:
        print(f"mbot agent: {exc}", file=sys.stderr)
        return 2
    try:
        if save_env_file(args.env_file, config):
            log.info("settings saved to %s", os.path.abspath(args.env_file))
    except (OSError, ValueError) as exc:
        log.warning("cannot save settings to %s: %s", args.env_file, _describe(exc))

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
