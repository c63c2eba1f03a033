"""Status pages (/statuspage) at work, and the groups the bot has left. One long-running task in the bot's nursery.

A page is one message in a group that lists its owner's hosts (mbot/statuspage.py says what and how); this task
edits it in place. It looks again when a host's state changes (`changed`, from the alert events) and at least every
CHECK_EVERY, and edits only when the text changed and its last edit is a minute old (else it comes back then):
never more than once a minute per message, never an edit Telegram would refuse as "not modified". Pages, their text
and the time of their last edit are stored (`status_pages`), so a restart goes on editing the same message on the
same schedule. Time is the injected wall clock (`clock_moved()` wakes it after a test moves it), never a sleep.

An edit refused because the message is gone (400: deleted by a member) stops that page, in one log line. A group
the bot is no longer in (`chat_gone`: a my_chat_member update, or a 403 from any send there) loses its bindings and
pages at once, logged once: nothing is sent there again, so a removed bot causes no retry storm.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from functools import partial
from typing import Any, Callable

import trio

from .. import i18n, statuspage, store
from ..i18n import _
from ..config import Settings
from ..alerts import HostStatus
from ..model import Host, StatusPage
from ..store import Database
from ..writer import Writer
from . import views
from .api import BotApi, TelegramError, TelegramRejected
from .groups import chat_is_gone, may_act
from .outbox import Outbox, OutboxDropped

log = logging.getLogger(__name__)

PageKey = tuple[int, int]  # (chat id, owner)
LOOK_AGAIN = 5.0  # seconds between two renders of a page woken by changes


RunsCache = dict[tuple[int, str], tuple[float, list[tuple[float, float]]]]  # (host, table) -> (read at, runs)
Measured = tuple[Host, statuspage.Uptime, statuspage.Uptime]  # a host, its uptime over 24 h and over 30 d


def _measure(conn: Any, page: StatusPage, now: float, cache: RunsCache) -> list[Measured]:
    """The page's hosts and their uptime (in a worker thread: a few small index scans per host). Only hosts the
    page's owner may act on: a host given away or deleted drops off the page. A host's stretches of history are
    read again once a bucket of their tier has passed (`cache`, shared by the pages): 30 days of 10-minute buckets
    are the dearest read, and the newest minutes are vouched for by the host's last sample meanwhile."""
    if page.hosts is None:
        hosts = [h for h in store.list_hosts(conn, page.owner) if h.revoked is None]
    else:
        found = (store.host_by_id(conn, host_id) for host_id in page.hosts)
        hosts = [h for h in found if h is not None]
    rows = []
    for host in hosts:
        if not may_act(page.owner, host):
            continue
        windows = []
        for span, table, width in statuspage.WINDOWS:
            start = max(now - span, host.created)
            read_at, runs = cache.get((host.id, table), (-math.inf, []))
            if not read_at <= now < read_at + width:
                read_at, runs = now, store.covered_runs(conn, table, host.id, now - span - width)
                cache[host.id, table] = (read_at, runs)
            windows.append(statuspage.uptime(runs, width, start, now, host.last_seen, statuspage.offline_delay(host),
                                             lag=statuspage.ROLLUP_LAG + now - read_at))
        rows.append((host, windows[0], windows[1]))
    return rows


class StatusPages:
    def __init__(self, api: BotApi, outbox: Outbox, db: Database, writer: Writer, settings: Settings, *,
                 clock: Callable[[], float], status: Callable[[int], HostStatus]) -> None:
        self._api = api
        self._status = status  # the alert engine's view of a host: the page turns red when its offline alert fires
        self._outbox = outbox
        self._db = db
        self._writer = writer
        self._settings = settings
        self._clock = clock
        self._pages: dict[PageKey, StatusPage] = {}
        self._next: dict[PageKey, float] = {}  # when each page is looked at next (wall clock)
        self._looked: dict[PageKey, float] = {}  # when each page was last rendered
        self._runs: RunsCache = {}
        self._gone: dict[int, str] = {}  # chats to forget, and why
        self._moved: dict[int, int] = {}  # groups that became supergroups: old id -> new id
        self._retiring: list[StatusPage] = []  # stopped or replaced: their last edit says so, when the minute allows
        self._stopped: list[tuple[StatusPage, str]] = []  # pages whose message is gone
        self._wake = trio.Event()
        self.passes = 0  # completed passes (tests wait for one instead of sleeping)
        self._passed = trio.Event()

    # --- called from the bot (trio thread; never block) ---------------------------------------------------------

    def changed(self, host_id: int) -> None:
        """A host's state changed: pages that may show it look again (at once, or when their minute is up)."""
        now = self._clock()
        for key, page in self._pages.items():
            if page.hosts is None or host_id in page.hosts:
                # An alert storm re-renders a page at most every LOOK_AGAIN, not once per event.
                soon = max(now, self._looked.get(key, now) + LOOK_AGAIN)
                self._next[key] = min(self._next.get(key, soon), soon)
        self._wake.set()

    def clock_moved(self) -> None:
        self._wake.set()

    def chat_gone(self, chat_id: int, why: str) -> None:
        """The bot is no longer in this group: forget its bindings and pages (said once: the sends still queued
        there refuse too, and find nothing left to forget)."""
        self._gone.setdefault(chat_id, why)
        self._wake.set()

    def chat_moved(self, old: int, new: int) -> None:
        """A group became a supergroup (a new id): its bindings follow it; its pages stop."""
        self._moved[old] = new
        self._wake.set()

    async def next_pass(self) -> None:
        """Wait until the task has looked at its pages once more (tests)."""
        await self._passed.wait()

    async def start(self, chat_id: int, owner: int, thread_id: int | None, hosts: tuple[int, ...] | None) -> bool:
        """Post a new page (replacing the owner's page in this chat, whose message then says it is no longer kept
        current)."""
        probe = StatusPage(chat_id, owner, thread_id, 0, hosts, "", 0.0, i18n.current())
        text = await self._render(probe, self._clock())
        try:
            sent = await self._outbox.request(chat_id, partial(self._api.send_message, chat_id, text,
                                                               thread_id=thread_id))
        except (TelegramError, OutboxDropped) as exc:
            log.warning("could not post the status page of user %d in chat %d: %s", owner, chat_id, exc)
            return False
        if not isinstance(sent, dict) or not isinstance(sent.get("message_id"), int):
            return False
        page = StatusPage(chat_id, owner, thread_id, sent["message_id"], hosts, text, self._clock(), probe.lang)
        old = self._pages.get((chat_id, owner))
        if old is not None:
            self._retiring.append(old)
        self._pages[chat_id, owner] = page  # before the write: a change meanwhile already finds it
        self._next[chat_id, owner] = page.edited + statuspage.CHECK_EVERY
        await self._writer.call(store.put_status_page, page)
        log.info("user %d started a status page in chat %d (%s)", owner, chat_id,
                 "all hosts" if hosts is None else f"{len(hosts)} host(s)")
        self._wake.set()
        return True

    async def stop(self, chat_id: int, owner: int) -> bool:
        """Stop the owner's page here; its message says it is no longer kept current (an edit, once its minute is
        up)."""
        page = self._pages.get((chat_id, owner))
        self._drop((chat_id, owner))
        if page is not None:
            self._retiring.append(page)
            self._wake.set()
        return bool(await self._writer.call(store.delete_status_page, chat_id, owner))

    # --- the task -----------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for page in await self._db.read(store.status_pages):
            self._pages[page.chat_id, page.owner] = page
            self._next[page.chat_id, page.owner] = self._clock()  # a restart may have missed changes: look now
        task_status.started()
        while True:
            now = self._clock()
            wait = min([t - now for t in self._next.values()] + [statuspage.CHECK_EVERY] +
                       [p.edited + statuspage.MIN_EDIT - now for p in self._retiring])
            if not self._gone and not self._stopped and not self._moved and wait > 0:
                with trio.move_on_after(wait):
                    await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._forget_gone()
                await self._look()
            except Exception:  # a page that cannot be rendered must not end the bot: it is tried again later
                log.exception("status pages: a pass failed")
            self.passes += 1
            self._passed.set()
            self._passed = trio.Event()

    def _drop(self, key: PageKey) -> None:
        self._pages.pop(key, None)
        self._next.pop(key, None)
        self._looked.pop(key, None)

    async def _forget_gone(self) -> None:
        while self._gone:
            chat_id, why = self._gone.popitem()
            self._retiring = [p for p in self._retiring if p.chat_id != chat_id]
            for key in [k for k in self._pages if k[0] == chat_id]:
                self._drop(key)
            bindings, pages = await self._writer.call(store.forget_chat, chat_id)
            if bindings or pages:
                log.warning("chat %d is gone (%s): dropped %d binding(s) and %d status page(s) there", chat_id,
                            why, bindings, pages)
        while self._moved:
            old, new = self._moved.popitem()
            self._retiring = [p for p in self._retiring if p.chat_id != old]
            for key in [k for k in self._pages if k[0] == old]:
                self._drop(key)
            bindings, pages = await self._writer.call(store.move_chat, old, new)
            log.info("group %d is now supergroup %d: %d binding(s) moved there, %d status page(s) stopped", old, new,
                     bindings, pages)
        while self._stopped:
            page, why = self._stopped.pop()
            key = (page.chat_id, page.owner)
            if key in self._pages and self._pages[key].message_id == page.message_id:
                self._drop(key)
            await self._writer.call(store.delete_status_page, page.chat_id, page.owner, page.message_id)
            log.warning("status page of user %d in chat %d stopped: its message cannot be edited (%s)", page.owner,
                        page.chat_id, why)

    async def _look(self) -> None:
        now = self._clock()
        for page in [p for p in self._retiring if p.edited + statuspage.MIN_EDIT <= now]:
            self._retiring.remove(page)
            with i18n.speaking(page.lang):
                last = dataclasses.replace(page, text=page.text + "\n" + _("⏸ No longer kept current."))
            self._outbox.submit(page.chat_id, partial(self._edit, last, retired=True))
        for key, page in list(self._pages.items()):
            now = self._clock()
            if self._next.get(key, now) > now:
                continue
            try:
                await self._look_at(key, page, now)
            except Exception:
                # One page that cannot be drawn or stored must not hold up the pages after it, nor be tried again
                # at once (the loop would spin on it): it waits its turn like a page that did not change.
                log.exception("status page of user %d in chat %d: could not look at it; trying again in %g s",
                              page.owner, page.chat_id, statuspage.CHECK_EVERY)
                self._next[key] = now + statuspage.CHECK_EVERY

    async def _look_at(self, key: PageKey, page: StatusPage, now: float) -> None:
        text = await self._render(page, now)
        self._looked[key] = now
        if self._pages.get(key) is not page:  # stopped or replaced meanwhile
            return
        due = statuspage.edit_due(page.text, text, page.edited, now)
        if due is None or due > now:
            self._next[key] = now + statuspage.CHECK_EVERY if due is None else due
            return
        edited = dataclasses.replace(page, text=text, edited=now)
        self._pages[key] = edited
        self._next[key] = now + statuspage.CHECK_EVERY
        await self._writer.call(store.page_edited, page.chat_id, page.owner, page.message_id, text, now)
        self._outbox.submit(page.chat_id, partial(self._edit, edited))

    async def _render(self, page: StatusPage, now: float) -> str:
        rows = []
        if len(self._runs) > 4 * 10_000:  # hosts deleted long ago: start afresh now and then
            self._runs.clear()
        for host, day, month in await self._db.read(_measure, page, now, self._runs):
            status = self._status(host.id)
            online = status.last_seen is not None and status.offline_since is None
            rows.append(statuspage.HostFigures(host, online, day, month))
        with i18n.speaking(page.lang):
            return statuspage.page_text(rows, self._settings.tz, views.e)

    async def _edit(self, page: StatusPage, *, retired: bool = False) -> Any:
        try:
            return await self._api.edit_message_text(page.chat_id, page.message_id, page.text)
        except TelegramRejected as exc:
            if chat_is_gone(exc.error_code, exc.description):
                self.chat_gone(page.chat_id, exc.description)
            elif exc.error_code == 400 and not retired:  # "message to edit not found": someone deleted it
                self._stopped.append((page, exc.description))
                self._wake.set()
            raise

