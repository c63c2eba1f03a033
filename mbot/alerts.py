"""Alert engine: rules, samples and time in, events out. Pure: no IO, no clock reads, no threads.

The server calls `observe()` for every committed sample, `host_seen()` when an agent says hello, `tick(now)` once
`next_deadline()` has passed, persists `snapshot()` whenever events came out, and turns events into chat messages
with `describe()`. The /setalert, /delalert, /mute and /unmute arguments are parsed here too.

Per (rule, series) a state machine: ok -> pending -> firing -> ok. "Over" means value > T (value < T for a `<` rule).

- FOR: the first sample over starts pending; the alert fires at the first sample that is still over and at least FOR
  seconds after it (FOR 0: at the first sample over). Any sample not over cancels pending, and so does a gap in the
  samples longer than the host's offline delay: "above 90 % for 5 min" is only claimed with samples all along.
  FOR elapsing is therefore sample-driven, never timer-driven: a timer could only guess the value stayed over.
- Hysteresis (resolving): the value must be on the good side of the threshold by a margin, on 2 consecutive
  samples (`clear_samples`). The margin is 2 % of the metric's scale: 2 points for percent metrics, 2 degrees for
  temperatures (whose working range is about 0-100 C), and 10 % of the threshold for load and network rates, which
  have no natural scale and are noisier. For percent/load/rates the resolve level is kept at least halfway between
  the threshold and 0 (or 100 for a `<` percent rule), so a rule like `cpu 1` can still resolve.
  Why both: the margin alone lets a noisy value (jitter larger than the margin) flap on every sample, the count
  alone lets a value sitting exactly at the threshold flap every other sample; together a value hovering around
  the threshold fires once and stays firing until it has clearly and durably gone back.
- Series come and go (a disk unmounted, a GPU gone): a pending alert whose series is missing from a sample is
  cancelled; a firing one resolves (value None) once the series has been missing longer than the offline delay.
- Container rules (`container:web down`, `containers down`): the same machine on a code series whose 0 means fine
  (catalogue unit `state`, kind CODE): threshold DOWN (0.5), so any trouble code is "over" and it resolves after
  `clear_samples` samples at 0. A rule on one member reads its missing series as MISSING (down, "not reported"):
  a watched container that was removed is down, not quietly forgotten.

Two clocks: conditions (pending, FOR, durations in messages) use the agent's sample timestamps `ts`; timers
(offline, reminders, mute expiry) use the server's `now`. Samples with a lower `ts` than the previous one are still
evaluated (an agent whose clock was corrected): pending restarts there.

Notifications (what comes out as events):
- One Firing when an alert fires, one Resolved when it resolves, a Reminder every `repeat` seconds of server time
  while it stays firing. A Resolved only ever follows a Firing the user has seen.
- Muted host (until a time): transitions are tracked, nothing is emitted; when the mute ends (`unmute` or expiry),
  one MuteEnded lists what is still firing (and whether the host is offline); those count as announced from then on.
- Offline: a timer, `max(last_seen, start) + delay`, delay = the host's /setalert offline delay or
  max(3 intervals, 30 s), never under 2 intervals. The engine's start time (`now` given to the constructor or to
  restore) counts as "seen" for every host, and no host is reported offline before START_GRACE after it, so a
  server restart does not report every host offline at once, even agents that were in their backoff.
- The server's own outage (server_was_down, from its heartbeat): longer than LONG_DOWN, one ServerDown lists the
  hosts that were up and came back, and those that did not (their offline alert: they are offline from then on).
- Power actions from the chat (expect_power): a maintenance window in which the host's silence is expected; a hello
  from a new boot is one PowerBack, no new boot within the grace one RebootOverdue, a shutdown is held silently.
  While a host is offline its reminders are held (one that fell due meanwhile comes `repeat` after it is back);
  samples cannot arrive without bringing it back, so nothing else can fire or resolve meanwhile: one Offline, no
  storm of stale alerts. BackOnline carries how long the host was silent (server time since its last sample).
  With offline alerts disabled (/delalert NAME offline), the host still goes quietly offline (reminders held).
- Late samples (a spool replayed after an outage): a sample whose lag (now - ts) exceeds the host's usual lag by
  more than the offline delay is tracked silently: an incident that began and ended while the host was unreachable
  is not reported in retrospect. A firing that is still firing at the first fresh sample is announced then, and the
  Resolved of an announced alert is always sent, late or not. The usual lag is a floor that follows the smallest
  lag at once and rises at most half a second per second of live samples: an agent whose clock is behind has a
  constant lag, which is its floor, and one whose clock jumped back is judged late for a few minutes at most.

Restart: `snapshot()` is a JSON-serialisable dict of every non-ok alert (phase, since, whether it was announced,
next reminder) and of every host (last seen, offline since, mute, lag floor); `AlertEngine.restore(snapshot,
rules, now=...)` rebuilds the engine with the rules from the store: a firing alert stays firing without a second
Firing, its reminders keep their schedule, a host that was offline stays offline. Persist it whenever observe(),
tick(), host_seen() or unmute() returned events, after mute(), and at shutdown; what a stale snapshot loses costs at
most a delayed Firing or a repeated message, never a forgotten alert.
"""
from __future__ import annotations

import heapq
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from . import members, series as catalogue
from .alert_state import (COUNT, FIRE, FIRE_NOW, FIRING, FORGET, HOLD, NAMES, NOTHING, OK, PENDING, RESOLVE,
                          RESOLVE_GONE, START, TRANSITIONS, reading)

__all__ = [
    "AlertEngine", "AlertRule", "OfflineRule", "AlertState", "HostStatus",
    "Firing", "Resolved", "Reminder", "Offline", "BackOnline", "MuteEnded", "ServerDown", "PowerBack",
    "RebootOverdue", "Event", "HostEvent", "metric_of", "metric_words",
    "PCT", "TEMP", "LOAD", "RATE", "STATE", "CODE", "DOWN", "MISSING", "MIN_DELAY", "START_GRACE", "LONG_DOWN",
    "REBOOT", "SHUTDOWN",
]

# --- metrics -----------------------------------------------------------------------------------------------------

PCT, TEMP, LOAD, RATE = "pct", "temp", "load", "rate"
STATE = "state"  # a member's state code from a snapshot (mbot.members): a service, a check; UP (1) is fine
CODE = "code"  # a trouble code series from the samples (catalogue unit `state`: a container's `down`); 0 is fine
_PCT, _TEMP, _LOAD, _RATE = PCT, TEMP, LOAD, RATE
# A code rule (`container:web down`, `containers down`) is a threshold rule on a code series whose 0 means fine:
# "over" is any code above DOWN, and it resolves on `clear_samples` samples back at 0 like any other rule.
DOWN = 0.5
MISSING = 4.0  # what a state rule on one member reads when the member is not in the sample (removed, unseen)


@dataclass(frozen=True)
class _Metric:
    kind: str  # how values are checked and shown: pct, temp, load, rate
    exact: str | None  # the one series this metric watches, or None for a family of series
    pattern: re.Pattern[str] | None  # the family: every series name it fully matches
    bounds: tuple[float, float] = (0.0, 10_000.0)  # what a threshold may be

    def matches(self, series: str) -> bool:
        if self.exact is not None:
            return series == self.exact
        assert self.pattern is not None
        return self.pattern.fullmatch(series) is not None


# How the catalogue's units are checked and shown here; any other unit (seconds, counts, bytes) is shown and
# resolved like load: plain numbers, a margin of 10 % of the threshold.
_KINDS = {catalogue.PERCENT: _PCT, catalogue.CELSIUS: _TEMP, catalogue.LOAD: _LOAD, catalogue.BYTE_RATE: _RATE,
          catalogue.STATE: CODE}
_RANGES = {_PCT: (0.0, 100.0), _TEMP: (-50.0, 150.0), _LOAD: (0.0, 10_000.0), _RATE: (0.0, 1e13),
           CODE: (DOWN, DOWN)}


def metric_words() -> tuple[str, ...]:
    """The /setalert METRIC words (from the catalogue's selectors), and the forms for one disk, container and
    snapshot member."""
    return (*catalogue.selectors(), "disk:/mount", "container:NAME",
            *(f"{word}:NAME" for word in members.MEMBER_KINDS))


def metric_of(metric: str) -> _Metric | None:
    """The selector for a rule's metric (already normalised), or None when there is no such metric: a catalogue
    selector (cpu, disk: every disk), one member of a family (disk:/home, temp:nvme), or a member of a snapshot
    (service:nginx.service: its state code, mbot.members)."""
    if members.member_of(metric) is not None:
        return _Metric(STATE, metric, None, (members.FAILED, members.UP))
    selectors = catalogue.selectors()
    row, exact = selectors.get(metric), None
    if row is None:
        head, colon, arg = metric.partition(":")
        if colon and arg:  # one member: disk:/home (selector disk), container:web (selector containers)
            row = selectors.get(head) or next((r for r in selectors.values() if r.plot_one == head + ":"), None)
        if row is None or row.plot_one != head + ":":
            return None
        exact = row.series({"label": arg, "i": arg})
    elif "{" not in row.name:
        exact = row.name
    kind = _KINDS.get(row.unit, _LOAD)
    bounds = _RANGES[kind] if row.unit in _KINDS else catalogue.RANGES[row.unit]
    return _Metric(kind, exact, None if exact is not None else row.pattern, bounds)


def _clear_level(kind: str, threshold: float, below: bool) -> float:
    """The value an alert must get back to (on the good side) before it can resolve; see the module docstring."""
    margin = 2.0 if kind in (_PCT, _TEMP) else 0.1 * abs(threshold)
    if not below:
        level = threshold - margin
        return level if kind == _TEMP else max(level, threshold / 2)
    level = threshold + margin
    return min(level, (threshold + 100.0) / 2) if kind == _PCT else level


# --- rules -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRule:
    """One /setalert rule. Its identity is (host_id, metric): setting it again replaces it and keeps its state."""

    host_id: int
    metric: str  # a selector: cpu, ram, swap, gpu, vram, temp, gputemp, load, disk, disk:/mount, net_up, net_down
    threshold: float
    below: bool = False
    for_s: float = 0.0

    def __post_init__(self) -> None:
        if metric_of(self.metric) is None:
            raise ValueError(f"unknown alert metric {self.metric!r}")
        if not (math.isfinite(self.threshold) and math.isfinite(self.for_s) and self.for_s >= 0):
            raise ValueError("threshold and for_s must be finite, for_s >= 0")

    def as_dict(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "metric": self.metric, "threshold": self.threshold, "below": self.below,
                "for_s": self.for_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertRule:
        return cls(int(data["host_id"]), str(data["metric"]), float(data["threshold"]), bool(data["below"]),
                   float(data["for_s"]))


@dataclass(frozen=True)
class OfflineRule:
    """A host's offline alert. Without one, a host has the default: enabled, delay max(3 intervals, 30 s)."""

    host_id: int
    delay: float | None = None  # None: the default delay
    enabled: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "metric": "offline", "delay": self.delay, "enabled": self.enabled}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OfflineRule:
        delay = data.get("delay")
        return cls(int(data["host_id"]), None if delay is None else float(delay), bool(data["enabled"]))


Rule = AlertRule | OfflineRule


# --- events ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Firing:
    rule: AlertRule
    host_id: int
    series: str
    value: float
    since: float  # ts of the first sample over the threshold
    at: float  # ts of the sample it is reported with

    @property
    def threshold(self) -> float:
        return self.rule.threshold


@dataclass(frozen=True, slots=True)
class Resolved:
    rule: AlertRule
    host_id: int
    series: str
    value: float | None  # None: the series is no longer reported
    since: float
    duration: float  # from the first sample over to the first one back on the good side
    worst: float | None = None  # the value furthest on the bad side while it fired


@dataclass(frozen=True, slots=True)
class Reminder:
    rule: AlertRule
    host_id: int
    series: str
    value: float  # the latest value
    since: float
    at: float  # ts of the latest sample


@dataclass(frozen=True, slots=True)
class Offline:
    host_id: int
    since: float  # server time of the last sample or hello
    at: float  # server time the delay ran out


@dataclass(frozen=True, slots=True)
class BackOnline:
    host_id: int
    down_for: float  # server time since the last sample before the outage
    at: float


@dataclass(frozen=True, slots=True)
class MuteEnded:
    host_id: int
    at: float
    still_firing: tuple[Firing, ...]  # every alert firing now, announced or not
    offline_since: float | None = None  # the host is offline (and its offline alert enabled)


@dataclass(frozen=True, slots=True)
class ServerDown:
    """The server itself was down for longer than LONG_DOWN: said once, after the start grace (or as soon as every
    host that was up has come back). Not a host's event: the edge splits it per owner."""

    since: float  # the server's last heartbeat before it went down
    until: float  # its start
    back: tuple[int, ...]  # hosts up before the outage that came back
    missing: tuple[int, ...]  # ... that did not: now offline, and this was their offline alert
    at: float


@dataclass(frozen=True, slots=True)
class PowerBack:
    """A host rebooted (or shut down) from the chat is back: a hello from a new boot."""

    host_id: int
    action: str  # REBOOT or SHUTDOWN
    requested: float  # server time the user confirmed it
    at: float
    boot_time: float | None  # the host's clock, from its hello


@dataclass(frozen=True, slots=True)
class RebootOverdue:
    """A host rebooted from the chat did not come back within the reboot grace: its offline alert."""

    host_id: int
    requested: float
    since: float  # server time of its last sample or hello
    at: float


HostEvent = Firing | Resolved | Reminder | Offline | BackOnline | MuteEnded | PowerBack | RebootOverdue
Event = HostEvent | ServerDown


@dataclass(frozen=True)
class AlertState:
    """One row of /alerts. series None: the rule matched no series yet."""

    rule: AlertRule
    series: str | None
    state: str  # ok, pending, firing
    since: float | None  # ts the current pending/firing condition began
    value: float | None  # the latest value


@dataclass(frozen=True)
class HostStatus:
    host_id: int
    offline_alert: bool
    delay: float  # the effective offline delay
    last_seen: float | None
    offline_since: float | None
    muted_until: float | None
    power: str | None = None  # REBOOT or SHUTDOWN: a power action from the chat is under way (or, shutdown: done)


# --- the engine --------------------------------------------------------------------------------------------------

_OK, _PENDING, _FIRING = OK, PENDING, FIRING
_PHASE_NAMES = NAMES
# At equal deadlines the lower kind goes first: the outage report before the liveness timers it speaks for.
_OUTAGE, _LIVENESS, _REMINDER, _MUTE, _POWER = -1, 0, 1, 2, 3
MIN_DELAY = 30.0  # the shortest offline delay (the default is max(3 intervals, this))
# No host is reported offline before the engine has run this long: after a long outage its agents are in their
# backoff, whose longest wait is 60 s (agent Reconnect), and need a few seconds more to connect and say hello.
START_GRACE = 90.0
# A server outage longer than this is reported (ServerDown): the default offline delay, the shortest silence of a
# host mbot would have reported had it been watching.
LONG_DOWN = MIN_DELAY
REBOOT, SHUTDOWN = "reboot", "shutdown"
_MIN_DELAY = MIN_DELAY
_LAG_RISE = 0.5  # how fast the usual-lag floor may rise, in seconds per second of live samples


class _State:
    __slots__ = ("slot", "series", "phase", "since", "value", "last_ts", "clear_n", "clear_since", "notified",
                 "next_reminder", "alive", "worst", "acked")

    def __init__(self, slot: _Slot, series: str) -> None:
        self.slot = slot
        self.series = series
        self.phase = _OK
        self.since = 0.0
        self.value: float | None = None
        self.last_ts = -math.inf
        self.clear_n = 0
        self.clear_since = 0.0
        self.notified = False  # the user was told it fires (Firing or MuteEnded)
        self.next_reminder: float | None = None
        self.alive = True  # False once its rule or host is gone: heap entries pointing here are then void
        self.worst: float | None = None  # while firing: the value furthest on the bad side (Resolved says it)
        self.acked = False  # the user acknowledged it (the Ack button): no reminders until it resolves


class _Slot:
    """A rule bound to its host, with the constants the hot loop needs and one _State per matched series."""

    __slots__ = ("host", "rule", "metric", "sign", "lim", "clr", "for_s", "states", "by_series", "missing")

    def __init__(self, host: _Host, rule: AlertRule) -> None:
        metric = metric_of(rule.metric)
        assert metric is not None  # AlertRule checked it
        self.host = host
        self.metric = metric
        # A watched container that is gone from the sample (compose down, rm) is down, not "no longer reported".
        self.missing = MISSING if metric.kind == CODE and metric.exact is not None else None
        self.states: list[_State] = []  # the ones the next sample is checked against
        self.by_series: dict[str, _State] = {}
        self.configure(rule)
        if self.metric.exact is not None:
            state = _State(self, self.metric.exact)
            self.states.append(state)
            self.by_series[state.series] = state

    def configure(self, rule: AlertRule) -> None:
        # A "<" rule is the ">" rule on -value: one comparison in the hot loop for both.
        self.rule = rule
        self.sign = -1.0 if rule.below else 1.0
        self.lim = rule.threshold * self.sign
        self.clr = _clear_level(self.metric.kind, rule.threshold, rule.below) * self.sign
        self.for_s = rule.for_s


class _Host:
    __slots__ = ("id", "interval", "delay", "offline_rule", "last_seen", "offline_since", "offline_notified",
                 "muted_until", "timer_at", "lag_floor", "lag_at", "slots", "slot_list", "wild", "layout",
                 "power", "power_since", "power_until", "power_boot")

    def __init__(self, host_id: int) -> None:
        self.id = host_id
        self.interval: float | None = None
        self.delay = _MIN_DELAY
        self.offline_rule: OfflineRule | None = None
        self.last_seen: float | None = None
        self.offline_since: float | None = None
        self.offline_notified = False
        self.muted_until: float | None = None
        self.timer_at: float | None = None  # the deadline of this host's one valid liveness heap entry
        self.lag_floor: float | None = None
        self.lag_at = 0.0
        self.slots: dict[str, _Slot] = {}
        self.slot_list: list[_Slot] = []
        self.wild = False  # some rule watches a family of series: the sample's layout must be checked
        self.layout: tuple[str, ...] | None = None  # series names of the last sample, when `wild`
        # A reboot or shutdown from the chat (expect_power): which, when confirmed, the end of its window (None: a
        # shutdown that happened, held until the host is back), and the boot it started from (hello boot_time).
        self.power: str | None = None
        self.power_since = 0.0
        self.power_until: float | None = None
        self.power_boot: float | None = None

    def update_delay(self) -> None:
        interval = self.interval or 0.0
        rule = self.offline_rule
        delay = rule.delay if rule is not None and rule.delay is not None else max(3 * interval, _MIN_DELAY)
        self.delay = max(delay, 2 * interval)

    @property
    def offline_enabled(self) -> bool:
        return self.offline_rule is None or self.offline_rule.enabled


class _Outage:
    __slots__ = ("since", "until", "hosts", "waiting")

    def __init__(self, since: float, until: float, hosts: list[int]) -> None:
        self.since, self.until = since, until
        self.hosts = hosts  # up when the server went down
        self.waiting = set(hosts)  # ... and not back yet


class AlertEngine:
    """Every host's alert state. Feed it samples and time; it answers with events (see the module docstring)."""

    def __init__(self, rules: Iterable[Rule] = (), *, repeat: float = 3600.0, now: float | None = None,
                 clear_samples: int = 2) -> None:
        self.repeat = repeat  # <= 0: no reminders
        self.clear_samples = max(1, clear_samples)
        self._start = -math.inf if now is None else now
        self._hosts: dict[int, _Host] = {}
        # (deadline, kind, seq, object). Entries are never removed early: each one is checked when it surfaces.
        # At equal deadlines kind decides, not push order (a restored engine must behave the same): offline first,
        # so a mute ending at that instant reports the host offline in its one MuteEnded.
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._outage: _Outage | None = None  # a server outage whose report is still to come
        for rule in rules:
            self.set_rule(rule)

    # --- rules and hosts ---

    def _host(self, host_id: int) -> _Host:
        host = self._hosts.get(host_id)
        if host is None:
            host = self._hosts[host_id] = _Host(host_id)
        return host

    def set_rule(self, rule: Rule) -> None:
        """Add or replace a rule. A replaced AlertRule keeps its state: the next sample is judged by the new one."""
        host = self._host(rule.host_id)
        if isinstance(rule, OfflineRule):
            host.offline_rule = None if rule == OfflineRule(rule.host_id) else rule
            if not rule.enabled:
                host.offline_notified = False  # no "back online" for an offline alert the user turned off
            host.update_delay()
            self._arm(host)
            return
        slot = host.slots.get(rule.metric)
        if slot is None:
            slot = host.slots[rule.metric] = _Slot(host, rule)
            host.slot_list.append(slot)
            host.wild = host.wild or slot.metric.exact is None
            host.layout = None
        else:
            slot.configure(rule)

    def delete_rule(self, host_id: int, metric: str) -> bool:
        """Delete a rule (metric "offline": disable the offline alert), silently. False when there was none."""
        host = self._hosts.get(host_id)
        if metric == "offline":
            was_enabled = host is None or host.offline_enabled
            self.set_rule(OfflineRule(host_id, enabled=False))
            return was_enabled
        slot = None if host is None else host.slots.pop(metric, None)
        if slot is None:
            return False
        assert host is not None
        host.slot_list.remove(slot)
        for state in slot.by_series.values():
            state.alive = False
        host.wild = any(s.metric.exact is None for s in host.slot_list)
        return True

    def rules(self, host_id: int | None = None) -> list[Rule]:
        """Every rule (of one host), offline rules only where they differ from the default."""
        hosts = self._hosts.values() if host_id is None else [h for h in [self._hosts.get(host_id)] if h]
        out: list[Rule] = []
        for host in hosts:
            out.extend(slot.rule for slot in host.slot_list)
            if host.offline_rule is not None:
                out.append(host.offline_rule)
        return out

    def add_host(self, host_id: int, *, last_seen: float | None = None, interval: float | None = None) -> None:
        """Make a host known without a sign of life (start-up from the store, a new key). No events."""
        host = self._host(host_id)
        if interval:
            host.interval = interval
            host.update_delay()
        if last_seen is not None and host.offline_since is None and (host.last_seen is None
                                                                     or last_seen > host.last_seen):
            host.last_seen = last_seen
        self._arm(host)

    def forget_host(self, host_id: int) -> None:
        """The host is deleted: its rules, states and timers go, silently."""
        host = self._hosts.pop(host_id, None)
        if host is not None:
            for slot in host.slot_list:
                for state in slot.by_series.values():
                    state.alive = False

    def mute(self, host_id: int, until: float) -> None:
        """No events for this host until `until` (server time); then one MuteEnded."""
        host = self._host(host_id)
        host.muted_until = until
        self._push(until, _MUTE, host)

    def ack(self, host_id: int, metric: str, series: str) -> bool:
        """The user acknowledged a firing alert (the Ack button): no reminders for it until it resolves. Its
        Resolved still comes. False when that alert is not firing (it resolved meanwhile, or its rule is gone)."""
        host = self._hosts.get(host_id)
        slot = None if host is None else host.slots.get(metric)
        state = None if slot is None else slot.by_series.get(series)
        if state is None or state.phase != _FIRING:
            return False
        state.acked = True
        state.next_reminder = None  # voids its heap entry
        return True

    def unmute(self, host_id: int, now: float) -> list[Event]:
        host = self._hosts.get(host_id)
        if host is None or host.muted_until is None:
            return []
        events: list[Event] = []
        self._end_mute(host, now, events)
        return events

    # --- input ---

    def host_seen(self, host_id: int, now: float, interval: float | None = None,
                  boot_time: float | None = None) -> list[Event]:
        """A sign of life without a sample (an agent's hello); `interval` is its sampling interval, `boot_time`
        when its machine booted (its own clock)."""
        host = self._host(host_id)
        if interval:
            host.interval = interval
            host.update_delay()
        events: list[Event] = []
        if host.power is not None:
            self._power_hello(host, now, boot_time, events)
        self._alive(host, now, events)
        return events

    # --- the server's own outages, and power actions from the chat ---

    def server_was_down(self, since: float, now: float) -> None:
        """The server, starting at `now` (the engine's start), was last alive at `since` (its heartbeat). After an
        outage longer than LONG_DOWN, one ServerDown says which of the hosts that were up came back: as soon as all
        of them did, or START_GRACE after the start. Those that did not are offline from then on, the ServerDown
        being their offline alert (hosts whose own offline delay is longer follow their own timer)."""
        if now - since <= LONG_DOWN:
            return
        hosts = [h.id for h in self._hosts.values()
                 if h.last_seen is not None and h.offline_since is None and h.power is None]
        if hosts:
            self._outage = _Outage(since, now, hosts)
            self._push(max(self._start, now) + START_GRACE, _OUTAGE, self._outage)

    def expect_power(self, host_id: int, action: str, now: float, grace: float,
                     boot_time: float | None = None) -> None:
        """The user confirmed a reboot or shutdown (REBOOT, SHUTDOWN) of a host that booted at `boot_time`. For
        `grace` seconds its silence is expected: no offline alert. A reboot's hello from a new boot gives one
        PowerBack; no new boot within the grace gives one RebootOverdue (its offline alert). A shutdown that happened
        holds the host as shut down (silently offline) until it is back (PowerBack). A host still up when the
        grace ends did not do it: the window closes silently."""
        host = self._host(host_id)
        host.power, host.power_since, host.power_until, host.power_boot = action, now, now + grace, boot_time
        self._push(now + grace, _POWER, host)

    def cancel_power(self, host_id: int) -> None:
        """The power action did not start (the agent refused it, or was gone): the host is watched as usual."""
        host = self._hosts.get(host_id)
        if host is not None and host.power is not None:
            self._clear_power(host)

    def observe(self, host_id: int, ts: float, series: dict[str, float], now: float) -> list[Event]:
        """One committed sample: `ts` by the agent's clock, `now` by the server's."""
        host = self._hosts.get(host_id) or self._host(host_id)
        events: list[Event] = []
        if host.offline_since is not None or host.muted_until is not None or host.timer_at is None:
            self._alive(host, now, events)
        host.last_seen = now
        slots = host.slot_list
        if not slots:
            return events

        delay = host.delay
        lag = now - ts
        floor = host.lag_floor
        if floor is None or lag <= floor:
            floor = lag
        else:
            floor = min(lag, floor + min(now - host.lag_at, delay) * _LAG_RISE)
        host.lag_floor = floor
        host.lag_at = now
        fresh = lag - floor <= delay
        announce = fresh and host.muted_until is None
        if host.wild and (host.layout is None or tuple(series) != host.layout):
            self._rebind(host, series)

        get = series.get
        clear_samples = self.clear_samples
        for slot in slots:
            sign, lim, clr, for_s, missing = slot.sign, slot.lim, slot.clr, slot.for_s, slot.missing
            for state in list(slot.states):
                value = get(state.series, missing)
                x = None if value is None else value * sign
                if state.phase == OK and x is not None and x <= lim:
                    # (ok, back) -> (ok, nothing): nearly every sample of every rule, so it skips the table.
                    state.value = value
                    state.last_ts = ts
                    continue
                phase, action = TRANSITIONS[state.phase, reading(
                    state.phase, x, lim=lim, clr=clr, ts=ts, since=state.since, last_ts=state.last_ts, for_s=for_s,
                    delay=delay, clear_n=state.clear_n, clear_samples=clear_samples)]
                if action is not NOTHING:
                    self._act(state, action, value, ts, now, announce, events)
                state.phase = phase
                if value is not None:
                    state.value = value
                    state.last_ts = ts
                    if phase == FIRING and (state.worst is None or value * sign > state.worst * sign):
                        state.worst = value
        return events

    def _act(self, state: _State, action: str, value: float | None, ts: float, now: float, announce: bool,
             events: list[Event]) -> None:
        """Carry out an action of the state table (mbot.alert_state.TRANSITIONS)."""
        if action is START:
            state.since = ts
        elif action is FIRE or action is FIRE_NOW:
            if action is FIRE_NOW:
                state.since = ts
            state.clear_n = 0
            state.notified = False
            state.worst = None
            state.acked = False
            if announce:
                assert value is not None
                self._announce(state, value, ts, now, events)
        elif action is COUNT or action is RESOLVE:
            if state.clear_n == 0:
                state.clear_since = ts
            state.clear_n += 1
            if action is RESOLVE:
                self._resolve(state, value, state.clear_since, events)
        elif action is HOLD:
            state.clear_n = 0
            if not state.notified and announce:
                assert value is not None
                self._announce(state, value, ts, now, events)
        elif action is RESOLVE_GONE:
            self._resolve(state, None, state.last_ts, events)
            self._forget(state)
        elif action is FORGET:
            self._forget(state)

    def tick(self, now: float) -> list[Event]:
        """Everything timer-driven that is due at `now`: offline, reminders, mute expiry."""
        events: list[Event] = []
        heap = self._heap
        while True:
            deadline = self._top()
            if deadline is None or deadline > now:
                return events
            _, kind, _, obj = heapq.heappop(heap)
            if kind == _LIVENESS:
                host: _Host = obj
                host.timer_at = None
                host.offline_since = host.last_seen
                # Silent while a reboot or shutdown from the chat is under way: the user expects it.
                host.offline_notified = host.offline_enabled and host.muted_until is None and host.power is None
                if host.offline_notified:
                    assert host.last_seen is not None
                    events.append(Offline(host.id, host.last_seen, now))
            elif kind == _OUTAGE:
                self._report_outage(now, events)
            elif kind == _POWER:
                self._power_window_ended(obj, now, events)
            elif kind == _REMINDER:
                state: _State = obj
                assert state.value is not None  # reminders are only scheduled for firing alerts, which have one
                events.append(Reminder(state.slot.rule, state.slot.host.id, state.series, state.value,
                                       state.since, state.last_ts))
                following = deadline + self.repeat
                # Catch up without a burst when tick() ran late (a suspended laptop, a long GC).
                self._schedule_reminder(state, following if following > now else now + self.repeat)
            else:
                self._end_mute(obj, now, events)

    def next_deadline(self) -> float | None:
        """When tick() next has something to do (server time), or None: sleep until a sample or a rule change."""
        return self._top()

    # --- views ---

    def states(self, host_id: int | None = None) -> list[AlertState]:
        """The /alerts rows: one per (rule, series), one per rule that matched no series yet."""
        hosts = self._hosts.values() if host_id is None else [h for h in [self._hosts.get(host_id)] if h]
        rows = []
        for host in hosts:
            for slot in host.slot_list:
                seen = [s for s in slot.by_series.values() if s.value is not None or s.phase != _OK]
                if not seen:
                    rows.append(AlertState(slot.rule, None, "ok", None, None))
                for s in sorted(seen, key=lambda s: s.series):
                    rows.append(AlertState(slot.rule, s.series, _PHASE_NAMES[s.phase],
                                           None if s.phase == _OK else s.since, s.value))
        return rows

    def power_states(self) -> dict[int, str]:
        """The hosts with a power action from the chat under way (REBOOT, SHUTDOWN) or done (SHUTDOWN)."""
        return {host.id: host.power for host in self._hosts.values() if host.power is not None}

    def host_status(self, host_id: int) -> HostStatus:
        host = self._hosts.get(host_id) or _Host(host_id)
        return HostStatus(host_id, host.offline_enabled, host.delay, host.last_seen, host.offline_since,
                          host.muted_until, host.power)

    # --- restart ---

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state (not the rules: they live in the store and come back through restore)."""
        hosts = []
        states = []
        for host in self._hosts.values():
            hosts.append({"id": host.id, "interval": host.interval, "last_seen": host.last_seen,
                          "offline_since": host.offline_since, "offline_notified": host.offline_notified,
                          "muted_until": host.muted_until, "lag_floor": host.lag_floor, "lag_at": host.lag_at,
                          "power": host.power, "power_since": host.power_since, "power_until": host.power_until,
                          "power_boot": host.power_boot})
            for slot in host.slot_list:
                for s in slot.by_series.values():
                    if s.phase != _OK:
                        states.append({
                            "host": host.id, "metric": slot.rule.metric, "series": s.series,
                            "phase": _PHASE_NAMES[s.phase], "since": s.since, "value": s.value, "last_ts": s.last_ts,
                            "clear_n": s.clear_n, "clear_since": s.clear_since, "notified": s.notified,
                            "next_reminder": s.next_reminder, "worst": s.worst, "acked": s.acked})
        return {"v": 1, "hosts": hosts, "states": states}

    @classmethod
    def restore(cls, snapshot: dict[str, Any] | None, rules: Iterable[Rule], *, now: float | None = None,
                hosts: Iterable[int] | None = None, repeat: float = 3600.0, clear_samples: int = 2) -> AlertEngine:
        """An engine with `rules` and the state of `snapshot` (states of rules no longer there are dropped).

        `now` is the start time, which counts as a sign of life for every host (see the module docstring).
        `hosts`, when given, are the host ids that still exist: the snapshot's other hosts are dropped. A snapshot
        of another version is ignored: the engine starts clean rather than misreading it.
        """
        engine = cls(rules, repeat=repeat, now=now, clear_samples=clear_samples)
        if not snapshot or snapshot.get("v") != 1:
            return engine
        keep = None if hosts is None else set(hosts)
        for data in snapshot["hosts"]:
            if keep is not None and int(data["id"]) not in keep:
                continue
            host = engine._host(int(data["id"]))
            host.interval = data["interval"]
            host.update_delay()
            host.last_seen = data["last_seen"]
            host.offline_since = data["offline_since"]
            host.offline_notified = bool(data["offline_notified"]) and host.offline_enabled
            host.lag_floor = data["lag_floor"]
            host.lag_at = data["lag_at"]
            if data["muted_until"] is not None:
                engine.mute(host.id, data["muted_until"])
            if data.get("power") in (REBOOT, SHUTDOWN):  # absent from older snapshots
                host.power, host.power_since = data["power"], data["power_since"]
                host.power_until, host.power_boot = data["power_until"], data["power_boot"]
                if host.power_until is not None:
                    engine._push(host.power_until, _POWER, host)
            engine._arm(host)
        for data in snapshot["states"]:
            owner = engine._hosts.get(int(data["host"]))
            slot = None if owner is None else owner.slots.get(data["metric"])
            series = data["series"]
            if slot is None or not slot.metric.matches(series):
                continue
            state = slot.by_series.get(series)
            if state is None:
                state = slot.by_series[series] = _State(slot, series)
                slot.states.append(state)
            state.phase = _PHASE_NAMES.index(data["phase"])
            state.since = data["since"]
            state.value = data["value"]
            state.last_ts = data["last_ts"]
            state.clear_n = data["clear_n"]
            state.clear_since = data["clear_since"]
            state.notified = bool(data["notified"]) and state.phase == _FIRING
            state.worst = data.get("worst")  # absent from snapshots made before it was kept
            state.acked = bool(data.get("acked")) and state.phase == _FIRING
            if state.notified and not state.acked and data["next_reminder"] is not None:
                engine._schedule_reminder(state, data["next_reminder"])
        return engine

    # --- internals ---

    def _push(self, deadline: float, kind: int, obj: Any) -> None:
        heapq.heappush(self._heap, (deadline, kind, next(self._seq), obj))

    def _deadline(self, host: _Host) -> float | None:
        if host.last_seen is None or host.offline_since is not None:
            return None
        return max(max(host.last_seen, self._start) + host.delay, self._start + START_GRACE)

    def _arm(self, host: _Host) -> None:
        # The liveness entry may lag behind (last_seen only moves forward; _top re-arms it lazily), but it must
        # never be later than the real deadline: a shorter delay pushes a new entry and voids the old one.
        deadline = self._deadline(host)
        if deadline is not None and (host.timer_at is None or deadline < host.timer_at):
            host.timer_at = deadline
            self._push(deadline, _LIVENESS, host)

    def _top(self) -> float | None:
        """Drop void entries and re-arm stale liveness ones until the top of the heap is a real deadline."""
        heap = self._heap
        while heap:
            deadline, kind, _, obj = heap[0]
            if kind == _LIVENESS:
                host: _Host = obj
                if self._hosts.get(host.id) is host and host.timer_at == deadline:
                    actual = self._deadline(host)
                    if actual == deadline:
                        return deadline
                    host.timer_at = None
                    heapq.heappop(heap)
                    self._arm(host)
                    continue
            elif kind == _REMINDER:
                state = obj
                if state.alive and state.notified and state.next_reminder == deadline:
                    held = state.slot.host
                    if held.muted_until is None and held.offline_since is None:
                        return deadline
                    # Held: the entry goes, the schedule stays; the end of the mute or the host's return re-arms it.
            elif kind == _OUTAGE:
                if obj is self._outage:
                    return deadline
            elif kind == _POWER:
                powered: _Host = obj
                if (self._hosts.get(powered.id) is powered and powered.power is not None
                        and powered.power_until == deadline):
                    return deadline
            else:
                muted: _Host = obj
                if self._hosts.get(muted.id) is muted and muted.muted_until == deadline:
                    return deadline
            heapq.heappop(heap)
        return None

    def _schedule_reminder(self, state: _State, when: float) -> None:
        state.next_reminder = when
        if self.repeat > 0:
            self._push(when, _REMINDER, state)

    def _alive(self, host: _Host, now: float, events: list[Event]) -> None:
        muted_until = host.muted_until
        if host.offline_since is not None:
            # A mute that has just run out no longer silences: BackOnline first, then MuteEnded says the rest.
            if host.offline_notified and (muted_until is None or muted_until <= now):
                events.append(BackOnline(host.id, now - host.offline_since, now))
            host.offline_since = None
            host.offline_notified = False
            for slot in host.slot_list:
                for state in slot.states:
                    if state.notified and not state.acked:
                        due = state.next_reminder
                        self._schedule_reminder(state, now + self.repeat if due is None or due <= now else due)
        host.last_seen = now
        if muted_until is not None and muted_until <= now:
            self._end_mute(host, now, events)
        self._arm(host)
        outage = self._outage
        if outage is not None and host.id in outage.waiting:
            outage.waiting.discard(host.id)
            if not outage.waiting:  # every host is back: no need to wait for the grace to say so
                self._report_outage(now, events)

    def _report_outage(self, now: float, events: list[Event]) -> None:
        outage, self._outage = self._outage, None
        assert outage is not None
        back, missing = [], []
        for host_id in outage.hosts:
            host = self._hosts.get(host_id)
            if host is None:
                continue  # deleted meanwhile
            if host_id not in outage.waiting:
                back.append(host_id)
                continue
            deadline = self._deadline(host)
            if deadline is None or deadline > now or host.power is not None:
                continue  # offline already, a longer offline delay of its own, or a power action meanwhile
            host.timer_at = None
            host.offline_since = host.last_seen
            host.offline_notified = host.offline_enabled and host.muted_until is None
            if host.offline_notified:
                missing.append(host_id)
        if back or missing:
            events.append(ServerDown(outage.since, outage.until, tuple(back), tuple(missing), now))

    def _power_hello(self, host: _Host, now: float, boot_time: float | None, events: list[Event]) -> None:
        """A hello while a power action is under way: a new boot (or, from an agent that does not say when its
        machine booted, any hello) means the host is back; the same boot is the agent reconnecting before the
        machine went down, unless the window is over (then it never went down)."""
        same_boot = boot_time is not None and host.power_boot is not None and abs(boot_time - host.power_boot) < 2.0
        if not same_boot:
            assert host.power is not None
            events.append(PowerBack(host.id, host.power, host.power_since, now, boot_time))
            self._clear_power(host)
        elif host.power_until is None or host.power_until <= now:
            self._clear_power(host)

    def _power_window_ended(self, host: _Host, now: float, events: list[Event]) -> None:
        if host.offline_since is None:  # still up: it never went down
            self._clear_power(host)
            self._arm(host)
        elif host.power == SHUTDOWN:
            host.power_until = None  # shut down, as asked: held so until it is back
        else:
            requested = host.power_since
            self._clear_power(host)
            host.offline_notified = host.offline_enabled and host.muted_until is None
            if host.offline_notified:
                assert host.offline_since is not None
                events.append(RebootOverdue(host.id, requested, host.offline_since, now))

    def _clear_power(self, host: _Host) -> None:
        host.power, host.power_until, host.power_boot = None, None, None

    def _end_mute(self, host: _Host, now: float, events: list[Event]) -> None:
        host.muted_until = None
        firing = []
        for slot in host.slot_list:
            for state in slot.by_series.values():
                if state.phase == _FIRING:
                    assert state.value is not None
                    firing.append(Firing(slot.rule, host.id, state.series, state.value, state.since, state.last_ts))
                    state.notified = True
                    if host.offline_since is None and not state.acked:
                        self._schedule_reminder(state, now + self.repeat)
                    else:
                        state.next_reminder = None
        offline_since = None
        if host.offline_since is not None and host.offline_enabled:
            host.offline_notified = True
            offline_since = host.offline_since
        events.append(MuteEnded(host.id, now, tuple(firing), offline_since))

    def _announce(self, state: _State, value: float, ts: float, now: float, events: list[Event]) -> None:
        state.notified = True
        events.append(Firing(state.slot.rule, state.slot.host.id, state.series, value, state.since, ts))
        self._schedule_reminder(state, now + self.repeat)

    def _resolve(self, state: _State, value: float | None, end: float, events: list[Event]) -> None:
        host = state.slot.host
        if state.notified and host.muted_until is None:
            events.append(Resolved(state.slot.rule, host.id, state.series, value, state.since, end - state.since,
                                   state.worst))
        state.phase = _OK
        state.notified = False
        state.worst = None
        state.acked = False
        state.next_reminder = None
        state.clear_n = 0

    def _forget(self, state: _State) -> None:
        """A family member that left (a disk unmounted): forget it now, so /alerts stops listing it; the next
        sample's _rebind drops it from slot.states. A rule on one exact series keeps its state."""
        slot = state.slot
        if slot.metric.exact is None:
            state.alive = False
            slot.by_series.pop(state.series, None)
            slot.host.layout = None

    def _rebind(self, host: _Host, series: dict[str, float]) -> None:
        """The sample's series names changed: match every family rule against them again."""
        host.layout = tuple(series)
        for slot in host.slot_list:
            metric = slot.metric
            if metric.exact is not None:
                continue
            by_series = slot.by_series
            states = []
            for name in series:
                if metric.matches(name):
                    state = by_series.get(name)
                    if state is None:
                        state = by_series[name] = _State(slot, name)
                    states.append(state)
            for name, state in list(by_series.items()):
                if name not in series:
                    if state.phase == _FIRING:
                        states.append(state)  # still reported missing until it times out
                    else:
                        state.alive = False
                        del by_series[name]
            slot.states = states
