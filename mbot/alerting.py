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
from typing import Any, Callable

import trio

from . import alerts, store
from .alerts import AlertEngine, AlertRule, Event, OfflineRule
from .telegram import alert_text
from .protocol import Hello, Sample
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

# Where a message goes: (owner's chat id, HTML text, the event).
Notify = Callable[[int, str, Event], None]


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
                                                    list[store.Host]]:
    snapshot = store.get_kv(conn, SNAPSHOT_KEY)
    return load_rules(conn), json.loads(snapshot) if snapshot else None, store.list_hosts(conn)


def _hosts_by_id(conn: sqlite3.Connection, ids: set[int]) -> dict[int, store.Host | None]:
    return {host_id: store.host_by_id(conn, host_id) for host_id in ids}


class Alerting:
    """Owns the engine. `run()` lives in the app's nursery; everything else is called from the trio thread."""

    def __init__(self, db: Database, writer: Writer, *, repeat: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._writer = writer
        self._repeat = repeat
        self._clock = clock
        self.engine = AlertEngine(repeat=repeat, now=clock())
        self._outgoing: list[Event] = []  # events waiting for their host's name and owner (read from the store)
        self._notify: Notify | None = None
        self._wake = trio.Event()
        self._dirty = False
        self._held: dict[int, list[Event]] = {}  # host -> its state alert events waiting for their turn
        self._state_credit: dict[int, tuple[float, float]] = {}  # host -> (deliveries it may make, as of when)

    def set_notify(self, notify: Notify) -> None:
        self._notify = notify

    def clock_moved(self) -> None:
        """Re-check the timers now: for a clock that jumps (tests move time forward instead of waiting)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rules, snapshot, hosts = await self._db.read(_load_state)
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
        self._writer.listeners.append(self)
        task_status.started()
        last_save = -math.inf
        failures = 0
        try:
            while True:
                deadline = self.engine.next_deadline()
                if self._held:
                    release = min(self._state_release(host) for host in self._held)
                    deadline = release if deadline is None else min(deadline, release)
                wait = math.inf if deadline is None else max(0.0, deadline - self._clock())
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
                except Exception as exc:  # the events wait for the next wake-up; the task goes on
                    self._writer.faults.isolated("alerting", "delivering alert messages", exc)
                    failures += 1
                if self._dirty and self._clock() - last_save >= SAVE_EVERY:
                    await self._save()
                    last_save = self._clock()
        finally:
            self._writer.listeners.remove(self)
            if self._dirty:
                # Bounded: if the writer is gone too, losing the last seconds of state beats hanging shutdown.
                with trio.move_on_after(5, shield=True):
                    await self._save()

    async def _save(self) -> None:
        self._dirty = False
        snapshot = json.dumps(self.engine.snapshot())
        try:
            await self._writer.call(store.set_kv, SNAPSHOT_KEY, snapshot)
        except trio.ClosedResourceError:
            log.warning("alert state not saved: the writer is already closed")

    # --- fed by the writer (CommitListener) -------------------------------------------------------------------

    def on_hello(self, host_id: int, hello: Hello) -> None:
        self._emit(self.engine.host_seen(host_id, self._clock(), hello.interval))

    def on_samples(self, host_id: int, samples: list[Sample]) -> None:
        now = self._clock()
        for sample in samples:
            try:
                self._emit(self.engine.observe(host_id, sample.ts, sample.series, now))
            except Exception as exc:  # one sample the engine chokes on must not cost the others their alerts
                self._writer.faults.isolated("alerting", f"sample {sample.seq} of host {host_id}", exc)

    # --- changes from users -----------------------------------------------------------------------------------

    def host_removed(self, host_id: int) -> None:
        self.engine.forget_host(host_id)
        self._changed()

    async def set_rule(self, rule: AlertRule | OfflineRule) -> None:
        await self._writer.call(save_rule, rule)
        self.engine.set_rule(rule)
        self._changed()

    async def delete_rule(self, host_id: int, metric: str) -> bool:
        if metric == "offline":
            # Offline alerts are on by default: turning them off is a rule of its own.
            await self.set_rule(OfflineRule(host_id, enabled=False))
            return True
        existed = await self._writer.call(delete_rule, host_id, metric)
        self.engine.delete_rule(host_id, metric)
        self._changed()
        return existed

    def mute(self, host_id: int, until: float) -> None:
        self.engine.mute(host_id, until)
        self._changed()

    def unmute(self, host_id: int) -> None:
        self._emit(self.engine.unmute(host_id, self._clock()))
        self._changed()

    # --- out -------------------------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        self._wake.set()  # the next deadline may have moved

    def _emit(self, events: list[Event]) -> None:
        if not events:
            return
        self._outgoing.extend(events)
        self._changed()  # wakes run(), which delivers them

    def _credit(self, host_id: int, now: float) -> float:
        credit, at = self._state_credit.get(host_id, (STATE_BURST, now))
        return min(STATE_BURST, credit + (now - at) / STATE_EVERY)

    def _state_release(self, host_id: int) -> float:
        """When a host's held state alerts may go (a token bucket: STATE_BURST, one more per STATE_EVERY)."""
        credit, at = self._state_credit[host_id]
        return at + max(0.0, 1.0 - credit) * STATE_EVERY

    def _due(self, now: float) -> tuple[list[Event], set[int]]:
        """What goes out now: every event but state alerts of a host out of credit (those wait in _held); and the
        hosts whose state alerts go."""
        outgoing, self._outgoing = self._outgoing, []
        due = []
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
            text = alert_text.describe_group(group, name)
            log.info("alert: %r", text)
            if owner and self._notify is not None:
                self._notify(owner, html.escape(text), event)
