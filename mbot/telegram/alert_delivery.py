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

Each event goes to everyone who should know (`_receivers`): the host's owner and every user with a role on it
(mbot.access; `recipients`), each with the buttons their role allows (a viewer: Chart and Processes; an operator and
the owner: also Mute and Ack), and every group the owner bound the host to (/bind, mbot/telegram/groups.py), to the
topic it was bound in. Each chat gets its own copy, thread and `alert_messages` row, so a reminder replies to and an
end edits the copy in that chat. Quiet hours silence each user's private chat only: a group's members mute it their
own way. A mute or an ack from one chat is written into the others' messages (`muted`, `acknowledged`). Someone whose
role was removed gets nothing more of the host, not even the end of an alert they saw start. A group that refuses a send because the bot is no longer in it (403) is reported to
`chat_gone` (the bindings go there, once), and never retried. A ServerDown report names several of an owner's hosts:
it goes to the owner alone.

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
from .groups import Dest, chat_is_gone, receivers
from .outbox import Outbox

log = logging.getLogger(__name__)

CHART_TIMEOUT = 10.0  # seconds an alert's chart may take before the alert goes as text
CAPTION_LIMIT = 1024  # Telegram's limit on a photo's caption, in characters
MAX_QUEUED = 1000  # events waiting here at most (the outbox bounds what follows); the oldest go first
OFFLINE = "offline"  # the metric of a host's offline alert in alert_messages

Key = tuple[int, str, str]  # (host id, metric, series)
ThreadKey = tuple[int, str, str, int]  # (host id, metric, series, chat id): an alert's copy in one chat


@dataclass(eq=False)
class _Thread:
    """An alert's life in the chat, while it lasts."""

    alert_id: int  # its alert_messages row
    chat_id: int
    message_id: int | None = None  # None until Telegram took the message (or if it never did)
    photo: bool = False
    procs: bool = False  # processes were captured: it has a Processes button
    thread_id: int | None = None  # the forum topic of a group
    text: str | None = None  # what it says (None after a restart): a mute or an ack elsewhere is added to it
    notes: list[str] = field(default_factory=list)
    acked: bool = False  # someone acknowledged it: no Ack button any more


@dataclass(frozen=True)
class Recipient:
    chat_id: int
    role: str  # mbot.access: what buttons they get


def recipients(conn: sqlite3.Connection, host_id: int) -> list[Recipient]:
    """The people who get the host's alerts in their private chats: its owner and everyone with a role on it, read
    at each event, so a share or a removal counts from the next event on."""
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
                 chat_gone: Callable[[int, str], None] = lambda chat_id, why: None,
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
        self._chat_gone = chat_gone  # a group the bot was removed from (mbot/telegram/groups.py drops it)
        self._threads: dict[ThreadKey, _Thread] = {}
        self._queue: deque[tuple[int, str, Event, Sequence[HostEvent]]] = deque()
        self._sent: list[_Thread] = []  # message ids to store
        self._dropped: list[_Thread] = []  # copies in chats that no longer get the host's alerts: rows to close
        self._png: tuple[bytes | None] | None = None  # the chart of the event being delivered, once drawn
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
                self._threads[row.host_id, row.metric, row.series, row.chat_id] = _Thread(
                    row.id, row.chat_id, row.message_id, row.photo, row.procs is not None, row.thread_id)
        task_status.started()
        while True:
            if not self._queue and not self._sent and not self._dropped:
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
            while self._dropped:
                thread = self._dropped.pop()
                try:
                    await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
                except Exception:  # left open: the next alert of the kind in that chat closes it
                    log.exception("could not close alert %d", thread.alert_id)
            if self._queue:
                owner, text, event, group = self._queue.popleft()
                self._png = None  # an event's chart is drawn once, for all its chats
                dests = await self._receivers(owner, event)
                for dest in dests:
                    try:
                        with i18n.speaking(self._speaks(dest, owner)):
                            said = await self._say(owner, text, event, group)
                            if group:
                                await self._deliver_group(dest, said, group)
                            else:
                                await self._deliver(dest, said, event)
                    except Exception:  # one event that cannot go out must not hold up the others
                        log.exception("could not deliver an alert to chat %d", dest.chat_id)
                for end in group or (event,):
                    if isinstance(end, (Resolved, BackOnline)) and (key := _key(end)) is not None:
                        self._forget(key, dests)

    def drop_chat(self, chat_id: int, host_id: int | None = None) -> None:
        """A group no longer gets these alerts (the host unbound there, or the bot left it): its copies of the
        alerts still open are left as they are and no longer followed."""
        for key in [k for k in self._threads if k[3] == chat_id and host_id in (None, k[0])]:
            self._dropped.append(self._threads.pop(key))
        self._wake.set()

    async def _receivers(self, owner: int, event: Event) -> list[Dest]:
        """The people with a role on the host (the owner first), then the groups it is bound to; a ServerDown (it
        names several hosts) goes to the owner alone."""
        host_id = getattr(event, "host_id", None)
        if not isinstance(host_id, int):
            return [Dest(owner, None, self._silent(owner))]
        return await self._host_receivers(owner, host_id)

    async def _host_receivers(self, owner: int, host_id: int) -> list[Dest]:
        people = await self._db.read(recipients, host_id)
        dests = [Dest(person.chat_id, None, self._silent(person.chat_id), person.role) for person in people]
        try:
            bindings = await self._db.read(store.bindings_of_host, host_id)
        except Exception:  # the people still hear of it
            log.exception("could not read the groups host %d is bound to", host_id)
            bindings = []
        return dests + receivers(owner, False, bindings)[1:]

    def _speaks(self, dest: Dest, owner: int) -> str:
        """A person's chat speaks their language; a group, the language of the owner who bound the host there."""
        return self._language(dest.chat_id if dest.chat_id > 0 else owner)

    async def _say(self, owner: int, text: str, event: Event, group: Sequence[HostEvent]) -> str:
        """The event's text in the current language: `text` (mbot.alerting made it in the owner's language), or
        said again for a receiver who reads another."""
        host_id = getattr(event, "host_id", None)
        if i18n.current() == self._language(owner) or not isinstance(host_id, int):
            return text
        host = await self._db.read(store.host_by_id, host_id)
        name = host.name if host is not None else f"host {host_id}"
        return html.escape(alert_text.describe_group(group or (event,), name,  # type: ignore[arg-type]
                                                     self._settings.tz))  # a host's events, as host_id says

    def _forget(self, key: Key, told: Sequence[Dest]) -> None:
        """An alert ended: its copies in chats that were not told (a role removed, a group unbound) are closed."""
        chats = {dest.chat_id for dest in told}
        for tkey in [k for k in self._threads if k[:3] == key and k[3] not in chats]:
            self._dropped.append(self._threads.pop(tkey))

    def _send(self, dest: Dest, send: Callable[..., Any], *args: Any, on_sent: Callable[[Any], None] | None = None,
              **kwargs: Any) -> None:
        """Queue a send to `dest` (its topic; a group that is gone is reported, not retried)."""
        if dest.thread_id is not None:
            kwargs["thread_id"] = dest.thread_id
        self._outbox.submit(dest.chat_id, partial(self._guarded, dest.chat_id, partial(send, *args, **kwargs)),
                            on_sent=on_sent)

    async def _guarded(self, chat_id: int, send: Callable[[], Any]) -> Any:
        try:
            return await send()
        except TelegramRejected as exc:
            if chat_id < 0 and chat_is_gone(exc.error_code, exc.description):
                self._chat_gone(chat_id, exc.description)
            raise

    # --- per event (each once per receiving chat) ----------------------------------------------------------------

    async def _deliver(self, dest: Dest, text: str, event: Event) -> None:
        key = _key(event)
        if key is None:  # MuteEnded: a message of its own
            self._send(dest, self._api.send_message, dest.chat_id, text, disable_notification=dest.silent)
            if isinstance(event, MuteEnded):
                await self._ended_while_muted(dest, event)
        elif isinstance(event, (Firing, Offline)):
            await self._start(dest, text, event, key)
        elif isinstance(event, Reminder):
            thread = self._threads.get((*key, dest.chat_id))
            keyboard = views.alert_keyboard(event.host_id, None if thread is None else thread.alert_id,
                                            event.rule.metric, chart=False, procs=False, live=True, role=dest.role)
            self._send(dest, self._reply, dest, text, keyboard, thread)
        else:
            assert isinstance(event, (Resolved, BackOnline))
            await self._end(dest, text, event, key)

    async def _deliver_group(self, dest: Dest, text: str, group: Sequence[HostEvent]) -> None:
        host_id = group[0].host_id
        ends = [(end, key) for end in group if isinstance(end, (Resolved, BackOnline))
                and (key := _key(end)) is not None and (*key, dest.chat_id) in self._threads]
        if ends:
            host = await self._db.read(store.host_by_id, host_id)
            name = host.name if host is not None else f"host {host_id}"
        for end, key in ends:
            thread = self._threads.pop((*key, dest.chat_id), None)
            if thread is None:  # named twice in the group (it flapped)
                continue
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            keyboard = views.alert_keyboard(end.host_id, thread.alert_id, key[1], chart=not thread.photo,
                                            procs=thread.procs, live=False, role=dest.role)
            self._send(dest, self._edit, dest, html.escape(alert_text.ended(end, name)), keyboard, thread,
                       trio.Event(), fallback=False)
        self._send(dest, self._api.send_message, dest.chat_id, text,
                   reply_markup=views.keyboard([views.containers_button(host_id)]), disable_notification=dest.silent)

    async def _start(self, dest: Dest, text: str, event: Firing | Offline, key: Key) -> None:
        now = self._clock()
        host = await self._db.read(store.host_by_id, event.host_id)
        metric = key[1]
        procs = None
        if host is not None and metric in views.PROCESS_METRICS:
            procs = _captured(await self._db.read(store.latest_snapshot, host.id, processes.KIND), host, now)
        alert_id = await self._writer.call(store.add_alert_message, event.host_id, metric, key[2], now, procs,
                                           dest.chat_id, dest.thread_id)
        thread = self._threads[(*key, dest.chat_id)] = _Thread(alert_id, dest.chat_id, procs=procs is not None,
                                                               thread_id=dest.thread_id, text=text)
        png = None
        if isinstance(event, Firing) and host is not None and len(text) <= CAPTION_LIMIT \
                and views.alert_charted(metric):
            if self._png is None:
                self._png = (await self._chart(host, metric),)
            png = self._png[0]
        keyboard = views.alert_keyboard(event.host_id, alert_id, metric, chart=png is None, procs=thread.procs,
                                        live=True, role=dest.role)
        on_sent = partial(self._on_sent, thread)
        if png is not None:
            thread.photo = True
            self._send(dest, self._api.send_photo, dest.chat_id, png, text, keyboard,
                       disable_notification=dest.silent, on_sent=on_sent)
        else:
            self._send(dest, self._api.send_message, dest.chat_id, text, reply_markup=keyboard,
                       disable_notification=dest.silent, on_sent=on_sent)

    async def _end(self, dest: Dest, text: str, event: Resolved | BackOnline, key: Key) -> None:
        thread = self._threads.pop((*key, dest.chat_id), None)
        if thread is not None:
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
        host = await self._db.read(store.host_by_id, event.host_id)
        name = host.name if host is not None else f"host {event.host_id}"
        summary = html.escape(alert_text.ended(event, name))
        keyboard = None
        if thread is not None:
            keyboard = views.alert_keyboard(event.host_id, thread.alert_id, key[1], chart=not thread.photo,
                                            procs=thread.procs, live=False, role=dest.role)
        edited = trio.Event()  # set when the alert's own message now says it ended: then a reply notifies
        self._send(dest, self._edit, dest, summary, keyboard, thread, edited)
        # Queued now, not once the edit went through: behind the edit and ahead of whatever comes next (the next
        # offline of a flapping host must not overtake its "back online").
        self._send(dest, self._reply_if, edited, dest, text, thread)

    async def _ended_while_muted(self, dest: Dest, event: MuteEnded) -> None:
        live = {(f.host_id, f.rule.metric, f.series) for f in event.still_firing}
        if event.offline_since is not None:
            live.add((event.host_id, OFFLINE, ""))
        ended = [tkey for tkey in self._threads if tkey[0] == event.host_id and tkey[3] == dest.chat_id
                 and tkey[:3] not in live]
        if not ended:
            return
        host = await self._db.read(store.host_by_id, event.host_id)
        name = host.name if host is not None else f"host {event.host_id}"
        for tkey in ended:
            thread = self._threads.pop(tkey)
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            summary = html.escape(alert_text.ended_while_muted(name, None if tkey[1] == OFFLINE else tkey[2]))
            keyboard = views.alert_keyboard(event.host_id, thread.alert_id, tkey[1], chart=not thread.photo,
                                            procs=thread.procs, live=False, role=dest.role)
            self._send(dest, self._edit, dest, summary, keyboard, thread, trio.Event(), fallback=False)

    # --- a mute or an ack from one chat, shown in the others -------------------------------------------------------

    async def acknowledged(self, host_id: int, metric: str, series: str, by: str) -> None:
        """Someone acknowledged this alert: every receiver's message says who, and loses its Ack button."""
        keys = [tkey for tkey in self._threads if tkey[:3] == (host_id, metric, series)]
        for tkey in keys:
            self._threads[tkey].acked = True
        await self._annotate(host_id, keys, lambda: _("✔️ Acknowledged by {who}", who=html.escape(by)))

    async def muted(self, host_id: int, until: float, by: str) -> None:
        """Someone muted the host: every live alert message of it says who, and for how long."""
        minutes = max(1, round((until - self._clock()) / 60))
        await self._annotate(host_id, [tkey for tkey in self._threads if tkey[0] == host_id],
                             lambda: _("🔕 Muted by {who} for {minutes} min", who=html.escape(by), minutes=minutes))

    async def _annotate(self, host_id: int, keys: Sequence[ThreadKey], note: Callable[[], str]) -> None:
        """`note` makes the note: called in each receiver's language."""
        host = await self._db.read(store.host_by_id, host_id)
        if host is None:
            return
        dests = {dest.chat_id: dest for dest in await self._host_receivers(host.owner, host_id)}
        for tkey in keys:
            thread = self._threads.get(tkey)
            dest = dests.get(tkey[3])
            if thread is None or dest is None:
                continue
            with i18n.speaking(self._speaks(dest, host.owner)):
                thread.notes.append(note())
                keyboard = views.alert_keyboard(host_id, thread.alert_id, tkey[1], chart=not thread.photo,
                                                procs=thread.procs, live=True, role=dest.role, acked=thread.acked)
            self._send(dest, self._show_notes, dest.chat_id, thread, keyboard)

    async def _show_notes(self, chat_id: int, thread: _Thread, keyboard: views.Keyboard | None, **topic: Any) -> Any:
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
            if chat_id < 0 and chat_is_gone(exc.error_code, exc.description):
                raise
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

    async def _reply(self, dest: Dest, text: str, keyboard: views.Keyboard | None, thread: _Thread | None,
                     **topic: Any) -> Any:
        return await self._api.send_message(dest.chat_id, text, reply_markup=keyboard,
                                            reply_to=self._reply_to(thread, dest.chat_id),
                                            disable_notification=dest.silent, **topic)

    async def _edit(self, dest: Dest, summary: str, keyboard: views.Keyboard | None, thread: _Thread | None,
                    edited: trio.Event, *, fallback: bool = True, **topic: Any) -> Any:
        """Edit the alert's message to `summary` (setting `edited`); if Telegram refuses, a new message (which
        notifies by itself, so no reply follows) unless not `fallback`. `topic`: the thread_id of a new message."""
        chat_id = dest.chat_id
        message_id = self._reply_to(thread, chat_id)
        if thread is not None and message_id is not None:
            try:
                if thread.photo:
                    result = await self._api.edit_message_caption(chat_id, message_id, summary,
                                                                  reply_markup=keyboard)
                else:
                    result = await self._api.edit_message_text(chat_id, message_id, summary, reply_markup=keyboard)
            except TelegramRejected as exc:
                if chat_id < 0 and chat_is_gone(exc.error_code, exc.description):
                    raise
                log.info("alert message %d in chat %d cannot be edited (%s): its end goes as a new message",
                         message_id, chat_id, exc.description)
            else:
                edited.set()
                return result
        return await self._api.send_message(chat_id, summary, reply_markup=keyboard, **topic) if fallback else None

    async def _reply_if(self, edited: trio.Event, dest: Dest, text: str, thread: _Thread | None,
                        **topic: Any) -> Any:
        # Not edited: a new message said it ended, and that one notified already.
        return await self._reply(dest, text, None, thread, **topic) if edited.is_set() else None

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
