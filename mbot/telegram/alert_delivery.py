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

Storms are folded (mbot/telegram/alert_fold.py, MBOT_ALERT_GROUP_WAIT): a Firing or Offline waits in its chat's
batch until the wait after the batch's first start; then a batch of one goes out as above, and a batch of several as
ONE message, a line per alert and a button per host. Each folded alert is a thread of that message: its reminders
reply to it, and its end edits its line (✅). The ends of one folded message wait the same way and go out together:
one edit and one reply listing them (when the server's network comes back, its hosts all come back within seconds).
Ends of alerts told alone, reminders and mute ends never wait. An event about an alert still held (its end, a
reminder) sends the held batch first, so nothing overtakes its start.

Flapping is damped (mbot/telegram/alert_flap.py): the third start of one alert within 30 minutes becomes one
"flapping" message, the thread of its lives from then on, which send nothing until it has been steady for 30
minutes; then that message is edited and a reply says it is steady (or, still in trouble, the alert is told anew).

The message_id of an alert's message comes back through the outbox's `on_sent`, which runs before the next message
to that chat goes out; reminders and ends read it when they are sent, so none of this waits for Telegram, and per
chat order keeps a quick end behind its start. The ids are stored (`alert_messages`), so a restart keeps the threads.
"""
from __future__ import annotations

import html
import json
import logging
import math
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import trio

from .. import charts, forecast, plotting, processes, store
from ..i18n import _
from ..alerts import BackOnline, Event, Firing, HostEvent, MuteEnded, Offline, Reminder, Resolved
from ..config import Settings
from ..durations import format_duration
from ..forecast import METRIC as FORECAST, DiskFull, DiskFullOver, ForecastEvent
from ..model import Host, StoredSnapshot
from ..store import Database
from ..writer import Writer
from . import alert_text, views
from .alert_flap import FLAPPING, STEADY_BAD, STEADY_OK, TELL, FlapDamper
from .alert_fold import Batches, Fold, ends_text, head
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
    fold: Fold | None = None  # told in a folded message (one for several alerts), as one of its lines


@dataclass(frozen=True)
class _RuleDeleted:
    """/delalert removed a rule while it may be firing: its alerts' messages say so, without buttons."""

    host_id: int
    metric: str
    host_name: str


@dataclass(frozen=True)
class _Held:
    """An event waiting in a batch (mbot/telegram/alert_fold.py)."""

    text: str
    event: Firing | Offline | DiskFull | Resolved | BackOnline | DiskFullOver
    key: Key
    thread: _Thread | None = None  # an end's: the folded alert it ends


def _key(event: Event | ForecastEvent) -> Key | None:
    if isinstance(event, (Firing, Reminder, Resolved)):
        return event.host_id, event.rule.metric, event.series
    if isinstance(event, (DiskFull, DiskFullOver)):
        return event.host_id, FORECAST, event.series
    if isinstance(event, (Offline, BackOnline)):
        return event.host_id, OFFLINE, ""
    return None


def _fold_hosts(conn: Any, owner: int, ids: set[int]) -> tuple[dict[int, Host | None], int]:
    """The hosts of a folded message, and how many hosts the chat watches (not revoked, ever connected)."""
    watched = sum(1 for host in store.list_hosts(conn)
                  if host.owner == owner and host.revoked is None and host.last_seen is not None)
    return {host_id: store.host_by_id(conn, host_id) for host_id in ids}, watched


def _set_sent(conn: Any, rows: list[tuple[int, int, int | None, bool]]) -> None:
    for alert_id, chat_id, message_id, photo in rows:
        assert message_id is not None
        store.set_alert_message_sent(conn, alert_id, chat_id, message_id, photo)


def _host_names(conn: Any, ids: set[int]) -> dict[int, str]:
    return {host_id: host.name for host_id in ids if (host := store.host_by_id(conn, host_id)) is not None}


def _ended(event: Resolved | BackOnline | DiskFullOver, host_name: str) -> str:
    return forecast.ended(event, host_name) if isinstance(event, DiskFullOver) else alert_text.ended(event, host_name)


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
                 silent: Callable[[int], bool] = lambda chat_id: False) -> None:
        self._api = api
        self._outbox = outbox
        self._db = db
        self._writer = writer
        self._settings = settings
        self._clock = clock
        self._charts = chart_limiter
        self._silent = silent  # the user's quiet hours (mbot.quiet): what notifies goes without a sound then
        self._threads: dict[Key, _Thread] = {}
        self._queue: deque[tuple[int, str, Event | ForecastEvent | _RuleDeleted, Sequence[HostEvent]]] = deque()
        self._sent: list[_Thread] = []  # message ids to store
        self._wake = trio.Event()
        # Starts per chat, and ends per folded message, waiting for MBOT_ALERT_GROUP_WAIT (see the docstring).
        self._starts: Batches[int, _Held] = Batches(settings.alert_group_wait)
        self._ends: Batches[int, _Held] = Batches(settings.alert_group_wait)  # by fold id
        # Flapping alerts (mbot/telegram/alert_flap.py), and the latest start of each while it is kept quiet.
        self._flaps: FlapDamper[Key] = FlapDamper()
        self._quieted: dict[Key, tuple[int, str, Firing | Offline | DiskFull]] = {}

    def rule_deleted(self, owner: int, host_id: int, metric: str, host_name: str) -> None:
        """/delalert: the rule's alerts that are still told as firing end in their messages (in order with the
        events before it)."""
        self._queue.append((owner, "", _RuleDeleted(host_id, metric, host_name), ()))
        self._wake.set()

    def clock_moved(self) -> None:
        """Re-check the batches' deadlines now: for a clock that jumps (tests move time instead of waiting)."""
        self._wake.set()

    def notify(self, owner: int, text: str, event: Event | ForecastEvent, group: Sequence[HostEvent] = (),
               /) -> None:
        """mbot.alerting's Notify: `text` is the event's escaped HTML (alert_text.describe, or describe_group for
        a `group`)."""
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
                self._threads[row.host_id, row.metric, row.series] = _Thread(
                    row.id, row.chat_id, row.message_id, row.photo, row.procs is not None, folds.get(row.id))
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
            if not self._queue and not self._sent:
                deadline = min((d for d in (self._starts.next_deadline(), self._ends.next_deadline(),
                                            self._flaps.next_deadline()) if d is not None), default=None)
                with trio.move_on_after(math.inf if deadline is None else max(0.0, deadline - self._clock())):
                    await self._wake.wait()
                self._wake = trio.Event()
            try:
                await self._due()
            except Exception:  # held events that cannot go out must not stop the others
                log.exception("could not deliver held alerts")
            if self._sent:
                await self._store_sent()
            if self._queue:
                owner, text, event, group = self._queue.popleft()
                try:
                    if isinstance(event, _RuleDeleted):
                        await self._rule_deleted(event)
                    elif group:
                        await self._deliver_group(owner, text, group)
                    else:
                        await self._deliver(owner, text, event)
                except Exception:  # one event that cannot go out must not hold up the others
                    log.exception("could not deliver an alert to chat %d", owner)

    # --- per event ---------------------------------------------------------------------------------------------

    async def _due(self) -> None:
        now = self._clock()
        for _fold_id, ends in self._ends.due(now):
            await self._end_fold(ends)
        for owner, starts in self._starts.due(now):
            await self._start_batch(owner, starts)
        for key, how, count in self._flaps.due(now):
            await self._steady(key, how, count)

    async def _before(self, owner: int, keys: Sequence[Key]) -> None:
        """Send what is held that these keys' event must not overtake: the chat's starts, the ends of the folded
        messages of the alerts these keys name."""
        if any(held.key in keys for held in self._starts.items(owner)):
            await self._start_batch(owner, self._starts.take(owner))
        for fold_id in self._ends.groups():
            if any(held.key in keys for held in self._ends.items(fold_id)):
                await self._end_fold(self._ends.take(fold_id))

    async def _deliver(self, owner: int, text: str, event: Event | ForecastEvent) -> None:
        key = _key(event)
        if key is not None:
            await self._before(owner, [key])
        elif isinstance(event, MuteEnded):
            await self._before(owner, [k for k in (*self._threads, *(h.key for h in self._starts.items(owner)))
                                       if k[0] == event.host_id])
        if key is None:  # MuteEnded: a message of its own
            self._outbox.submit(owner, partial(self._api.send_message, owner, text,
                                               disable_notification=self._silent(owner)))
            if isinstance(event, MuteEnded):
                await self._ended_while_muted(owner, event)
        elif isinstance(event, (Firing, Offline, DiskFull)):
            how = self._flaps.start(key, self._clock())
            if how != TELL:
                self._quieted[key] = (owner, text, event)
                if how == FLAPPING:
                    await self._start_flapping(owner, event, key)
            elif self._starts.wait > 0:
                self._starts.add(owner, _Held(text, event, key), self._clock())
            else:
                await self._start(owner, text, event, key)
        elif isinstance(event, Reminder):
            thread = self._threads.get(key)
            keyboard = views.alert_keyboard(event.host_id, None if thread is None else thread.alert_id,
                                            event.rule.metric, chart=False, procs=False, live=True)
            self._outbox.submit(owner, partial(self._reply, owner, text, keyboard, thread))
        else:
            assert isinstance(event, (Resolved, BackOnline, DiskFullOver))
            if self._flaps.end(key, self._clock()) == TELL:
                await self._end(owner, text, event, key)
            # (flapping: quiet, its thread is the flapping message's)

    async def _deliver_group(self, owner: int, text: str, group: Sequence[HostEvent]) -> None:
        await self._before(owner, [key for event in group if (key := _key(event)) is not None])
        host_id = group[0].host_id
        ends = [(end, key) for end in group if isinstance(end, (Resolved, BackOnline))
                and (key := _key(end)) is not None and key in self._threads]
        if ends:
            host = await self._db.read(store.host_by_id, host_id)
            name = host.name if host is not None else f"host {host_id}"
        for end, key in ends:
            thread = self._threads.pop(key, None)
            if thread is None:  # named twice in the group (it flapped)
                continue
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            await self._quiet_end(owner, thread, key, html.escape(alert_text.ended(end, name)))
        self._outbox.submit(owner, partial(self._api.send_message, owner, text,
                                           reply_markup=views.keyboard([views.containers_button(host_id)]),
                                           disable_notification=self._silent(owner)))

    async def _start(self, owner: int, text: str, event: Firing | Offline | DiskFull, key: Key) -> None:
        now = self._clock()
        host = await self._db.read(store.host_by_id, event.host_id)
        metric = key[1]
        procs = None
        if host is not None and metric in views.PROCESS_METRICS:
            procs = _captured(await self._db.read(store.latest_snapshot, host.id, processes.KIND), host, now)
        alert_id = await self._writer.call(store.add_alert_message, event.host_id, metric, key[2], now, procs)
        thread = self._threads[key] = _Thread(alert_id, owner, procs=procs is not None)
        png = None
        if isinstance(event, Firing) and host is not None and len(text) <= CAPTION_LIMIT \
                and views.alert_charted(metric):
            png = await self._chart(host, metric)
        keyboard = views.alert_keyboard(event.host_id, alert_id, metric, chart=png is None, procs=thread.procs,
                                        live=True)
        on_sent = partial(self._on_sent, thread)
        if png is not None:
            thread.photo = True
            self._outbox.submit(owner, partial(self._api.send_photo, owner, png, text, keyboard,
                                               disable_notification=self._silent(owner)), on_sent=on_sent)
        else:
            self._outbox.submit(owner, partial(self._api.send_message, owner, text, reply_markup=keyboard,
                                               disable_notification=self._silent(owner)), on_sent=on_sent)

    async def _end(self, owner: int, text: str, event: Resolved | BackOnline | DiskFullOver, key: Key) -> None:
        thread = self._threads.pop(key, None)
        if thread is not None:
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            if thread.fold is not None and thread.fold.id is not None:
                held = _Held(text, event, key, thread)
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
                                            procs=thread.procs, live=False)
        edited = trio.Event()  # set when the alert's own message now says it ended: then a reply notifies
        self._outbox.submit(owner, partial(self._edit, owner, summary, keyboard, thread, edited))
        # Queued now, not once the edit went through: behind the edit and ahead of whatever comes next (the next
        # offline of a flapping host must not overtake its "back online").
        self._outbox.submit(owner, partial(self._reply_if, edited, owner, text, thread))

    async def _ended_while_muted(self, owner: int, event: MuteEnded) -> None:
        live = {(f.host_id, f.rule.metric, f.series) for f in event.still_firing}
        if event.offline_since is not None:
            live.add((event.host_id, OFFLINE, ""))
        # (A disk forecast is not the engine's: it lives on through a mute, see Alerting._forecast.)
        ended = [key for key in self._threads if key[0] == event.host_id and key not in live and key[1] != FORECAST]
        if not ended:
            return
        host = await self._db.read(store.host_by_id, event.host_id)
        name = host.name if host is not None else f"host {event.host_id}"
        for key in ended:
            thread = self._threads.pop(key)
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            summary = html.escape(alert_text.ended_while_muted(name, None if key[1] == OFFLINE else key[2]))
            await self._quiet_end(owner, thread, key, summary)

    async def _rule_deleted(self, deleted: _RuleDeleted) -> None:
        keys = [key for key in self._threads if key[:2] == (deleted.host_id, deleted.metric)]
        for owner in {self._threads[key].chat_id for key in keys}:
            await self._before(owner, keys)
        for key in [key for key in self._threads if key[:2] == (deleted.host_id, deleted.metric)]:
            self._flaps.forget(key)
            self._quieted.pop(key, None)
            thread = self._threads.pop(key)
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            summary = html.escape(_("🗑 {host}: {what}: its alert was deleted (/delalert)", host=deleted.host_name,
                                    what=alert_text.series_label(key[2])))
            if thread.fold is not None:
                await self._quiet_end(thread.chat_id, thread, key, summary)
            else:  # no keyboard: the message's buttons go with the rule
                self._outbox.submit(thread.chat_id, partial(self._edit, thread.chat_id, summary, None, thread,
                                                            trio.Event(), fallback=False))

    async def _quiet_end(self, owner: int, thread: _Thread, key: Key, summary: str) -> None:
        """The alert's message (its line, if folded) says it ended; no reply, no new message if the edit fails."""
        if thread.fold is not None:
            await self._fold_ended(thread.fold, [(thread.alert_id, summary)])
            self._outbox.submit(owner, partial(self._edit, owner, thread.fold.text(), thread.fold.keyboard(), thread,
                                               trio.Event(), fallback=False))
            return
        keyboard = views.alert_keyboard(key[0], thread.alert_id, key[1], chart=not thread.photo,
                                        procs=thread.procs, live=False)
        self._outbox.submit(owner, partial(self._edit, owner, summary, keyboard, thread, trio.Event(),
                                           fallback=False))

    # --- flapping (mbot/telegram/alert_flap.py) -----------------------------------------------------------------

    async def _subject(self, key: Key) -> str:
        """Who flaps, for the flapping messages: "box1", or "box1: CPU"."""
        host = await self._db.read(store.host_by_id, key[0])
        name = host.name if host is not None else f"host {key[0]}"
        return name if key[1] == OFFLINE else f"{name}: {alert_text.series_label(key[2])}"

    async def _start_flapping(self, owner: int, event: Firing | Offline | DiskFull, key: Key) -> None:
        """Instead of its FLAP_STARTS-th start: one message that says it flaps, the thread of its quiet lives."""
        alert_id = await self._writer.call(store.add_alert_message, key[0], key[1], key[2], self._clock(), None)
        thread = self._threads[key] = _Thread(alert_id, owner)
        text = _("🔁 {subject} is flapping: {n} alerts in {window}; quiet until it has been steady for {steady}",
                 subject=await self._subject(key), n=self._flaps.count(key),
                 window=format_duration(self._flaps.window), steady=format_duration(self._flaps.steady))
        log.info("alert %s is flapping: quiet until steady", key)
        keyboard = views.keyboard([views.button("🔕 Mute 1h", views.Callback("amute", (str(key[0]),)))])
        self._outbox.submit(owner, partial(self._api.send_message, owner, html.escape(text), reply_markup=keyboard,
                                           disable_notification=self._silent(owner)),
                            on_sent=partial(self._on_sent, thread))

    async def _steady(self, key: Key, how: str, count: int) -> None:
        quieted = self._quieted.pop(key, None)
        thread = self._threads.pop(key, None)
        subject = await self._subject(key)
        if thread is not None:
            await self._writer.call(store.resolve_alert_message, thread.alert_id, self._clock())
            steady = format_duration(self._flaps.steady)
            if how == STEADY_OK:
                edited = trio.Event()
                self._outbox.submit(thread.chat_id, partial(
                    self._edit, thread.chat_id, html.escape(_("✅ {subject} was flapping ({n} alerts); steady again "
                                                              "for {steady}", subject=subject, n=count,
                                                              steady=steady)), None, thread, edited))
                self._outbox.submit(thread.chat_id, partial(
                    self._reply_if, edited, thread.chat_id, html.escape(_("{subject} is steady again",
                                                                          subject=subject)), thread))
            else:
                self._outbox.submit(thread.chat_id, partial(
                    self._edit, thread.chat_id, html.escape(_("🔁 {subject} was flapping ({n} alerts) and has now "
                                                              "been in trouble for {steady}: see below",
                                                              subject=subject, n=count, steady=steady)),
                    None, thread, trio.Event(), fallback=False))
        if how == STEADY_BAD and quieted is not None:  # settled in trouble: told as the alert it is
            owner, text, event = quieted
            await self._start(owner, text, event, key)

    # --- storms folded (mbot/telegram/alert_fold.py) -----------------------------------------------------------

    async def _start_batch(self, owner: int, starts: list[_Held]) -> None:
        if len(starts) == 1:
            only = starts[0]
            assert isinstance(only.event, (Firing, Offline, DiskFull))
            await self._start(owner, only.text, only.event, only.key)
            return
        now = self._clock()
        ids = {held.event.host_id for held in starts}
        hosts, watched = await self._db.read(_fold_hosts, owner, ids)
        names = {host_id: host.name if (host := hosts.get(host_id)) is not None else f"host {host_id}"
                 for host_id in ids}
        events = [held.event for held in starts if isinstance(held.event, (Firing, Offline, DiskFull))]
        fold = Fold(head(events, watched, self._settings.tz), [], list(dict.fromkeys(
            (held.event.host_id, names[held.event.host_id]) for held in starts)))
        threads = []
        for held in starts:
            alert_id = await self._writer.call(store.add_alert_message, held.key[0], held.key[1], held.key[2], now,
                                               None)
            fold.lines.append([alert_id, held.text, None])
            thread = self._threads[held.key] = _Thread(alert_id, owner, fold=fold)
            threads.append(thread)
        fold.id = await self._writer.call(store.add_alert_fold, json.dumps(fold.as_dict()))
        log.info("%d alerts to chat %d folded into one message", len(starts), owner)
        self._outbox.submit(owner, partial(self._api.send_message, owner, fold.text(), reply_markup=fold.keyboard(),
                                           disable_notification=self._silent(owner)),
                            on_sent=partial(self._on_fold_sent, threads))

    async def _fold_ended(self, fold: Fold, lines: Sequence[tuple[int, str]]) -> None:
        for alert_id, summary in lines:
            fold.end(alert_id, summary)
        if fold.id is not None:
            await self._writer.call(store.set_alert_fold, fold.id, json.dumps(fold.as_dict()) if fold.open() else None)

    async def _end_fold(self, ends: list[_Held]) -> None:
        """Ends of the alerts of one folded message: its lines edited at once, one reply that lists them."""
        first = ends[0].thread
        assert first is not None and first.fold is not None
        fold, owner = first.fold, first.chat_id
        names = await self._db.read(_host_names, {held.key[0] for held in ends})
        summaries = []
        for held in ends:
            assert isinstance(held.event, (Resolved, BackOnline, DiskFullOver)) and held.thread is not None
            name = names.get(held.key[0]) or f"host {held.key[0]}"
            summaries.append((held.thread.alert_id, html.escape(_ended(held.event, name))))
        await self._fold_ended(fold, summaries)
        edited = trio.Event()
        self._outbox.submit(owner, partial(self._edit, owner, fold.text(), fold.keyboard(), first, edited))
        self._outbox.submit(owner, partial(self._reply_if, edited, owner, ends_text([h.text for h in ends]), first))

    def _on_fold_sent(self, threads: list[_Thread], message: Any) -> None:
        for thread in threads:
            self._on_sent(thread, message)

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
