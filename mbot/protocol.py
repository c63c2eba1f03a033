"""Agent protocol v1: frames in, values out. Pure: no IO, no clock (docs/protocol.md is the contract).

Validation is strict about types and plausibility, lenient about unknown fields (forward compatibility). Anything
wrong raises ProtocolError carrying the WebSocket close code the connection should be closed with. Every bound is
in the table in mbot/limits.py; labels are cleaned (limits.clean_label) rather than refused.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from . import limits, series as catalogue
from .limits import (BYTE_RATE, BYTES, CELSIUS, COUNT, INTERVAL, LOAD, MAX_BATCH, MAX_FRAME_BYTES, MAX_INT,
                     MAX_ITEMS, MAX_LABEL, MAX_SERIES, PERCENT, WATTS, clean_label)

VERSION = 1

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012  # the server stops or restarts: agents come back within seconds (docs/protocol.md)
CLOSE_REPLACED = 4001
CLOSE_REVOKED = 4003


class ProtocolError(Exception):
    """A frame the server cannot accept; `close_code` is what the connection is closed with."""

    def __init__(self, reason: str, close_code: int = CLOSE_INVALID) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


@dataclass(frozen=True)
class Hello:
    agent_version: str
    epoch: int
    interval: float
    facts: dict[str, Any]  # what the status card shows: hostname, os, cpu_count, disks, gpus, capabilities ...

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self.facts.get("capabilities", ()))


@dataclass(frozen=True)
class Sample:
    seq: int
    ts: float
    metrics: dict[str, Any]  # validated, nested as sent: what the status card shows
    series: dict[str, float]  # flattened: what history, charts and alerts use


@dataclass(frozen=True)
class Samples:
    """One `sample` frame or one `samples` batch: oldest first, seq strictly increasing."""

    items: tuple[Sample, ...]


@dataclass(frozen=True)
class Result:
    command_id: str
    ok: bool
    message: str


@dataclass(frozen=True)
class Snapshot:
    """The whole current list of one kind (processes ...): it replaces the host's previous one of that kind."""

    kind: str
    v: int
    ts: float
    items: tuple[dict[str, Any], ...]  # validated and normalised: known fields only
    items_json: str  # the items as stored (UTF-8 JSON, at most MAX_SNAPSHOT_BYTES encoded)


@dataclass(frozen=True)
class UnknownSnapshot:
    """A snapshot of a kind or version this server does not know (a newer agent): ignored, never stored."""

    kind: str  # cleaned, cut
    v: int | None


@dataclass(frozen=True)
class SpeedReport:
    """The agent's side of a speed test (mbot/speedtest.py): bytes it received (download) or sent (upload)."""

    test_id: str
    bytes: int


AgentFrame = Hello | Samples | Result | Snapshot | UnknownSnapshot | SpeedReport


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


# Made once: json.loads and json.dumps with an argument build a decoder or encoder per call. What is encoded was
# built from parsed JSON, so it has no cycles to look for.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ITEMS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def decode(message: str | bytes) -> dict[str, Any]:
    """Text frame -> JSON object. Binary frames, bad JSON, NaN and absurd nesting are ProtocolErrors."""
    if isinstance(message, bytes):
        raise ProtocolError("binary frames are not part of protocol v1", CLOSE_UNSUPPORTED)
    if len(message) > MAX_FRAME_BYTES:
        raise ProtocolError("frame over 1 MiB", CLOSE_TOO_BIG)
    try:
        obj = _DECODER.decode(message)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a frame must be a JSON object")
    return obj


def parse_agent_frame(message: str | bytes, *, cores: int | None = None) -> AgentFrame:
    """One frame from an agent. `cores`: the CPU count its hello announced, which bounds a process's CPU percent."""
    obj = decode(message)
    kind = obj.get("type")
    if kind == "hello":
        return _hello(obj)
    if kind == "sample":
        return Samples((_sample(obj, "sample"),))
    if kind == "samples":
        items = obj.get("samples")
        if not isinstance(items, list) or not items:
            raise ProtocolError("samples: must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise ProtocolError(f"samples: at most {MAX_BATCH} per frame", CLOSE_POLICY)
        parsed = tuple(_sample(item, f"samples[{i}]") for i, item in enumerate(items))
        for before, after in zip(parsed, parsed[1:]):
            if after.seq <= before.seq:
                raise ProtocolError("samples: seq must increase within a batch")
        return Samples(parsed)
    if kind == "result":
        return _result(obj)
    if kind == "speedtest":
        return SpeedReport(_text(obj.get("id"), "speedtest.id", limit=64),
                           _integer(obj.get("bytes"), "speedtest.bytes"))
    if kind == "snapshot":
        return _snapshot(obj, cores)
    raise ProtocolError(f"unknown frame type {str(kind)[:40]!r}", CLOSE_POLICY)


# --- field helpers ---------------------------------------------------------------------------------------------


def _number(value: Any, where: str, bounds: tuple[float, float]) -> float:
    low, high = bounds
    # The common case first, in few steps (every bound is finite, so NaN and infinities fail these tests too);
    # anything else takes the checks below, which say what is wrong.
    kind = type(value)
    if kind is float:
        if low <= value <= high:
            return value  # type: ignore[no-any-return]
    elif kind is int and low <= value <= high and -MAX_INT <= value <= MAX_INT:
        return float(value)
    # bool is an int in Python, but `true` is no measurement.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{where}: must be a number")
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise ProtocolError(f"{where}: integers above 2^53 are not exact in JSON")
    number = float(value)
    if not math.isfinite(number):
        raise ProtocolError(f"{where}: must be finite")
    if number < low:
        raise ProtocolError(f"{where}: must be >= {low:g}, got {number:g}")
    if number > high:
        raise ProtocolError(f"{where}: must be <= {high:g}, got {number:g}")
    return number


def _integer(value: Any, where: str, *, low: int = 0) -> int:
    if type(value) is int and low <= value <= MAX_INT:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{where}: must be an integer")
    if value < low or value > MAX_INT:
        raise ProtocolError(f"{where}: out of range ({low} to 2^53)")
    return value


def _text(value: Any, where: str, *, limit: int = MAX_LABEL) -> str:
    if type(value) is str and len(value) <= limit and value.isascii() and value.isprintable():
        return value  # nothing to clean (the common case, without a call)
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: must be a string")
    return clean_label(value, limit)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """An object whose keys are labels: bounded in size, keys cleaned (two keys that clean alike: the last wins)."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: must be an object")
    if len(value) > MAX_ITEMS:
        raise ProtocolError(f"{where}: more than {MAX_ITEMS} entries", CLOSE_POLICY)
    try:
        # All keys at once: printable ASCII within the length needs no cleaning (most objects, in a few C calls).
        joined = "".join(value)
    except TypeError:
        joined = None  # a key that is no string: _text below says so
    if joined is not None and joined.isascii() and joined.isprintable() and (
            len(joined) <= MAX_LABEL or max(map(len, value)) <= MAX_LABEL):
        return value  # as it is: callers read it, none keeps or changes it
    return {_text(key, f"{where} key"): item for key, item in value.items()}


def _sequence(value: Any, where: str, *, limit: int = MAX_ITEMS) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(f"{where}: must be a list")
    if len(value) > limit:
        raise ProtocolError(f"{where}: more than {limit} entries", CLOSE_POLICY)
    return value


def _strings(value: Any, where: str) -> list[str]:
    return [_text(item, f"{where}[{i}]") for i, item in enumerate(_sequence(value, where))]


# --- frames ----------------------------------------------------------------------------------------------------


def _hello(obj: dict[str, Any]) -> Hello:
    version = obj.get("v")
    if version != VERSION:
        raise ProtocolError(f"hello: protocol version {version!r} is not supported (this server speaks {VERSION})",
                            CLOSE_POLICY)
    facts: dict[str, Any] = {
        "agent": _text(obj.get("agent"), "hello.agent", limit=64),
        "hostname": _text(obj.get("hostname", ""), "hello.hostname"),
        "os": _text(obj.get("os", ""), "hello.os"),
        "platform": _text(obj.get("platform", ""), "hello.platform", limit=32),
        "arch": _text(obj.get("arch", ""), "hello.arch", limit=32),
        "disks": _strings(obj.get("disks", []), "hello.disks"),
        "gpus": _strings(obj.get("gpus", []), "hello.gpus"),
        "capabilities": _strings(obj.get("capabilities", []), "hello.capabilities"),
    }
    if "cpu_count" in obj:
        facts["cpu_count"] = _integer(obj["cpu_count"], "hello.cpu_count")
    if "mem_total" in obj:
        facts["mem_total"] = _integer(obj["mem_total"], "hello.mem_total")
    if "boot_time" in obj:
        facts["boot_time"] = _number(obj["boot_time"], "hello.boot_time", (0.0, limits.TS_CEILING))
    if "inventory" in obj:
        facts["inventory"] = inventory(obj["inventory"], "hello.inventory")
    interval = _number(obj.get("interval", 5), "hello.interval", INTERVAL)
    facts["interval"] = interval
    return Hello(
        agent_version=facts["agent"],
        epoch=_integer(obj.get("epoch"), "hello.epoch", low=1),
        interval=interval,
        facts=facts,
    )


def _sample(obj: Any, where: str) -> Sample:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: must be an object")
    metrics = validate_metrics(obj.get("metrics"), f"{where}.metrics")
    return Sample(
        seq=_integer(obj.get("seq"), f"{where}.seq", low=1),
        ts=_number(obj.get("ts"), f"{where}.ts", (limits.TS_FLOOR, limits.TS_CEILING)),
        metrics=metrics,
        series=flatten(metrics),
    )


def _result(obj: dict[str, Any]) -> Result:
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("result.ok: must be true or false")
    return Result(
        command_id=_text(obj.get("id"), "result.id", limit=64),
        ok=ok,
        message=_text(obj.get("message", ""), "result.message", limit=1000),
    )


def _used_total(value: Any, where: str) -> dict[str, float]:
    part = _mapping(value, where)
    used = _number(part.get("used"), f"{where}.used", BYTES)
    total = _number(part.get("total"), f"{where}.total", BYTES)
    if used > total:
        raise ProtocolError(f"{where}: used ({used:g}) is more than total ({total:g})")
    return {"used": used, "total": total}


def validate_metrics(value: Any, where: str = "metrics") -> dict[str, Any]:
    """The metrics object of a sample, checked and normalised (floats, known keys only)."""
    raw = _mapping(value, where)
    out: dict[str, Any] = {}
    # Plain numbers (cpu, uptime, procs, and any such row added later) are checked by their catalogue row's unit.
    for key, row in catalogue.scalar_keys().items():
        if key in raw:
            out[key] = _number(raw[key], f"{where}.{key}", catalogue.RANGES[row.unit])
    if "cpu_cores" in raw:
        cores = _sequence(raw["cpu_cores"], f"{where}.cpu_cores", limit=limits.MAX_CORES)
        out["cpu_cores"] = [_number(v, f"{where}.cpu_cores[{i}]", PERCENT) for i, v in enumerate(cores)]
    if "load" in raw:
        load = _sequence(raw["load"], f"{where}.load")
        if len(load) != 3:
            raise ProtocolError(f"{where}.load: must be [1 min, 5 min, 15 min]")
        out["load"] = [_number(v, f"{where}.load[{i}]", LOAD) for i, v in enumerate(load)]
    for key in ("ram", "swap"):
        if key in raw:
            out[key] = _used_total(raw[key], f"{where}.{key}")
    if "disks" in raw:
        disks = _mapping(raw["disks"], f"{where}.disks")
        out["disks"] = {mount: _used_total(v, f"{where}.disks[{mount!r}]") for mount, v in disks.items()}
    if "disk_io" in raw:
        io = _mapping(raw["disk_io"], f"{where}.disk_io")
        out["disk_io"] = {k: _number(io[k], f"{where}.disk_io.{k}", BYTE_RATE) for k in ("read", "write") if k in io}
    if "net" in raw:
        net = _mapping(raw["net"], f"{where}.net")
        out["net"] = {}
        for iface, rates in net.items():
            rates = _mapping(rates, f"{where}.net[{iface!r}]")
            out["net"][iface] = {k: _number(rates[k], f"{where}.net[{iface!r}].{k}", BYTE_RATE)
                                 for k in ("rx", "tx") if k in rates}
    if "temps" in raw:
        temps = _mapping(raw["temps"], f"{where}.temps")
        out["temps"] = {label: _number(v, f"{where}.temps[{label!r}]", CELSIUS) for label, v in temps.items()}
    if "dropped" in raw:  # not a series: how many samples the agent lost (docs/protocol.md)
        out["dropped"] = _number(raw["dropped"], f"{where}.dropped", COUNT)
    if "containers" in raw:
        out["containers"] = _containers(raw["containers"], f"{where}.containers")
    if "gpus" in raw:
        out["gpus"] = [_gpu(g, f"{where}.gpus[{i}]") for i, g in enumerate(_sequence(raw["gpus"], f"{where}.gpus"))]
    if "checks" in raw:
        out["checks"] = _check_results(raw["checks"], f"{where}.checks")
    return out


def _check_results(value: Any, where: str) -> dict[str, dict[str, float]]:
    """A sample's `checks`: the latest result of each check by name (up 0 or 100, ms, cert days)."""
    if isinstance(value, dict) and len(value) > limits.MAX_CHECKS:
        raise ProtocolError(f"{where}: more than {limits.MAX_CHECKS} checks", CLOSE_POLICY)
    out: dict[str, dict[str, float]] = {}
    for name, result in _mapping(value, where).items():
        result = _mapping(result, f"{where}[{name!r}]")
        out[name[:limits.MAX_CHECK_NAME]] = {
            key: _number(result[key], f"{where}[{name!r}].{key}", bounds)
            for key, bounds in (("up", PERCENT), ("ms", limits.MILLISECONDS), ("cert", limits.DAYS)) if key in result}
    return out


def _containers(value: Any, where: str) -> dict[str, dict[str, float]]:
    """metrics.containers: name -> {cpu, mem, down}, each optional (the series of a bounded set of
    containers; their full list travels as the `containers` snapshot)."""
    out: dict[str, dict[str, float]] = {}
    for name, fields in _mapping(value, where).items():
        part = _mapping(fields, f"{where}[{name!r}]")
        entry: dict[str, float] = {}
        for key, bounds in (("cpu", PERCENT), ("mem", BYTES)):
            if key in part:
                entry[key] = _number(part[key], f"{where}[{name!r}].{key}", bounds)
        if "down" in part:
            down = _number(part["down"], f"{where}[{name!r}].down", limits.STATE)
            if not down.is_integer():
                raise ProtocolError(f"{where}[{name!r}].down: must be 0 (up), 1 (not running), 2 (unhealthy) or "
                                    "3 (restarting over and over)")
            entry["down"] = down
        out[name] = entry
    return out


def _gpu(value: Any, where: str) -> dict[str, Any]:
    raw = _mapping(value, where)
    gpu: dict[str, Any] = {"name": _text(raw.get("name", ""), f"{where}.name")}
    if "util" in raw:
        gpu["util"] = _number(raw["util"], f"{where}.util", PERCENT)
    if "vram_used" in raw or "vram_total" in raw:
        gpu.update({f"vram_{k}": v for k, v in _used_total(
            {"used": raw.get("vram_used"), "total": raw.get("vram_total")}, f"{where}.vram").items()})
    if "temp" in raw:
        gpu["temp"] = _number(raw["temp"], f"{where}.temp", CELSIUS)
    if "power" in raw:
        gpu["power"] = _number(raw["power"], f"{where}.power", WATTS)
    return gpu


# --- the inventory (docs/protocol.md, "Inventory") ---------------------------------------------------------------


def _size(value: Any, where: str) -> int:
    return int(_number(value, where, BYTES))


def _records(value: Any, where: str, fields: Callable[[dict[str, Any], str], dict[str, Any]]) -> list[dict[str, Any]]:
    items = _sequence(value, where, limit=limits.MAX_INVENTORY_ITEMS)
    return [fields(_mapping(item, f"{where}[{i}]"), f"{where}[{i}]") for i, item in enumerate(items)]


def _texts(raw: dict[str, Any], where: str, limits_by_key: dict[str, int]) -> dict[str, Any]:
    return {key: _text(raw[key], f"{where}.{key}", limit=limit) for key, limit in limits_by_key.items() if key in raw}


def _inventory_disk(raw: dict[str, Any], where: str) -> dict[str, Any]:
    disk = _texts(raw, where, {"mount": MAX_LABEL, "device": MAX_LABEL, "fs": 32})
    if "total" in raw:
        disk["total"] = _size(raw["total"], f"{where}.total")
    return disk


def _inventory_nic(raw: dict[str, Any], where: str) -> dict[str, Any]:
    nic = _texts(raw, where, {"name": MAX_LABEL, "mac": 64})
    if "addrs" in raw:
        addrs = _sequence(raw["addrs"], f"{where}.addrs", limit=limits.MAX_NIC_ADDRS)
        nic["addrs"] = [_text(a, f"{where}.addrs[{i}]", limit=64) for i, a in enumerate(addrs)]
    if "speed" in raw:
        nic["speed"] = _number(raw["speed"], f"{where}.speed", (0.0, limits.MAX_LINK_SPEED))
    if "up" in raw:
        if not isinstance(raw["up"], bool):
            raise ProtocolError(f"{where}.up: must be true or false")
        nic["up"] = raw["up"]
    return nic


def _inventory_gpu(raw: dict[str, Any], where: str) -> dict[str, Any]:
    gpu = _texts(raw, where, {"name": MAX_LABEL, "vendor": 32, "driver": 64})
    if "vram" in raw:
        gpu["vram"] = _size(raw["vram"], f"{where}.vram")
    return gpu


def inventory(value: Any, where: str = "inventory") -> dict[str, Any]:
    """What a host is (the Diagnostics view): every field optional, unknown ones dropped, texts cleaned and cut,
    lists and the whole bounded (limits: MAX_INVENTORY_ITEMS, MAX_NIC_ADDRS, MAX_INVENTORY_BYTES)."""
    raw = _mapping(value, where)
    out = _texts(raw, where, {"os": MAX_LABEL, "kernel": MAX_LABEL, "arch": 32, "virt": 32, "agent": 64})
    if "cpu" in raw:
        cpu = _mapping(raw["cpu"], f"{where}.cpu")
        out["cpu"] = _texts(cpu, f"{where}.cpu", {"model": MAX_LABEL})
        for key in ("cores", "threads"):
            if key in cpu:
                out["cpu"][key] = _integer(cpu[key], f"{where}.cpu.{key}")
    for key in ("mem_total", "swap_total"):
        if key in raw:
            out[key] = _size(raw[key], f"{where}.{key}")
    if "boot_time" in raw:
        out["boot_time"] = _number(raw["boot_time"], f"{where}.boot_time", (0.0, limits.TS_CEILING))
    for key, fields in (("disks", _inventory_disk), ("nics", _inventory_nic), ("gpus", _inventory_gpu)):
        if key in raw:
            out[key] = _records(raw[key], f"{where}.{key}", fields)
    if len(json.dumps(out, ensure_ascii=False).encode()) > limits.MAX_INVENTORY_BYTES:
        raise ProtocolError(f"{where}: more than {limits.MAX_INVENTORY_BYTES // 1024} KiB", CLOSE_POLICY)
    return out


# --- series ----------------------------------------------------------------------------------------------------


def flatten(metrics: dict[str, Any]) -> dict[str, float]:
    """Validated metrics -> named series (mbot.series, the catalogue, says which; see docs/protocol.md)."""
    series = catalogue.flatten(metrics)
    if len(series) > MAX_SERIES:
        raise ProtocolError(f"metrics: more than {MAX_SERIES} series", CLOSE_POLICY)
    return series


TOO_OLD, TOO_NEW = "too_old", "too_new"


def out_of_window(ts: float, now: float) -> str | None:
    """Why a sample taken at `ts` (agent clock) is not stored at `now` (server clock), or None when it is.

    Such a sample is still acked, so the agent lets go of it, and counted per host: older than MAX_SAMPLE_AGE is a
    replay after more than a week away (history that old is only kept rolled up anyway); more than
    MAX_SAMPLE_AHEAD ahead is a clock that is wrong, and a row from the future would outlive every retention."""
    if ts < now - limits.MAX_SAMPLE_AGE:
        return TOO_OLD
    if ts > now + limits.MAX_SAMPLE_AHEAD:
        return TOO_NEW
    return None


# --- server -> agent -------------------------------------------------------------------------------------------


def ack(seq: int, gather: float = 0.0) -> str:
    """`gather` > 0 asks the agent to send its samples at most every that many seconds, several per frame."""
    if gather > 0:
        return json.dumps({"type": "ack", "seq": seq, "gather": gather})
    return json.dumps({"type": "ack", "seq": seq})


def error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


POWER_ACTIONS = ("reboot", "shutdown")


def command(command_id: str, action: str, expires: float) -> str:
    """Ask the agent to run `action`; it must not run it after `expires` (its clock), so nothing fires late."""
    return json.dumps({"type": "command", "id": command_id, "action": action, "expires": expires})


# --- snapshots (docs/protocol.md, "Snapshots") -----------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotKind:
    name: str
    version: int
    key: tuple[str, ...]  # the fields that identify a member from one snapshot to the next (unique in a snapshot)
    state: str | None  # the field whose change is a StateChanged event; None: the kind has no state
    item: Callable[[Any, str, int | None], dict[str, Any]]  # (raw member, where, cores) -> validated member


def _process(value: Any, where: str, cores: int | None) -> dict[str, Any]:
    """A `processes` member. Hundreds arrive per second under load, nearly all plainly valid: those are checked in
    one go, the rest (and anything the short test is unsure of) by _process_checked, which says what is wrong."""
    if type(value) is dict and len(value) == 6:
        pid, name, user, cmd = value.get("pid"), value.get("name"), value.get("user"), value.get("cmd")
        cpu, rss = value.get("cpu"), value.get("rss")
        if (type(pid) is int and 0 <= pid <= limits.MAX_PID and type(name) is str and type(user) is str
                and type(cmd) is str and len(name) <= limits.MAX_PROCESS_NAME
                and len(user) <= limits.MAX_PROCESS_USER and len(cmd) <= limits.MAX_PROCESS_CMD
                and (text := name + user + cmd).isascii() and text.isprintable()
                and type(cpu) is float and 0.0 <= cpu <= 100.0 * (cores or limits.MAX_CORES)
                and type(rss) is int and 0 <= rss <= MAX_INT):
            return {"pid": pid, "name": name, "user": user, "cmd": cmd, "cpu": cpu, "rss": float(rss)}
    return _process_checked(value, where, cores)


def _process_checked(value: Any, where: str, cores: int | None) -> dict[str, Any]:
    raw = _mapping(value, where)
    pid = _integer(raw.get("pid"), f"{where}.pid")
    if pid > limits.MAX_PID:
        raise ProtocolError(f"{where}.pid: out of range (0 to 2^32)")
    cpu_bound = 100.0 * (cores or limits.MAX_CORES)  # percent of one core, summed over its threads
    item: dict[str, Any] = {
        "pid": pid,
        "name": _text(raw.get("name", ""), f"{where}.name", limit=limits.MAX_PROCESS_NAME),
        "user": _text(raw.get("user", ""), f"{where}.user", limit=limits.MAX_PROCESS_USER),
        "cmd": _text(raw.get("cmd", ""), f"{where}.cmd", limit=limits.MAX_PROCESS_CMD),
        "cpu": _number(raw.get("cpu"), f"{where}.cpu", (0.0, cpu_bound)),
        "rss": _number(raw.get("rss"), f"{where}.rss", BYTES),
    }
    if "vram" in raw:  # optional (added within v1: older servers leave it out, older agents do not send it)
        item["vram"] = _number(raw["vram"], f"{where}.vram", BYTES)
    return item


def _container(value: Any, where: str, cores: int | None) -> dict[str, Any]:
    """A `containers` member: what the Engine API's /containers/json (and, running, its stats) said of it."""
    raw = _mapping(value, where)
    name = _text(raw.get("name"), f"{where}.name")
    if not name:
        raise ProtocolError(f"{where}.name: must not be empty")
    item: dict[str, Any] = {
        "name": name,
        "image": _text(raw.get("image", ""), f"{where}.image", limit=limits.MAX_CONTAINER_IMAGE),
        "state": _text(raw.get("state", ""), f"{where}.state", limit=limits.MAX_CONTAINER_STATE),
        "health": _text(raw.get("health", ""), f"{where}.health", limit=limits.MAX_CONTAINER_STATE),
        "restarts": _integer(raw.get("restarts", 0), f"{where}.restarts"),
    }
    # Only a running container has stats: cpu and mem are absent for the others, not zero.
    if raw.get("cpu") is not None:
        item["cpu"] = _number(raw["cpu"], f"{where}.cpu", PERCENT)  # percent of the whole host, like `cpu`
    if raw.get("mem") is not None:
        item["mem"] = _number(raw["mem"], f"{where}.mem", BYTES)
    return item


# pid alone is reused by the OS; a pid that comes back under another name is another process. A container's name
# is unique on its engine and survives a re-creation (compose up), its id does not.
SNAPSHOT_KINDS: dict[str, SnapshotKind] = {
    "processes": SnapshotKind("processes", 1, key=("pid", "name"), state=None, item=_process),
    "containers": SnapshotKind("containers", 1, key=("name",), state="state", item=_container),
}

def _service(value: Any, where: str, cores: int | None) -> dict[str, Any]:
    raw = _mapping(value, where)
    unit = _text(raw.get("unit"), f"{where}.unit", limit=limits.MAX_UNIT_NAME)
    if not unit:
        raise ProtocolError(f"{where}.unit: must not be empty")
    item: dict[str, Any] = {
        "unit": unit,
        "state": _text(raw.get("state", ""), f"{where}.state", limit=limits.MAX_UNIT_STATE),
        "sub": _text(raw.get("sub", ""), f"{where}.sub", limit=limits.MAX_UNIT_STATE),
    }
    if "since" in raw:
        item["since"] = _number(raw["since"], f"{where}.since", (0.0, limits.TS_CEILING))
    return item


# Loaded service units that are not inactive; a unit's state is systemd's ActiveState (active, failed ...).
SNAPSHOT_KINDS["services"] = SnapshotKind("services", 1, key=("unit",), state="state", item=_service)


def _check(value: Any, where: str, cores: int | None) -> dict[str, Any]:
    raw = _mapping(value, where)
    name = _text(raw.get("name"), f"{where}.name", limit=limits.MAX_CHECK_NAME)
    if not name:
        raise ProtocolError(f"{where}.name: must not be empty")
    item: dict[str, Any] = {"name": name, "state": _text(raw.get("state", ""), f"{where}.state", limit=16)}
    if "status" in raw:
        item["status"] = _integer(raw["status"], f"{where}.status")
        if item["status"] > 999:
            raise ProtocolError(f"{where}.status: out of range (0 to 999)")
    for key, bounds in (("ms", limits.MILLISECONDS), ("cert_days", limits.DAYS), ("ts", (0.0, limits.TS_CEILING))):
        if key in raw:
            item[key] = _number(raw[key], f"{where}.{key}", bounds)
    if "fails" in raw:
        item["fails"] = _integer(raw["fails"], f"{where}.fails")
    if raw.get("error"):
        item["error"] = _text(raw["error"], f"{where}.error", limit=limits.MAX_CHECK_ERROR)
    return item


# Checks from the host (mbot.checks): one member per check the agent runs, by name; the state field is `state`.
SNAPSHOT_KINDS["checks"] = SnapshotKind("checks", 1, key=("name",), state="state", item=_check)

# The inventory again, when it changed since the hello: one member (so no key; a second one is a duplicate).
SNAPSHOT_KINDS["inventory"] = SnapshotKind("inventory", 1, key=(), state=None,
                                           item=lambda value, where, cores: inventory(value, where))


def snapshot_key(kind: SnapshotKind, item: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(map(item.get, kind.key))


def _snapshot(obj: dict[str, Any], cores: int | None) -> Snapshot | UnknownSnapshot:
    name, version = obj.get("kind"), obj.get("v")
    if not isinstance(name, str):
        raise ProtocolError("snapshot.kind: must be a string")
    spec = SNAPSHOT_KINDS.get(name)
    if spec is None or version != spec.version or isinstance(version, bool):
        # Ignored rather than refused: a newer agent must not lose its samples to an older server.
        known = isinstance(version, int) and not isinstance(version, bool) and abs(version) <= MAX_INT
        return UnknownSnapshot(clean_label(name, 40), version if known else None)
    ts = _number(obj.get("ts"), "snapshot.ts", (limits.TS_FLOOR, limits.TS_CEILING))
    raw = obj.get("items")
    if not isinstance(raw, list):
        raise ProtocolError("snapshot.items: must be a list")
    if len(raw) > limits.MAX_SNAPSHOT_ITEMS:
        raise ProtocolError(f"snapshot.items: more than {limits.MAX_SNAPSHOT_ITEMS} entries", CLOSE_POLICY)
    items = tuple(spec.item(item, f"snapshot.items[{i}]", cores) for i, item in enumerate(raw))
    keys = [snapshot_key(spec, item) for item in items]
    if len(set(keys)) != len(keys):  # a duplicate: find the first, to say which
        seen: set[tuple[Any, ...]] = set()
        for i, key in enumerate(keys):
            if key in seen:
                raise ProtocolError(f"snapshot.items[{i}]: a second member with the same {'+'.join(spec.key)}")
            seen.add(key)
    items_json = _ITEMS_ENCODER.encode(items)
    if len(items_json.encode()) > limits.MAX_SNAPSHOT_BYTES:
        raise ProtocolError(f"snapshot.items: more than {limits.MAX_SNAPSHOT_BYTES // 1024} KiB", CLOSE_POLICY)
    return Snapshot(name, version, ts, items, items_json)
