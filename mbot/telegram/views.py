"""What the chat shows: HTML texts, inline keyboards and callback data. Pure: values in, values out.

Everything user-supplied (host names, OS strings, labels) goes through html.escape: a host named <b> must not
break a card. Callback data carries ids and actions only, never secrets, and always fits Telegram's 64 bytes.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

from .. import store
from ..alerts import AlertEngine, AlertRule, OfflineRule, format_value, series_label
from ..service import NewKey

CALLBACK_LIMIT = 64
Keyboard = dict[str, Any]


# --- callback data -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Callback:
    action: str  # card, refresh, power, confirm, cancel, revoke, delete
    args: tuple[str, ...] = ()

    def encode(self) -> str:
        data = ":".join((self.action, *self.args))
        if len(data.encode()) > CALLBACK_LIMIT:
            raise ValueError(f"callback data over {CALLBACK_LIMIT} bytes: {data!r}")
        return data


CHART_SPANS = {"10m": 600.0, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}


def chart_callback(action: str, host_id: int, span: str, unit: str | None, metrics: Sequence[str]) -> Callback | None:
    """chart (a new photo) or range (replace the photo): None when it would not fit in 64 bytes (long mount
    paths), in which case the button is left out rather than truncated."""
    callback = Callback(action, (str(host_id), span, unit or "-", ";".join(metrics)))
    return callback if len(":".join((action, *callback.args)).encode()) <= CALLBACK_LIMIT else None


def decode_callback(data: str) -> Callback | None:
    """None for data this bot never made (old buttons, forgeries): the bot answers those with a short notice."""
    if not data or len(data.encode()) > CALLBACK_LIMIT:
        return None
    if data.startswith(("chart:", "range:")):
        # The metrics come last and may hold ':' themselves (disk:/home).
        parts = data.split(":", 4)
        if len(parts) != 5 or not parts[1].isdigit() or parts[2] not in CHART_SPANS or not parts[4]:
            return None
        return Callback(parts[0], tuple(parts[1:]))
    action, *args = data.split(":")
    expected = {"card": 1, "refresh": 1, "power": 2, "confirm": 1, "cancel": 1, "revoke": 2, "delete": 0}
    if expected.get(action) != len(args):
        return None
    if action in ("card", "refresh", "power", "revoke") and not args[0].isdigit():
        return None
    if action == "power" and args[1] not in ("reboot", "shutdown"):
        return None
    if action == "revoke" and args[1] not in ("keep", "wipe", "no"):
        return None
    return Callback(action, tuple(args))


def button(text: str, callback: Callback) -> dict[str, str]:
    return {"text": text, "callback_data": callback.encode()}


def keyboard(*rows: list[dict[str, str]]) -> Keyboard:
    return {"inline_keyboard": [row for row in rows if row]}


# --- numbers for people ------------------------------------------------------------------------------------------


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # unreachable: the loop returns at TiB


def human_rate(value: float) -> str:
    return f"{human_bytes(value)}/s"


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def ago(then: float | None, now: float) -> str:
    return "never" if then is None else f"{human_duration(now - then)} ago"


def _pct(part: dict[str, float]) -> float:
    return 100.0 * part["used"] / part["total"] if part.get("total") else 0.0


def _used_total(part: dict[str, float]) -> str:
    return f"{human_bytes(part['used'])} / {human_bytes(part['total'])} ({_pct(part):.0f} %)"


def _state(host: store.Host, now: float) -> str:
    return "🟢 online" if host.is_online(now) else "🔴 offline"


e = html.escape


# --- texts -------------------------------------------------------------------------------------------------------

HELP = (
    "<b>mbot</b> watches your machines and reports here.\n\n"
    "/newkey NAME - register a host and get its agent settings\n"
    "/hosts - your hosts, online or not\n"
    "/status [NAME] - a summary, or one host's card with Refresh, Reboot and Shutdown\n"
    "/rename OLD NEW - rename a host\n"
    "/rotate NAME - new secret; the old one stops working at once\n"
    "/revoke NAME - delete a host's key and disconnect its agent\n"
    "/setalert NAME METRIC THRESHOLD [FOR] - e.g. /setalert box1 cpu 90 5m, /setalert box1 disk:/ 95, "
    "/setalert box1 offline 2m\n"
    "/delalert NAME METRIC, /alerts - manage alerts\n"
    "/mute NAME DURATION, /unmute NAME - silence a host for a while\n\n"
    "NAME may also be the first 8+ characters of a host's key id."
)

NOT_ALLOWED = "Sorry, this mbot is private."
NO_SUCH_HOST = "No such host. /hosts lists yours."


def host_card(host: store.Host, now: float) -> str:
    m, f = host.last_metrics, host.facts
    lines = [f"<b>{e(host.name)}</b> {_state(host, now)} · last seen {ago(host.last_seen, now)}"]
    if not m:
        lines.append("No data yet: start the agent with this host's secret.")
        return "\n".join(lines)
    cpu = f"CPU {m['cpu']:.0f} %" if "cpu" in m else "CPU ?"
    if "load" in m:
        cpu += " · load " + " ".join(f"{x:.2f}" for x in m["load"])
    if f.get("cpu_count"):
        cpu += f" ({f['cpu_count']} cores)"
    lines.append(cpu)
    for key, label in (("ram", "RAM"), ("swap", "Swap")):
        if key in m:
            lines.append(f"{label} {_used_total(m[key])}")
    for mount, part in m.get("disks", {}).items():
        lines.append(f"Disk {e(mount)} {_used_total(part)}")
    if "disk_io" in m:
        io = m["disk_io"]
        lines.append(f"Disk I/O read {human_rate(io.get('read', 0))} · write {human_rate(io.get('write', 0))}")
    if m.get("net"):
        rx = sum(r.get("rx", 0) for r in m["net"].values())
        tx = sum(r.get("tx", 0) for r in m["net"].values())
        lines.append(f"Net ↓ {human_rate(rx)} ↑ {human_rate(tx)}")
    if m.get("temps"):
        lines.append("Temp " + ", ".join(f"{e(label)} {value:.0f} °C" for label, value in m["temps"].items()))
    for i, gpu in enumerate(m.get("gpus", ())):
        parts = [f"GPU{i} {e(gpu.get('name', ''))}".rstrip()]
        if "util" in gpu:
            parts.append(f"{gpu['util']:.0f} %")
        if "vram_total" in gpu:
            parts.append("VRAM " + _used_total({"used": gpu["vram_used"], "total": gpu["vram_total"]}))
        if "temp" in gpu:
            parts.append(f"{gpu['temp']:.0f} °C")
        if "power" in gpu:
            parts.append(f"{gpu['power']:.0f} W")
        lines.append(" · ".join(parts))
    tail = []
    if "uptime" in m:
        tail.append(f"Uptime {human_duration(m['uptime'])}")
    if "procs" in m:
        tail.append(f"{m['procs']:.0f} processes")
    if tail:
        lines.append(" · ".join(tail))
    if host.dropped:
        lines.append(f"⚠️ {host.dropped} samples dropped during an outage")
    lines.append(f"Agent {e(str(f.get('agent', '?')))} · {e(str(f.get('os', '?')))}")
    return "\n".join(lines)


CARD_CHARTS = (("CPU", "cpu", "cpu"), ("RAM", "ram", "ram"), ("GPU", "gpu", "gpu0"), ("VRAM", "vram", "vram0"),
               ("Disk", "disk", "disk:"), ("Net", "net", "net_rx"))


def chart_buttons(host: store.Host, series: Sequence[str]) -> list[dict[str, str]]:
    """📈 buttons for the charts this host can draw (a host without a GPU gets no GPU button)."""
    buttons = []
    for label, word, probe in CARD_CHARTS:
        if any(name == probe or (probe.endswith(":") and name.startswith(probe)) for name in series):
            callback = chart_callback("chart", host.id, "1h", None, (word,))
            if callback is not None:
                buttons.append(button(f"📈 {label}", callback))
    return buttons


def range_keyboard(host_id: int, metrics: Sequence[str], unit: str | None, current: str | None) -> Keyboard | None:
    buttons = []
    for span in CHART_SPANS:
        callback = chart_callback("range", host_id, span, unit, metrics)
        if callback is not None:
            buttons.append(button(f"· {span} ·" if span == current else span, callback))
    return keyboard(buttons) if buttons else None


def card_keyboard(host: store.Host, series: Sequence[str] = ()) -> Keyboard:
    charts = chart_buttons(host, series)
    return keyboard(
        [button("🔄 Refresh", Callback("refresh", (str(host.id),)))],
        charts[:3], charts[3:],
        [button("Reboot", Callback("power", (str(host.id), "reboot"))),
         button("Shutdown", Callback("power", (str(host.id), "shutdown")))],
    )


def host_list(hosts: list[store.Host], now: float) -> tuple[str, Keyboard | None]:
    if not hosts:
        return "You have no hosts yet. /newkey NAME registers one.", None
    lines = [f"{'🟢' if h.is_online(now) else '🔴'} <b>{e(h.name)}</b> - "
             f"{'online' if h.is_online(now) else 'offline'}, last seen {ago(h.last_seen, now)}" for h in hosts]
    buttons = [button(h.name, Callback("card", (str(h.id),))) for h in hosts]
    rows = [buttons[i:i + 3] for i in range(0, len(buttons), 3)]
    return "\n".join(lines), keyboard(*rows)


def summary(hosts: list[store.Host], now: float) -> tuple[str, Keyboard | None]:
    if not hosts:
        return host_list(hosts, now)
    lines = []
    for h in hosts:
        m = h.last_metrics
        figures = []
        if "cpu" in m:
            figures.append(f"CPU {m['cpu']:.0f} %")
        if "ram" in m:
            figures.append(f"RAM {_pct(m['ram']):.0f} %")
        if m.get("disks"):
            figures.append(f"Disk {max(_pct(p) for p in m['disks'].values()):.0f} %")
        state = "🟢" if h.is_online(now) else "🔴"
        detail = " · ".join(figures) if h.is_online(now) else f"offline, last seen {ago(h.last_seen, now)}"
        lines.append(f"{state} <b>{e(h.name)}</b> {detail}")
    _, buttons = host_list(hosts, now)
    return "\n".join(lines), buttons


def new_key(key: NewKey, public_host: str, port: int, fingerprint: str) -> tuple[str, Keyboard]:
    command = (f"AGENT_SERVER_IP={public_host} AGENT_PORT={port} AGENT_SECRET={key.secret} "
               f"AGENT_FINGERPRINT={fingerprint} python3 mbot_agent.py")
    text = (f"Host <b>{e(key.name)}</b> registered (key <code>{key.key_id}</code>).\n\n"
            f"Run the agent on it:\n<pre>{e(command)}</pre>\n"
            f"Secret: <code>{e(key.secret)}</code>\nServer fingerprint: <code>{fingerprint}</code>\n\n"
            "This message holds the secret and is not shown again: delete it once you have copied it.")
    return text, keyboard([button("🗑 Delete this message", Callback("delete"))])


AGENT_CAPTION = ("The mbot agent. On the host: <code>pip install psutil trio trio-websocket</code> (and "
                 "<code>nvidia-ml-py</code> with NVIDIA GPUs), then <code>python3 mbot_agent.py</code>. "
                 "<code>--check</code> shows what it would send; <code>--install-systemd</code> keeps it running.")


def agent_env(key: NewKey, public_host: str, port: int, fingerprint: str) -> tuple[str, bytes, str, Keyboard]:
    """The host's ready settings file: (file name, content, caption, keyboard with the delete button)."""
    content = (f"AGENT_SERVER_IP={public_host}\nAGENT_PORT={port}\nAGENT_SECRET={key.secret}\n"
               f"AGENT_FINGERPRINT={fingerprint}\n")
    caption = (f"Settings for <b>{e(key.name)}</b>: save as <code>.env</code> next to mbot_agent.py (or run "
               f"<code>python3 mbot_agent.py --env-file {e(key.name)}.env</code>). It holds the secret: delete "
               "this message once saved.")
    return f"{key.name}.env", content.encode(), caption, keyboard([button("🗑 Delete this message", Callback("delete"))])


def power_question(host: store.Host, action: str, nonce: str) -> tuple[str, Keyboard]:
    return (f"{action.capitalize()} <b>{e(host.name)}</b>? (expires in 60 s)",
            keyboard([button("Yes", Callback("confirm", (nonce,))), button("Cancel", Callback("cancel", (nonce,)))]))


def revoke_question(host: store.Host) -> tuple[str, Keyboard]:
    hid = str(host.id)
    return (f"Revoke <b>{e(host.name)}</b>? Its key stops working and its agent is disconnected.",
            keyboard([button("Revoke, keep history", Callback("revoke", (hid, "keep")))],
                     [button("Revoke and delete history", Callback("revoke", (hid, "wipe")))],
                     [button("Cancel", Callback("revoke", (hid, "no")))]))


POWER_DISABLED_HINT = ("The agent refuses power commands. To allow them, start it with AGENT_ALLOW_POWER=1 "
                       "(and as a user that may reboot the machine).")


def rule_text(rule: AlertRule | OfflineRule) -> str:
    if isinstance(rule, OfflineRule):
        if not rule.enabled:
            return "offline alert off"
        return f"offline after {human_duration(rule.delay)}" if rule.delay else "offline (default delay)"
    text = f"{rule.metric} {'<' if rule.below else '>'} {format_value(rule.metric, rule.threshold)}"
    return text + (f" for {human_duration(rule.for_s)}" if rule.for_s else "")


def alerts_overview(hosts: list[store.Host], engine: AlertEngine, now: float) -> str:
    if not hosts:
        return "You have no hosts yet. /newkey NAME registers one."
    blocks = []
    for host in hosts:
        status = engine.host_status(host.id)
        head = f"<b>{e(host.name)}</b>"
        if status.muted_until and status.muted_until > now:
            head += f" (muted for {human_duration(status.muted_until - now)})"
        if status.offline_since is not None:
            head += f" 🔴 offline for {human_duration(now - status.offline_since)}"
        lines = [head]
        if status.offline_alert:
            lines.append(f"• offline after {human_duration(status.delay)}")
        else:
            lines.append("• offline alert off")
        for state in engine.states(host.id):
            line = f"• {e(rule_text(state.rule))}"
            if state.series and state.series != state.rule.metric:
                line += f" [{e(series_label(state.series))}]"
            if state.state == "firing" and state.since is not None:
                line += f" - 🔥 firing for {human_duration(now - state.since)}"
            elif state.state == "pending":
                line += " - pending"
            else:
                line += " - ok"
            if state.value is not None:
                line += f" ({e(format_value(state.rule.metric, state.value))})"
            lines.append(line)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
