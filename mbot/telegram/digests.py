"""The daily digest at work (mbot.digest): one task in the bot's nursery that sleeps until the next user's digest
is due, gathers their hosts' last 24 hours (one reader thread), draws the picture (a worker thread under the
charts' limiter) and sends it.

A digest's sending is recorded (`digests.last_sent`) BEFORE it is handed to the outbox: a crash in between loses
that one digest rather than sending it twice after the restart (a summary a day late is worth less than the noise of
a repeated one).
"""
from __future__ import annotations

import html
import logging
import math
import sqlite3
from typing import Callable

import trio

from .. import digest, digestchart, history, i18n, store
from ..alerting import Alerting
from ..config import Settings
from ..digest import HostDay
from ..i18n import _
from ..store import Database
from ..writer import Writer
from .api import BotApi
from .outbox import Outbox

log = logging.getLogger(__name__)

RENDER_TIMEOUT = 30.0  # seconds the picture may take; past it, the digest goes as text


def _host_days(conn: sqlite3.Connection, owner: int, start: float, end: float,
               settings: Settings) -> list[tuple[int, HostDay]]:
    """The owner's hosts over [start, end]: sparklines from the 10-minute tier, uptime from the 1-minute one."""
    tiers = {tier.name: tier for tier in settings.tiers}
    fired = store.alerts_fired_since(conn, start)
    out = []
    for host in store.list_hosts(conn, owner):
        if host.revoked is not None:
            continue
        disks = host.last_metrics.get("disks")
        fullest = None
        if isinstance(disks, dict) and disks:
            fullest = max(disks, key=lambda m: float((disks[m] or {}).get("percent", 0.0))
                          if isinstance(disks[m], dict) else 0.0)
        names = ["cpu", "ram"] + ([f"disk:{fullest}"] if fullest is not None else [])
        series = history.load(conn, host.id, names, start, end, tiers["10m"])
        minutes = history.load(conn, host.id, ["cpu"], start, end, tiers["1m"])["cpu"]
        day = HostDay(host.name, alerts=fired.get(host.id, 0),
                      uptime=digest.uptime(sum(1 for agg in minutes if start <= agg.start < end), start, end,
                                           host.created))
        for field, name in (("cpu", "cpu"), ("ram", "ram"), ("disk", names[-1] if fullest is not None else None)):
            if name is not None:
                setattr(day, field, [(agg.start, agg.avg) for agg in series[name] if math.isfinite(agg.avg)])
        out.append((host.id, day))
    return out


class Digests:
    """`/digest` settings and the task that sends them. `run()` lives in the bot's nursery."""

    def __init__(self, api: BotApi, outbox: Outbox, db: Database, writer: Writer, settings: Settings,
                 alerting: Alerting, *, clock: Callable[[], float], chart_limiter: trio.CapacityLimiter,
                 silent: Callable[[int], bool] = lambda user_id: False,
                 language: Callable[[int], str] = lambda user_id: i18n.DEFAULT) -> None:
        self._api = api
        self._outbox = outbox
        self._db = db
        self._writer = writer
        self._settings = settings
        self._alerting = alerting
        self._clock = clock
        self._charts = chart_limiter
        self._silent = silent
        self._language = language  # the language each user reads (mbot.telegram.languages)
        self._wanted: dict[int, tuple[int, float]] = {}  # the `digests` table: user -> (minute, last sent)
        self._wake = trio.Event()

    def clock_moved(self) -> None:
        self._wake.set()

    def setting(self, user_id: int) -> int | None:
        found = self._wanted.get(user_id)
        return None if found is None else found[0]

    async def set(self, user_id: int, minute: int | None) -> None:
        """/digest HH:MM or off: the next one is at the next HH:MM (none is sent for the time already past)."""
        now = self._clock()
        await self._writer.call(store.set_digest, user_id, minute, now)
        if minute is None:
            self._wanted.pop(user_id, None)
        else:
            self._wanted[user_id] = (minute, now)
        self._wake.set()

    def due(self, user_id: int) -> float | None:
        found = self._wanted.get(user_id)
        return None if found is None else digest.next_due(found[0], self._settings.tz, found[1])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._wanted = await self._db.read(store.digests)
        task_status.started()
        while True:
            dues = {user: due for user in self._wanted if (due := self.due(user)) is not None}
            wait = min(dues.values(), default=math.inf) - self._clock()
            with trio.move_on_after(max(0.0, wait)):
                await self._wake.wait()
            self._wake = trio.Event()
            now = self._clock()
            for user in sorted(dues):
                if dues[user] <= now and user in self._wanted:
                    minute = self._wanted[user][0]
                    try:
                        await self._writer.call(store.set_digest, user, minute, now)
                        self._wanted[user] = (minute, now)
                        with i18n.speaking(self._language(user)):  # (the picture's thread inherits it)
                            await self._send(user, now)
                    except Exception:  # one user's digest must not stop the others'
                        log.exception("the daily digest for user %d failed", user)

    async def _send(self, user: int, now: float) -> None:
        start = now - digest.SPAN
        found = await self._db.read(_host_days, user, start, now, self._settings)
        days = []
        for host_id, day in found:
            day.forecasts = self._alerting.forecast_lines(host_id)
            days.append(day)
        caption = digest.caption(days, now, self._settings.tz)
        png = None
        if days:
            title = _("mbot · last 24 h")
            with trio.move_on_after(RENDER_TIMEOUT):
                try:
                    png = await trio.to_thread.run_sync(digestchart.render, days, start, now, title,
                                                        limiter=self._charts, abandon_on_cancel=True)
                except Exception as exc:
                    log.warning("the digest picture for user %d failed (%s): sent as text", user, exc)
        log.info("daily digest for user %d: %d hosts", user, len(days))
        silent = self._silent(user)
        if png is not None:
            self._outbox.submit(user, lambda: self._api.send_photo(user, png, html.escape(caption),
                                                                   disable_notification=silent))
        else:
            self._outbox.submit(user, lambda: self._api.send_message(user, html.escape(caption),
                                                                     disable_notification=silent))
