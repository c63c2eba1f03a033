"""What the chat shows: HTML texts, inline keyboards and callback data. Pure: values in, values out.

Everything user-supplied (host names, OS strings, labels) goes through html.escape: a host named <b> must not
break a card. Callback data carries ids and actions only, never secrets, and always fits Telegram's 64 bytes.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .. import access, checks, containers as container_rows, i18n, inventory as host_inventory, members, processes, \
    series as catalogue
from ..alerts import CODE, AlertEngine, AlertRule, OfflineRule, metric_of
from .alert_text import format_value, series_label
from ..durations import format_duration
from ..i18n import N_, _, n_
from ..install import Endpoint, guessed_note, older, one_liner
from ..model import AlertMessage, Host, NewKey, StoredSnapshot
from ..processes import human_bytes
from . import commands

CALLBACK_LIMIT = 64
Keyboard = dict[str, Any]


# --- callback data -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Callback:
    """action:args. Who may press it is part of it: confirm:NONCE:USER, cancel:NONCE:USER and delete:USER name
    their user; the host buttons (card, refresh, power, revoke, chart, range, unshare) are for whoever's role on
    the host allows them (mbot.access), checked at each press."""

    action: str  # card, refresh, power, confirm, cancel, revoke, delete, chart, range, procs (:r refreshes),
    # and under alerts: amute (mute the host 1 h), ack and aprocs (an alert_messages id: ack it, its processes)
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
    expected = {"card": (1,), "refresh": (1,), "info": (1,),  # info: the Diagnostics button
                "power": (2,), "confirm": (1, 2), "cancel": (1, 2), "revoke": (2,),
                "delete": (0, 1), "procs": (1, 2), "stability": (1,), "speedtest": (1,),
                "amute": (1,), "ack": (2,), "aprocs": (2,), "containers": (1, 2), "unshare": (2,)}
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
    if action in ("procs", "containers") and args[1:] not in ([], ["r"]):
        return None
    if action in ("ack", "aprocs", "unshare") and not args[1].isdigit():
        return None
    return Callback(action, tuple(args))


HOST_ACTIONS = ("card", "refresh", "power", "revoke", "chart", "range", "procs", "info", "stability",
                "speedtest", "amute", "ack", "aprocs", "containers", "unshare")


def button_user(callback: Callback) -> int | None:
    """The user a confirm, cancel or delete button was made for, from its data; None for the others (their host
    says whose they are) and for old buttons that did not say."""
    if callback.action in ("confirm", "cancel") and len(callback.args) == 2:
        return int(callback.args[1])
    if callback.action == "delete" and callback.args:
        return int(callback.args[0])
    return None


def delete_button(user_id: int | None) -> dict[str, str]:
    return button(_("🗑 Delete this message"), Callback("delete", () if user_id is None else (str(user_id),)))


def button(text: str, callback: Callback) -> dict[str, str]:
    return {"text": text, "callback_data": callback.encode()}


def keyboard(*rows: list[dict[str, str]]) -> Keyboard:
    return {"inline_keyboard": [row for row in rows if row]}


# --- numbers for people ------------------------------------------------------------------------------------------


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
        return _("{watts} W", watts=f"{value:.0f}")
    if unit == catalogue.SECONDS:
        return format_duration(value)
    if unit == catalogue.LOAD:
        return i18n.number(value, 2)
    if unit == catalogue.MILLISECONDS:
        return ms_text(value)
    return i18n.decimal(f"{value:g}")


def ms_text(value: float) -> str:
    """A round trip: 0.42 ms, 12.3 ms, 250 ms."""
    return _("{ms} ms", ms=i18n.number(value, 2 if value < 1 else 1 if value < 100 else 0))


def ago(then: float | None, now: float) -> str:
    return _("never") if then is None else _("{duration} ago", duration=format_duration(now - then))


def _pct(part: dict[str, float]) -> float:
    return 100.0 * part["used"] / part["total"] if part.get("total") else 0.0


def _used_total(part: dict[str, float]) -> str:
    return f"{human_bytes(part['used'])} / {human_bytes(part['total'])} ({_pct(part):.0f} %)"


# A host offline because of a power action from the chat (mbot.alerts REBOOT, SHUTDOWN) says so, not "offline".
_POWER_STATES = {"reboot": ("🔁", N_("rebooting")), "shutdown": ("⏻", N_("shut down"))}


def _state_parts(host: Host, now: float, power: str | None = None) -> tuple[str, str]:
    if host.is_online(now):
        return "🟢", _("online")
    mark, word = _POWER_STATES.get(power or "", ("🔴", N_("offline")))
    return mark, _(word)


def _state(host: Host, now: float, power: str | None = None) -> str:
    return " ".join(_state_parts(host, now, power))


def power_started(name: str, action: str) -> str:
    if action == "shutdown":
        return _("<b>{name}</b>: shutdown started. It shows as shut down until it is back; no offline alert.",
                 name=e(name))
    return _("<b>{name}</b>: reboot started. You will hear when it is back; no offline alert meanwhile.",
             name=e(name))


e = html.escape


# --- texts -------------------------------------------------------------------------------------------------------

HELP_EXAMPLES = N_(
    "Alerts, e.g. /setalert box1 cpu 90 5m, /setalert box1 disk:/ 95, /setalert box1 offline 2m.\n"
    "NAME may also be the first 8+ characters of a host's key id."
)


def help_text(admin: bool = False) -> str:
    """/help, made from the commands' own table (commands.TABLE), so a new command cannot be left out."""
    lines = [html.escape(usage, quote=False) for usage in commands.help_lines(admin)]
    return (_("<b>mbot</b> watches your machines and reports here.") + "\n\n" + "\n".join(lines) + "\n\n"
            + _(HELP_EXAMPLES) + "\n" + _("After /set NAME, commands work without NAME in that chat. The original's "
                                          "/list, /renamekey and /delkey work too."))


HELP = help_text()  # in English

# Texts that are constants, said in the user's language where they are sent: _(views.NOT_ALLOWED).
NOT_ALLOWED = N_("Sorry, this mbot is private.")
BAD_INVITE = N_("Sorry, this invite is not valid: it was already used, it expired, or it was mistyped. "
                "Ask whoever runs this mbot for a new one.")
NOT_YOUR_BUTTON = N_("This button is not for you")
NOT_ADMIN = N_("Only the admin of this mbot can invite people.")


def welcome(role: str) -> str:
    if role == "admin":
        head = _("Welcome: you are the admin of this mbot. /invite makes a one-time link for one more person.")
    else:
        head = _("Welcome to mbot.")
    return head + "\n\n" + help_text(admin=role == "admin")


LANGUAGE_NAMES = {"en": "English", "ru": "Русский"}


def language_text(language: str, chosen: bool) -> str:
    """/lang: the chat's language now, and how to change it (`chosen`: set with /lang, not Telegram's)."""
    how = (_("chosen with /lang; /lang auto follows your Telegram's language again") if chosen
           else _("your Telegram's language"))
    return _("Language: {language} ({how}). /lang en or /lang ru changes it.",
             language=LANGUAGE_NAMES[language], how=how)


def invite(code: str, link: str | None, user_id: int, hours: float) -> tuple[str, Keyboard]:
    """The one chat message that shows an invite code."""
    lines = [_("A one-time invite: the first person to use it can use this bot. It expires in {hours} h.",
               hours=f"{hours:.0f}"), ""]
    if link:
        lines += [e(link), "", _("or, in a chat with the bot, they send <code>/start {code}</code>", code=e(code))]
    else:
        lines.append(_("In a chat with the bot, they send <code>/start {code}</code>", code=e(code)))
    lines += ["", _("Delete this message once you have passed it on.")]
    return "\n".join(lines), keyboard([delete_button(user_id)])


def slow_down(what: str, burst: int, every: float, retry_after: float) -> str:
    """`what`: the command, /newkey."""
    return n_("Slow down: {what} works at most {n} times at once, then once every {every}. Try again in {wait}.",
              "Slow down: {what} works at most {n} times at once, then once every {every}. Try again in {wait}.",
              burst, what=what, every=format_duration(every), wait=format_duration(max(1.0, retry_after)))


NO_SUCH_HOST = N_("No such host. /hosts lists yours.")
NO_HOSTS = N_("You have no hosts yet. /newkey NAME registers one.")


# Keys of `metrics` the card has a line of its own for; other plain numbers of the catalogue share a generic line.
_CARD_LINES = frozenset({"cpu", "cpu_cores", "load", "ram", "swap", "disks", "disk_io", "net", "temps", "gpus",
                         "uptime", "procs", "link"})


def _link_line(link: dict[str, float]) -> str:
    """The server's own measurement of its link to the host (mbot/linkquality.py)."""
    parts = []
    if "rtt" in link:
        parts += [_("RTT {rtt}", rtt=ms_text(link['rtt'])), _("jitter {jitter}", jitter=ms_text(link.get('jitter', 0.0)))]
    parts.append(_("loss {loss} %", loss=f"{link.get('loss', 0.0):.0f}"))
    return _("Link to server: {parts}", parts=" · ".join(parts))


def host_card(host: Host, now: float, procs: StoredSnapshot | None = None, *, power: str | None = None,
              forecasts: Sequence[str] = ()) -> str:
    """The status card; with a current `processes` snapshot, its top 5 by CPU and by memory too. `power`: a
    reboot or shutdown from the chat under way (or done), shown instead of "offline". `forecasts`: lines of disks
    filling up (mbot.forecast), after the disks."""
    m, f = host.last_metrics, host.facts
    lines = [_("<b>{name}</b> {state} · last seen {ago}", name=e(host.name), state=_state(host, now, power),
               ago=ago(host.last_seen, now))]
    if not m:
        lines.append(_("No data yet: start the agent with this host's secret."))
        return "\n".join(lines)
    cpu = f"CPU {m['cpu']:.0f} %" if "cpu" in m else "CPU ?"
    if "load" in m:
        cpu += " · " + _("load {load}", load=" ".join(i18n.number(x, 2) for x in m["load"]))
    if f.get("cpu_count"):
        cpu += " " + n_("({n} core)", "({n} cores)", int(f["cpu_count"]))
    lines.append(cpu)
    for key, label in (("ram", N_("RAM")), ("swap", N_("Swap"))):
        if key in m:
            lines.append(f"{_(label)} {_used_total(m[key])}")
    for mount, part in m.get("disks", {}).items():
        lines.append(_("Disk {mount} {used}", mount=e(mount), used=_used_total(part)))
    lines.extend(e(line) for line in forecasts)
    if "disk_io" in m:
        io = m["disk_io"]
        lines.append(_("Disk I/O read {read} · write {write}", read=human_rate(io.get('read', 0)),
                       write=human_rate(io.get('write', 0))))
    if m.get("net"):
        rx = sum(r.get("rx", 0) for r in m["net"].values())
        tx = sum(r.get("tx", 0) for r in m["net"].values())
        lines.append(_("Net ↓ {rx} ↑ {tx}", rx=human_rate(rx), tx=human_rate(tx)))
    if m.get("temps"):
        lines.append(_("Temp {temps}", temps=", ".join(f"{e(label)} {value:.0f} °C"
                                                         for label, value in m["temps"].items())))
    for i, gpu in enumerate(m.get("gpus", ())):
        parts = [e(catalogue.gpu_label(gpu["name"], i)) if gpu.get("name") else f"GPU {i}"]
        if "util" in gpu:
            parts.append(f"{gpu['util']:.0f} %")
        if "vram_total" in gpu:
            parts.append("VRAM " + _used_total({"used": gpu["vram_used"], "total": gpu["vram_total"]}))
        if "temp" in gpu:
            parts.append(f"{gpu['temp']:.0f} °C")
        if "power" in gpu:
            parts.append(f"{gpu['power']:.0f} W")
        lines.append(" · ".join(parts))
    if m.get("link"):
        lines.append(_link_line(m["link"]))
    if m.get("checks"):
        lines.append(checks_card_line(m["checks"]))
    tail = []
    if "uptime" in m:
        tail.append(_("Uptime {duration}", duration=format_duration(m['uptime'])))
    if "procs" in m:
        tail.append(n_("{n} process", "{n} processes", int(m["procs"])))
    # Plain numbers without a line of their own above (a metric added to the catalogue later): "Label value".
    for key, row in catalogue.scalar_keys().items():
        if row.card and key in m and key not in _CARD_LINES:
            label = _(row.label)
            tail.append(f"{e(label[:1].upper() + label[1:])} {value_text(row.unit, m[key])}")
    if tail:
        lines.append(" · ".join(tail))
    if m.get("containers"):
        lines.append(_("Containers {tally}", tally=container_rows.series_tally(m['containers'])))
    if host.dropped:
        lines.append("⚠️ " + n_("{n} sample dropped during an outage", "{n} samples dropped during an outage",
                                host.dropped))
    if host.rejected:
        lines.append("⚠️ " + n_("{n} sample not stored: dated more than a week back or minutes ahead (is the host's "
                                "clock right?)", "{n} samples not stored: dated more than a week back or minutes "
                                "ahead (is the host's clock right?)", host.rejected))
    footer = _("Agent {agent} · {os}", agent=e(str(f.get('agent', '?'))), os=e(str(f.get('os', '?'))))
    if procs is not None and processes.is_fresh(procs, host, now):
        ranked = process_lines(procs.items, processes.CARD, cmd=0, note=processes.age_note(procs, host, now))
        lines = _fit(lines, ranked, MESSAGE_LIMIT - len(footer) - 1)
    lines.append(footer)
    return "\n".join(lines)


def checks_card_line(results: dict[str, dict[str, float]]) -> str:
    """`Checks 2/3 up · ❌ web · cert of api 5 d`: the failing ones and certificates near their end by name
    (mbot.checks; the full list is /checks NAME)."""
    up = [name for name, r in results.items() if r.get("up")]
    text = _("Checks {up}/{total} up", up=len(up), total=len(results))
    failing = [name for name, r in results.items() if not r.get("up")]
    if failing:
        text += " · ❌ " + ", ".join(e(name) for name in failing[:5]) + (" …" if len(failing) > 5 else "")
    expiring = [(name, r["cert"]) for name, r in results.items() if r.get("cert", checks.DEFAULT_CERT_DAYS)
                < checks.DEFAULT_CERT_DAYS]
    for name, days in expiring[:3]:
        text += " · " + _("cert of {name} {days} d", name=e(name), days=f"{days:.0f}")
    return text


def checks_view(host: Host, specs: Sequence[checks.CheckSpec], snapshot: StoredSnapshot | None) -> str:
    """/checks NAME: every check of the host with its latest result."""
    if not specs:
        return _("<b>{name}</b> has no checks. Add one: /check {name} https://example.com (or tcp://HOST:PORT) "
                 "[EVERY]", name=e(host.name))
    capable = checks.CAPABILITY in host.facts.get("capabilities", ())
    by_name = {item.get("name"): item for item in snapshot.items} if snapshot is not None else {}
    lines = [f"<b>{e(host.name)}</b>: " + n_("{n} check", "{n} checks", len(specs))]
    lines += [e(checks.result_line(spec, by_name.get(spec.name))) for spec in specs]
    if host.facts and not capable:
        lines.append(_("⚠️ This host's agent does not run checks: update it (/agent)."))
    return "\n".join(lines)


def chart_buttons(host: Host, series: Sequence[str]) -> list[dict[str, str]]:
    """📈 buttons for the charts this host can draw (a host without a GPU gets no GPU button): the catalogue's rows
    that have a button, in its order."""
    buttons = []
    for row in catalogue.CATALOGUE:
        if row.button and row.plot and catalogue.members([row], series):
            callback = chart_callback("chart", host.id, "1h", None, (row.plot[0],))
            if callback is not None:
                buttons.append(button(f"📈 {_(row.button)}", callback))
    return buttons


def containers_button(host_id: int) -> dict[str, str]:
    """🐳 Containers: the host's list (its card, container alerts)."""
    return button(_("🐳 Containers"), Callback("containers", (str(host_id),)))


def _containers_button(host: Host) -> list[dict[str, str]]:
    """The card's Containers button, for a host whose agent reports containers."""
    return [containers_button(host.id)] if host.last_metrics.get("containers") else []


CONTAINERS_TEXT_LIMIT = 3900  # Telegram takes 4096 characters: the rest of the list becomes "... and N more"
_TROUBLE_MARK = {"unhealthy": "🟠", "restarting": "🟠", "paused": "⏸", "created": "⚪"}


def containers_view(host: Host, items: Sequence[dict[str, Any]] | None, received: float | None,
                    now: float) -> tuple[str, Keyboard]:
    """/containers NAME and the card's Containers button: the latest `containers` snapshot, trouble first."""
    hid = str(host.id)
    buttons = keyboard([button(_("🔄 Refresh"), Callback("containers", (hid, "r"))),
                        button(_("Card"), Callback("card", (hid,)))])
    head = _("<b>{name}</b> · containers", name=e(host.name))
    if items is None or received is None:
        return head + "\n" + _("No containers reported. The agent reports them when it can open a Docker or Podman "
                               "socket (its user in the docker group, or AGENT_CONTAINER_SOCKET); its log says "
                               "which."), buttons
    listed = container_rows.rows(items)
    lines = [f"{head} · {ago(received, now)}", e(container_rows.tally(listed))]
    size = sum(len(line) + 1 for line in lines)
    for shown, c in enumerate(listed):
        trouble = c.trouble
        mark = "🟢" if trouble is None else _TROUBLE_MARK.get(trouble, "🔴")
        parts = [f"{mark} <b>{e(c.name)}</b>" + (f" {e(container_rows.trouble_word(trouble))}" if trouble else "")]
        if c.image:
            parts.append(e(c.image))
        if c.cpu is not None:
            parts.append(f"CPU {i18n.number(c.cpu)} %")
        if c.mem is not None:
            parts.append(human_bytes(c.mem))
        if c.restarts:
            parts.append(n_("{n} restart", "{n} restarts", c.restarts))
        line = " · ".join(parts)
        if size + len(line) + 1 > CONTAINERS_TEXT_LIMIT:
            lines.append(_("… and {n} more (python -m mbot containers {name} lists all)", n=len(listed) - shown,
                           name=e(host.name)))
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


def card_keyboard(host: Host, series: Sequence[str] = (), procs: bool = False,
                  role: str = access.OWNER) -> Keyboard:
    """`procs`: the host has sent a process list (the Processes button). `role`: the reader's (mbot.access): only
    the buttons it allows (the press is checked again anyway)."""
    charts = chart_buttons(host, series)
    operate = access.allows(role, "power")
    top = [button(_("🔄 Refresh"), Callback("refresh", (str(host.id),)))] if operate else []
    if procs:
        top.append(button(_("⚙️ Processes"), Callback("procs", (str(host.id),))))
    tests = [button(_("📶 Stability"), Callback("stability", (str(host.id),))),
             button(_("🚀 Speed test"), Callback("speedtest", (str(host.id),)))] if operate else []
    power = [button(_("Reboot"), Callback("power", (str(host.id), "reboot"))),
             button(_("Shutdown"), Callback("power", (str(host.id), "shutdown")))] if operate else []
    return keyboard(
        top + _containers_button(host),
        charts[:3], charts[3:],
        [diagnostics_button(host)] + tests,
        power,
    )


def diagnostics_button(host: Host) -> dict[str, str]:
    return button(_("🩺 Diagnostics"), Callback("info", (str(host.id),)))


def inventory_view(host: Host, now: float,
                   services: Sequence[dict[str, Any]] | None = None) -> tuple[str, Keyboard]:
    """/info NAME and the card's Diagnostics button: what the machine is (mbot.inventory says it in lines), and
    its systemd services that are not running (`services`: its latest services snapshot, if any)."""
    inventory = host.facts.get("inventory")
    head = _("<b>{name}</b> · diagnostics", name=e(host.name))
    if not isinstance(inventory, dict) or not inventory:
        found = host_inventory.service_lines(services, now) + [_(host_inventory.NO_INVENTORY)]
    else:
        found = host_inventory.lines(inventory, now, services)
    body = "\n".join(e(line) for line in found)
    return f"{head}\n{body}", keyboard([button(_("Status card"), Callback("card", (str(host.id),)))])


def shared_mark(role: str | None) -> str:
    """After a host's name in /hosts and /status when it is someone else's, shared with the reader."""
    if role == access.OPERATOR:
        return " · " + _("👥 shared, operator")
    if role == access.VIEWER:
        return " · " + _("👥 shared, viewer")
    return ""


def host_list(hosts: list[Host], now: float, power: Mapping[int, str] | None = None, *,
              recommended: str | None = None, update_line: str | None = None,
              roles: Mapping[int, str] | None = None) -> tuple[str, Keyboard | None]:
    """`recommended`: the agent version this server ships; hosts whose agent is older are marked, and
    `update_line` (the install line with --update) says how to bring them up to date. `roles`: host id -> the
    reader's role, for the hosts shared with them (marked)."""
    if not hosts:
        return _(NO_HOSTS), None
    power = power or {}
    lines = []
    for h in hosts:
        mark, word = _state_parts(h, now, power.get(h.id))
        old = (" · ⬆️ " + _("agent {version}", version=e(str(h.facts.get('agent'))))
               if older(h.facts.get("agent"), recommended) else "")
        shared = shared_mark((roles or {}).get(h.id))
        lines.append(_("{mark} <b>{name}</b>{shared} - {state}, last seen {ago}", mark=mark, name=e(h.name),
                       shared=shared, state=word, ago=ago(h.last_seen, now)) + old)
    if recommended and any(older(h.facts.get("agent"), recommended) for h in hosts):
        how = (_(": on that machine, <code>{line}</code>", line=e(update_line)) if update_line else "")
        lines.append("\n⬆️ " + _("an agent older than this server's {version}; it updates in place{how}",
                                  version=e(recommended), how=how))
    buttons = [button(h.name, Callback("card", (str(h.id),))) for h in hosts]
    rows = [buttons[i:i + 3] for i in range(0, len(buttons), 3)]
    return "\n".join(lines), keyboard(*rows)


def summary(hosts: list[Host], now: float, power: Mapping[int, str] | None = None,
            roles: Mapping[int, str] | None = None) -> tuple[str, Keyboard | None]:
    if not hosts:
        return host_list(hosts, now)
    power = power or {}
    lines = []
    for h in hosts:
        m = h.last_metrics
        figures = []
        if "cpu" in m:
            figures.append(f"CPU {m['cpu']:.0f} %")
        if "ram" in m:
            figures.append(_("RAM {pct} %", pct=f"{_pct(m['ram']):.0f}"))
        if m.get("disks"):
            figures.append(_("Disk {pct} %", pct=f"{max(_pct(p) for p in m['disks'].values()):.0f}"))
        state, word = _state_parts(h, now, power.get(h.id))
        detail = (" · ".join(figures) if h.is_online(now)
                  else _("{state}, last seen {ago}", state=word, ago=ago(h.last_seen, now)))
        lines.append(f"{state} <b>{e(h.name)}</b>{shared_mark((roles or {}).get(h.id))} {detail}")
    buttons = host_list(hosts, now)[1]
    return "\n".join(lines), buttons


def new_key(key: NewKey, endpoint: Endpoint, user_id: int | None = None) -> tuple[str, Keyboard]:
    manual = (f"AGENT_SERVER_IP={endpoint.host} AGENT_PORT={endpoint.port} AGENT_SECRET={key.secret} "
              f"AGENT_FINGERPRINT={endpoint.fingerprint} python3 mbot_agent.py")
    guess = guessed_note(endpoint)
    text = (_("Host <b>{name}</b> registered (key <code>{key_id}</code>).", name=e(key.name), key_id=key.key_id)
            + "\n\n" + _("Install the agent: paste this on the host (it sets it up in /opt/mbot-agent as a systemd "
                          "service and says when it is connected):")
            + f"\n<pre>{e(one_liner(endpoint, key.secret))}</pre>\n"
            + (f"<i>{e(guess)}</i>\n" if guess else "")
            + "\n" + _("Or run the agent by hand (the file and its .env follow):") + f"\n<pre>{e(manual)}</pre>\n"
            + _("Secret: <code>{secret}</code>", secret=e(key.secret)) + "\n"
            + _("Server fingerprint: <code>{fingerprint}</code>", fingerprint=endpoint.fingerprint) + "\n\n"
            + _("This message holds the secret and is not shown again: delete it once you have copied it."))
    return text, keyboard([delete_button(user_id)])


AGENT_CAPTION = N_("The mbot agent, to run by hand. It needs psutil, trio and trio-websocket: in a venv "
                 "(<code>python3 -m venv venv &amp;&amp; venv/bin/pip install psutil trio trio-websocket</code>) or, "
                 "on Debian/Ubuntu, <code>apt install python3-psutil python3-trio python3-trio-websocket</code> "
                 "(and <code>nvidia-ml-py</code> with NVIDIA GPUs). Then <code>python3 mbot_agent.py</code>; "
                 "<code>--check-connection</code> tests the settings; <code>--install-systemd</code> keeps it "
                 "running.")


def agent_env(key: NewKey, endpoint: Endpoint, user_id: int | None = None) -> tuple[str, bytes, str, Keyboard]:
    """The host's ready settings file: (file name, content, caption, keyboard with the delete button)."""
    content = (f"AGENT_SERVER_IP={endpoint.host}\nAGENT_PORT={endpoint.port}\nAGENT_SECRET={key.secret}\n"
               f"AGENT_FINGERPRINT={endpoint.fingerprint}\n")
    caption = _("Settings for <b>{name}</b>: save as <code>.env</code> next to mbot_agent.py (or run "
                "<code>python3 mbot_agent.py --env-file {name}.env</code>). It holds the secret: delete this message "
                "once saved.", name=e(key.name))
    return f"{key.name}.env", content.encode(), caption, keyboard([delete_button(user_id)])


def power_question(host: Host, action: str, nonce: str, user_id: int) -> tuple[str, Keyboard]:
    # The buttons name the user who asked: in a group, nobody else may answer.
    args = (nonce, str(user_id))
    question = (_("Reboot <b>{name}</b>? (expires in 60 s)", name=e(host.name)) if action == "reboot"
                else _("Shutdown <b>{name}</b>? (expires in 60 s)", name=e(host.name)))
    return (question,
            keyboard([button(_("Yes"), Callback("confirm", args)), button(_("Cancel"), Callback("cancel", args))]))


def revoke_question(host: Host) -> tuple[str, Keyboard]:
    hid = str(host.id)
    return (_("Revoke <b>{name}</b>? Its key stops working and its agent is disconnected.", name=e(host.name)),
            keyboard([button(_("Revoke, keep history"), Callback("revoke", (hid, "keep")))],
                     [button(_("Revoke and delete history"), Callback("revoke", (hid, "wipe")))],
                     [button(_("Cancel"), Callback("revoke", (hid, "no")))]))


POWER_DISABLED_HINT = N_("The agent refuses power commands. To allow them, start it with AGENT_ALLOW_POWER=1 "
                       "(and as a user that may reboot the machine).")


def rule_text(rule: AlertRule | OfflineRule) -> str:
    if isinstance(rule, OfflineRule):
        if not rule.enabled:
            return _("offline alert off")
        return (_("offline after {duration}", duration=format_duration(rule.delay)) if rule.delay
                else _("offline (default delay)"))
    found = metric_of(rule.metric)
    if (found is not None and found.kind == CODE) or members.member_of(rule.metric) is not None:
        text = _("{metric} down", metric=rule.metric)
    else:
        text = f"{rule.metric} {'<' if rule.below else '>'} {format_value(rule.metric, rule.threshold)}"
    return _("{rule} for {duration}", rule=text, duration=format_duration(rule.for_s)) if rule.for_s else text


def alerts_overview(hosts: list[Host], engine: AlertEngine, now: float) -> str:
    if not hosts:
        return _(NO_HOSTS)
    blocks = []
    for host in hosts:
        status = engine.host_status(host.id)
        head = f"<b>{e(host.name)}</b>"
        if status.muted_until and status.muted_until > now:
            head += " " + _("(muted for {duration})", duration=format_duration(status.muted_until - now))
        if status.offline_since is not None:
            head += " 🔴 " + _("offline for {duration}", duration=format_duration(now - status.offline_since))
        lines = [head]
        if status.offline_alert:
            lines.append("• " + _("offline after {duration}", duration=format_duration(status.delay)))
        else:
            lines.append("• " + _("offline alert off"))
        for state in engine.states(host.id):
            line = f"• {e(rule_text(state.rule))}"
            if state.series and state.series != state.rule.metric:
                line += f" [{e(series_label(state.series))}]"
            if state.state == "firing" and state.since is not None:
                line += " - 🔥 " + _("firing for {duration}", duration=format_duration(now - state.since))
            elif state.state == "pending":
                line += " - " + _("pending")
            else:
                line += " - " + _("ok")
            if state.value is not None:
                line += f" ({e(format_value(state.rule.metric, state.value))})"
            lines.append(line)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# --- processes (the `processes` snapshot; mbot/processes.py ranks it) ----------------------------------------------

MESSAGE_LIMIT = 4096  # Telegram's limit on a message's text, in characters


def process_line(item: dict[str, Any], cmd: int) -> str:
    """name · user · CPU · RSS [· VRAM], and with `cmd` the pid and the command line shortened to that many
    characters.
    Texts are cut before escaping, so that an escaped `<` never gets cut in half."""
    parts = [f"<b>{e(processes.shorten(processes.name(item), 32))}</b>"]
    if processes.text(item, "user"):
        parts.append(e(processes.shorten(processes.text(item, "user"), 16)))
    parts += [processes.percent(processes.number(item, "cpu")), human_bytes(processes.number(item, "rss"))]
    if processes.number(item, "vram"):
        parts.append(f"VRAM {human_bytes(processes.number(item, 'vram'))}")
    if cmd:
        parts.append(f"pid {processes.number(item, 'pid'):.0f}")
    line = " · ".join(parts)
    command = processes.text(item, "cmd")
    if cmd and command:
        line += f"\n    <code>{e(processes.shorten(command, cmd))}</code>"
    return line


def process_lines(items: list[dict[str, Any]], n: int, cmd: int, note: str = "") -> list[str]:
    """The rankings (CPU, memory, then VRAM when any process holds some), `n` each; `note` after each title."""
    lines: list[str] = []
    for field, title in processes.RANKINGS:
        top = processes.ranked(items, field, n)
        if top:
            lines.append(f"<b>{_(processes.RANKING_TITLES[field])}</b>{e(note)}")
            lines += [process_line(item, cmd) for item in top]
    return lines


def _fit(head: list[str], tail: list[str], limit: int) -> list[str]:
    """head + as much of tail as fits in `limit` characters (joined by newlines), saying when some was left out.
    A hostile agent's names and command lines are bounded, but escaped they can grow fivefold."""
    out, size = list(head), len("\n".join(head))
    note = _("… (cut to fit one message)")
    for i, line in enumerate(tail):
        rest = 0 if i == len(tail) - 1 else len(note) + 1
        if size + 1 + len(line) + rest > limit:
            out.append(note)
            break
        out.append(line)
        size += 1 + len(line)
    return out


def processes_view(host: Host, procs: StoredSnapshot | None, now: float) -> tuple[str, Keyboard]:
    """/top NAME and the card's Processes button: the top 15 by CPU, memory and VRAM with command lines."""
    refresh = keyboard([button(_("🔄 Refresh"), Callback("procs", (str(host.id), "r")))])
    if procs is None:
        return (_("<b>{name}</b> has sent no process list yet (agents send one every interval unless "
                  "AGENT_PROCESSES=0).", name=e(host.name)), refresh)
    head = [f"<b>{e(host.name)}</b> · {e(processes.header(host, procs, now))}"]
    lines = _fit(head, process_lines(procs.items, processes.LIST, cmd=60), MESSAGE_LIMIT)
    if len(lines) == 1:
        lines.append(_("Nothing uses CPU or memory (an empty list)."))
    return "\n".join(lines), refresh


# --- under alerts (mbot/telegram/alert_delivery.py) ----------------------------------------------------------------

ALERT_MUTE = 3600.0  # the Mute 1h button
# Alerts on these metrics capture the host's top processes when they fire: the likely culprit.
PROCESS_METRICS = frozenset({"cpu", "load", "ram", "swap", "gpu", "vram"})


def is_container_metric(metric: str) -> bool:
    """A container rule (container:web, containers): its alerts show the list, not a chart."""
    found = metric_of(metric) if metric != "offline" else None
    return found is not None and found.kind == CODE


def alert_charted(metric: str) -> bool:
    """Whether an alert on `metric` comes with its chart: not offline, a member's state or a container's."""
    return metric not in ("offline", "forecast") and members.member_of(metric) is None \
        and not is_container_metric(metric)


def alert_keyboard(host_id: int, alert_id: int | None, metric: str, *, chart: bool, procs: bool,
                   live: bool, role: str = access.OWNER, acked: bool = False) -> Keyboard | None:
    """An alert's buttons: 📈 Chart (the metric's last hour; `chart`: when the message is not the chart itself),
    ⚙️ Processes (the list captured when it fired), and while it lasts (`live`) 🔕 Mute 1h and ✔️ Ack (no more
    reminders until it resolves; offline alerts have no reminders; not once `acked`) for a `role` that may use
    them. `metric` "offline": a host that went offline."""
    first = []
    if is_container_metric(metric):
        first.append(containers_button(host_id))
    elif chart and alert_charted(metric):
        callback = chart_callback("chart", host_id, "1h", None, (metric,))
        if callback is not None:
            first.append(button(_("📈 Chart"), callback))
    if procs and alert_id is not None:
        first.append(button(_("⚙️ Processes"), Callback("aprocs", (str(host_id), str(alert_id)))))
    second = []
    if live and access.allows(role, "mute"):
        second.append(button(_("🔕 Mute 1h"), Callback("amute", (str(host_id),))))
        if metric not in ("offline", "forecast") and alert_id is not None and not acked:  # (a forecast: no reminders)
            second.append(button(_("✔️ Ack"), Callback("ack", (str(host_id), str(alert_id)))))
    return keyboard(first, second) if first or second else None


def captured_processes(host: Host, alert: AlertMessage, now: float) -> str:
    """The Processes button of an alert: the top processes the server had when it fired (they may be gone)."""
    when = format_duration(max(0.0, now - alert.fired))
    head = [_("<b>{name}</b> · top processes when the {label} alert fired, {duration} ago", name=e(host.name),
              label=e(series_label(alert.series)), duration=when)]
    lines = _fit(head, process_lines(alert.procs or [], processes.LIST, cmd=60), MESSAGE_LIMIT)
    if len(lines) == 1:
        lines.append(_("No process list was captured (the host had sent none recently)."))
    return "\n".join(lines)


# --- sharing (mbot.access) ---------------------------------------------------------------------------------------


def share_link(host: Host, role: str, link: str | None, code: str, user_id: int, hours: float) -> tuple[str, Keyboard]:
    """The one chat message that shows a share link."""
    what = (_("see it (card, charts, alerts) and act on it (refresh, reboot, mute, ack, alert rules)")
            if role == access.OPERATOR else _("see it: card, charts, processes and its alerts"))
    lines = [_("A one-time link to share <b>{name}</b> as {role}: whoever opens it first may {what}. It expires "
               "in {hours} h.", name=e(host.name), role=access.role_name(role), what=what,
               hours=f"{hours:.0f}"), ""]
    if link:
        lines += [e(link), "", _("Or they send the bot <code>/start {code}</code>", code=e(code))]
    else:
        lines.append(_("They send the bot <code>/start {code}</code>", code=e(code)))
    lines += ["", _("/shares {name} lists who has access; delete this message once you have passed it on.",
                    name=e(host.name))]
    return "\n".join(lines), keyboard([delete_button(user_id)])


def person(user_id: int, username: str | None, first_name: str | None) -> str:
    """Someone with a role, as the owner knows them (escaped)."""
    if username:
        return e(f"@{username}")
    return e(first_name) if first_name else str(user_id)


def shares_view(host: Host, roles: Sequence[tuple[int, str, str | None, str | None]]) -> tuple[str, Keyboard | None]:
    """/shares NAME: who has what role on the host, each with a button that removes it."""
    if not roles:
        return _("<b>{name}</b> is shared with nobody. /share {name} [viewer|operator] makes a link.",
                 name=e(host.name)), None
    lines = [_("<b>{name}</b> is shared with:", name=e(host.name))]
    rows = []
    for user_id, role, username, first_name in roles:
        who = person(user_id, username, first_name)
        lines.append(f"• {who} ({user_id}) - {access.role_name(role)}")
        rows.append([button(_("Remove {who}", who=(username and "@" + username) or first_name or str(user_id))[:40],
                            Callback("unshare", (str(host.id), str(user_id))))])
    return "\n".join(lines), keyboard(*rows)


def shared_with_you(host: Host, role: str) -> str:
    return _("<b>{name}</b> is now shared with you as {role}. /status {name} shows it; its alerts come here.",
             name=e(host.name), role=access.role_name(role))


def linkkey() -> str:
    """The original's /linkkey made whoever held a secret a full co-owner; it now says what replaced it."""
    return _("/linkkey is gone: a secret no longer makes anyone a co-owner. The owner of a host sends "
             "/share NAME [viewer|operator] and forwards the one-time link it gives (viewer: card, charts, alerts; "
             "operator: also refresh, reboot, mute, ack, alert rules).")
