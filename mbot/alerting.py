"""The alert engine at work: fed by the writer's commits, woken by its own timers, speaking through the outbox.

mbot.alerts is the pure engine; this module is its edge: it loads rules and the last snapshot from the store, feeds
the engine committed samples and hellos (CommitListener), sleeps until the engine's next deadline, turns events into
chat messages for the host's owner, and persists the snapshot (throttled: after events, and at shutdown).

A host's name and owner are read from the store when its events go out, not kept here: the store is their one owner,
so a host registered by the CLI while the server runs, or renamed in the chat, is always addressed right.
"""
from __future__ import annotations

import html
import json
import logging
import math
import sqlite3
import time
from datetime import timezone, tzinfo
from typing import Any, Callable, Protocol, Sequence

import trio

from . import alerts, forecast, history, i18n, members, store
from .alerts import AlertEngine, AlertRule, Event, HostEvent, OfflineRule, ServerDown
from .forecast import ForecastAlerts, ForecastEvent
from .rollup import DEFAULT_TIERS, Tier
from .telegram import alert_text
from .protocol import Hello, Sample, Snapshot
from .store import Database
from .writer import Writer

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "alerts.snapshot"
SAVE_EVERY = 5.0  # seconds between snapshot writes at most: a large one costs milliseconds
# Container alerts of one host go out as they come for the first STATE_BURST deliveries, then at most once per
# STATE_EVERY, what came meanwhile together (alert_text.grouped makes one message of each kind of news): a
# container that stops and comes back is told at once, hundreds that flap cost a message or two a minute, not one
# per container per sample.
STATE_BURST = 3
STATE_EVERY = 60.0
# The server's last sign of life, for the next start to know how long it was down (ServerDown): written at start,
# every HEARTBEAT_EVERY seconds, and at a clean shutdown. A crash is thus placed within a minute.
HEARTBEAT_KEY = "server.heartbeat"
HEARTBEAT_EVERY = 60.0
# Disk-full forecasts (mbot.forecast): the disks whose alert is firing (host id, mount, since), so that a restart
# neither repeats nor forgets one; the first evaluation comes FORECAST_FIRST after the start, then every
# forecast.EVERY.
FORECAST_KEY = "forecast.firing"
FORECAST_FIRST = 60.0
FORECAST_SLICE = 50  # hosts per read of a forecast round (~25 ms of CPU) ...
FORECAST_STEP = 2.0  # ... one such read every this many seconds: 2,500 hosts take 100 s



class Notify(Protocol):
    """Where a message goes: (owner's chat id, HTML text, the event); `group`: the events a grouped message
    (alert_text.grouped) says, `event` being its first."""

    def __call__(self, owner: int, text: str, event: Event | ForecastEvent, group: Sequence[HostEvent] = ...,
                 /) -> None: ...


# --- rules in sqlite (the writer's and the readers' connections) ------------------------------------------------


def load_rules(conn: sqlite3.Connection) -> list[AlertRule | OfflineRule]:
    rules: list[AlertRule | OfflineRule] = []
    for spec in store.alert_rule_specs(conn):
        data = json.loads(spec)
        rules.append(OfflineRule.from_dict(data) if data.get("metric") == "offline" else AlertRule.from_dict(data))
    return rules


def save_rule(conn: sqlite3.Connection, rule: AlertRule | OfflineRule) -> None:
    data = rule.as_dict()
    store.put_alert_rule(conn, rule.host_id, data["metric"], json.dumps(data))


def delete_rule(conn: sqlite3.Connection, host_id: int, metric: str) -> bool:
    return store.delete_alert_rule(conn, host_id, metric)


def _load_state(conn: sqlite3.Connection) -> tuple[list[AlertRule | OfflineRule], dict[str, Any] | None,
                                                    list[store.Host], float | None]:
    snapshot = store.get_kv(conn, SNAPSHOT_KEY)
    heartbeat = store.get_kv(conn, HEARTBEAT_KEY)
    return (load_rules(conn), json.loads(snapshot) if snapshot else None, store.list_hosts(conn),
            _number(heartbeat))


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _member_snapshots(conn: sqlite3.Connection, host_ids: set[int]) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """The latest snapshot of each member kind (services ...) of these hosts, for member rules (mbot.members)."""
    found = {}
    for host_id in host_ids:
        for kind in members.SNAPSHOT_KINDS:
            latest = store.latest_snapshot(conn, host_id, kind)
            if latest is not None:
                found[host_id, kind] = latest.items
    return found


def _live_host_ids(conn: sqlite3.Connection) -> list[int]:
    return [host.id for host in store.list_hosts(conn) if host.revoked is None]


def _disk_forecasts(conn: sqlite3.Connection, host_ids: Sequence[int], tier: Tier, window: float,
                    now: float) -> dict[int, dict[str, float | None]]:
    """These hosts' disks -> seconds until full at the current rate (None: no forecast), from the hour tier (run in
    a reader thread: one read of a few dozen rows per host, all its disks at once, and a fit per disk). Hosts
    revoked or removed meanwhile are left out."""
    out: dict[int, dict[str, float | None]] = {}
    for host_id in host_ids:
        host = store.host_by_id(conn, host_id)
        disks = host.last_metrics.get("disks") if host is not None and host.revoked is None else None
        if not isinstance(disks, dict):
            continue
        totals = {mount: part["total"] for mount, part in disks.items()
                  if isinstance(part, dict) and isinstance(part.get("total"), (int, float))}
        used = history.load(conn, host_id, [f"disk_used:{mount}" for mount in totals], now - window, now, tier)
        out[host_id] = {mount: forecast.full_in(forecast.as_points(used[f"disk_used:{mount}"], now), float(total),
                                                now)
                        for mount, total in totals.items()}
    return out


def _firing_forecasts(text: str | None) -> list[tuple[int, str, float]]:
    """FORECAST_KEY's value: what is unreadable is forgotten (the next evaluation fires again if it must)."""
    try:
        return [(int(h), str(m), float(since)) for h, m, since in json.loads(text or "[]")]
    except (ValueError, TypeError):
        log.warning("the stored disk forecast alerts are unreadable: forgotten")
        return []


def _hosts_by_id(conn: sqlite3.Connection, ids: set[int]) -> dict[int, store.Host | None]:
    return {host_id: store.host_by_id(conn, host_id) for host_id in ids}


class Alerting:
    """Owns the engine. `run()` lives in the app's nursery; everything else is called from the trio thread."""

    def __init__(self, db: Database, writer: Writer, *, repeat: float = 3600.0,
                 clock: Callable[[], float] = time.time, reboot_grace: float = 600.0,
                 tz: tzinfo = timezone.utc, disk_forecast: float = 7 * 86400.0,
                 tiers: Sequence[Tier] = DEFAULT_TIERS) -> None:
        self._db = db
        self._writer = writer
        self._repeat = repeat
        self._clock = clock
        self._reboot_grace = reboot_grace
        self._tz = tz
        self._reports: list[ServerDown] = []  # said per owner, not per host
        self.engine = AlertEngine(repeat=repeat, now=clock())
        self._outgoing: list[HostEvent] = []  # events waiting for their host's name and owner (read from the store)
        self._notify: Notify | None = None
        self.clock_listeners: list[Callable[[], None]] = []  # told of clock_moved (the delivery's own waits)
        self._language: Callable[[int], str] = lambda owner: i18n.DEFAULT
        self._wake = trio.Event()
        self._dirty = False
        self._held: dict[int, list[HostEvent]] = {}  # host -> its state alert events waiting for their turn
        self._state_credit: dict[int, tuple[float, float]] = {}  # host -> (deliveries it may make, as of when)
        # Member alerts (mbot.members): the latest snapshot of each member kind per host, and the state codes of
        # the members a host's rules watch, added to each of its samples (only hosts with such rules have codes).
        self._member_items: dict[tuple[int, str], Sequence[dict[str, Any]]] = {}
        self._member_codes: dict[int, dict[str, float]] = {}
        self.forecasts = ForecastAlerts(disk_forecast)
        self._hour_tier = next(tier for tier in tiers if tier.name == "1h")
        self._etas: dict[int, dict[str, float | None]] = {}  # the latest forecasts, for the card
        self._forecast_round: list[int] = []  # hosts the evaluation under way has still to look at
        self._forecast_seen: set[int] = set()  # hosts it looked at
        self._forecast_out: list[ForecastEvent] = []

    def set_notify(self, notify: Notify, language: Callable[[int], str] = lambda owner: i18n.DEFAULT) -> None:
        """`language`: the language a user reads (the bot's mbot.telegram.languages): each notice is said in
        its owner's, while the log keeps English."""
        self._notify = notify
        self._language = language

    def clock_moved(self) -> None:
        """Re-check the timers now: for a clock that jumps (tests move time forward instead of waiting)."""
        self._wake.set()
        for listener in self.clock_listeners:
            listener()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rules, snapshot, hosts, heartbeat = await self._db.read(_load_state)
        now = self._clock()
        ids = [h.id for h in hosts if h.revoked is None]
        if snapshot is not None:
            self.engine = AlertEngine.restore(snapshot, rules, now=now, hosts=ids, repeat=self._repeat)
        else:
            self.engine = AlertEngine(rules, repeat=self._repeat, now=now)
        for host in hosts:
            # A host that never connected is not "offline": its agent is simply not installed yet.
            if host.revoked is None and host.last_seen is not None:
                self.engine.add_host(host.id, last_seen=host.last_seen, interval=host.interval)
        if heartbeat is not None:
            self.engine.server_was_down(heartbeat, now)
        await self._heartbeat()
        next_heartbeat = self._clock() + HEARTBEAT_EVERY
        firing = _firing_forecasts(await self._db.read(store.get_kv, FORECAST_KEY))
        self.forecasts = ForecastAlerts(self.forecasts.limit, firing)
        next_forecast = self._clock() + FORECAST_FIRST
        self._writer.listeners.append(self)
        self._writer.snapshot_state_listeners.append(self)
        await self._load_members({r.host_id for r in rules if isinstance(r, AlertRule) and members.member_of(r.metric)})
        task_status.started()
        last_save = -math.inf
        failures = 0
        try:
            while True:
                deadline = self.engine.next_deadline()
                deadline = min(next_heartbeat, next_forecast) if deadline is None else min(deadline, next_heartbeat,
                                                                                            next_forecast)
                if self._held:
                    deadline = min(deadline, min(self._state_release(host) for host in self._held))
                wait = max(0.0, deadline - self._clock())
                if failures:
                    # A tick that raised will likely raise again at the same deadline: back off, stay alive.
                    wait = max(wait, min(2.0 ** failures, 300.0))
                with trio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = trio.Event()
                try:
                    self._emit(self.engine.tick(self._clock()))
                    failures = 0
                except Exception as exc:
                    self._writer.faults.isolated("alerting", "the alert timers", exc)
                    failures += 1
                try:
                    await self._deliver()
                    await self._deliver_reports()
                except Exception as exc:  # the events wait for the next wake-up; the task goes on
                    self._writer.faults.isolated("alerting", "delivering alert messages", exc)
                    failures += 1
                if self._clock() >= next_forecast:
                    next_forecast = self._clock() + forecast.EVERY
                    try:
                        next_forecast = self._clock() + await self._forecast()
                    except Exception as exc:  # the next evaluation tries again
                        self._forecast_round = []
                        self._writer.faults.isolated("alerting", "the disk forecasts", exc)
                if self._clock() >= next_heartbeat:
                    next_heartbeat = self._clock() + HEARTBEAT_EVERY
                    try:
                        await self._heartbeat()
                    except Exception as exc:  # a missed beat only makes the next outage look a minute longer
                        self._writer.faults.isolated("alerting", "the heartbeat", exc)
                if self._dirty and self._clock() - last_save >= SAVE_EVERY:
                    await self._save()
                    last_save = self._clock()
        finally:
            self._writer.listeners.remove(self)
            self._writer.snapshot_state_listeners.remove(self)
            # Bounded: if the writer is gone too, losing the last seconds of state beats hanging shutdown.
            with trio.move_on_after(5, shield=True):
                if self._dirty:
                    await self._save()
                await self._heartbeat()

    async def _heartbeat(self) -> None:
        try:
            await self._writer.call(store.set_kv, HEARTBEAT_KEY, repr(self._clock()))
        except (trio.ClosedResourceError, trio.BrokenResourceError):  # closed, or cancelled with everything else
            log.warning("heartbeat not saved: the writer is already closed")

    async def _save(self) -> None:
        self._dirty = False
        snapshot = json.dumps(self.engine.snapshot())
        try:
            await self._writer.call(store.set_kv, SNAPSHOT_KEY, snapshot)
        except trio.ClosedResourceError:
            log.warning("alert state not saved: the writer is already closed")

    # --- disk-full forecasts (mbot.forecast) ------------------------------------------------------------------

    async def _forecast(self) -> float:
        """One slice of an evaluation round (FORECAST_SLICE hosts, one short read); returns when the next slice is
        due. A round over thousands of hosts is spread over minutes instead of holding the interpreter (and so the
        event loop) for seconds in one read."""
        now = self._clock()
        if not self._forecast_round:
            self._forecast_round = await self._db.read(_live_host_ids)
            self._forecast_seen = set()
        chunk, self._forecast_round = (self._forecast_round[:FORECAST_SLICE],
                                       self._forecast_round[FORECAST_SLICE:])
        etas_of = await self._db.read(_disk_forecasts, chunk, self._hour_tier, forecast.WINDOW, now)
        events: list[ForecastEvent] = []
        for host_id in chunk:
            etas = etas_of.get(host_id)
            if etas is None:
                self._etas.pop(host_id, None)
                continue
            self._etas[host_id] = etas
            self._forecast_seen.add(host_id)
            muted = self.engine.host_status(host_id).muted_until
            if muted is not None and muted > now:  # told (or not) once the mute is over
                continue
            for mount, eta in etas.items():
                if (event := self.forecasts.update(host_id, mount, eta, now)) is not None:
                    events.append(event)
            events.extend(self.forecasts.gone(host_id, etas, now))
        if not self._forecast_round:  # the round is over: what it did not see is removed or revoked
            for host_id in set(self._etas) - self._forecast_seen:
                del self._etas[host_id]
            for host_id in {h for h, _, _ in self.forecasts.firing()} - self._forecast_seen:
                events.extend(self.forecasts.gone(host_id, (), now))
        if events:
            self._forecast_out.extend(events)
            await self._writer.call(store.set_kv, FORECAST_KEY, json.dumps(self.forecasts.firing()))
            await self._deliver_forecasts()
        return forecast.EVERY if not self._forecast_round else FORECAST_STEP

    def forecast_lines(self, host_id: int) -> list[str]:
        """The card's forecast lines for a host: disks filling up within forecast.SHOWN, or alerting."""
        return [forecast.card_line(mount, eta) for mount, eta in sorted(self._etas.get(host_id, {}).items())
                if eta is not None and (eta < forecast.SHOWN or self.forecasts.is_firing(host_id, mount))]

    async def _deliver_forecasts(self) -> None:
        out, self._forecast_out = self._forecast_out, []
        try:
            hosts = await self._db.read(_hosts_by_id, {event.host_id for event in out})
        except BaseException:
            self._forecast_out[:0] = out
            raise
        for event in out:
            host = hosts.get(event.host_id)
            if host is None or not host.owner:
                continue
            log.info("alert: %r", forecast.describe(event, host.name))
            if self._notify is not None:
                with i18n.speaking(self._language(host.owner)):
                    said = html.escape(forecast.describe(event, host.name))
                self._notify(host.owner, said, event)

    # --- fed by the writer (CommitListener) -------------------------------------------------------------------

    def on_hello(self, host_id: int, hello: Hello) -> None:
        self._emit(self.engine.host_seen(host_id, self._clock(), hello.interval, hello.facts.get("boot_time")))

    def on_samples(self, host_id: int, samples: list[Sample]) -> None:
        now = self._clock()
        codes = self._member_codes.get(host_id)
        for sample in samples:
            try:
                series = {**sample.series, **codes} if codes else sample.series
                self._emit(self.engine.observe(host_id, sample.ts, series, now))
            except Exception as exc:  # one sample the engine chokes on must not cost the others their alerts
                self._writer.faults.isolated("alerting", f"sample {sample.seq} of host {host_id}", exc)

    # --- member alerts (mbot.members) --------------------------------------------------------------------------

    def on_snapshot_stored(self, host_id: int, snapshot: Snapshot) -> None:
        if snapshot.kind in members.SNAPSHOT_KINDS:
            self._member_items[host_id, snapshot.kind] = snapshot.items
            self._update_codes(host_id)

    def _update_codes(self, host_id: int) -> None:
        watched = [r.metric for r in self.engine.rules(host_id)
                   if isinstance(r, AlertRule) and members.member_of(r.metric)]
        items = {kind: found for kind in members.SNAPSHOT_KINDS
                 if (found := self._member_items.get((host_id, kind))) is not None}
        codes = members.codes(watched, items)
        if codes:
            self._member_codes[host_id] = codes
        else:
            self._member_codes.pop(host_id, None)

    async def _load_members(self, host_ids: set[int]) -> None:
        """The latest member snapshots from the store, for hosts whose rules watch members and whose snapshots
        have not arrived since this server started (agents send one only when the list changes)."""
        missing = {h for h in host_ids if not any((h, kind) in self._member_items for kind in members.SNAPSHOT_KINDS)}
        if missing:
            for key, items in (await self._db.read(_member_snapshots, missing)).items():
                self._member_items.setdefault(key, items)
        for host_id in host_ids:
            self._update_codes(host_id)

    # --- changes from users -----------------------------------------------------------------------------------

    def host_removed(self, host_id: int) -> None:
        self.engine.forget_host(host_id)
        self._changed()

    async def set_rule(self, rule: AlertRule | OfflineRule) -> None:
        await self._writer.call(save_rule, rule)
        self.engine.set_rule(rule)
        if isinstance(rule, AlertRule) and members.member_of(rule.metric):
            await self._load_members({rule.host_id})
        self._changed()

    async def delete_rule(self, host_id: int, metric: str) -> bool:
        if metric == "offline":
            # Offline alerts are on by default: turning them off is a rule of its own.
            await self.set_rule(OfflineRule(host_id, enabled=False))
            return True
        existed = await self._writer.call(delete_rule, host_id, metric)
        self.engine.delete_rule(host_id, metric)
        self._update_codes(host_id)
        self._changed()
        return existed

    def mute(self, host_id: int, until: float) -> None:
        self.engine.mute(host_id, until)
        self._changed()

    def ack(self, host_id: int, metric: str, series: str) -> bool:
        """The Ack button: no reminders for this firing alert until it resolves. False: it is not firing."""
        done = self.engine.ack(host_id, metric, series)
        if done:
            self._changed()
        return done

    def unmute(self, host_id: int) -> None:
        self._emit(self.engine.unmute(host_id, self._clock()))
        self._changed()

    # --- power actions from the chat (a maintenance window, mbot.alerts.AlertEngine.expect_power) ----------------

    def expect_power(self, host_id: int, action: str, boot_time: float | None) -> None:
        """The user confirmed a reboot or shutdown: its silence is expected for MBOT_REBOOT_GRACE."""
        self.engine.expect_power(host_id, action, self._clock(), self._reboot_grace, boot_time)
        self._changed()

    def cancel_power(self, host_id: int) -> None:
        self.engine.cancel_power(host_id)
        self._changed()

    def power_states(self) -> dict[int, str]:
        """Hosts with a power action under way or done (shut down): what the card and /hosts show when offline."""
        return self.engine.power_states()

    # --- out -------------------------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        self._wake.set()  # the next deadline may have moved

    def _emit(self, events: list[Event]) -> None:
        if not events:
            return
        for event in events:
            if isinstance(event, ServerDown):
                self._reports.append(event)
            else:
                self._outgoing.append(event)
        self._changed()  # wakes run(), which delivers them

    def _credit(self, host_id: int, now: float) -> float:
        credit, at = self._state_credit.get(host_id, (STATE_BURST, now))
        return min(STATE_BURST, credit + (now - at) / STATE_EVERY)

    def _state_release(self, host_id: int) -> float:
        """When a host's held state alerts may go (a token bucket: STATE_BURST, one more per STATE_EVERY)."""
        credit, at = self._state_credit[host_id]
        return at + max(0.0, 1.0 - credit) * STATE_EVERY

    def _due(self, now: float) -> tuple[list[HostEvent], set[int]]:
        """What goes out now: every event but state alerts of a host out of credit (those wait in _held); and the
        hosts whose state alerts go."""
        outgoing, self._outgoing = self._outgoing, []
        due: list[HostEvent] = []
        for event in outgoing:
            if alert_text.is_state_event(event):
                self._held.setdefault(event.host_id, []).append(event)
            else:
                due.append(event)
        # (A release time computed by _state_release must release: a hair of float rounding would spin run().)
        released = {host for host in self._held if self._credit(host, now) >= 1.0 - 1e-9}
        for host in released:
            due.extend(self._held.pop(host))
        return due, released

    async def _deliver(self) -> None:
        now = self._clock()
        outgoing, released = self._due(now)
        if not outgoing:
            return
        # One read for the whole batch: a storm of events must not queue hundreds of reads behind each other.
        try:
            hosts = await self._db.read(_hosts_by_id, {event.host_id for event in outgoing})
        except BaseException:
            self._outgoing[:0] = outgoing  # not lost: delivered when the store answers again
            raise
        for host_id in released:
            self._state_credit[host_id] = (max(0.0, self._credit(host_id, now) - 1.0), now)
        # Many state alerts of one host at once (containers) make one message: alert_text.grouped.
        for group in alert_text.grouped(outgoing):
            event = group[0]
            host = hosts.get(event.host_id)
            name, owner = (host.name, host.owner) if host is not None else (f"host {event.host_id}", 0)
            text = alert_text.describe_group(group, name, self._tz)
            log.info("alert: %r", text)
            if owner and self._notify is not None:
                with i18n.speaking(self._language(owner)):
                    said = html.escape(alert_text.describe_group(group, name, self._tz))
                if len(group) > 1:
                    self._notify(owner, said, event, group)
                else:
                    self._notify(owner, said, event)

    async def _deliver_reports(self) -> None:
        """A server outage (ServerDown): one message per owner, about their own hosts."""
        reports, self._reports = self._reports, []
        for report in reports:
            try:
                hosts = await self._db.read(_hosts_by_id, {*report.back, *report.missing})
            except BaseException:
                self._reports[:0] = [report]
                raise
            owners: dict[int, tuple[list[str], list[str]]] = {}
            for ids, column in ((report.back, 0), (report.missing, 1)):
                for host_id in ids:
                    host = hosts.get(host_id)
                    if host is not None and host.owner:
                        owners.setdefault(host.owner, ([], []))[column].append(host.name)
            log.info("mbot was down for %.0f s: %d host(s) came back, %d did not", report.until - report.since,
                     len(report.back), len(report.missing))
            for owner, (back, missing) in owners.items():
                if self._notify is not None:
                    with i18n.speaking(self._language(owner)):
                        text = alert_text.outage_text(report, sorted(back), sorted(missing), self._tz)
                    self._notify(owner, html.escape(text), report)
