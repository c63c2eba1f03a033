"""Alert events into the chat, one message per alert life: sent with its buttons (and its chart), replied to by its
reminders, edited when it ends.

mbot.alerting hands events over with `notify()` (never blocks); `run()` (in the bot's nursery) takes them in order:

- Firing: the host's top processes are captured for CPU/RAM/GPU alerts (a copy of the latest `processes` snapshot:
  the culprit may have exited by the time someone looks), a row is added to `alert_messages`, and the message goes
  out as a photo of the metric's last hour with the text as caption (text and a Chart button when the chart fails,
  takes longer than CHART_TIMEOUT, or the caption would be too long). Offline: the same, without chart or
  processes.
- Reminder: a reply to that message.
- Resolved / BackOnline: that message is edited to say it ended (✅, how long, the worst value) and a short reply
  notifies (an edit does not). An edit Telegram refuses (the message was deleted, or is too old) becomes a new
  message instead; "message is not modified" counts as done (BotApi).
- A group (alert_text.grouped: many container alerts of one host at once, a storm): one plain message with a
  Containers button, no thread of its own; a grouped Resolved or BackOnline also ends the threads of the alerts it
  names, quietly (their messages are edited, the group message is what notifies).
- MuteEnded: its own message; the messages of alerts that ended during the mute (the engine sent no Resolved) are
  edited to say so, quietly (no reply, no new message if the edit fails).

Everyone who should know gets it (`recipients`: the host's owner and every user with a role on it, mbot.access), each
in their own chat with the buttons their role allows (a viewer: Chart and Processes; an operator and the owner: also
Mute and Ack), and each alert life is one message per recipient (one alert_messages row each). A mute or an ack
from one chat is written into the others' messages (`muted`, `acknowledged`). Someone whose role was removed gets
nothing more of the host, not even the end of an alert they saw start.

The message_id of an alert's message comes back through the outbox's `on_sent`, which runs before the next message
to that chat goes out; reminders and ends read it when they are sent, so none of this waits for Telegram, and per
chat order keeps a quick end behind its start. The ids are stored (`alert_messages`), so a restart keeps the threads.
"""
from __future__ import annotations

import html
import json
import logging
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import trio

from .. import access, charts, i18n, plotting, processes, store
from ..alerts import BackOnline, Event, Firing, HostEvent, MuteEnded, Offline, Reminder, Resolved
from ..config import Settings
from ..i18n import _
from ..model import Host, StoredSnapshot
from ..store import Database
from ..writer import Writer
from . import alert_text, views
from .api import BotApi, TelegramRejected
from .outbox import Outbox

log = logging.getLogger(__name__)

CHART_TIMEOUT = 10.0  # seconds an alert's chart may take before the alert goes as text
CAPTION_LIMIT = 1024  # Telegram's limit on a photo's caption, in characters
MAX_QUEUED = 1000  # events waiting here at most (the outbox bounds what follows); the oldest go first
OFFLINE = "offline"  # the metric of a host's offline alert in alert_messages

Key = tuple[int, str, str]  # (host id, metric, series)


@dataclass(eq=False)
class _Thread:
    """An alert's life in the chat, while it lasts."""

    alert_id: int  # its alert_messages row
    chat_id: int
    message_id: int | None = None  # None until Telegram took the message (or if it never did)
    photo: bool = False
    procs: bool = False  # processes were captured: it has a Processes button
    text: str | None = None  # what it says (None after a restart): a mute or an ack elsewhere is added to it
    notes: list[str] = field(default_factory=list)
    acked: bool = False  # someone acknowledged it: no Ack button any more


@dataclass(frozen=True)
class Recipient:
    chat_id: int
    role: str  # mbot.access: what buttons they get


def recipients(conn: sqlite3.Connection, host_id: int) -> list[Recipient]:
    """THE fan-out: who gets the host's alerts. Its owner and everyone with a role on it, read at each event, so a
    share or a removal counts from the next event on."""
    host = store.host_by_id(conn, host_id)
    if host is None:
        return []
    found = [Recipient(host.owner, access.OWNER)] if host.owner > 0 else []
    return found + [Recipient(user_id, role) for user_id, role, _username, _first in store.roles_of_host(conn, host_id)
                    if access.allows(role, "alerts") and user_id != host.owner]


def _key(event: Event) -> Key | None:
    if isinstance(event, (Firing, Reminder, Resolved)):
        return event.host_id, event.rule.metric, event.series
    if isinstance(event, (Offline, BackOnline)):
        return event.host_id, OFFLINE, ""
    return None


def _captured(snapshot: StoredSnapshot | None, host: Host, now: float) -> str | None:
    """The processes to keep with an alert: what a Processes button shows (the top LIST of each ranking)."""
    if snapshot is None or not processes.is_fresh(snapshot, host, now):
        return None
    kept: dict[int, dict[str, Any]] = {}
    for field, _ in processes.RANKINGS:
        for item in processes.ranked(snapshot.items, field, processes.LIST):
            kept[id(item)] = item
    return json.dumps(list(kept.values()))


class AlertDelivery:
    def __init__(self, api: BotApi, outbox: Outbox, db: Database, writer: Writer, settings: Settings, *,
                 clock: Callable[[], float], chart_limiter: trio.CapacityLimiter,
                 silent: Callable[[int], bool] = lambda chat_id: False,
                 language: Callable[[int], str] = lambda chat_id: i18n.DEFAULT) -> None:
        self._api = api
        self._outbox = outbox
        self._db = db
        self._writer = writer
        self._settings = settings
        self._clock = clock
        self._charts = chart_limiter
        self._silent = silent  # the user's quiet hours (mbot.quiet): what notifies goes without a sound then
        self._language = language  # the language each user reads (mbot.telegram.languages)
        self._threads: dict[Key, dict[int, _Thread]] = {}  # an alert's message in each recipient's chat
        self._queue: deque[tuple[int, str, Event, Sequence[HostEvent]]] = deque()
        self._sent: list[_Thread] = []  # message ids to store
        self._wake = trio.Event()

    def notify(self, owner: int, text: str, event: Event, group: Sequence[HostEvent] = (), /) -> None:
        """mbot.alerting's Notify: `text` is the event's escaped HTML (alert_text.describe, or describe_group for
        a `group`)."""
        if len(self._queue) >= MAX_QUEUED:
            log.warning("alert delivery is %d events behind: dropped the oldest", MAX_QUEUED)
            self._queue.popleft()
        self._queue.append((owner, text, event, group))
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for row in await self._db.read(store.open_alert_messages):
            if row.chat_id is not None:
                self._threads.setdefault((row.host_id, row.metric, row.series), {})[row.chat_id] = _Thread(
                    row.id, row.chat_id, row.message_id, row.photo, row.procs is not None)
        task_status.started()
        while True:
            if not self._queue and not self._sent:
                await self._wake.wait()
                self._wake = trio.Event()
            while self._sent:
                thread = self._sent.pop(0)
                assert thread.message_id is not None
                try:
                    await self._writer.call(store.set_alert_message_sent, thread.alert_id, thread.chat_id,
                                            thread.message_id, thread.photo)
                except Exception:  # the thread lives on in memory; only a restart would lose it
                    log.exception("could not store the message id of alert %d", thread.alert_id)
            if self._queue:
                owner, text, event, group = self._queue.popleft()
                try:
                    if group:
                        await self._deliver_group(owner, text, group)
                    else:
                        await self._deliver(owner, text, event)
                except Exception:  # one event that cannot go out must not hold up the others
                    log.exception("could not deliver an alert to chat %d", owner)

    # --- per event ---------------------------------------------------------------------------------------------

    async def _texts(self, owner: int, text: str, to: Sequence[Recipient], events: Sequence[Event]) \
            -> dict[int, str]:
        """What the event says to each recipient, in their language (mbot.i18n): `text` is the owner's (mbot.alerting
        made it); a recipient who reads another language gets it said again in theirs."""
        said = {person.chat_id: text for person in to}
        others = [person.chat_id for person in to if self._language(person.chat_id) != self._language(owner)]
        host_id = getattr(events[0], "host_id", None)
        if others and host_id is not None:
            host = await self._db.read(store.host_by_id, host_id)
            name = host.name if host is not None else f"host {host_id}"
            for chat in others:
                with i18n.speaking(self._language(chat)):
                    said[chat] = html.escape(alert_text.describe_group(
                        events, name, self._settings.tz))  # type: ignore[arg-type]  # a host's events, as host_id says
        return said

    async def _deliver(self, owner: int, text: str, event: Event) -> None:
        key = _key(event)
        host_id = getattr(event, "host_id", None)
        to = await self._db.read(recipients, host_id) if host_id is not None else [Recipient(owner, access.OWNER)]
        said = await self._texts(owner, text, to, [event])
        if key is None:  # MuteEnded, a power window, the server's outage: a message of its own
            for person in to:
                self._outbox.submit(person.chat_id, partial(self._api.send_message, person.chat_id,
                                                            said[person.chat_id],
                                                            disable_notification=self._silent(person.chat_id)))
            if isinstance(event, MuteEnded):
                await self._ended_while_muted(event)
        elif isinstance(event, (Firing, Offline)):
            await self._start(to, said, event, key)
        elif isinstance(event, Reminder):
            threads = self._threads.get(key, {})
            for person in to:
                thread = threads.get(person.chat_id)
                with i18n.speaking(self._language(person.chat_id)):
                    keyboard = views.alert_keyboard(event.host_id, None if thread is None else thread.alert_id,
                                                    event.rule.metric, chart=False, procs=False, live=True,
                                                    role=person.role)
                self._outbox.submit(person.chat_id, partial(self._reply, person.chat_id, said[person.chat_id],
                                                            keyboard, thread))
        else:
            assert isinstance(event, (Resolved, BackOnline))
            await self._end(to, said, event, key)

    async def _deliver_group(self, owner: int, text: str, group: Sequence[HostEvent]) -> None:
        host_id = group[0].host_id
        to = await self._db.read(recipients, host_id)
        said = await self._texts(owner, text, to, group)
        ends = [(end, key) for end in group if isinstance(end, (Resolved, BackOnline))
                and (key := _key(end)) is not None and key in self._threads]
        if ends:
            host = await self._db.read(store.host_by_id, host_id)
            name = host.name if host is not None else f"host {host_id}"
        for end, key in ends:
            threads = self._threads.pop(key, None)
            if threads is None:  # named twice in the group (it flapped)
                continue
            await self._resolve(threads)
            for person in to:
                thread = threads.get(person.chat_id)
                if thread is None:
                    continue
                with i18n.speaking(self._language(person.chat_id)):
                    keyboard = views.alert_keyboard(end.host_id, thread.alert_id, key[1], chart=not thread.photo,
                                                    procs=thread.procs, live=False, role=person.role)
                    summary = html.escape(alert_text.ended(end, name))
                self._outbox.submit(person.chat_id, partial(self._edit, person.chat_id, summary, keyboard,
                                                            thread, trio.Event(), fallback=False))
        for person in to:
            with i18n.speaking(self._language(person.chat_id)):
                keyboard = views.keyboard([views.containers_button(host_id)])
            self._outbox.submit(person.chat_id, partial(self._api.send_message, person.chat_id, said[person.chat_id],
                                                        reply_markup=keyboard,
                                                        disable_notification=self._silent(person.chat_id)))

    async def _resolve(self, threads: dict[int, _Thread]) -> None:
        for thread in threads.values():
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())

    async def _start(self, to: Sequence[Recipient], said: dict[int, str], event: Firing | Offline, key: Key) -> None:
        now = self._clock()
        host = await self._db.read(store.host_by_id, event.host_id)
        metric = key[1]
        procs = None
        if host is not None and metric in views.PROCESS_METRICS:
            procs = _captured(await self._db.read(store.latest_snapshot, host.id, processes.KIND), host, now)
        png = None
        if to and isinstance(event, Firing) and host is not None \
                and all(len(text) <= CAPTION_LIMIT for text in said.values()) and views.alert_charted(metric):
            with i18n.speaking(self._language(to[0].chat_id)):  # one chart for all: in the owner's language
                png = await self._chart(host, metric)
        threads = self._threads[key] = {}
        for person in to:
            chat = person.chat_id
            text = said[chat]
            alert_id = await self._writer.call(store.add_alert_message, event.host_id, metric, key[2], now, procs,
                                               chat)
            thread = threads[chat] = _Thread(alert_id, chat, procs=procs is not None, photo=png is not None,
                                             text=text)
            with i18n.speaking(self._language(chat)):
                keyboard = views.alert_keyboard(event.host_id, alert_id, metric, chart=png is None,
                                                procs=thread.procs, live=True, role=person.role)
            on_sent = partial(self._on_sent, thread)
            if png is not None:
                self._outbox.submit(chat, partial(self._api.send_photo, chat, png, text, keyboard,
                                                  disable_notification=self._silent(chat)), on_sent=on_sent)
            else:
                self._outbox.submit(chat, partial(self._api.send_message, chat, text, reply_markup=keyboard,
                                                  disable_notification=self._silent(chat)), on_sent=on_sent)

    async def _end(self, to: Sequence[Recipient], said: dict[int, str], event: Resolved | BackOnline,
                   key: Key) -> None:
        threads = self._threads.pop(key, {})
        await self._resolve(threads)
        host = await self._db.read(store.host_by_id, event.host_id)
        name = host.name if host is not None else f"host {event.host_id}"
        for person in to:
            chat = person.chat_id
            text = said[chat]
            thread = threads.get(chat)
            keyboard = None
            with i18n.speaking(self._language(chat)):
                summary = html.escape(alert_text.ended(event, name))
                if thread is not None:
                    keyboard = views.alert_keyboard(event.host_id, thread.alert_id, key[1], chart=not thread.photo,
                                                    procs=thread.procs, live=False, role=person.role)
            edited = trio.Event()  # set when the alert's own message now says it ended: then a reply notifies
            self._outbox.submit(chat, partial(self._edit, chat, summary, keyboard, thread, edited))
            # Queued now, not once the edit went through: behind the edit and ahead of whatever comes next (the
            # next offline of a flapping host must not overtake its "back online").
            self._outbox.submit(chat, partial(self._reply_if, edited, chat, text, thread))

    async def _ended_while_muted(self, event: MuteEnded) -> None:
        live = {(f.host_id, f.rule.metric, f.series) for f in event.still_firing}
        if event.offline_since is not None:
            live.add((event.host_id, OFFLINE, ""))
        ended = [key for key in self._threads if key[0] == event.host_id and key not in live]
        if not ended:
            return
        host = await self._db.read(store.host_by_id, event.host_id)
        name = host.name if host is not None else f"host {event.host_id}"
        roles = {person.chat_id: person.role for person in await self._db.read(recipients, event.host_id)}
        for key in ended:
            threads = self._threads.pop(key)
            await self._resolve(threads)
            for chat, thread in threads.items():
                if chat not in roles:
                    continue
                with i18n.speaking(self._language(chat)):
                    summary = html.escape(alert_text.ended_while_muted(name, None if key[1] == OFFLINE else key[2]))
                    keyboard = views.alert_keyboard(event.host_id, thread.alert_id, key[1], chart=not thread.photo,
                                                    procs=thread.procs, live=False, role=roles[chat])
                self._outbox.submit(chat, partial(self._edit, chat, summary, keyboard, thread, trio.Event(),
                                                  fallback=False))

    # --- a mute or an ack from one chat, shown in the others -------------------------------------------------------

    async def acknowledged(self, host_id: int, metric: str, series: str, by: str) -> None:
        """Someone acknowledged this alert: every recipient's message says who, and loses its Ack button."""
        key = (host_id, metric, series)
        for thread in self._threads.get(key, {}).values():
            thread.acked = True
        await self._annotate(host_id, [key], lambda: _("✔️ Acknowledged by {who}", who=html.escape(by)))

    async def muted(self, host_id: int, until: float, by: str) -> None:
        """Someone muted the host: every live alert message of it says who, and for how long."""
        minutes = max(1, round((until - self._clock()) / 60))
        await self._annotate(host_id, [key for key in self._threads if key[0] == host_id],
                             lambda: _("🔕 Muted by {who} for {minutes} min", who=html.escape(by), minutes=minutes))

    async def _annotate(self, host_id: int, keys: Sequence[Key], note: Callable[[], str]) -> None:
        """`note` makes the note: called in each recipient's language."""
        roles = {person.chat_id: person.role for person in await self._db.read(recipients, host_id)}
        for key in keys:
            for chat, thread in self._threads.get(key, {}).items():
                if chat not in roles:
                    continue
                with i18n.speaking(self._language(chat)):
                    thread.notes.append(note())
                    keyboard = views.alert_keyboard(host_id, thread.alert_id, key[1], chart=not thread.photo,
                                                    procs=thread.procs, live=True, role=roles[chat],
                                                    acked=thread.acked)
                self._outbox.submit(chat, partial(self._show_notes, chat, thread, keyboard))

    async def _show_notes(self, chat_id: int, thread: _Thread, keyboard: views.Keyboard | None) -> Any:
        message_id = self._reply_to(thread, chat_id)
        if message_id is None:
            return None
        try:
            if thread.text is None:  # after a restart: the buttons at least
                return await self._api.edit_message_reply_markup(chat_id, message_id, keyboard)
            text = "\n".join([thread.text, *thread.notes])
            if thread.photo:
                return await self._api.edit_message_caption(chat_id, message_id, text[:CAPTION_LIMIT],
                                                            reply_markup=keyboard)
            return await self._api.edit_message_text(chat_id, message_id, text, reply_markup=keyboard)
        except TelegramRejected as exc:
            log.info("alert message %d in chat %d cannot be edited (%s)", message_id, chat_id, exc.description)
            return None

    # --- sends (run by the outbox, in order per chat: an earlier message's id is known by then) -----------------

    def _on_sent(self, thread: _Thread, message: Any) -> None:
        if isinstance(message, dict) and isinstance(message.get("message_id"), int):
            thread.message_id = message["message_id"]
            self._sent.append(thread)
            self._wake.set()

    @staticmethod
    def _reply_to(thread: _Thread | None, chat_id: int) -> int | None:
        return thread.message_id if thread is not None and thread.chat_id == chat_id else None

    async def _reply(self, chat_id: int, text: str, keyboard: views.Keyboard | None, thread: _Thread | None) -> Any:
        return await self._api.send_message(chat_id, text, reply_markup=keyboard,
                                            reply_to=self._reply_to(thread, chat_id),
                                            disable_notification=self._silent(chat_id))

    async def _edit(self, chat_id: int, summary: str, keyboard: views.Keyboard | None, thread: _Thread | None,
                    edited: trio.Event, *, fallback: bool = True) -> Any:
        """Edit the alert's message to `summary` (setting `edited`); if Telegram refuses, a new message (which
        notifies by itself, so no reply follows) unless not `fallback`."""
        message_id = self._reply_to(thread, chat_id)
        if thread is not None and message_id is not None:
            try:
                if thread.photo:
                    result = await self._api.edit_message_caption(chat_id, message_id, summary,
                                                                  reply_markup=keyboard)
                else:
                    result = await self._api.edit_message_text(chat_id, message_id, summary, reply_markup=keyboard)
            except TelegramRejected as exc:
                log.info("alert message %d in chat %d cannot be edited (%s): its end goes as a new message",
                         message_id, chat_id, exc.description)
            else:
                edited.set()
                return result
        return await self._api.send_message(chat_id, summary, reply_markup=keyboard) if fallback else None

    async def _reply_if(self, edited: trio.Event, chat_id: int, text: str, thread: _Thread | None) -> Any:
        # Not edited: a new message said it ended, and that one notified already.
        return await self._reply(chat_id, text, None, thread) if edited.is_set() else None

    # --- the chart ---------------------------------------------------------------------------------------------

    async def _chart(self, host: Host, metric: str) -> bytes | None:
        """The metric's last hour as a PNG, or None (no data, an error, or slower than CHART_TIMEOUT)."""
        try:
            spec = await self._db.read(plotting.build_spec, host, (metric,), 3600.0, None, None,
                                       self._settings.tiers, self._settings.tz, self._clock())
            with trio.move_on_after(CHART_TIMEOUT):
                # Abandoned on timeout: the thread finishes in the background, still counted by the limiter.
                png: bytes = await trio.to_thread.run_sync(charts.render, spec, limiter=self._charts,
                                                           abandon_on_cancel=True)
                return png
            log.warning("the chart of an alert of host %s took over %g s: the alert goes as text", host.name,
                        CHART_TIMEOUT)
        except Exception as exc:
            log.info("no chart for an alert of host %s (%s): the alert goes as text", host.name, exc)
        return None
