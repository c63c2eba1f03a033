"""Alert events as chat text: what a firing, resolved or offline alert says, and how metric values read. Pure.

The engine (mbot.alerts) decides what happens; this module only says it. Labels come from the metric catalogue.
"""
from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import Sequence

from ..alerts import (CODE as _CODE, LOAD as _LOAD, PCT as _PCT, RATE as _RATE, REBOOT, STATE as _STATE,
                      TEMP as _TEMP, AlertRule, BackOnline, Event, Firing, MuteEnded, Offline, PowerBack,
                      HostEvent, RebootOverdue, Reminder, Resolved, ServerDown, metric_of)
from .. import members, series as catalogue
from ..durations import format_duration

__all__ = ["describe", "describe_group", "grouped", "is_state_event", "ended", "ended_while_muted", "format_value",
           "series_label", "duration_text", "outage_text"]


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


# A code series' codes (a container's `down`; 4: the engine found the member missing from the sample).
STATES = {0: "up", 1: "not running", 2: "unhealthy", 3: "restarting over and over", 4: "not reported (removed?)"}


def format_value(metric: str, value: float) -> str:
    """A value of a rule's metric for people: "97 %", "61 °C", "4.25", "12.5 MiB/s", "not running"."""
    found = metric_of(metric)
    kind = found.kind if found is not None else _LOAD
    if kind == _CODE:
        return STATES.get(int(value), "down") if value != 0.5 else "down"
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


def _is_state(rule: AlertRule) -> bool:
    found = metric_of(rule.metric)
    return found is not None and found.kind == _CODE


def _firing_text(rule: AlertRule, series: str, value: float, lasted: float) -> str:
    if _is_state(rule):
        text = f"{series_label(series)} is down: {format_value(rule.metric, value)}"
        return text + (f" for {format_duration(lasted)}" if lasted >= 1 else "")
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
        if _is_state(event.rule):
            return f"{host_name}: {label} is {value} again after {format_duration(event.duration)}"
        return f"{host_name}: {label} back to normal ({value}) after {format_duration(event.duration)}"
    if isinstance(event, Reminder):
        value = format_value(event.rule.metric, event.value)
        if _is_state(event.rule):
            return (f"{host_name}: {series_label(event.series)} still down ({value}) after "
                    f"{format_duration(event.at - event.since)}")
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
    if _is_state(event.rule):  # "container web is up again after 5 min; worst not running"
        return (f"✅ {host_name}: {label} is {format_value(event.rule.metric, event.value)} again after "
                f"{format_duration(event.duration)}{worst}")
    threshold = "" if members.member_of(event.rule.metric) is not None else f" ({_threshold_text(event.rule)})"
    return (f"✅ {host_name}: {label} back to normal ({format_value(event.rule.metric, event.value)}) after "
            f"{format_duration(event.duration)}{worst}{threshold}")


# State alerts (containers) of one host and one kind of news, this many or more in one delivery, go out as one
# message: a host whose hundreds of containers stop at once (a daemon restart, a flapping deploy) sends one message
# per delivery, not hundreds.
GROUP_FROM = 3
GROUP_NAMES = 20  # names listed in a grouped message; the rest are counted


def is_state_event(event: Event) -> bool:
    """Whether an event is about a state rule (a container down, back, still down)."""
    return isinstance(event, (Firing, Resolved, Reminder)) and _is_state(event.rule)


def _group_key(event: HostEvent) -> tuple[int, str] | None:
    return (event.host_id, type(event).__name__) if is_state_event(event) else None


def grouped(events: Sequence[HostEvent]) -> list[list[HostEvent]]:
    """Events -> messages (lists of events), in order: state alerts of one host and kind of news together when
    they are GROUP_FROM or more (the group takes the place of its first event), every other event alone."""
    counts: dict[tuple[int, str], int] = {}
    for event in events:
        key = _group_key(event)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    out: list[list[HostEvent]] = []
    groups: dict[tuple[int, str], list[HostEvent]] = {}
    for event in events:
        key = _group_key(event)
        if key is None or counts[key] < GROUP_FROM:
            out.append([event])
        elif key in groups:
            groups[key].append(event)
        else:
            groups[key] = [event]
            out.append(groups[key])
    return out


def describe_group(events: Sequence[HostEvent], host_name: str, tz: tzinfo = timezone.utc) -> str:
    """One message for a group from grouped(): "box1: 120 containers down: web (not running), db (unhealthy), ...
    and 100 more"."""
    if len(events) == 1:
        return describe(events[0], host_name, tz)
    first = events[0]
    assert isinstance(first, (Firing, Resolved, Reminder))
    latest: dict[str, Firing | Resolved | Reminder] = {}  # a member that flapped within the batch: once, as last
    for event in events:
        assert isinstance(event, (Firing, Resolved, Reminder))
        latest.pop(event.series, None)
        latest[event.series] = event
    names = []
    for event in list(latest.values())[:GROUP_NAMES]:
        name = series_label(event.series)
        if not isinstance(event, Resolved) and event.value is not None:
            name += f" ({format_value(event.rule.metric, event.value)})"
        names.append(name.removeprefix("container "))
    more = f" … and {len(latest) - GROUP_NAMES} more" if len(latest) > GROUP_NAMES else ""
    what = {"Firing": "down", "Resolved": "up again", "Reminder": "still down"}[type(first).__name__]
    noun = "containers" if series_label(first.series).startswith("container ") else "members"
    times = f" ({len(events)} times in all)" if len(events) > len(latest) else ""
    return f"{host_name}: {len(latest)} {noun} {what}{times}: {', '.join(names)}{more}"
