"""Alert events as chat text: what a firing, resolved or offline alert says, and how metric values read. Pure.

The engine (mbot.alerts) decides what happens; this module only says it. Labels come from the metric catalogue.
"""
from __future__ import annotations

from typing import Sequence

from ..alerts import (LOAD as _LOAD, PCT as _PCT, RATE as _RATE, STATE as _STATE, TEMP as _TEMP, AlertRule,
                      BackOnline, Event, Firing, MuteEnded, Offline, Reminder, Resolved, metric_of)
from .. import series as catalogue
from ..durations import format_duration

__all__ = ["describe", "describe_group", "grouped", "is_state_event", "format_value", "series_label",
           "duration_text"]


def series_label(series: str) -> str:
    """What a series is called in messages: "CPU", "disk /home", "GPU 0 temperature" (the catalogue's label)."""
    return catalogue.label(series)


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


# A state series' codes (a container's `down`; 4: the engine found the member missing from the sample).
STATES = {0: "up", 1: "not running", 2: "unhealthy", 3: "restarting over and over", 4: "not reported (removed?)"}


def format_value(metric: str, value: float) -> str:
    """A value of a rule's metric for people: "97 %", "61 °C", "4.25", "12.5 MiB/s", "not running"."""
    found = metric_of(metric)
    kind = found.kind if found is not None else _LOAD
    if kind == _STATE:
        return STATES.get(int(value), "down") if value != 0.5 else "down"
    if kind == _PCT:
        return f"{_num(value)} %"
    if kind == _TEMP:
        return f"{_num(value)} °C"
    if kind == _RATE:
        return _rate(value)
    return _num(value, 2)


def _threshold_text(rule: AlertRule) -> str:
    text = format_value(rule.metric, rule.threshold)
    return f"threshold below {text}" if rule.below else f"threshold {text}"


def _is_state(rule: AlertRule) -> bool:
    found = metric_of(rule.metric)
    return found is not None and found.kind == _STATE


def _firing_text(rule: AlertRule, series: str, value: float, lasted: float) -> str:
    if _is_state(rule):
        text = f"{series_label(series)} is down: {format_value(rule.metric, value)}"
        return text + (f" for {format_duration(lasted)}" if lasted >= 1 else "")
    text = f"{series_label(series)} {format_value(rule.metric, value)}"
    if lasted >= 1:
        text += f" for {format_duration(lasted)}"
    return f"{text} ({_threshold_text(rule)})"


def describe(event: Event, host_name: str) -> str:
    """The chat message for an event, plain text (the caller escapes it for HTML)."""
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
        return (f"{host_name}: {series_label(event.series)} still {value} after "
                f"{format_duration(event.at - event.since)} ({_threshold_text(event.rule)})")
    if isinstance(event, Offline):
        return f"{host_name} is offline (last seen {format_duration(event.at - event.since)} ago)"
    if isinstance(event, BackOnline):
        return f"{host_name} is back online after {format_duration(event.down_for)}"
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


# State alerts (containers) of one host and one kind of news, this many or more in one delivery, go out as one
# message: a host whose hundreds of containers stop at once (a daemon restart, a flapping deploy) sends one message
# per delivery, not hundreds.
GROUP_FROM = 3
GROUP_NAMES = 20  # names listed in a grouped message; the rest are counted


def is_state_event(event: Event) -> bool:
    """Whether an event is about a state rule (a container down, back, still down)."""
    return isinstance(event, (Firing, Resolved, Reminder)) and _is_state(event.rule)


def _group_key(event: Event) -> tuple[int, str] | None:
    return (event.host_id, type(event).__name__) if is_state_event(event) else None


def grouped(events: Sequence[Event]) -> list[list[Event]]:
    """Events -> messages (lists of events), in order: state alerts of one host and kind of news together when
    they are GROUP_FROM or more (the group takes the place of its first event), every other event alone."""
    counts: dict[tuple[int, str], int] = {}
    for event in events:
        key = _group_key(event)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    out: list[list[Event]] = []
    groups: dict[tuple[int, str], list[Event]] = {}
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


def describe_group(events: Sequence[Event], host_name: str) -> str:
    """One message for a group from grouped(): "box1: 120 containers down: web (not running), db (unhealthy), ...
    and 100 more"."""
    if len(events) == 1:
        return describe(events[0], host_name)
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
