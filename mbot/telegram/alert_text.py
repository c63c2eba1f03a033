"""Alert events as chat text: what a firing, resolved or offline alert says, and how metric values read. Pure.

The engine (mbot.alerts) decides what happens; this module only says it. Labels come from the metric catalogue.
"""
from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import Sequence

from ..alerts import (CODE as _CODE, LOAD as _LOAD, PCT as _PCT, RATE as _RATE, REBOOT, STATE as _STATE,
                      TEMP as _TEMP, AlertRule, BackOnline, Event, Firing, MuteEnded, Offline, PowerBack,
                      HostEvent, RebootOverdue, Reminder, Resolved, ServerDown, metric_of)
from .. import i18n, members, series as catalogue
from ..durations import format_duration
from ..i18n import N_, _, n_

__all__ = ["describe", "describe_group", "grouped", "is_state_event", "ended", "ended_while_muted", "format_value",
           "series_label", "duration_text", "outage_text"]


def series_label(series: str) -> str:
    """What a series is called in messages: "CPU", "disk /home", "GPU 0 temperature" (the catalogue's label)."""
    return members.label(series) or catalogue.label(series)


def _num(value: float, digits: int = 1) -> str:
    text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return i18n.decimal("0" if text == "-0" else text)


def _rate(value: float) -> str:
    # Binary units, like the status card (mbot.telegram.views.human_rate), so both show the same numbers.
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}/s" if unit == "B" else f"{_num(value)} {unit}/s"
        value /= 1024
    return f"{_num(value)} TiB/s"


# A code series' codes (a container's `down`; 4: the engine found the member missing from the sample).
STATES = {0: N_("up"), 1: N_("not running"), 2: N_("unhealthy"), 3: N_("restarting over and over"),
          4: N_("not reported (removed?)")}


def format_value(metric: str, value: float) -> str:
    """A value of a rule's metric for people: "97 %", "61 °C", "4.25", "12.5 MiB/s", "not running"."""
    found = metric_of(metric)
    kind = found.kind if found is not None else _LOAD
    if kind == _CODE:
        return _(STATES.get(int(value), N_("down")) if value != 0.5 else N_("down"))
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
        return _("{ms} ms", ms=_num(value))
    if row is not None and row.unit == catalogue.DAYS:  # a certificate's days left (mbot.checks)
        return n_("{n} day", "{n} days", int(value)) if value == int(value) else _("{days} days", days=_num(value))
    return _num(value, 2)


def _threshold_text(rule: AlertRule) -> str:
    text = format_value(rule.metric, rule.threshold)
    return _("threshold below {value}", value=text) if rule.below else _("threshold {value}", value=text)


def _for(lasted: float) -> str:
    """' for 5 min' when it lasted a second or more, else ''."""
    return " " + _("for {duration}", duration=format_duration(lasted)) if lasted >= 1 else ""


def _is_state(rule: AlertRule) -> bool:
    found = metric_of(rule.metric)
    return found is not None and found.kind == _CODE


def _firing_text(rule: AlertRule, series: str, value: float, lasted: float) -> str:
    if _is_state(rule):
        return _("{label} is down: {value}", label=series_label(series), value=format_value(rule.metric, value)) \
            + _for(lasted)
    if members.member_of(rule.metric) is not None:  # "service nginx.service is failed for 2 min"
        return _("{label} is {value}", label=series_label(series), value=format_value(rule.metric, value)) \
            + _for(lasted)
    text = f"{series_label(series)} {format_value(rule.metric, value)}" + _for(lasted)
    return f"{text} ({_threshold_text(rule)})"


def _clock_time(ts: float, tz: tzinfo, *, seconds: bool = False, day_of: float | None = None) -> str:
    """14:02 (14:02:07), with the date in front when it is not the day of `day_of`."""
    when = datetime.fromtimestamp(ts, tz)
    text = when.strftime("%H:%M:%S" if seconds else "%H:%M")
    if day_of is not None and datetime.fromtimestamp(day_of, tz).date() != when.date():
        text = f"{i18n.day_month(when.month, when.day)} {text}"
    return text


def outage_text(event: ServerDown, back: Sequence[str], missing: Sequence[str], tz: tzinfo) -> str:
    """What the server missed, for one owner: "mbot was down 14:02-14:31; 3 hosts came back, 1 did not: box4"."""
    span = f"{_clock_time(event.since, tz, day_of=event.until)}-{_clock_time(event.until, tz)}"
    hosts = len(back) + len(missing)
    if not missing:
        news = _("your host came back") if hosts == 1 else n_("all {n} hosts came back", "all {n} hosts came back",
                                                              hosts)
    elif not back:
        news = (_("{name} did not come back", name=missing[0]) if hosts == 1
                else n_("none of your {n} hosts came back: {names}", "none of your {n} hosts came back: {names}",
                        hosts, names=", ".join(missing)))
    else:
        news = n_("{n} host came back, {missing} did not: {names}", "{n} hosts came back, {missing} did not: {names}",
                  len(back), missing=len(missing), names=", ".join(missing))
    return _("mbot was down {span} ({duration}); {news}", span=span,
             duration=format_duration(event.until - event.since), news=news)


def describe(event: Event, host_name: str, tz: tzinfo = timezone.utc) -> str:
    """The chat message for an event, plain text (the caller escapes it for HTML). `tz`: where clock times are
    read (MBOT_TZ)."""
    if isinstance(event, Firing):
        return f"{host_name}: {_firing_text(event.rule, event.series, event.value, event.at - event.since)}"
    if isinstance(event, Resolved):
        label = series_label(event.series)
        took = format_duration(event.duration)
        if event.value is None:
            return _("{host}: {label} is no longer reported; alert closed after {duration}", host=host_name,
                     label=label, duration=took)
        value = format_value(event.rule.metric, event.value)
        if _is_state(event.rule):
            return _("{host}: {label} is {value} again after {duration}", host=host_name, label=label, value=value,
                     duration=took)
        return _("{host}: {label} back to normal ({value}) after {duration}", host=host_name, label=label,
                 value=value, duration=took)
    if isinstance(event, Reminder):
        value = format_value(event.rule.metric, event.value)
        label, took = series_label(event.series), format_duration(event.at - event.since)
        if _is_state(event.rule):
            return _("{host}: {label} still down ({value}) after {duration}", host=host_name, label=label,
                     value=value, duration=took)
        text = _("{host}: {label} still {value} after {duration}", host=host_name, label=label, value=value,
                 duration=took)
        if members.member_of(event.rule.metric) is not None:
            return text
        return f"{text} ({_threshold_text(event.rule)})"
    if isinstance(event, Offline):
        return _("{host} is offline (last seen {duration} ago)", host=host_name,
                 duration=format_duration(event.at - event.since))
    if isinstance(event, BackOnline):
        return _("{host} is back online after {duration}", host=host_name, duration=format_duration(event.down_for))
    if isinstance(event, PowerBack):
        took = format_duration(event.at - event.requested)
        text = (_("{host} is back after {duration}", host=host_name, duration=took) if event.action == REBOOT
                else _("{host} is back, {duration} after its shutdown from the chat", host=host_name, duration=took))
        if event.boot_time is not None:
            text += " " + _("(booted {when})", when=_clock_time(event.boot_time, tz, seconds=True, day_of=event.at))
        return text
    if isinstance(event, RebootOverdue):
        return _("{host} is not back {duration} after its reboot (last seen {ago} ago)", host=host_name,
                 duration=format_duration(event.at - event.requested), ago=format_duration(event.at - event.since))
    if isinstance(event, MuteEnded):
        lines = [_("{host}: notifications are back on.", host=host_name)]
        if event.offline_since is not None:
            lines.append(_("It is offline (last seen {duration} ago).",
                           duration=format_duration(event.at - event.offline_since)))
        if event.still_firing:
            lines.append(_("Still firing:"))
            lines.extend(f"- {_firing_text(f.rule, f.series, f.value, f.at - f.since)}" for f in event.still_firing)
        elif event.offline_since is None:
            lines.append(_("Nothing is firing."))
        return "\n".join(lines)
    raise TypeError(f"not an alert event: {event!r}")


def ended_while_muted(host_name: str, series: str | None) -> str:
    """An alert's own message once it ended during a mute (no Resolved was sent); series None: offline."""
    if series is None:
        return "✅ " + _("{host} came back online while muted", host=host_name)
    return "✅ " + _("{host}: {label} back to normal while muted", host=host_name, label=series_label(series))


def ended(event: Resolved | BackOnline, host_name: str) -> str:
    """What an alert's own message says once it is over (it is edited to this; describe() is the reply that
    notifies): ✅, how long it lasted, and the worst value."""
    if isinstance(event, BackOnline):
        return "✅ " + _("{host} was offline for {duration}; back online", host=host_name,
                        duration=format_duration(event.down_for))
    label, took = series_label(event.series), format_duration(event.duration)
    worst = "" if event.worst is None else "; " + _("worst {value}", value=format_value(event.rule.metric,
                                                                                      event.worst))
    if event.value is None:
        return "✅ " + _("{host}: {label} is no longer reported; alert closed after {duration}", host=host_name,
                        label=label, duration=took) + worst
    value = format_value(event.rule.metric, event.value)
    if _is_state(event.rule):  # "container web is up again after 5 min; worst not running"
        return "✅ " + _("{host}: {label} is {value} again after {duration}", host=host_name, label=label,
                        value=value, duration=took) + worst
    threshold = "" if members.member_of(event.rule.metric) is not None else f" ({_threshold_text(event.rule)})"
    return "✅ " + _("{host}: {label} back to normal ({value}) after {duration}", host=host_name, label=label,
                    value=value, duration=took) + worst + threshold


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
        name = _member_name(event.series)
        if not isinstance(event, Resolved) and event.value is not None:
            name += f" ({format_value(event.rule.metric, event.value)})"
        names.append(name)
    more = " " + _("… and {n} more", n=len(latest) - GROUP_NAMES) if len(latest) > GROUP_NAMES else ""
    containers = first.series.startswith(_CONTAINER)
    singular, plural = _GROUP_NEWS[type(first).__name__, containers]
    what = n_(singular, plural, len(latest))
    times = " " + _("({n} times in all)", n=len(events)) if len(events) > len(latest) else ""
    return f"{host_name}: {what}{times}: {', '.join(names)}{more}"


_CONTAINER = "container_down:"
_GROUP_NEWS = {  # (kind of event, containers or other members) -> (singular id, English plural)
    ("Firing", True): (N_("{n} container down"), "{n} containers down"),
    ("Firing", False): (N_("{n} member down"), "{n} members down"),
    ("Resolved", True): (N_("{n} container up again"), "{n} containers up again"),
    ("Resolved", False): (N_("{n} member up again"), "{n} members up again"),
    ("Reminder", True): (N_("{n} container still down"), "{n} containers still down"),
    ("Reminder", False): (N_("{n} member still down"), "{n} members still down"),
}


def _member_name(series: str) -> str:
    """A member as a grouped message lists it: a container by its name alone, others by their label."""
    return series.removeprefix(_CONTAINER) if series.startswith(_CONTAINER) else series_label(series)
