"""Checks from the host (`/check box1 https://example.com 1m`): what a check is, its bounds, the frame that tells an
agent its checks, and the check's state as text. Pure: values in, values out.

A check is a target the host's agent probes every EVERY seconds with the agent's own network access: an HTTP(S)
URL (status, latency, days left on the TLS certificate) or tcp://HOST:PORT (connect time). Private addresses are
allowed on purpose: the host's own network is what a check is for. The server stores the checks (store: `checks`)
and sends a connected agent that announced the `checks` capability its whole list (docs/protocol.md, "Checks");
the agent sends results back as series in its samples (`check_up:NAME`, `check_ms:NAME`, `check_cert:NAME`, via
the catalogue) and as a `checks` snapshot (state, status, error text). A check is down after `down_after`
consecutive failures; `/check` adds two alert rules with it: `check:NAME down` (mbot.members) and
`cert:NAME < 14` (days left on the certificate).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

from . import limits
from .durations import format_duration, parse_duration
from .i18n import N_, _

DEFAULT_EVERY = 60.0
MIN_EVERY, MAX_EVERY = 10.0, 86400.0  # what a user may ask for
DEFAULT_DOWN_AFTER = 3  # consecutive failures
DEFAULT_CERT_DAYS = 14.0  # the certificate alert: fewer days left than this
MAX_PER_HOST = limits.MAX_CHECKS  # what a sample's `checks` may hold, too
MAX_PER_USER = 200
MAX_TARGET = 2048  # characters of a URL
SCHEMES = ("http", "https", "tcp")
CAPABILITY = "checks"  # an agent that runs checks says so in its hello
FRAME = "checks"  # server -> agent: the whole list (a snapshot kind of the same name comes back)

NAME_RULE = "a check name is 1-40 characters of lower-case letters, digits, '.', '_', ':' and '-'"
NAME = re.compile(r"[a-z0-9][a-z0-9._:-]{0,39}")

USAGE = N_("/check NAME URL|tcp://HOST:PORT [EVERY] - probe a target from the host every EVERY (default 1m, "
         "10s to 1d), e.g. /check box1 https://example.com 5m; /check NAME del CHECK removes one")


class CheckError(ValueError):
    """A check that cannot be made as asked; str(self) is for the user."""


@dataclass(frozen=True)
class CheckSpec:
    """One stored check (store.checks): what the agent is told, and what /checks shows."""

    id: int
    host_id: int
    name: str  # unique per host: the label of its series, and of its alerts (check:NAME)
    target: str
    every: float
    down_after: int = DEFAULT_DOWN_AFTER

    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "every": self.every, "down_after": self.down_after}


def validate_target(text: str) -> str:
    """A URL or tcp://HOST:PORT as the owner typed it -> as stored, or CheckError saying why not."""
    text = text.strip()
    if not text or len(text) > MAX_TARGET:
        raise CheckError(_("a target is 1 to {n} characters", n=MAX_TARGET))
    if any(ord(c) < 33 or ord(c) == 127 for c in text):
        raise CheckError(_("a target has no spaces or control characters"))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise CheckError(_("{target!r} is not a valid URL ({error})", target=text[:60], error=exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise CheckError(_("{target!r}: a check is http://, https:// or tcp://HOST:PORT", target=text[:60]))
    if not parts.hostname:
        raise CheckError(_("{target!r} names no host", target=text[:60]))
    if parts.username is not None or parts.password is not None:
        raise CheckError(_("credentials in the URL are not supported: they would be stored and shown"))
    if scheme == "tcp":
        if port is None or port == 0:
            raise CheckError(_("a TCP check needs a port: tcp://HOST:PORT"))
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise CheckError(_("a TCP check is tcp://HOST:PORT, nothing after it"))
    return scheme + text[len(parts.scheme):]


def default_name(target: str, taken: Iterable[str]) -> str:
    """The check's name from its target: the host (`example.com`), with `:PORT` for TCP or a port that is not the
    scheme's; `-2`, `-3` ... when the host already has a check of that name."""
    parts = urlsplit(target)
    host = (parts.hostname or "check").lower()
    base = host[4:] if host.startswith("www.") and len(host) > 4 else host
    if parts.port is not None and (parts.scheme == "tcp" or parts.port != {"http": 80, "https": 443}[parts.scheme]):
        base = f"{base}:{parts.port}"
    base = re.sub(r"[^a-z0-9._:-]", "-", base)
    base = re.sub(r"^[^a-z0-9]+", "", base)[:34].rstrip("-") or "check"  # [::1] -> 1:8443
    used = {name.lower() for name in taken}
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}-{n}"
    return name


def parse_every(text: str | None) -> float:
    if text is None:
        return DEFAULT_EVERY
    low = MIN_EVERY  # read here: tests lower it
    try:
        every = parse_duration(text)
    except ValueError:
        raise CheckError(_("EVERY {text!r} is not a duration: try 30s, 5m or 1h", text=text[:20])) from None
    if not low <= every <= MAX_EVERY:
        raise CheckError(_("EVERY is {low} to {high}", low=format_duration(low), high=format_duration(MAX_EVERY)))
    return every


@dataclass(frozen=True)
class AddCheck:
    host: str
    target: str
    every: float


@dataclass(frozen=True)
class DelCheck:
    host: str
    check: str


def parse_command(args: Sequence[str]) -> AddCheck | DelCheck:
    """/check NAME URL [EVERY] or /check NAME del CHECK."""
    if len(args) == 3 and args[1].lower() in ("del", "delete", "rm"):
        return DelCheck(args[0], args[2])
    if len(args) not in (2, 3):
        raise CheckError(_("Usage: {usage}", usage=_(USAGE)))
    return AddCheck(args[0], validate_target(args[1]), parse_every(args[2] if len(args) == 3 else None))


def frame(specs: Iterable[CheckSpec]) -> str:
    """The server's `checks` frame: the agent's whole list (an empty one stops every check)."""
    return json.dumps({"type": FRAME, "checks": [spec.wire() for spec in specs]}, separators=(",", ":"))


# --- what a user sees ------------------------------------------------------------------------------------------

PENDING = "pending"  # the agent's states are up, failing (fewer than down_after failures in a row) and down


def rule_metrics(name: str) -> tuple[str, str]:
    """The metrics of the two alert rules /check adds with a check: down, and the certificate's days left."""
    return f"check:{name}", f"cert:{name}"


def result_line(spec: CheckSpec, item: dict[str, Any] | None) -> str:
    """`web  up  200  35 ms  cert 41 d` (plain text: the caller escapes it)."""
    every = format_duration(spec.every)
    if item is None:
        return _("{name}: not run yet ({target}, every {every})", name=spec.name, target=spec.target, every=every)
    state = str(item.get("state", PENDING))
    bits = [_(_STATES[state]) if state in _STATES else state]
    if "status" in item:
        bits.append(f"HTTP {item['status']}")
    if "ms" in item and item.get("state") == "up":  # a failure's time is in the series, not worth a word here
        bits.append(_("{ms} ms", ms=f"{item['ms']:.0f}"))
    if "cert_days" in item:
        bits.append(_("cert {days} d", days=f"{item['cert_days']:.0f}"))
    if item.get("error"):
        bits.append(str(item["error"]))
    return _("{name}: {result} ({target}, every {every})", name=spec.name, result=", ".join(bits),
             target=spec.target, every=every)


_STATES = {"up": N_("up"), "failing": N_("failing"), "down": N_("down"), PENDING: N_("pending")}

