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
role was removed gets nothing more of the host, not even the end of an alert they saw start. A group that refuses a
send because the bot is no longer in it (403) is reported to `chat_gone` (the bindings go there, once), and never
retried. A ServerDown report names several of an owner's hosts:
it goes to the owner alone.

Storms are folded (mbot/telegram/alert_fold.py, MBOT_ALERT_GROUP_WAIT): a Firing, Offline or DiskFull waits in its
chat's batch (a group's: per forum topic) until the wait after the batch's first start; then a batch of one goes out
as above, and a batch of several as ONE message, a line per alert and a button per host (its card). Each folded
alert is a thread of that message: its reminders reply to it, and its end edits its line (✅). The ends of one folded
message wait the same way and go out together: one edit and one reply listing them (when the server's network comes
back, its hosts all come back within seconds). Ends of alerts told alone, reminders and mute ends never wait. An
event about an alert still held (its end, a reminder) sends the held batch first, so nothing overtakes its start.

Flapping is damped (mbot/telegram/alert_flap.py): the third start of one alert within 30 minutes becomes one
"flapping" message, the thread of its lives from then on, which send nothing until it has been steady for 30
minutes; then that message is edited and a reply says it is steady (or, still in trouble, the alert is told anew).
With several receivers: the flap decision is made once per alert (a damped start or end reaches no chat; the
"flapping" and "steady" messages go to every chat the host's alerts go to); starts wait per receiving chat, so a
storm is one folded message in each chat, its text in that chat's language, its head counting the hosts that chat
gets alerts of; a folded alert's end edits its line in each chat's fold. Disk-full forecasts (DiskFull,
DiskFullOver) go to every receiver like the engine's alerts; a rule deleted with /delalert ends its alerts' messages
in every chat.

The message_id of an alert's message comes back through the outbox's `on_sent`, which runs before the next message
to that chat goes out; reminders and ends read it when they are sent, so none of this waits for Telegram, and per
chat order keeps a quick end behind its start. The ids are stored (`alert_messages`), so a restart keeps the threads.
"""
from __future__ import annotations

import html
import json
import logging
import math
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import trio

from .. import access, charts, forecast, i18n, plotting, processes, store
from ..alerts import BackOnline, Event, Firing, HostEvent, MuteEnded, Offline, Reminder, Resolved
from ..config import Settings
from ..durations import format_duration
from ..forecast import METRIC as FORECAST, DiskFull, DiskFullOver, ForecastEvent
from ..i18n import _
from ..model import Host, StoredSnapshot
from ..store import Database
from ..writer import Writer
from . import alert_text, views
from .alert_flap import FLAPPING, STEADY_BAD, STEADY_OK, TELL, FlapDamper
from .alert_fold import Batches, Fold, ends_text, head
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
BatchKey = tuple[int, int | None]  # (chat id, forum topic): where a batch of starts goes


@dataclass(eq=False)
class _Thread:
    """An alert's life in one chat, while it lasts."""

    alert_id: int  # its alert_messages row
    chat_id: int
    message_id: int | None = None  # None until Telegram took the message (or if it never did)
    photo: bool = False
    procs: bool = False  # processes were captured: it has a Processes button
    thread_id: int | None = None  # the forum topic of a group
    fold: Fold | None = None  # told in a folded message (one for several alerts), as one of its lines
    text: str | None = None  # what it says (None after a restart): a mute or an ack elsewhere is added to it
    notes: list[str] = field(default_factory=list)
    acked: bool = False  # someone acknowledged it: no Ack button any more


@dataclass(frozen=True)
class _RuleDeleted:
    """/delalert removed a rule while it may be firing: its alerts' messages say so, without buttons."""

    host_id: int
    metric: str
    host_name: str


@dataclass(frozen=True)
class _Held:
    """An event waiting in a batch (mbot/telegram/alert_fold.py), for one receiving chat."""

    text: str  # said in the chat's language
    event: Firing | Offline | DiskFull | Resolved | BackOnline | DiskFullOver
    key: Key
    dest: Dest
    owner: int  # the host's owner: a group speaks their language
    thread: _Thread | None = None  # an end's: the folded alert it ends


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


def _key(event: Event | ForecastEvent) -> Key | None:
    if isinstance(event, (Firing, Reminder, Resolved)):
        return event.host_id, event.rule.metric, event.series
    if isinstance(event, (DiskFull, DiskFullOver)):
        return event.host_id, FORECAST, event.series
    if isinstance(event, (Offline, BackOnline)):
        return event.host_id, OFFLINE, ""
    return None


def _received(conn: sqlite3.Connection, chat_id: int) -> list[Host]:
    """The hosts whose alerts a chat gets: a person's own and those shared with them; a group's bound ones."""
    if chat_id > 0:
        return [host for host, role in store.hosts_of_user(conn, chat_id) if access.allows(role, "alerts")]
    found = [(b, store.host_by_id(conn, b.host_id)) for b in store.bindings_of_chat(conn, chat_id)]
    return [host for b, host in found if host is not None and b.bound_by == host.owner]


def _fold_hosts(conn: sqlite3.Connection, chat_id: int, ids: set[int]) -> tuple[dict[int, Host | None], int]:
    """The hosts of a folded message, and how many hosts the chat gets alerts of (not revoked, ever connected)."""
    watched = sum(1 for host in _received(conn, chat_id) if host.revoked is None and host.last_seen is not None)
    return {host_id: store.host_by_id(conn, host_id) for host_id in ids}, watched


def _set_sent(conn: sqlite3.Connection, rows: list[tuple[int, int, int | None, bool]]) -> None:
    for alert_id, chat_id, message_id, photo in rows:
        assert message_id is not None
        store.set_alert_message_sent(conn, alert_id, chat_id, message_id, photo)


def _host_names(conn: sqlite3.Connection, ids: set[int]) -> dict[int, str]:
    return {host_id: host.name for host_id in ids if (host := store.host_by_id(conn, host_id)) is not None}


def _ended(event: Resolved | BackOnline | DiskFullOver, host_name: str) -> str:
    return forecast.ended(event, host_name) if isinstance(event, DiskFullOver) else alert_text.ended(event, host_name)


def _subject(key: Key, name: str) -> str:
    """Who flaps, for the flapping messages: "box1", or "box1: CPU"."""
    return name if key[1] == OFFLINE else f"{name}: {alert_text.series_label(key[2])}"


def _captured(snapshot: StoredSnapshot | None, host: Host, now: float) -> str | None:
    """The processes to keep with an alert: what a Processes button shows (the top LIST of each ranking)."""
    if snapshot is None or not processes.is_fresh(snapshot, host, now):
        return None
    kept: dict[int, dict[str, Any]] = {}
    for field_, _ in processes.RANKINGS:
        for item in processes.ranked(snapshot.items, field_, processes.LIST):
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
        self._queue: deque[tuple[int, str, Event | ForecastEvent | _RuleDeleted, Sequence[HostEvent]]] = deque()
        self._sent: list[_Thread] = []  # message ids to store
        self._dropped: list[_Thread] = []  # copies in chats that no longer get the host's alerts: rows to close
        # Charts drawn in this pass (event id -> PNG or None): an event's chart is drawn once for all its chats.
        self._pngs: dict[int, bytes | None] = {}
        self._wake = trio.Event()
        # Starts per chat (and topic), and ends per folded message, waiting for MBOT_ALERT_GROUP_WAIT.
        self._starts: Batches[BatchKey, _Held] = Batches(settings.alert_group_wait)
        self._ends: Batches[int, _Held] = Batches(settings.alert_group_wait)  # by fold id
        # Flapping alerts (mbot/telegram/alert_flap.py, one decision per alert whatever its chats), and the latest
        # start of each while it is kept quiet (owner, text, event).
        self._flaps: FlapDamper[Key] = FlapDamper()
        self._quieted: dict[Key, tuple[int, str, Firing | Offline | DiskFull]] = {}

    def rule_deleted(self, host_id: int, metric: str, host_name: str) -> None:
        """/delalert: the rule's alerts that are still told as firing end in their messages, in every chat (in
        order with the events before it)."""
        self._queue.append((0, "", _RuleDeleted(host_id, metric, host_name), ()))
        self._wake.set()

    def clock_moved(self) -> None:
        """Re-check the batches' deadlines now: for a clock that jumps (tests move time instead of waiting)."""
        self._wake.set()

    def notify(self, owner: int, text: str, event: Event | ForecastEvent, group: Sequence[HostEvent] = (),
               /) -> None:
        """mbot.alerting's Notify: `text` is the event's escaped HTML in the owner's language (alert_text.describe,
        describe_group for a `group`, or forecast.describe)."""
        if len(self._queue) >= MAX_QUEUED:
            log.warning("alert delivery is %d events behind: dropped the oldest", MAX_QUEUED)
            self._queue.popleft()
        self._queue.append((owner, text, event, group))
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rows = await self._db.read(store.open_alert_messages)
        folds = {}
        for fold_id, body in (await self._db.read(store.alert_folds)).items():
            try:
                fold = Fold.from_dict(json.loads(body), fold_id)
            except (ValueError, TypeError, KeyError):
                log.warning("folded alert message %d is unreadable: its alerts' ends get messages of their own",
                            fold_id)
                continue
            folds.update({line[0]: fold for line in fold.lines})
        for row in rows:
            if row.chat_id is not None:
                self._threads[row.host_id, row.metric, row.series, row.chat_id] = _Thread(
                    row.id, row.chat_id, row.message_id, row.photo, row.procs is not None, row.thread_id,
                    folds.get(row.id))
        task_status.started()
        try:
            await self._loop()
        finally:
            # Message ids that came back just before a shutdown: kept, or the next start could not end their alerts
            # in their own messages (the writer outlives this task).
            with trio.move_on_after(5, shield=True):
                if self._sent:
                    await self._store_sent()

    async def _store_sent(self) -> None:
        sent, self._sent = self._sent, []
        try:
            await self._writer.call(_set_sent, [(t.alert_id, t.chat_id, t.message_id, t.photo) for t in sent])
        except Exception:  # the threads live on in memory; only a restart would lose them
            log.exception("could not store the message ids of alerts %s", [t.alert_id for t in sent])

    async def _loop(self) -> None:
        while True:
            if not self._queue and not self._sent and not self._dropped:
                deadline = min((d for d in (self._starts.next_deadline(), self._ends.next_deadline(),
                                            self._flaps.next_deadline()) if d is not None), default=None)
                with trio.move_on_after(math.inf if deadline is None else max(0.0, deadline - self._clock())):
                    await self._wake.wait()
                self._wake = trio.Event()
            await self._due()
            if self._sent:
                await self._store_sent()
            while self._dropped:
                thread = self._dropped.pop()
                try:
                    await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
                except Exception:  # left open: the next alert of the kind in that chat closes it
                    log.exception("could not close alert %d", thread.alert_id)
            if self._queue:
                owner, text, event, group = self._queue.popleft()
                self._pngs.clear()
                try:
                    if isinstance(event, _RuleDeleted):
                        await self._rule_deleted(event)
                    else:
                        await self._event(owner, text, event, group)
                except Exception:  # one event that cannot go out must not hold up the others
                    log.exception("could not deliver an alert of chat %d", owner)

    def drop_chat(self, chat_id: int, host_id: int | None = None) -> None:
        """A group no longer gets these alerts (the host unbound there, or the bot left it): its copies of the
        alerts still open are left as they are and no longer followed."""
        for key in [k for k in self._threads if k[3] == chat_id and host_id in (None, k[0])]:
            self._dropped.append(self._threads.pop(key))
        self._wake.set()

    # --- who gets what, in which language ------------------------------------------------------------------------

    async def _receivers(self, owner: int, event: Event | ForecastEvent) -> list[Dest]:
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

    async def _say(self, owner: int, text: str, event: Event | ForecastEvent, group: Sequence[HostEvent]) -> str:
        """The event's text in the current language: `text` (mbot.alerting made it in the owner's language), or
        said again for a receiver who reads another."""
        host_id = getattr(event, "host_id", None)
        if i18n.current() == self._language(owner) or not isinstance(host_id, int):
            return text
        host = await self._db.read(store.host_by_id, host_id)
        name = host.name if host is not None else f"host {host_id}"
        if isinstance(event, (DiskFull, DiskFullOver)):
            return html.escape(forecast.describe(event, name))
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

    # --- per event ---------------------------------------------------------------------------------------------

    async def _event(self, owner: int, text: str, event: Event | ForecastEvent, group: Sequence[HostEvent]) -> None:
        """One event: whether it is told at all (flapping is decided once per alert), then told in each chat."""
        key = None if group else _key(event)
        if key is not None and isinstance(event, (Firing, Offline, DiskFull)):
            how = self._flaps.start(key, self._clock())  # (the time it is taken from the queue: before any await)
            if how != TELL:
                self._quieted[key] = (owner, text, event)
                if how == FLAPPING:
                    log.info("alert %s is flapping: quiet until steady", key)
                    await self._each(await self._receivers(owner, event), owner,
                                     partial(self._start_flapping, key=key))
                return
        elif key is not None and isinstance(event, (Resolved, BackOnline, DiskFullOver)):
            if self._flaps.end(key, self._clock()) != TELL:
                return  # flapping: quiet, its threads are the flapping messages'
        dests = await self._receivers(owner, event)

        async def tell(dest: Dest) -> None:
            said = await self._say(owner, text, event, group)
            if group:
                await self._deliver_group(dest, owner, said, group)
            else:
                await self._deliver(dest, owner, said, event)
        await self._each(dests, owner, tell)
        for end in group or (event,):
            if isinstance(end, (Resolved, BackOnline, DiskFullOver)) and (end_key := _key(end)) is not None:
                self._forget(end_key, dests)

    async def _each(self, dests: Sequence[Dest], owner: int, deliver: Callable[[Dest], Any]) -> None:
        """`deliver` for each chat, in its language; one chat that fails does not stop the others."""
        for dest in dests:
            try:
                with i18n.speaking(self._speaks(dest, owner)):
                    await deliver(dest)
            except Exception:
                log.exception("could not deliver an alert to chat %d", dest.chat_id)

    async def _due(self) -> None:
        """What waited long enough goes out, each batch on its own: the batches are taken out of their holders
        before any is sent, so one that fails must not take the ones after it down with it."""
        now = self._clock()
        self._pngs.clear()
        due = [partial(self._end_fold, ends) for _fold_id, ends in self._ends.due(now)]
        due += [partial(self._start_batch, starts) for _chat, starts in self._starts.due(now)]
        due += [partial(self._steady, key, how, count) for key, how, count in self._flaps.due(now)]
        for send in due:
            try:
                await send()
            except Exception:
                log.exception("could not deliver held alerts")

    async def _before(self, chat_id: int, keys: Sequence[Key]) -> None:
        """Send what is held for this chat that these keys' event must not overtake: its starts, the ends of the
        folded messages of the alerts these keys name."""
        for batch in [b for b in self._starts.groups() if b[0] == chat_id]:
            if any(held.key in keys for held in self._starts.items(batch)):
                await self._start_batch(self._starts.take(batch))
        for fold_id in self._ends.groups():
            if any(held.key in keys and held.dest.chat_id == chat_id for held in self._ends.items(fold_id)):
                await self._end_fold(self._ends.take(fold_id))

    async def _deliver(self, dest: Dest, owner: int, text: str, event: Event | ForecastEvent) -> None:
        key = _key(event)
        if key is not None:
            await self._before(dest.chat_id, [key])
        elif isinstance(event, MuteEnded):
            held = [h.key for b in self._starts.groups() if b[0] == dest.chat_id for h in self._starts.items(b)]
            await self._before(dest.chat_id, [k for k in (*(t[:3] for t in self._threads), *held)
                                              if k[0] == event.host_id])
        if key is None:  # MuteEnded, ServerDown: a message of its own
            self._send(dest, self._api.send_message, dest.chat_id, text, disable_notification=dest.silent)
            if isinstance(event, MuteEnded):
                await self._ended_while_muted(dest, event)
        elif isinstance(event, (Firing, Offline, DiskFull)):
            if self._starts.wait > 0:
                self._starts.add((dest.chat_id, dest.thread_id), _Held(text, event, key, dest, owner), self._clock())
            else:
                await self._start(dest, text, event, key)
        elif isinstance(event, Reminder):
            thread = self._threads.get((*key, dest.chat_id))
            keyboard = views.alert_keyboard(event.host_id, None if thread is None else thread.alert_id,
                                            event.rule.metric, chart=False, procs=False, live=True, role=dest.role)
            self._send(dest, self._reply, dest, text, keyboard, thread)
        else:
            assert isinstance(event, (Resolved, BackOnline, DiskFullOver))
            await self._end(dest, owner, text, event, key)

    async def _deliver_group(self, dest: Dest, owner: int, text: str, group: Sequence[HostEvent]) -> None:
        await self._before(dest.chat_id, [key for event in group if (key := _key(event)) is not None])
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
            await self._quiet_end(dest, thread, key, html.escape(alert_text.ended(end, name)))
        self._send(dest, self._api.send_message, dest.chat_id, text,
                   reply_markup=views.keyboard([views.containers_button(host_id)]), disable_notification=dest.silent)

    async def _start(self, dest: Dest, text: str, event: Firing | Offline | DiskFull, key: Key) -> None:
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
            if id(event) not in self._pngs:
                self._pngs[id(event)] = await self._chart(host, metric)
            png = self._pngs[id(event)]
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

    async def _end(self, dest: Dest, owner: int, text: str, event: Resolved | BackOnline | DiskFullOver,
                   key: Key) -> None:
        thread = self._threads.pop((*key, dest.chat_id), None)
        if thread is not None:
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            if thread.fold is not None and thread.fold.id is not None:
                held = _Held(text, event, key, dest, owner, thread)
                if self._ends.wait > 0:
                    self._ends.add(thread.fold.id, held, self._clock())
                else:
                    await self._end_fold([held])
                return
        host = await self._db.read(store.host_by_id, event.host_id)
        name = host.name if host is not None else f"host {event.host_id}"
        summary = html.escape(_ended(event, name))
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
        # (A disk forecast is not the engine's: it lives on through a mute, see Alerting._forecast.)
        ended = [tkey for tkey in self._threads if tkey[0] == event.host_id and tkey[3] == dest.chat_id
                 and tkey[:3] not in live and tkey[1] != FORECAST]
        if not ended:
            return
        host = await self._db.read(store.host_by_id, event.host_id)
        name = host.name if host is not None else f"host {event.host_id}"
        for tkey in ended:
            thread = self._threads.pop(tkey)
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            summary = html.escape(alert_text.ended_while_muted(name, None if tkey[1] == OFFLINE else tkey[2]))
            await self._quiet_end(dest, thread, tkey[:3], summary)

    async def _rule_deleted(self, deleted: _RuleDeleted) -> None:
        def named(key: Key) -> bool:
            return key[:2] == (deleted.host_id, deleted.metric)
        held = [(b[0], h.key) for b in self._starts.groups() for h in self._starts.items(b) if named(h.key)]
        for chat_id in {tkey[3] for tkey in self._threads if named(tkey[:3])} | {chat for chat, _k in held}:
            await self._before(chat_id, [tkey[:3] for tkey in self._threads if named(tkey[:3])]
                               + [k for chat, k in held if chat == chat_id])
        host = await self._db.read(store.host_by_id, deleted.host_id)
        owner = host.owner if host is not None else 0
        dests = {dest.chat_id: dest for dest in await self._host_receivers(owner, deleted.host_id)}
        for tkey in [tkey for tkey in self._threads if named(tkey[:3])]:
            key: Key = tkey[:3]
            self._flaps.forget(key)
            self._quieted.pop(key, None)
            thread = self._threads.pop(tkey)
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            dest = dests.get(thread.chat_id)
            if dest is None:  # a chat no longer told of the host
                continue
            with i18n.speaking(self._speaks(dest, owner)):
                summary = html.escape(_("🗑 {host}: {what}: its alert was deleted (/delalert)",
                                        host=deleted.host_name, what=alert_text.series_label(key[2])))
                if thread.fold is not None:
                    await self._quiet_end(dest, thread, key, summary)
                else:  # no keyboard: the message's buttons go with the rule
                    self._send(dest, self._edit, dest, summary, None, thread, trio.Event(), fallback=False)

    async def _quiet_end(self, dest: Dest, thread: _Thread, key: Key, summary: str) -> None:
        """The alert's message (its line, if folded) says it ended; no reply, no new message if the edit fails."""
        if thread.fold is not None:
            await self._fold_ended(thread.fold, [(thread.alert_id, summary)])
            self._send(dest, self._edit, dest, thread.fold.text(), thread.fold.keyboard(), thread, trio.Event(),
                       fallback=False)
            return
        keyboard = views.alert_keyboard(key[0], thread.alert_id, key[1], chart=not thread.photo,
                                        procs=thread.procs, live=False, role=dest.role)
        self._send(dest, self._edit, dest, summary, keyboard, thread, trio.Event(), fallback=False)

    # --- flapping (mbot/telegram/alert_flap.py) -----------------------------------------------------------------

    async def _start_flapping(self, dest: Dest, *, key: Key) -> None:
        """Instead of its FLAP_STARTS-th start: one message in the chat that says it flaps, the thread of its quiet
        lives there."""
        await self._before(dest.chat_id, [key])
        host = await self._db.read(store.host_by_id, key[0])
        text = html.escape(_("🔁 {subject} is flapping: {n} alerts in {window}; quiet until it has been steady for "
                             "{steady}", subject=_subject(key, host.name if host is not None else f"host {key[0]}"),
                             n=self._flaps.count(key), window=format_duration(self._flaps.window),
                             steady=format_duration(self._flaps.steady)))
        alert_id = await self._writer.call(store.add_alert_message, key[0], key[1], key[2], self._clock(), None,
                                           dest.chat_id, dest.thread_id)
        thread = self._threads[(*key, dest.chat_id)] = _Thread(alert_id, dest.chat_id, thread_id=dest.thread_id,
                                                               text=text)
        keyboard = views.alert_keyboard(key[0], None, key[1], chart=False, procs=False, live=True, role=dest.role)
        self._send(dest, self._api.send_message, dest.chat_id, text, reply_markup=keyboard,
                   disable_notification=dest.silent, on_sent=partial(self._on_sent, thread))

    async def _steady(self, key: Key, how: str, count: int) -> None:
        quieted = self._quieted.pop(key, None)
        host = await self._db.read(store.host_by_id, key[0])
        owner = host.owner if host is not None else quieted[0] if quieted is not None else 0
        name = host.name if host is not None else f"host {key[0]}"
        dests = await self._host_receivers(owner, key[0]) if host is not None else []
        by_chat = {dest.chat_id: dest for dest in dests}
        steady = format_duration(self._flaps.steady)
        for tkey in [tkey for tkey in self._threads if tkey[:3] == key]:
            thread = self._threads.pop(tkey)
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            dest = by_chat.get(thread.chat_id)
            if dest is None:  # a chat no longer told of the host
                continue
            with i18n.speaking(self._speaks(dest, owner)):
                subject = _subject(key, name)
                if how == STEADY_OK:
                    edited = trio.Event()
                    self._send(dest, self._edit, dest, html.escape(_(
                        "✅ {subject} was flapping ({n} alerts); steady again for {steady}", subject=subject, n=count,
                        steady=steady)), None, thread, edited)
                    self._send(dest, self._reply_if, edited, dest,
                               html.escape(_("{subject} is steady again", subject=subject)), thread)
                else:
                    self._send(dest, self._edit, dest, html.escape(_(
                        "🔁 {subject} was flapping ({n} alerts) and has now been in trouble for {steady}: see below",
                        subject=subject, n=count, steady=steady)), None, thread, trio.Event(), fallback=False)
        if how == STEADY_BAD and quieted is not None:  # settled in trouble: told as the alert it is, in every chat
            owner, text, event = quieted

            async def tell(dest: Dest) -> None:
                await self._start(dest, await self._say(owner, text, event, ()), event, key)
            await self._each(dests, owner, tell)

    # --- storms folded (mbot/telegram/alert_fold.py) -----------------------------------------------------------

    async def _start_batch(self, starts: list[_Held]) -> None:
        """One chat's starts (one topic's), in that chat's language."""
        dest, owner = starts[0].dest, starts[0].owner
        with i18n.speaking(self._speaks(dest, owner)):
            if len(starts) == 1:
                only = starts[0]
                assert isinstance(only.event, (Firing, Offline, DiskFull))
                await self._start(dest, only.text, only.event, only.key)
                return
            now = self._clock()
            ids = {held.event.host_id for held in starts}
            hosts, watched = await self._db.read(_fold_hosts, dest.chat_id, ids)
            names = {host_id: host.name if (host := hosts.get(host_id)) is not None else f"host {host_id}"
                     for host_id in ids}
            events = [held.event for held in starts if isinstance(held.event, (Firing, Offline, DiskFull))]
            fold = Fold(head(events, watched, self._settings.tz), [], list(dict.fromkeys(
                (held.event.host_id, names[held.event.host_id]) for held in starts)))
            threads = []
            for held in starts:
                alert_id = await self._writer.call(store.add_alert_message, held.key[0], held.key[1], held.key[2],
                                                   now, None, dest.chat_id, dest.thread_id)
                fold.lines.append([alert_id, held.text, None])
                thread = self._threads[(*held.key, dest.chat_id)] = _Thread(alert_id, dest.chat_id,
                                                                            thread_id=dest.thread_id, fold=fold)
                threads.append(thread)
            fold.id = await self._writer.call(store.add_alert_fold, json.dumps(fold.as_dict()))
            log.info("%d alerts to chat %d folded into one message", len(starts), dest.chat_id)
            self._send(dest, self._api.send_message, dest.chat_id, fold.text(), reply_markup=fold.keyboard(),
                       disable_notification=dest.silent, on_sent=partial(self._on_fold_sent, threads))

    async def _fold_ended(self, fold: Fold, lines: Sequence[tuple[int, str]]) -> None:
        for alert_id, summary in lines:
            fold.end(alert_id, summary)
        if fold.id is not None:
            await self._writer.call(store.set_alert_fold, fold.id, json.dumps(fold.as_dict()) if fold.open() else None)

    async def _end_fold(self, ends: list[_Held]) -> None:
        """Ends of the alerts of one folded message (in one chat): its lines edited at once, one reply that lists
        them."""
        first = ends[0].thread
        assert first is not None and first.fold is not None
        fold, dest = first.fold, ends[0].dest
        with i18n.speaking(self._speaks(dest, ends[0].owner)):
            names = await self._db.read(_host_names, {held.key[0] for held in ends})
            summaries = []
            for held in ends:
                assert isinstance(held.event, (Resolved, BackOnline, DiskFullOver)) and held.thread is not None
                name = names.get(held.key[0]) or f"host {held.key[0]}"
                summaries.append((held.thread.alert_id, html.escape(_ended(held.event, name))))
            await self._fold_ended(fold, summaries)
            edited = trio.Event()
            self._send(dest, self._edit, dest, fold.text(), fold.keyboard(), first, edited)
            self._send(dest, self._reply_if, edited, dest, ends_text([h.text for h in ends]), first)

    def _on_fold_sent(self, threads: list[_Thread], message: Any) -> None:
        for thread in threads:
            self._on_sent(thread, message)

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
            if thread is None or dest is None or thread.fold is not None:  # (a folded message has no notes)
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
