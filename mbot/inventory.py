"""A host's inventory as lines for people: the chat's Diagnostics view and `python -m mbot info`. Pure.

The inventory is what the agent says the machine is (hello's `inventory`, replaced by an `inventory` snapshot when
it changes; docs/protocol.md, "Inventory"), validated and bounded at the edge (protocol.inventory). Lines here are
plain text: the chat escapes them, the CLI prints them. Every list is cut for display (a host with 64 interfaces
gets a readable message that says how many it left out), and the whole stays under Telegram's 4,096 characters.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from .durations import format_duration
from .i18n import N_, _, decimal, n_

MAX_SHOWN = 12  # disks, interfaces, GPUs listed; the rest are counted
MAX_ADDRS_SHOWN = 4
MAX_TEXT = 3800  # characters of the whole view (Telegram allows 4,096 with the HTML around it)

NO_INVENTORY = N_("No inventory from this host yet: its agent has not connected since it was updated (agents "
                "older than this server send none).")


def size_text(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else decimal(f"{value:.1f} {unit}")
        value /= 1024
    raise AssertionError  # unreachable: the loop returns at PiB


def _speed(mbit: float) -> str:
    return decimal(f"{mbit / 1000:g} Gbit/s" if mbit >= 1000 else f"{mbit:g} Mbit/s")


def _listed(title: str, entries: Sequence[str]) -> list[str]:
    if not entries:
        return []
    lines = [f"{_(title)}:"] + [f"• {entry}" for entry in entries[:MAX_SHOWN]]
    if len(entries) > MAX_SHOWN:
        lines.append("• " + _("… and {n} more", n=len(entries) - MAX_SHOWN))
    return lines


def _disk(disk: dict[str, Any]) -> str:
    parts = [str(disk.get("mount") or "?")]
    detail = " ".join(str(disk[k]) for k in ("fs", "device") if disk.get(k))
    if detail:
        parts.append(detail)
    if "total" in disk:
        parts.append(size_text(disk["total"]))
    return " · ".join(parts)


def _nic(nic: dict[str, Any]) -> str:
    head = str(nic.get("name") or "?")
    if "up" in nic:
        head = _("{nic} up", nic=head) if nic["up"] else _("{nic} down", nic=head)
    parts = [head]
    if nic.get("speed"):
        parts.append(_speed(nic["speed"]))
    addrs = list(nic.get("addrs") or ())
    if addrs:
        shown = ", ".join(str(a) for a in addrs[:MAX_ADDRS_SHOWN])
        parts.append(shown + (f" (+{len(addrs) - MAX_ADDRS_SHOWN})" if len(addrs) > MAX_ADDRS_SHOWN else ""))
    if nic.get("mac"):
        parts.append(str(nic["mac"]))
    return " · ".join(parts)


def _gpu(gpu: dict[str, Any]) -> str:
    parts = [str(gpu.get("name") or "GPU")]
    if "vram" in gpu:
        parts.append(f"{size_text(gpu['vram'])} VRAM")
    if gpu.get("driver"):
        parts.append(_("driver {version}", version=gpu['driver']))
    return " · ".join(parts)


def service_lines(services: Sequence[dict[str, Any]] | None, now: float) -> list[str]:
    """The host's systemd services that are not running well (its latest `services` snapshot), or that all are."""
    if services is None:
        return []
    troubled = [s for s in services if s.get("state") != "active"]
    if not troubled:
        return [_("Services: {n} running, none failed", n=len(services))]
    entries = []
    for service in troubled:
        text = f"{service.get('unit', '?')} {service.get('state', '?')}"
        if service.get("sub") and service.get("sub") != service.get("state"):
            text += f" ({service['sub']})"
        if isinstance(service.get("since"), (int, float)):
            text += " " + _("for {duration}", duration=format_duration(now - service['since']))
        entries.append(text)
    return _listed(_("Services not running ({n} of {total})", n=len(troubled), total=len(services)), entries)


def lines(inventory: dict[str, Any], now: float, services: Sequence[dict[str, Any]] | None = None) -> list[str]:
    """The view's lines, most useful first (plain text, not escaped); `services`: the latest services snapshot."""
    inv = inventory
    out = service_lines(services, now)
    system = " · ".join(part for part in (
        str(inv.get("os") or ""), _("kernel {version}", version=inv['kernel']) if inv.get("kernel") else "",
        str(inv.get("arch") or "")) if part)
    if system:
        out.append(system)
    if inv.get("virt"):
        virt = str(inv["virt"])
        out.append(_("Virtualisation: {virt}", virt=_("none (bare metal)") if virt == "none" else virt))
    cpu = inv.get("cpu") or {}
    if cpu:
        # English says "cores" for one too (as it always has: the CLI's lines stay as they were).
        counts = ", ".join(
            n_("{n} cores", "{n} cores", int(cpu["cores"])) if k == "cores" else
            n_("{n} threads", "{n} threads", int(cpu["threads"]))
            for k in ("cores", "threads") if cpu.get(k))
        out.append("CPU: " + " · ".join(part for part in (str(cpu.get("model") or _("unknown model")), counts)
                                        if part))
    memory = [_("RAM {size}", size=size_text(inv['mem_total'])) if "mem_total" in inv else "",
              _("swap {size}", size=size_text(inv['swap_total'])) if inv.get("swap_total") else ""]
    if any(memory):
        out.append(" · ".join(part for part in memory if part))
    out += _listed(N_("Disks"), [_disk(d) for d in inv.get("disks") or ()])
    out += _listed(N_("Network"), [_nic(n) for n in inv.get("nics") or ()])
    out += _listed(N_("GPUs"), [_gpu(g) for g in inv.get("gpus") or ()])
    tail = []
    if inv.get("boot_time"):
        booted = datetime.fromtimestamp(inv["boot_time"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        tail.append(_("booted {when} ({duration} ago)", when=booted, duration=format_duration(now - inv['boot_time'])))
    if inv.get("agent"):
        tail.append(_("agent {version}", version=inv['agent']))
    if tail:
        out.append(" · ".join(tail)[:1].upper() + " · ".join(tail)[1:])
    return fit(out)


def fit(text_lines: list[str], limit: int = MAX_TEXT) -> list[str]:
    """At most `limit` characters in all: the lines that fit, then one that says the rest was cut."""
    kept: list[str] = []
    used = 0
    for line in text_lines:
        if used + len(line) + 1 > limit - 40:
            kept.append(_("… ({n} more lines cut)", n=len(text_lines) - len(kept)))
            break
        kept.append(line)
        used += len(line) + 1
    return kept
