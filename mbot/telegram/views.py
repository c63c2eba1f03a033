"""What the chat shows: HTML texts, inline keyboards and callback data. Pure: values in, values out.

Everything user-supplied (host names, OS strings, labels) goes through html.escape: a host named <b> must not
break a card. Callback data carries ids and actions only, never secrets, and always fits Telegram's 64 bytes.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

from .. import containers as container_rows, series as catalogue
from ..alerts import STATE, AlertEngine, AlertRule, OfflineRule, metric_of
from .alert_text import format_value, series_label
from ..durations import format_duration
from ..model import Host, NewKey
from . import commands

CALLBACK_LIMIT = 64
Keyboard = dict[str, Any]


# --- callback data -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Callback:
    """action:args. Who may press it is part of it: confirm:NONCE:USER, cancel:NONCE:USER and delete:USER name
    their user; the host buttons (card, refresh, power, revoke, chart, range) belong to the host's owner."""

    action: str  # card, refresh, power, confirm, cancel, revoke, delete, chart, range
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
    # confirm, cancel and delete made before buttons named their user have one argument fewer: still accepted,
    # and then only in a private chat, whose one member is necessarily the user (see button_user).
    expected = {"card": (1,), "refresh": (1,), "power": (2,), "confirm": (1, 2), "cancel": (1, 2), "revoke": (2,),
                "delete": (0, 1), "containers": (1, 2)}
    if len(args) not in expected.get(action, ()):
        return None
    if action in HOST_ACTIONS and not args[0].isdigit():
        return None
    if action in ("confirm", "cancel") and len(args) == 2 and not args[1].isdigit():
        return None
    if action == "delete" and args and not args[0].isdigit():
        return None
    if action == "power" and args[1] not in ("reboot", "shutdown"):
        return None
    if action == "revoke" and args[1] not in ("keep", "wipe", "no"):
        return None
    if action == "containers" and len(args) == 2 and args[1] != "r":
        return None
    return Callback(action, tuple(args))


HOST_ACTIONS = ("card", "refresh", "power", "revoke", "chart", "range", "containers")


def button_user(callback: Callback) -> int | None:
    """The user a confirm, cancel or delete button was made for, from its data; None for the others (their host
    says whose they are) and for old buttons that did not say."""
    if callback.action in ("confirm", "cancel") and len(callback.args) == 2:
        return int(callback.args[1])
    if callback.action == "delete" and callback.args:
        return int(callback.args[0])
    return None


def delete_button(user_id: int | None) -> dict[str, str]:
    return button("🗑 Delete this message", Callback("delete", () if user_id is None else (str(user_id),)))


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


def value_text(unit: str, value: float) -> str:
    """A value in a catalogue unit, for people."""
    if unit == catalogue.PERCENT:
        return f"{value:.0f} %"
    if unit == catalogue.BYTES:
        return human_bytes(value)
    if unit == catalogue.BYTE_RATE:
        return human_rate(value)
    if unit == catalogue.CELSIUS:
        return f"{value:.0f} °C"
    if unit == catalogue.WATTS:
        return f"{value:.0f} W"
    if unit == catalogue.SECONDS:
        return format_duration(value)
    if unit == catalogue.LOAD:
        return f"{value:.2f}"
    return f"{value:g}"


def ago(then: float | None, now: float) -> str:
    return "never" if then is None else f"{format_duration(now - then)} ago"


def _pct(part: dict[str, float]) -> float:
    return 100.0 * part["used"] / part["total"] if part.get("total") else 0.0


def _used_total(part: dict[str, float]) -> str:
    return f"{human_bytes(part['used'])} / {human_bytes(part['total'])} ({_pct(part):.0f} %)"


def _state(host: Host, now: float) -> str:
    return "🟢 online" if host.is_online(now) else "🔴 offline"


e = html.escape


# --- texts -------------------------------------------------------------------------------------------------------

HELP_EXAMPLES = (
    "Alerts, e.g. /setalert box1 cpu 90 5m, /setalert box1 disk:/ 95, /setalert box1 offline 2m.\n"
    "NAME may also be the first 8+ characters of a host's key id."
)


def help_text(admin: bool = False) -> str:
    """/help, made from the commands' own table (commands.TABLE), so a new command cannot be left out."""
    lines = [html.escape(usage, quote=False) for usage in commands.help_lines(admin)]
    return "<b>mbot</b> watches your machines and reports here.\n\n" + "\n".join(lines) + "\n\n" + HELP_EXAMPLES


HELP = help_text()

NOT_ALLOWED = "Sorry, this mbot is private."
BAD_INVITE = ("Sorry, this invite is not valid: it was already used, it expired, or it was mistyped. "
              "Ask whoever runs this mbot for a new one.")
NOT_YOUR_BUTTON = "This button is not for you"
NOT_ADMIN = "Only the admin of this mbot can invite people."


def welcome(role: str) -> str:
    if role == "admin":
        head = "Welcome: you are the admin of this mbot. /invite makes a one-time link for one more person."
    else:
        head = "Welcome to mbot."
    return head + "\n\n" + help_text(admin=role == "admin")


def invite(code: str, link: str | None, user_id: int, hours: float) -> tuple[str, Keyboard]:
    """The one chat message that shows an invite code."""
    lines = [f"A one-time invite: the first person to use it can use this bot. It expires in {hours:.0f} h.", ""]
    if link:
        lines += [e(link), "", f"or, in a chat with the bot, they send <code>/start {e(code)}</code>"]
    else:
        lines.append(f"In a chat with the bot, they send <code>/start {e(code)}</code>")
    lines += ["", "Delete this message once you have passed it on."]
    return "\n".join(lines), keyboard([delete_button(user_id)])


def slow_down(what: str, burst: int, every: float, retry_after: float) -> str:
    return (f"Slow down: {what} at most {burst} times at once, then once every {format_duration(every)}. "
            f"Try again in {format_duration(max(1.0, retry_after))}.")
NO_SUCH_HOST = "No such host. /hosts lists yours."


# Keys of `metrics` the card has a line of its own for; other plain numbers of the catalogue share a generic line.
_CARD_LINES = frozenset({"cpu", "cpu_cores", "load", "ram", "swap", "disks", "disk_io", "net", "temps", "gpus",
                         "uptime", "procs"})


def host_card(host: Host, now: float) -> str:
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
        tail.append(f"Uptime {format_duration(m['uptime'])}")
    if "procs" in m:
        tail.append(f"{m['procs']:.0f} processes")
    # Plain numbers without a line of their own above (a metric added to the catalogue later): "Label value".
    for key, row in catalogue.scalar_keys().items():
        if row.card and key in m and key not in _CARD_LINES:
            tail.append(f"{e(row.label[:1].upper() + row.label[1:])} {value_text(row.unit, m[key])}")
    if tail:
        lines.append(" · ".join(tail))
    if m.get("containers"):
        lines.append(f"Containers {container_rows.series_tally(m['containers'])}")
    if host.dropped:
        lines.append(f"⚠️ {host.dropped} samples dropped during an outage")
    if host.rejected:
        lines.append(f"⚠️ {host.rejected} samples not stored: dated more than a week back or minutes ahead "
                     "(is the host's clock right?)")
    lines.append(f"Agent {e(str(f.get('agent', '?')))} · {e(str(f.get('os', '?')))}")
    return "\n".join(lines)


def chart_buttons(host: Host, series: Sequence[str]) -> list[dict[str, str]]:
    """📈 buttons for the charts this host can draw (a host without a GPU gets no GPU button): the catalogue's rows
    that have a button, in its order."""
    buttons = []
    for row in catalogue.CATALOGUE:
        if row.button and row.plot and catalogue.members([row], series):
            callback = chart_callback("chart", host.id, "1h", None, (row.plot[0],))
            if callback is not None:
                buttons.append(button(f"📈 {row.button}", callback))
    return buttons


def _containers_button(host: Host) -> list[dict[str, str]]:
    """The card's Containers button, for a host whose agent reports containers."""
    if not host.last_metrics.get("containers"):
        return []
    return [button("🐳 Containers", Callback("containers", (str(host.id),)))]


CONTAINERS_TEXT_LIMIT = 3900  # Telegram takes 4096 characters: the rest of the list becomes "... and N more"
_TROUBLE_MARK = {"unhealthy": "🟠", "restarting": "🟠", "paused": "⏸", "created": "⚪"}


def containers_view(host: Host, items: Sequence[dict[str, Any]] | None, received: float | None,
                    now: float) -> tuple[str, Keyboard]:
    """/containers NAME and the card's Containers button: the latest `containers` snapshot, trouble first."""
    hid = str(host.id)
    buttons = keyboard([button("🔄 Refresh", Callback("containers", (hid, "r"))),
                        button("Card", Callback("card", (hid,)))])
    head = f"<b>{e(host.name)}</b> · containers"
    if items is None or received is None:
        return (f"{head}\nNo containers reported. The agent reports them when it can open a Docker or Podman "
                "socket (its user in the docker group, or AGENT_CONTAINER_SOCKET); its log says which."), buttons
    listed = container_rows.rows(items)
    lines = [f"{head} · {ago(received, now)}", e(container_rows.tally(listed))]
    size = sum(len(line) + 1 for line in lines)
    for shown, c in enumerate(listed):
        trouble = c.trouble
        mark = "🟢" if trouble is None else _TROUBLE_MARK.get(trouble, "🔴")
        parts = [f"{mark} <b>{e(c.name)}</b>" + (f" {e(trouble)}" if trouble else "")]
        if c.image:
            parts.append(e(c.image))
        if c.cpu is not None:
            parts.append(f"CPU {c.cpu:.1f} %")
        if c.mem is not None:
            parts.append(human_bytes(c.mem))
        if c.restarts:
            parts.append(f"{c.restarts} restart{'s' if c.restarts != 1 else ''}")
        line = " · ".join(parts)
        if size + len(line) + 1 > CONTAINERS_TEXT_LIMIT:
            lines.append(f"… and {len(listed) - shown} more (python -m mbot containers {e(host.name)} lists all)")
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines), buttons


def range_keyboard(host_id: int, metrics: Sequence[str], unit: str | None, current: str | None) -> Keyboard | None:
    buttons = []
    for span in CHART_SPANS:
        callback = chart_callback("range", host_id, span, unit, metrics)
        if callback is not None:
            buttons.append(button(f"· {span} ·" if span == current else span, callback))
    return keyboard(buttons) if buttons else None


def card_keyboard(host: Host, series: Sequence[str] = ()) -> Keyboard:
    charts = chart_buttons(host, series)
    return keyboard(
        [button("🔄 Refresh", Callback("refresh", (str(host.id),)))] + _containers_button(host),
        charts[:3], charts[3:],
        [button("Reboot", Callback("power", (str(host.id), "reboot"))),
         button("Shutdown", Callback("power", (str(host.id), "shutdown")))],
    )


def host_list(hosts: list[Host], now: float) -> tuple[str, Keyboard | None]:
    if not hosts:
        return "You have no hosts yet. /newkey NAME registers one.", None
    lines = [f"{'🟢' if h.is_online(now) else '🔴'} <b>{e(h.name)}</b> - "
             f"{'online' if h.is_online(now) else 'offline'}, last seen {ago(h.last_seen, now)}" for h in hosts]
    buttons = [button(h.name, Callback("card", (str(h.id),))) for h in hosts]
    rows = [buttons[i:i + 3] for i in range(0, len(buttons), 3)]
    return "\n".join(lines), keyboard(*rows)


def summary(hosts: list[Host], now: float) -> tuple[str, Keyboard | None]:
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


def new_key(key: NewKey, public_host: str, port: int, fingerprint: str,
            user_id: int | None = None) -> tuple[str, Keyboard]:
    command = (f"AGENT_SERVER_IP={public_host} AGENT_PORT={port} AGENT_SECRET={key.secret} "
               f"AGENT_FINGERPRINT={fingerprint} python3 mbot_agent.py")
    text = (f"Host <b>{e(key.name)}</b> registered (key <code>{key.key_id}</code>).\n\n"
            f"Run the agent on it:\n<pre>{e(command)}</pre>\n"
            f"Secret: <code>{e(key.secret)}</code>\nServer fingerprint: <code>{fingerprint}</code>\n\n"
            "This message holds the secret and is not shown again: delete it once you have copied it.")
    return text, keyboard([delete_button(user_id)])


AGENT_CAPTION = ("The mbot agent. On the host: <code>pip install psutil trio trio-websocket</code> (and "
                 "<code>nvidia-ml-py</code> with NVIDIA GPUs), then <code>python3 mbot_agent.py</code>. "
                 "<code>--check</code> shows what it would send; <code>--install-systemd</code> keeps it running.")


def agent_env(key: NewKey, public_host: str, port: int, fingerprint: str,
              user_id: int | None = None) -> tuple[str, bytes, str, Keyboard]:
    """The host's ready settings file: (file name, content, caption, keyboard with the delete button)."""
    content = (f"AGENT_SERVER_IP={public_host}\nAGENT_PORT={port}\nAGENT_SECRET={key.secret}\n"
               f"AGENT_FINGERPRINT={fingerprint}\n")
    caption = (f"Settings for <b>{e(key.name)}</b>: save as <code>.env</code> next to mbot_agent.py (or run "
               f"<code>python3 mbot_agent.py --env-file {e(key.name)}.env</code>). It holds the secret: delete "
               "this message once saved.")
    return f"{key.name}.env", content.encode(), caption, keyboard([delete_button(user_id)])


def power_question(host: Host, action: str, nonce: str) -> tuple[str, Keyboard]:
    # The buttons name the host's owner (the only one who can ask): in a group, nobody else may answer.
    args = (nonce, str(host.owner))
    return (f"{action.capitalize()} <b>{e(host.name)}</b>? (expires in 60 s)",
            keyboard([button("Yes", Callback("confirm", args)), button("Cancel", Callback("cancel", args))]))


def revoke_question(host: Host) -> tuple[str, Keyboard]:
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
        return f"offline after {format_duration(rule.delay)}" if rule.delay else "offline (default delay)"
    found = metric_of(rule.metric)
    if found is not None and found.kind == STATE:
        text = f"{rule.metric} down"
    else:
        text = f"{rule.metric} {'<' if rule.below else '>'} {format_value(rule.metric, rule.threshold)}"
    return text + (f" for {format_duration(rule.for_s)}" if rule.for_s else "")


def alerts_overview(hosts: list[Host], engine: AlertEngine, now: float) -> str:
    if not hosts:
        return "You have no hosts yet. /newkey NAME registers one."
    blocks = []
    for host in hosts:
        status = engine.host_status(host.id)
        head = f"<b>{e(host.name)}</b>"
        if status.muted_until and status.muted_until > now:
            head += f" (muted for {format_duration(status.muted_until - now)})"
        if status.offline_since is not None:
            head += f" 🔴 offline for {format_duration(now - status.offline_since)}"
        lines = [head]
        if status.offline_alert:
            lines.append(f"• offline after {format_duration(status.delay)}")
        else:
            lines.append("• offline alert off")
        for state in engine.states(host.id):
            line = f"• {e(rule_text(state.rule))}"
            if state.series and state.series != state.rule.metric:
                line += f" [{e(series_label(state.series))}]"
            if state.state == "firing" and state.since is not None:
                line += f" - 🔥 firing for {format_duration(now - state.since)}"
            elif state.state == "pending":
                line += " - pending"
            else:
                line += " - ok"
            if state.value is not None:
                line += f" ({e(format_value(state.rule.metric, state.value))})"
            lines.append(line)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
