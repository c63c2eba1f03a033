"""Checks from the host, at work on the server (mbot/checks.py): keeps the hub's copy of every host's checks, tells
connected agents their new list when it changes, and keeps the alert engine's check rules (`check:NAME`,
`cert:NAME`) as the store has them.

Changes come from the bot (which wakes this task) and from the CLI, another process: `checks.version` in `kv` is
bumped with every change, and is read every POLL seconds (one small read), so a check added with `python -m mbot
check add` reaches the agent within seconds.
"""
from __future__ import annotations

import logging

import trio

from . import checks, store
from .agents import AgentHub
from .alerting import Alerting, load_rules
from .alerts import AlertRule
from .store import Database

log = logging.getLogger(__name__)

POLL = 5.0


def _check_metric(metric: str) -> bool:
    return metric.startswith(("check:", "cert:"))


class CheckSync:
    def __init__(self, db: Database, hub: AgentHub, alerting: Alerting, *, poll: float | None = None) -> None:
        self._db = db
        self._hub = hub
        self._alerting = alerting
        self._poll = POLL if poll is None else poll  # read here: tests shorten it
        self._version: int | None = None
        self._wake = trio.Event()
        hub.on_checks_changed = self.changed

    def changed(self) -> None:
        """Something changed the checks table (the bot): sync now rather than at the next poll."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.sync()
        task_status.started()
        while True:
            with trio.move_on_after(self._poll):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.sync()
            except Exception:  # a bad row or a busy database: the next poll tries again
                log.exception("syncing checks failed; trying again in %g s", self._poll)

    async def sync(self) -> None:
        version = await self._db.read(store.checks_version)
        if version == self._version:
            return
        specs = await self._db.read(store.all_checks)
        by_host: dict[int, list[checks.CheckSpec]] = {}
        for spec in specs:
            by_host.setdefault(spec.host_id, []).append(spec)
        before = self._hub.check_specs
        changed = {h for h in by_host.keys() | before.keys() if by_host.get(h, []) != before.get(h, [])}
        self._hub.check_specs = by_host
        first = self._version is None
        self._version = version
        if not first:  # at start the engine loaded every rule from the store itself
            await self._sync_rules(changed)  # before the agents hear of it: its alerts are ready for its results
        for host_id in changed:
            await self._hub.send_checks(host_id)

    async def _sync_rules(self, host_ids: set[int]) -> None:
        """Make the engine's check rules of these hosts what the store has (the CLI wrote them there)."""
        stored = [r for r in await self._db.read(load_rules) if isinstance(r, AlertRule) and r.host_id in host_ids
                  and _check_metric(r.metric)]
        engine = self._alerting.engine
        for rule in stored:
            if rule not in engine.rules(rule.host_id):
                await self._alerting.set_rule(rule)
        wanted = {(r.host_id, r.metric) for r in stored}
        for host_id in host_ids:
            for held in engine.rules(host_id):
                if isinstance(held, AlertRule) and _check_metric(held.metric) and (host_id, held.metric) not in wanted:
                    await self._alerting.delete_rule(host_id, held.metric)
