"""The `processes` snapshot read back for people: rankings, freshness, and the CLI's text and JSON. Pure.

The agent sends the union of its top 15 processes by CPU, by memory (RSS) and by VRAM (docs/protocol.md); each
view ranks that list again. Items come from the store, which validated them on the way in, but a row damaged
later must not break a reader: every field is read defensively here.
"""
from __future__ import annotations

from typing import Any

from .durations import format_duration
from .i18n import N_, _, decimal, n_
from .model import Host, StoredSnapshot

KIND = "processes"
CARD = 5  # per ranking on the status card
LIST = 15  # per ranking in /top, the Processes button and `python -m mbot top`
RANKINGS = (("cpu", "CPU"), ("rss", "memory"), ("vram", "VRAM"))
RANKING_TITLES = {"cpu": N_("Top CPU"), "rss": N_("Top memory"), "vram": N_("Top VRAM")}  # the chat's headings


def number(item: dict[str, Any], field: str) -> float:
    value = item.get(field)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def text(item: dict[str, Any], field: str) -> str:
    value = item.get(field)
    return value if isinstance(value, str) else ""


def name(item: dict[str, Any]) -> str:
    return text(item, "name") or f"pid {number(item, 'pid'):.0f}"


def ranked(items: list[dict[str, Any]], field: str, n: int) -> list[dict[str, Any]]:
    """The `n` largest by `field`, largest first; zeros rank nowhere (an idle host has no top CPU)."""
    return sorted((i for i in items if number(i, field) > 0), key=lambda i: -number(i, field))[:n]


def is_fresh(snapshot: StoredSnapshot, host: Host, now: float) -> bool:
    """Recent enough to show beside the host's current figures: received within three intervals or 5 minutes.
    Minutes, because an agent sends the list less often where reading it costs more (thousands of processes)."""
    return now - snapshot.received <= max(3 * host.interval, 300.0)


def age_note(snapshot: StoredSnapshot, host: Host, now: float) -> str:
    """" (2 min ago)" for a list older than the host's latest figures would be; "" for a current one."""
    age = now - snapshot.received
    return " " + _("({duration} ago)", duration=format_duration(age)) if age > max(3 * host.interval, 30.0) else ""


def shorten(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit - 1] + "…"


def percent(cpu: float) -> str:
    return decimal(f"{cpu:.1f} %") if cpu < 10 else f"{cpu:.0f} %"


def human_bytes(value: float) -> str:
    """Binary units, the same symbols in every language (as `free -h` and `df -h` print them), with the
    language's decimal mark (mbot.i18n: '1,5 GiB' in Russian)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else decimal(f"{value:.1f} {unit}")
        value /= 1024
    raise AssertionError  # unreachable: the loop returns at TiB


def header(host: Host, snapshot: StoredSnapshot, now: float) -> str:
    """What the list is: its age, and how much of the host it covers."""
    age = format_duration(max(0.0, now - snapshot.received))
    total = host.last_metrics.get("procs")
    stale = "" if is_fresh(snapshot, host, now) else " " + _("(not current: the host sends no newer list)")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        return n_("{shown} of {n} processes, {duration} ago", "{shown} of {n} processes, {duration} ago",
                  int(total), shown=len(snapshot.items), duration=age) + stale
    return n_("{n} processes, {duration} ago", "{n} processes, {duration} ago", len(snapshot.items),
              duration=age) + stale


def printable(value: str) -> str:
    """For a terminal: ingest already replaced control characters (limits.clean_label); a row damaged since must
    not send escape sequences to the admin's terminal either."""
    return "".join(c if c.isprintable() else "\ufffd" for c in value)


def as_text(host: Host, snapshot: StoredSnapshot | None, now: float, n: int = LIST, cmd: int = 100) -> str:
    """`python -m mbot top NAME`: the rankings as plain text, one process a line."""
    if snapshot is None:
        return f"{host.name}: no process list yet (agents send one every interval unless AGENT_PROCESSES=0)"
    lines = [f"{printable(host.name)}: {header(host, snapshot, now)}"]
    for field, title in RANKINGS:
        top = ranked(snapshot.items, field, n)
        if not top:
            continue
        lines += ["", f"top {title}:", f"{'PID':>8} {'USER':<12} {'CPU':>7} {'RSS':>10} {'VRAM':>10}  COMMAND"]
        for item in top:
            vram = number(item, "vram")
            command = text(item, "cmd") or name(item)
            lines.append(f"{number(item, 'pid'):>8.0f} {printable(shorten(text(item, 'user'), 12)):<12} "
                         f"{percent(number(item, 'cpu')):>7} {human_bytes(number(item, 'rss')):>10} "
                         f"{human_bytes(vram) if vram else '-':>10}  {printable(shorten(command, cmd))}")
    return "\n".join(lines)


def as_json(host: Host, snapshot: StoredSnapshot | None, now: float, n: int = LIST) -> dict[str, Any]:
    """`python -m mbot top NAME --json`: the rankings, each a list of the stored items."""
    if snapshot is None:
        return {"host": host.name, "received": None}
    return {"host": host.name, "ts": snapshot.ts, "received": snapshot.received,
            "fresh": is_fresh(snapshot, host, now),
            **{f"top_{title.lower()}": ranked(snapshot.items, field, n) for field, title in RANKINGS}}
