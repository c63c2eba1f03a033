"""Alert events as chat text: what a firing, resolved or offline alert says, and how metric values read. Pure.

The engine (mbot.alerts) decides what happens; this module only says it. Labels come from the metric catalogue.
"""
from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import Sequence

from ..alerts import (LOAD as _LOAD, PCT as _PCT, RATE as _RATE, REBOOT, STATE as _STATE, TEMP as _TEMP, AlertRule,
                      BackOnline, Event, Firing, MuteEnded, Offline, PowerBack, RebootOverdue, Reminder, Resolved,
                      ServerDown, metric_of)
from .. import members, series as catalogue
from ..durations import format_duration

__all__ = ["describe", "ended", "ended_while_muted", "format_value", "series_label", "duration_text",
           "outage_text"]


def series_label(series: str) -> str:
    """What a series is called in messages: "CPU", "disk /home", "GPU 0 temperature" (the catalogue's label)."""
    return members.label(series) or catalogue.label(series)


def _num(value: float, digits: int = 1) -> str:
    text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _rate(value: float) -> str:
    # Binary units, like the status card (mbot.telegram.views.human_rate), so both show the same numbers.
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}/s" if unit == "B" else f"{_num(value)} {unit}/s"
        value /= 1024
    return f"{_num(value)} TiB/s"


def format_value(metric: str, value: float) -> str:
    """A value of a rule's metric for people: "97 %", "61 °C", "4.25", "12.5 MiB/s"."""
    found = metric_of(metric)
    kind = found.kind if found is not None else _LOAD
    if kind == _PCT:
        return f"{_num(value)} %"
    if kind == _TEMP:
        return f"{_num(value)} °C"
    if kind == _RATE:
        return _rate(value)
    if kind == _STATE:
        return members.state_word(value, metric)
    row = catalogue.selectors().get(metric.partition(":")[0])
    if row is not None and row.unit == catalogue.MILLISECONDS:
        return f"{_num(value)} ms"
    if row is not None and row.unit == catalogue.DAYS:  # a certificate's days left (mbot.checks)
        return f"{_num(value)} days"
    return _num(value, 2)


def _threshold_text(rule: AlertRule) -> str:
    text = format_value(rule.metric, rule.threshold)
    return f"threshold below {text}" if rule.below else f"threshold {text}"


def _firing_text(rule: AlertRule, series: str, value: float, lasted: float) -> str:
    if members.member_of(rule.metric) is not None:  # "service nginx.service is failed for 2 min"
        text = f"{series_label(series)} is {format_value(rule.metric, value)}"
        return text + (f" for {format_duration(lasted)}" if lasted >= 1 else "")
    text = f"{series_label(series)} {format_value(rule.metric, value)}"
    if lasted >= 1:
        text += f" for {format_duration(lasted)}"
    return f"{text} ({_threshold_text(rule)})"


def _clock_time(ts: float, tz: tzinfo, *, seconds: bool = False, day_of: float | None = None) -> str:
    """14:02 (14:02:07), with the date in front when it is not the day of `day_of`."""
    when = datetime.fromtimestamp(ts, tz)
    text = when.strftime("%H:%M:%S" if seconds else "%H:%M")
    if day_of is not None and datetime.fromtimestamp(day_of, tz).date() != when.date():
        text = f"{when:%b} {when.day} {text}"
    return text


def outage_text(event: ServerDown, back: Sequence[str], missing: Sequence[str], tz: tzinfo) -> str:
    """What the server missed, for one owner: "mbot was down 14:02-14:31; 3 hosts came back, 1 did not: box4"."""
    span = f"{_clock_time(event.since, tz, day_of=event.until)}-{_clock_time(event.until, tz)}"
    hosts = len(back) + len(missing)
    if not missing:
        news = "your host came back" if hosts == 1 else f"all {hosts} hosts came back"
    elif not back:
        news = (f"{missing[0]} did not come back" if hosts == 1
                else f"none of your {hosts} hosts came back: {', '.join(missing)}")
    else:
        news = f"{len(back)} {'host' if len(back) == 1 else 'hosts'} came back, {len(missing)} did not: " \
               + ", ".join(missing)
    return f"mbot was down {span} ({format_duration(event.until - event.since)}); {news}"


def describe(event: Event, host_name: str, tz: tzinfo = timezone.utc) -> str:
    """The chat message for an event, plain text (the caller escapes it for HTML). `tz`: where clock times are
    read (MBOT_TZ)."""
    if isinstance(event, Firing):
        return f"{host_name}: {_firing_text(event.rule, event.series, event.value, event.at - event.since)}"
    if isinstance(event, Resolved):
        label = series_label(event.series)
        if event.value is None:
            return f"{host_name}: {label} is no longer reported; alert closed after {format_duration(event.duration)}"
        value = format_value(event.rule.metric, event.value)
        return f"{host_name}: {label} back to normal ({value}) after {format_duration(event.duration)}"
    if isinstance(event, Reminder):
        value = format_value(event.rule.metric, event.value)
        if members.member_of(event.rule.metric) is not None:
            return (f"{host_name}: {series_label(event.series)} still {value} after "
                    f"{format_duration(event.at - event.since)}")
        return (f"{host_name}: {series_label(event.series)} still {value} after "
                f"{format_duration(event.at - event.since)} ({_threshold_text(event.rule)})")
    if isinstance(event, Offline):
        return f"{host_name} is offline (last seen {format_duration(event.at - event.since)} ago)"
    if isinstance(event, BackOnline):
        return f"{host_name} is back online after {format_duration(event.down_for)}"
    if isinstance(event, PowerBack):
        took = format_duration(event.at - event.requested)
        text = (f"{host_name} is back after {took}" if event.action == REBOOT
                else f"{host_name} is back, {took} after its shutdown from the chat")
        if event.boot_time is not None:
            text += f" (booted {_clock_time(event.boot_time, tz, seconds=True, day_of=event.at)})"
        return text
    if isinstance(event, RebootOverdue):
        return (f"{host_name} is not back {format_duration(event.at - event.requested)} after its reboot "
                f"(last seen {format_duration(event.at - event.since)} ago)")
    if isinstance(event, MuteEnded):
        lines = [f"{host_name}: notifications are back on."]
        if event.offline_since is not None:
            lines.append(f"It is offline (last seen {format_duration(event.at - event.offline_since)} ago).")
        if event.still_firing:
            lines.append("Still firing:")
            lines.extend(f"- {_firing_text(f.rule, f.series, f.value, f.at - f.since)}" for f in event.still_firing)
        elif event.offline_since is None:
            lines.append("Nothing is firing.")
        return "\n".join(lines)
    raise TypeError(f"not an alert event: {event!r}")


def ended_while_muted(host_name: str, series: str | None) -> str:
    """An alert's own message once it ended during a mute (no Resolved was sent); series None: offline."""
    if series is None:
        return f"✅ {host_name} came back online while muted"
    return f"✅ {host_name}: {series_label(series)} back to normal while muted"


def ended(event: Resolved | BackOnline, host_name: str) -> str:
    """What an alert's own message says once it is over (it is edited to this; describe() is the reply that
    notifies): ✅, how long it lasted, and the worst value."""
    if isinstance(event, BackOnline):
        return f"✅ {host_name} was offline for {format_duration(event.down_for)}; back online"
    label = series_label(event.series)
    worst = "" if event.worst is None else f"; worst {format_value(event.rule.metric, event.worst)}"
    if event.value is None:
        return f"✅ {host_name}: {label} is no longer reported; alert closed after {format_duration(event.duration)}{worst}"
    threshold = "" if members.member_of(event.rule.metric) is not None else f" ({_threshold_text(event.rule)})"
    return (f"✅ {host_name}: {label} back to normal ({format_value(event.rule.metric, event.value)}) after "
            f"{format_duration(event.duration)}{worst}{threshold}")
