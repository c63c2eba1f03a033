"""Alert events as chat text: what a firing, resolved or offline alert says, and how metric values read. Pure.

The engine (mbot.alerts) decides what happens; this module only says it. Labels come from the metric catalogue.
"""
from __future__ import annotations

from ..alerts import (LOAD as _LOAD, PCT as _PCT, RATE as _RATE, STATE as _STATE, TEMP as _TEMP, AlertRule,
                      BackOnline, Event, Firing, MuteEnded, Offline, Reminder, Resolved, metric_of)
from .. import members, series as catalogue
from ..durations import format_duration

__all__ = ["describe", "format_value", "series_label", "duration_text"]


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


def describe(event: Event, host_name: str) -> str:
    """The chat message for an event, plain text (the caller escapes it for HTML)."""
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
