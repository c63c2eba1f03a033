"""The control socket's protocol: how `python -m mbot nettest` asks the running server for a test. Pure: no IO.

The CLI is another process than the server, and a test needs the server's connection to the agent, so the server
listens on a unix socket in its data directory (CONTROL_FILE, mode 0600 in the 0700 directory: only the server's
user gets in; mbot/controlsock.py). One request per connection, newline-delimited JSON, each line at most MAX_LINE
bytes:

    -> {"cmd": "nettest", "host": "box1", "owner": null, "kind": "stability", "interval": 0.01, "duration": 1,
        "chart": true}
    <- {"progress": "one line"}        any number, while it runs
    <- {"result": {...figures...}}     or {"error": "one line"}, then the server closes

Whatever connects is still treated as hostile until checked: a line that is too long, not JSON, an unknown command
or an argument out of range gets one error line, never a crash of the listener.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .speedtest import Throughput, reply
from .stability import (MAX_DURATION, MAX_INTERVAL, MIN_DURATION, MIN_INTERVAL, Figures, StabilitySpec, caption,
                        interval_text)
from .durations import format_duration

CONTROL_FILE = "control.sock"
MAX_LINE = 64 * 1024  # a request line, and a progress or error line
MAX_RESULT_LINE = 16 * 1024 * 1024  # the result: a stability chart travels in it (base64 PNG)
REQUEST_TIMEOUT = 5.0  # seconds a client has to send its request line
KINDS = ("speed", "stability")
_MAX_NAME = 128  # a host reference (names are 32 characters; key ids are longer than 8)


class ControlError(ValueError):
    """A request that cannot be served; str(self) is the one line the client gets."""


@dataclass(frozen=True)
class NetTest:
    host: str
    owner: int | None
    kind: str  # "speed" or "stability"
    interval: float = 0.0  # seconds (stability)
    duration: float = 0.0
    chart: bool = False  # send the stability chart (PNG) with the result

    def spec(self, name: str) -> StabilitySpec:
        return StabilitySpec(name, self.interval, self.duration)


def request_line(test: NetTest) -> bytes:
    return _line({"cmd": "nettest", "host": test.host, "owner": test.owner, "kind": test.kind,
                  "interval": test.interval, "duration": test.duration, "chart": test.chart})


def _number(frame: dict[str, Any], key: str, low: float, high: float, what: str) -> float:
    value = frame.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ControlError(f"{key} must be a number of seconds")
    if not low <= value <= high:
        raise ControlError(f"{key} must be between {what}, got {value:g} s")
    return float(value)


def parse_request(line: bytes) -> NetTest:
    """One request line (without its newline) -> the test it asks for; ControlError says what is wrong."""
    if len(line) > MAX_LINE:
        raise ControlError(f"request line over {MAX_LINE} bytes")
    try:
        frame = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ControlError("request is not a JSON line") from None
    if not isinstance(frame, dict):
        raise ControlError("request is not a JSON object")
    cmd = frame.get("cmd")
    if cmd != "nettest":
        raise ControlError(f"unknown command {str(cmd)[:32]!r}: this server knows nettest")
    host, owner, kind = frame.get("host"), frame.get("owner"), frame.get("kind")
    if not isinstance(host, str) or not 0 < len(host) <= _MAX_NAME:
        raise ControlError(f"host must be a name of 1 to {_MAX_NAME} characters")
    if owner is not None and (isinstance(owner, bool) or not isinstance(owner, int) or not 0 <= owner < 2**63):
        raise ControlError("owner must be a Telegram user id or null")
    if kind not in KINDS:
        raise ControlError(f"kind must be one of {', '.join(KINDS)}")
    chart = frame.get("chart", False)
    if not isinstance(chart, bool):
        raise ControlError("chart must be true or false")
    if kind == "speed":
        return NetTest(host, owner, kind)
    interval = _number(frame, "interval", MIN_INTERVAL, MAX_INTERVAL, "1 ms and 1 s")
    duration = _number(frame, "duration", MIN_DURATION, MAX_DURATION, "1 s and 10 min")
    return NetTest(host, owner, kind, interval, duration, chart)


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode() + b"\n"


def _bounded(text: str) -> str:
    return text if len(text) <= 1000 else text[:999] + "…"  # a line stays far below MAX_LINE


def progress_line(text: str) -> bytes:
    return _line({"progress": _bounded(text)})


def error_line(text: str) -> bytes:
    return _line({"error": _bounded(" ".join(text.split()))})


def result_line(result: dict[str, Any]) -> bytes:
    return _line({"result": result})


def _ms(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


def stability_result(name: str, spec: StabilitySpec, f: Figures, complete: bool) -> dict[str, Any]:
    """The figures (ms, %, counts) and the chat's caption; `complete`: False when the agent left before the end."""
    return {"host": name, "kind": "stability", "interval": spec.interval, "duration": spec.duration,
            "sent": f.sent, "answered": f.answered, "lost": f.lost, "skipped": f.skipped, "p50_ms": _ms(f.p50),
            "p95_ms": _ms(f.p95), "max_ms": _ms(f.max), "jitter_ms": _ms(f.jitter), "loss_percent": round(f.loss, 3),
            "elapsed": round(f.elapsed, 3), "complete": complete, "text": caption(name, spec, f)}


def stability_head(name: str, spec: StabilitySpec) -> str:
    """The line the chat's progress message starts with."""
    return (f"Stability test of {name}: {spec.count} probes every {interval_text(spec.interval)} for "
            f"{format_duration(spec.duration)}...")


def speed_result(name: str, down: Throughput | None, up: Throughput | None) -> dict[str, Any]:
    def one(t: Throughput | None) -> dict[str, float] | None:
        return None if t is None else {"bytes": t.bytes, "seconds": round(t.seconds, 3), "bytes_per_s": t.rate}

    return {"host": name, "kind": "speed", "down": one(down), "up": one(up), "text": reply(name, down, up)}


@dataclass(frozen=True)
class Response:
    kind: str  # "progress", "result" or "error"
    value: Any  # str for progress and error, dict for result


def parse_response(line: bytes) -> Response:
    """A line from the server (the CLI's side); ControlError when it is not one of the three."""
    try:
        frame = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ControlError("the server sent something that is not a JSON line") from None
    if isinstance(frame, dict) and len(frame) == 1:
        ((kind, value),) = frame.items()
        if kind in ("progress", "error") and isinstance(value, str):
            return Response(kind, value)
        if kind == "result" and isinstance(value, dict):
            return Response(kind, value)
    raise ControlError("the server sent a line this CLI does not understand")
