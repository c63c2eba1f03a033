"""Routes Telegram updates to service calls and views. Holds no business logic of its own.

Who may talk to it is mbot.users: ALLOWED_USERS plus the `users` table (claim and invite codes); everyone else gets
one polite refusal. Every command and every button re-checks, on the server and at the moment it is made, that the
sender's role on the host (its owner, or someone it was shared with: mbot.access) allows it (service.resolve,
service.host_for); a forged callback naming a host the presser has no role on gets exactly the answer a missing host
gets. A button acts only for a user it may be for (one with a role on its host, or the user its data names): in a
group, another member's press gets a "not for you" alert and the message stays as it is. Replies go through the outbox
(rate-limited); only answerCallbackQuery goes direct, because the client spins until it is answered.
"""
from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import trio

from .. import (access, charts, checks, containers, digest, i18n, install, plotspec, plotting, processes, protocol,
               quiet, selfwatch, service, speedtest, stability, stabilitychart, store, users)
from ..agents import AgentHub, TestRefused
from ..checks import CheckError
from ..alerting import Alerting
from ..alerts import Event, HostEvent
from ..i18n import _, n_
from .alert_commands import AlertUsageError
from ..plotspec import PlotUsageError
from ..config import Settings
from ..durations import format_duration
from ..forecast import ForecastEvent
from ..install import AGENT_FILE, Endpoint
from ..model import Host, NewKey
from ..service import NoSuchHost, NotAllowed, ServiceError
from ..store import Database
from ..writer import Writer
from . import alert_commands, alert_text, commands, groups, views
from .alert_delivery import AlertDelivery
from .digests import Digests
from .statuspages import StatusPages
from .api import BotApi, TelegramError, TelegramRejected, poll_updates
from .commands import Command, UsageError
from .languages import Languages
from .outbox import Outbox, OutboxDropped
from .views import Callback

log = logging.getLogger(__name__)

OFFSET_KEY = "telegram.offset"
CONFIRM_SECONDS = 60.0
COMMAND_TIMEOUT = 30.0
# /newkey per user: a burst for setting up a rack at once, then one a minute; MBOT_MAX_HOSTS_PER_USER caps the total.
NEWKEY_BURST, NEWKEY_EVERY = 10, 60.0
# Invite codes a stranger may try: a few typos, then one per 10 minutes (codes are unguessable; this bounds the
# database work and the replies a stranger can cause).
CODE_BURST, CODE_EVERY = 5, 600.0
# tell_owner: the same text to the same owner at most once per this long.
TELL_REPEAT = 600.0
# Buttons whose action (mbot.access) has another name than the callback's.
_ACCESS = {"amute": "mute", "range": "chart"}
# Refusals to strangers in one group: at most one per this long (each stranger is refused once anyway).
GROUP_REFUSAL_EVERY = 600.0


@dataclass(frozen=True)
class PowerRequest:
    user_id: int
    host_id: int
    action: str
    expires: float


@dataclass(frozen=True)
class Context:
    """Who asked, and where to answer."""

    user_id: int
    chat_id: int
    message_id: int | None = None  # the message a button sits on
    who: str = ""  # the sender as others read it (@username or first name): "acknowledged by ..."
    thread_id: int | None = None  # the forum topic the command or button came from: answers go there too

    @property
    def private(self) -> bool:
        return self.chat_id > 0


def _person(who: str) -> tuple[str | None, str | None]:
    """(username, first name) from what _who made."""
    return (who[1:], None) if who.startswith("@") else (None, who)


def _names_a_host(conn: sqlite3.Connection, user_id: int, word: str) -> bool:
    """Whether `word` is the name of a host the user may see (then it is NAME, not a default host's argument)."""
    return any(host.name.lower() == word.lower() for host, _role in store.hosts_of_user(conn, user_id))


def _who(sender: dict[str, Any]) -> str:
    username, first = sender.get("username"), sender.get("first_name")
    if isinstance(username, str) and username:
        return "@" + username[:64]
    return first[:64] if isinstance(first, str) and first else str(sender.get("id", "?"))


class SqliteOffset:
    def __init__(self, db: Database, writer: Writer) -> None:
        self._db, self._writer = db, writer

    async def load(self) -> int:
        value = await self._db.read(store.get_kv, OFFSET_KEY)
        return int(value) if value else 0

    async def save(self, offset: int) -> None:
        await self._writer.call(store.set_kv, OFFSET_KEY, str(offset))


class Bot:
    def __init__(self, settings: Settings, api: BotApi, outbox: Outbox, db: Database, writer: Writer,
                 hub: AgentHub, alerting: Alerting, *, endpoint: Endpoint,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._api = api
        self._outbox = outbox
        self._db = db
        self._writer = writer
        self._hub = hub
        self._alerting = alerting
        self._endpoint = endpoint  # how agents reach this server: the /newkey reply
        self._clock = clock
        self._username: str | None = None
        self._pending: dict[str, PowerRequest] = {}
        self._users: dict[int, str] = {}  # the `users` table (loaded in run); ALLOWED_USERS come from settings
        self._refused = users.Seen()  # strangers already told "private": once each, in bounded memory
        self._newkey_limit = users.RateLimit(NEWKEY_BURST, NEWKEY_EVERY)
        self._code_limit = users.RateLimit(CODE_BURST, CODE_EVERY)
        self._tell_limit = users.RateLimit(1, TELL_REPEAT)
        self._group_refusals = users.RateLimit(1, GROUP_REFUSAL_EVERY)
        self._charts = trio.CapacityLimiter(2)  # renders at once: matplotlib is CPU-bound, keep a core for ingest
        self._quiet: dict[int, quiet.QuietHours] = {}  # the `quiet_hours` table (loaded in run; only /quiet writes it)
        self._languages = Languages()  # the `user_languages` table (loaded in run)
        self._pages = StatusPages(api, outbox, db, writer, settings, clock=clock,
                                  status=lambda host_id: alerting.engine.host_status(host_id))
        self._alert_delivery = AlertDelivery(api, outbox, db, writer, settings, clock=clock,
                                             chart_limiter=self._charts, silent=self._silent,
                                             chat_gone=self._chat_gone, language=self._languages.of)
        alerting.set_notify(self._notify, self._languages.of)
        alerting.clock_listeners.append(self._alert_delivery.clock_moved)
        self._digests = Digests(api, outbox, db, writer, settings, alerting, clock=clock, chart_limiter=self._charts,
                                silent=self._silent, language=self._languages.of)
        alerting.clock_listeners.append(self._digests.clock_moved)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Long-running: polls updates; work that outlives an update (waiting on an agent) runs in its nursery."""
        # Who may use the bot is known before the first update is handled.
        self._users = await self._db.read(users.load_users)
        self._username = await self._db.read(store.get_kv, users.USERNAME_KEY)
        self._quiet = {user: quiet.QuietHours(*window) for user, window in
                       (await self._db.read(store.quiet_hours)).items()}
        self._languages.load(await self._db.read(store.user_languages))  # the same object alerting asks
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._alert_delivery.run)
            await nursery.start(self._digests.run)
            await nursery.start(self._pages.run)
            nursery.start_soon(self._introduce)
            task_status.started()
            await poll_updates(self._api, SqliteOffset(self._db, self._writer), self.handle)

    async def _introduce(self) -> None:
        try:
            me = await self._api.get_me()
        except TelegramError as exc:
            log.warning("could not introduce the bot to Telegram (commands menu not set): %s", exc)
        else:
            username = me.get("username")
            if username and username != self._username:
                await self._writer.call(store.set_kv, users.USERNAME_KEY, username)  # for the CLI's invite links
            self._username = username or self._username
        # After getMe, so that the one log line can carry the t.me link.
        await self._claim_if_closed()
        try:
            # The menu in each language: Telegram shows a user the one of their app's language, English otherwise.
            for language in i18n.LANGUAGES:
                with i18n.speaking(language):
                    await self._api.set_my_commands(commands.menu(),
                                                    None if language == i18n.DEFAULT else language)
            log.info("telegram bot @%s is up", self._username)
        except TelegramError as exc:
            log.warning("could not set the bot's commands menu: %s", exc)

    async def _claim_if_closed(self) -> None:
        """Without ALLOWED_USERS and users, make a new claim code (older ones die) and log it: the only log line
        that ever holds a secret. With users, any claim left from an earlier start is deleted."""
        code = users.new_code()
        wanted = self._settings.allowed_users is None and not self._users
        if not await self._writer.call(users.reset_claim, users.code_hash(code) if wanted else None, self._clock()):
            return
        link = users.invite_link(self._username, code)
        where = f"opens {link} (or sends the bot /start {code})" if link else f"sends the bot /start {code}"
        log.warning("mbot has no users yet: the first person who %s becomes its admin; claim code %s works once, "
                    "until the next start", where, code)

    def tell_owner(self, owner: int, html_text: str | Callable[[], str]) -> None:
        """Tell a host's owner something the server did to their host (a limit it enforced), as a plain chat
        message through the outbox. Call it from the trio thread; it never blocks and never raises.

        The same text to the same owner goes out at most once per TELL_REPEAT (10 min), so a misbehaving agent
        cannot flood its owner's chat; the outbox bounds the rest. Hosts made by the CLI without --owner (owner 0)
        have nobody to tell. `html_text` may be a function that makes the text: it is called in the owner's
        language."""
        if owner <= 0:
            return
        if callable(html_text):
            with i18n.speaking(self._languages.of(owner)):
                html_text = html_text()
        if not self._tell_limit.take((owner, html_text), self._clock()).allowed:
            return
        self._outbox.submit(owner, partial(self._api.send_message, owner, html_text,
                                           disable_notification=self._silent(owner)))

    # --- quiet hours (mbot.quiet) --------------------------------------------------------------------------------

    def _silent(self, user_id: int) -> bool:
        """Whether a notification to this user goes out without a sound now (their /quiet window, in MBOT_TZ).
        For what the server sends on its own (alerts, reminders, notices), never for replies to commands."""
        window = self._quiet.get(user_id)
        return window is not None and window.quiet_at(self._clock(), self._settings.tz)

    async def _digest_command(self, ctx: Context, args: Sequence[str]) -> None:
        """/digest HH:MM, off, or the setting (mbot.digest)."""
        wanted = digest.parse_digest(args)
        zone = str(self._settings.tz)
        if wanted == digest.SHOW:
            minute = self._digests.setting(ctx.user_id)
            self._send(ctx, _("No daily digest. /digest 09:00 sends one every day at 09:00 ({zone}).", zone=zone)
                       if minute is None else
                       _("Daily digest at {time} ({zone}). /digest off stops it.", time=digest.hhmm(minute),
                         zone=zone))
        elif wanted == digest.OFF:
            await self._digests.set(ctx.user_id, None)
            self._send(ctx, _("No more daily digests."))
        else:
            assert isinstance(wanted, int)
            await self._digests.set(ctx.user_id, wanted)
            self._send(ctx, _("A digest of your hosts every day at {time} ({zone}): a picture of their last 24 h, "
                              "uptime, alerts and disk forecasts. /digest off stops it.", time=digest.hhmm(wanted),
                              zone=zone))

    async def _quiet_command(self, ctx: Context, args: Sequence[str]) -> None:
        wanted = quiet.parse_quiet(args)
        zone = views.e(str(self._settings.tz))
        if wanted == quiet.SHOW:
            window = self._quiet.get(ctx.user_id)
            self._send(ctx, _("Quiet hours: {window} ({zone}). /quiet off ends them.", window=window, zone=zone)
                       if window else
                       _("No quiet hours: notifications make a sound at any time. /quiet 23:00-07:00 sets them "
                         "(in {zone}).", zone=zone))
            return
        if wanted == quiet.OFF:
            await self._writer.call(store.set_quiet_hours, ctx.user_id, None)
            self._quiet.pop(ctx.user_id, None)
            self._send(ctx, _("Quiet hours are off: notifications make a sound at any time."))
            return
        assert isinstance(wanted, quiet.QuietHours)
        await self._writer.call(store.set_quiet_hours, ctx.user_id, (wanted.start, wanted.end))
        self._quiet[ctx.user_id] = wanted
        self._send(ctx, _("Quiet hours: {window} ({zone}). Alerts and reminders then arrive without a sound; "
                          "nothing is held back. /quiet off ends them.", window=wanted, zone=zone))

    # --- the chat's language (mbot.telegram.languages) -------------------------------------------------------------

    async def _lang_command(self, ctx: Context, args: Sequence[str]) -> None:
        if not args:
            chosen = self._languages.chosen(ctx.user_id)
            self._send(ctx, views.language_text(i18n.current(), chosen is not None))
            return
        wanted = args[0].lower()
        if wanted not in (*i18n.LANGUAGES, "auto"):
            raise commands.UsageError(commands.usage("lang"))
        row = self._languages.choose(ctx.user_id, None if wanted == "auto" else wanted)
        await self._writer.call(store.set_user_language, ctx.user_id, *row)
        with i18n.speaking(self._languages.of(ctx.user_id)):
            self._send(ctx, views.language_text(i18n.current(), row[0] is not None))

    # --- groups: /bind, /unbind, /statuspage (mbot/telegram/groups.py, statuspages.py) ---------------------------

    def _notify(self, owner: int, text: str, event: Event | ForecastEvent, group: Sequence[HostEvent] = (),
                /) -> None:
        """Alerting's Notify: the alert goes out, and the status pages showing that host look again."""
        self._alert_delivery.notify(owner, text, event, group)
        host_id = getattr(event, "host_id", None)
        if isinstance(host_id, int):
            self._pages.changed(host_id)

    def _chat_gone(self, chat_id: int, why: str) -> None:
        """The bot is not in this group any more: its bindings, pages and alert threads go."""
        self._pages.chat_gone(chat_id, why)
        self._alert_delivery.drop_chat(chat_id)

    @property
    def pages(self) -> StatusPages:
        return self._pages

    async def _bind_command(self, ctx: Context, command: Command) -> None:
        if ctx.private:
            self._send(ctx, _("Use /{command} in the group that should get a host's alerts (add me to it first).",
                              command=command.name))
            return
        if not command.args:  # what is bound here: the sender's hosts only, the others' counted, never named
            bound = await self._db.read(store.bindings_of_chat, ctx.chat_id)
            mine = {h.id: h for h in await self._db.read(store.list_hosts, ctx.user_id)}
            names = sorted(mine[b.host_id].name for b in bound if b.host_id in mine
                           and groups.may_act(ctx.user_id, mine[b.host_id]))
            others = sum(1 for b in bound if b.host_id not in mine)
            text = (_("Your hosts whose alerts come here: {names}.", names=", ".join(
                        f"<b>{views.e(n)}</b>" for n in names)) if names else
                    _("None of your hosts sends its alerts here. /bind NAME does that."))
            if others:
                text += "\n" + n_("{n} host of other members sends its alerts here too.",
                                   "{n} hosts of other members send their alerts here too.", others)
            self._send(ctx, text)
            return
        host = await self._db.read(service.resolve_host, ctx.user_id, command.args[0])
        if not groups.may_act(ctx.user_id, host):
            raise NoSuchHost()
        name = views.e(host.name)
        if command.name == "unbind":
            if await self._writer.call(store.unbind_host, host.id, ctx.chat_id):
                self._alert_delivery.drop_chat(ctx.chat_id, host.id)
                log.info("user %d unbound host %s from chat %d", ctx.user_id, host.name, ctx.chat_id)
                self._send(ctx, _("<b>{name}</b>'s alerts no longer come here.", name=name))
            else:
                self._send(ctx, _("<b>{name}</b> is not bound here.", name=name))
            return
        here = await self._db.read(store.bindings_of_chat, ctx.chat_id)
        chats = await self._db.read(store.bindings_of_host, host.id)
        if all(b.host_id != host.id for b in here):
            if len(here) >= groups.MAX_BINDINGS_PER_CHAT:
                self._send(ctx, _("This group already gets the alerts of {n} hosts, the most it can.",
                                  n=groups.MAX_BINDINGS_PER_CHAT))
                return
            if len(chats) >= groups.MAX_CHATS_PER_HOST:
                self._send(ctx, _("<b>{name}</b> already sends its alerts to {n} groups, the most it can; /unbind "
                                  "it in one of them first.", name=name, n=groups.MAX_CHATS_PER_HOST))
                return
        await self._writer.call(store.bind_host, host.id, ctx.chat_id, ctx.thread_id, ctx.user_id, self._clock())
        log.info("user %d bound host %s to chat %d (topic %s)", ctx.user_id, host.name, ctx.chat_id, ctx.thread_id)
        where = _("this topic") if ctx.thread_id is not None else _("this group")
        self._send(ctx, _("<b>{name}</b>'s alerts now come to {where} as well as to your private chat; their buttons "
                          "work for you alone. /unbind {name} stops it.", name=name, where=where))

    async def _statuspage_command(self, ctx: Context, args: Sequence[str]) -> None:
        """In a group: a page there. In a private chat, `/statuspage @channel ...`: a page in a channel (or group)
        the sender administers (a channel post has no sender the bot could check, so it is asked for here)."""
        chat_id, thread_id, label = ctx.chat_id, ctx.thread_id, ""
        if ctx.private:
            ref = groups.channel_ref(args[0]) if args else None
            if ref is None:
                self._send(ctx, _("Use /statuspage in the group where the status message should be, or here as "
                                  "/statuspage @channel for a channel you administer: it lists your hosts and keeps "
                                  "itself current."))
                return
            found = await self._administered(ctx, ref)
            if found is None:
                return
            chat_id, thread_id, label, args = found, None, views.e(str(ref)), args[1:]
        if list(args) == ["off"]:
            if await self._pages.stop(chat_id, ctx.user_id):
                self._send(ctx, _("Your status page is stopped: its message says so within a minute."))
            else:
                self._send(ctx, _("You have no status page in that chat."))
            return
        hosts: tuple[int, ...] | None = None
        if args:
            chosen = []
            for word in args:
                host = await self._db.read(service.resolve_host, ctx.user_id, word)
                if not groups.may_act(ctx.user_id, host):
                    raise NoSuchHost()
                if host.id not in chosen:
                    chosen.append(host.id)
            hosts = tuple(chosen)
        posted = await self._pages.start(chat_id, ctx.user_id, thread_id, hosts)
        if ctx.private:
            self._send(ctx, _("Your status page is posted in {chat}; /statuspage {chat} off stops it.", chat=label)
                       if posted else _("I could not post in {chat}: may I post messages there?", chat=label))

    async def _administered(self, ctx: Context, ref: int | str) -> int | None:
        """The id of the channel or group `ref` if the sender administers it (getChatMember), else None, said."""
        try:
            chat = await self._api.get_chat(ref)
            chat_id = chat.get("id") if isinstance(chat, dict) else None
            if not isinstance(chat_id, int) or isinstance(chat_id, bool) or chat_id >= 0:
                raise TelegramRejected(400, "not a group or channel")
            member = await self._api.get_chat_member(chat_id, ctx.user_id)
        except TelegramRejected:
            self._send(ctx, _("I cannot see {chat}: add me to it as an administrator first.", chat=views.e(str(ref))))
            return None
        except TelegramError:
            self._send(ctx, _("Telegram did not answer; try again in a minute."))
            return None
        if not groups.is_admin(member):
            log.warning("user %d asked for a status page in chat %d, which they do not administer", ctx.user_id,
                        chat_id)
            self._send(ctx, _("Only an administrator of {chat} may put a status page there.", chat=views.e(str(ref))))
            return None
        return chat_id

    # --- routing ---------------------------------------------------------------------------------------------

    async def handle(self, update: dict[str, Any]) -> None:
        """One update, answered in its sender's language (mbot.telegram.languages)."""
        body = update.get("message") if "message" in update else update.get("callback_query")
        sender = body.get("from") if isinstance(body, dict) else None
        code = sender.get("language_code") if isinstance(sender, dict) else None
        language = i18n.language_of(code)
        user = sender.get("id") if isinstance(sender, dict) else None
        if isinstance(user, int) and self._role(user) is not None:  # strangers' languages are not stored
            row = self._languages.seen(user, code)
            if row is not None:
                await self._writer.call(store.set_user_language, user, *row)
            language = self._languages.of(user)
        with i18n.speaking(language):
            if "message" in update:
                await self._on_message(update["message"])
            elif "callback_query" in update:
                await self._on_callback(update["callback_query"])
            elif "my_chat_member" in update:
                chat_id = groups.left(update["my_chat_member"])
                if chat_id is not None:
                    self._chat_gone(chat_id, "the bot was removed from it")

    def _role(self, user_id: int) -> str | None:
        return users.role_of(user_id, self._settings.allowed_users, self._users)

    async def _on_message(self, message: dict[str, Any]) -> None:
        moved = groups.migrated(message)
        if moved is not None:
            self._pages.chat_moved(*moved)
            self._alert_delivery.drop_chat(moved[0])
            return
        text = message.get("text")
        sender = message.get("from") or {}
        if not text or "id" not in sender:
            return
        ctx = Context(user_id=sender["id"], chat_id=message["chat"]["id"], who=_who(sender),
                      thread_id=groups.topic_of(message))
        if self._role(ctx.user_id) is None:
            await self._stranger(ctx, text, private=message["chat"].get("type") == "private")
            return
        try:
            command = commands.parse(text, self._username)
        except UsageError as exc:
            if ctx.private or groups.ours(text, self._username):
                self._send(ctx, views.e(str(exc)))
            return  # in a group, a command we do not know is another bot's
        if command is None:
            return
        try:
            await self._command(ctx, command)
        except (ServiceError, AlertUsageError, PlotUsageError, stability.StabilityUsageError, CheckError,
                quiet.QuietUsageError, digest.DigestUsageError, UsageError) as exc:
            self._send(ctx, views.e(str(exc)))

    async def _stranger(self, ctx: Context, text: str, *, private: bool) -> None:
        """Someone who is not a user: `/start CODE` may make them one; anything else gets one polite refusal."""
        try:
            command = commands.parse(text, self._username)
        except UsageError:
            command = None
        if command is not None and command.name == "start" and command.args:
            decision = self._code_limit.take(ctx.user_id, self._clock())
            if decision.allowed:
                await self._redeem(ctx, command.args[0])
                return
            if decision.first_refusal:
                log.warning("Telegram user %d tried too many invite codes; ignoring their codes for a while",
                            ctx.user_id)
        elif command is None and not private:
            return  # group chatter, or a command for another bot: none of our business
        if self._refused.add(ctx.user_id):  # one polite refusal, not one per message
            log.warning("refused Telegram user %d (not a user of this mbot)", ctx.user_id)
            # In a group, also one per group a while: many members (or many forged ids) make one answer.
            if private or self._group_refusals.take(ctx.chat_id, self._clock()).allowed:
                self._send(ctx, _(views.NOT_ALLOWED))

    async def _redeem(self, ctx: Context, code: str) -> None:
        redeemed = None
        if users.looks_like_code(code):
            redeemed = await self._writer.call(partial(self._redeem_code, first_is_admin=self._settings.allowed_users
                                                       is None, who=ctx.who), users.code_hash(code), ctx.user_id,
                                               self._clock())
        if redeemed is None:
            log.warning("Telegram user %d sent an unknown, used or expired invite code", ctx.user_id)
            self._send(ctx, _(views.BAD_INVITE))
            return
        role = redeemed.role
        self._users[ctx.user_id] = role
        log.info("Telegram user %d joined with a code, as %s", ctx.user_id, role)
        if role == users.ADMIN:
            await self._writer.call(selfwatch.adopt, ctx.user_id)  # the server's own host is the admin's
        self._send(ctx, views.welcome(role))
        await self._shared_with(ctx, redeemed)

    @staticmethod
    def _redeem_code(conn: sqlite3.Connection, hashed: str, user_id: int, now: float, *, first_is_admin: bool, who: str,
                     shares_only: bool = False) -> users.Redeemed | None:
        """users.redeem, and for a share link the name its user goes by (for the owner's /shares and /unshare),
        in one transaction."""
        redeemed = users.redeem(conn, hashed, user_id, now, first_is_admin=first_is_admin, shares_only=shares_only)
        if redeemed is not None and redeemed.host_id is not None:
            store.set_person(conn, user_id, *_person(who))
            host = store.host_by_id(conn, redeemed.host_id)
            store.add_audit(conn, ts=now, user_id=user_id, host_id=redeemed.host_id,
                            host_name=host.name if host else "", action="share",
                            outcome=f"joined as {redeemed.host_role}", target=user_id)
        return redeemed

    async def _shared_with(self, ctx: Context, redeemed: users.Redeemed) -> None:
        if redeemed.host_id is None or redeemed.host_role is None:
            return
        host = await self._db.read(store.host_by_id, redeemed.host_id)
        if host is not None:
            log.info("Telegram user %d now has the %s role on host %s (share link)", ctx.user_id,
                     redeemed.host_role, host.name)
            self._send(ctx, views.shared_with_you(host, redeemed.host_role))

    async def _command(self, ctx: Context, command: Command) -> None:
        now = self._clock()
        name, args = command.name, command.args
        if commands.COMMANDS[name].default_host:
            args = await self._default_host(ctx, name, args)
            command = Command(name, args)
        if name == "start" and args and users.looks_like_code(args[0]) \
                and self._code_limit.take(ctx.user_id, now).allowed:
            # A user opening a share link gets its role; an invite or claim code is left unspent for whoever it was
            # meant for (and they get /help).
            redeemed = await self._writer.call(partial(self._redeem_code, first_is_admin=False, who=ctx.who,
                                                       shares_only=True), users.code_hash(args[0]), ctx.user_id, now)
            if redeemed is not None and redeemed.host_id is not None:
                await self._shared_with(ctx, redeemed)
                return
            self._send(ctx, views.help_text(admin=self._role(ctx.user_id) == users.ADMIN))
        elif name in ("start", "help"):
            self._send(ctx, views.help_text(admin=self._role(ctx.user_id) == users.ADMIN))
        elif name == "linkkey":
            self._send(ctx, views.e(views.linkkey()))
        elif name in ("share", "shares", "unshare", "set"):
            await self._team_command(ctx, name, args, now)
        elif name == "invite":
            await self._invite(ctx, now)
        elif name == "quiet":
            await self._quiet_command(ctx, args)
        elif name == "digest":
            await self._digest_command(ctx, args)
        elif name in ("bind", "unbind"):
            await self._bind_command(ctx, command)
        elif name == "statuspage":
            await self._statuspage_command(ctx, args)
        elif name == "lang":
            await self._lang_command(ctx, args)
        elif name in ("setalert", "delalert", "alerts", "mute", "unmute"):
            await self._alert_command(ctx, command, now)
        elif name == "plot":
            longest = max(tier.retention for tier in self._settings.tiers)
            request = plotspec.parse_plot(args, max_span=longest)
            host = await self._db.read(service.resolve, ctx.user_id, request.host, "plot")
            await self._chart(ctx, host, request.metrics, request.span, request.limit, request.unit, None)
        elif name == "stability":
            spec = stability.parse_stability(args)
            host = await self._db.read(service.resolve, ctx.user_id, spec.name, "stability")
            self._start_stability(ctx, host, spec)
        elif name == "speedtest":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "speedtest")
            self._start_speedtest(ctx, host)
        elif name in ("check", "checks"):
            await self._check_command(ctx, command)
        elif name in ("newkey", "rotate") and not ctx.private:
            # A key's one reply carries its secret: in a group every member would read it.
            self._send(ctx, _("A key is a secret: send /{command} to me in a private chat, not in a group.",
                              command=name))
        elif name == "newkey":
            decision = self._newkey_limit.take(ctx.user_id, now)
            if not decision.allowed:
                if decision.first_refusal:  # told once per stretch of refusals: a flood gets one answer
                    log.warning("user %d is registering hosts too fast; /newkey refused for now", ctx.user_id)
                    self._send(ctx, views.slow_down("/newkey", NEWKEY_BURST, NEWKEY_EVERY,
                                                    decision.retry_after))
                return
            key = await self._writer.call(partial(service.new_key, max_hosts=self._settings.max_hosts_per_user),
                                          args[0], ctx.user_id)
            log.info("user %d registered host %s (key %s)", ctx.user_id, key.name, key.key_id)
            await self._send_key(ctx, key)
        elif name == "agent":
            await self._send_agent_file(ctx)
        elif name == "hosts":
            downloads = self._hub.downloads
            hosts, roles = await self._visible_hosts(ctx.user_id)
            self._send(ctx, *views.host_list(hosts, now, self._alerting.power_states(),
                                             recommended=install.agent_version(downloads.agent if downloads else None),
                                             update_line=install.one_liner(self._endpoint, "--update"), roles=roles))
        elif name == "status" and not args:
            hosts, roles = await self._visible_hosts(ctx.user_id)
            self._send(ctx, *views.summary(hosts, now, self._alerting.power_states(), roles))
        elif name == "status":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "card")
            self._send(ctx, *await self._card(host, now, ctx.user_id))
        elif name == "top":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "top")
            procs = await self._db.read(store.latest_snapshot, host.id, processes.KIND)
            self._send(ctx, *views.processes_view(host, procs, now))
        elif name == "info":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "info")
            self._send(ctx, *views.inventory_view(host, now, await self._db.read(store.services_items, host.id)))
        elif name == "containers":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "containers")
            await self._containers(ctx, host, now, edit=False)
        elif name == "rename":
            host = await self._writer.call(service.rename, ctx.user_id, args[0], args[1])
            self._send(ctx, _("<b>{old}</b> is now <b>{new}</b>.", old=views.e(host.name), new=views.e(args[1])))
        elif name == "revoke":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "revoke")
            self._send(ctx, *views.revoke_question(host))
        elif name == "rotate":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "rotate")
            key = await self._writer.call(service.rotate, ctx.user_id, host.id)
            await self._hub.disconnect(host.id, protocol.CLOSE_REVOKED, "key rotated")
            log.info("user %d rotated the key of host %s", ctx.user_id, host.name)
            await self._send_key(ctx, key)

    async def _containers(self, ctx: Context, host: Host, now: float, *, edit: bool) -> None:
        snapshot = await self._db.read(store.latest_snapshot, host.id, containers.KIND)
        text, keyboard = views.containers_view(host, None if snapshot is None else snapshot.items,
                                               None if snapshot is None else snapshot.received, now)
        (self._edit if edit else self._send)(ctx, text, keyboard)

    # --- checks from the host (mbot/checks.py) -----------------------------------------------------------------

    async def _check_command(self, ctx: Context, command: Command) -> None:
        if command.name == "checks":
            host = await self._db.read(service.resolve, ctx.user_id, command.args[0], "checks")
            specs = await self._db.read(store.checks_of_host, host.id)
            snapshot = await self._db.read(store.latest_snapshot, host.id, checks.FRAME)
            self._send(ctx, views.checks_view(host, specs, snapshot))
            return
        request = checks.parse_command(command.args)
        host = await self._db.read(service.resolve, ctx.user_id, request.host, "check")
        if isinstance(request, checks.DelCheck):
            spec = await self._writer.call(service.delete_check, host, request.check)
            self._hub.checks_changed()
            self._send(ctx, _("Removed check <b>{check}</b> ({target}) of <b>{name}</b> and its alerts.",
                              check=views.e(spec.name), target=views.e(spec.target), name=views.e(host.name)))
            return
        spec = await self._writer.call(partial(service.add_check, now=self._clock()), host, request.target,
                                       request.every)
        self._hub.checks_changed()
        log.info("user %d added check %s of host %s", ctx.user_id, spec.name, host.name)
        text = n_("<b>{name}</b> checks {target} every {every} as <b>{check}</b>. You get an alert when it fails "
                  "{n} time in a row and when its certificate has less than {days} days left (/delalert {name} "
                  "check:{check} or cert:{check} stops one). /checks {name} shows the results. The check runs with "
                  "the agent's network access.",
                  "<b>{name}</b> checks {target} every {every} as <b>{check}</b>. You get an alert when it fails "
                  "{n} times in a row and when its certificate has less than {days} days left (/delalert {name} "
                  "check:{check} or cert:{check} stops one). /checks {name} shows the results. The check runs with "
                  "the agent's network access.", spec.down_after,
                  name=views.e(host.name), target=views.e(spec.target), every=format_duration(spec.every),
                  check=views.e(spec.name), days=f"{checks.DEFAULT_CERT_DAYS:.0f}")
        connection = self._hub.connections.get(host.id)
        hello = connection.hello if connection is not None else None
        if hello is not None and checks.CAPABILITY not in hello.capabilities:
            text += "\n" + _("⚠️ This host's agent is too old to run checks: update it (/agent).")
        self._send(ctx, text)

    async def _card(self, host: Host, now: float, user_id: int) -> tuple[str, views.Keyboard]:
        """A host's status card and the buttons the reader's role allows; with the host's process list, its top
        processes and the Processes button."""
        procs = await self._db.read(store.latest_snapshot, host.id, processes.KIND)
        role = await self._db.read(service.allowed, host, user_id, "card")
        return (views.host_card(host, now, procs, power=self._alerting.power_states().get(host.id),
                                forecasts=self._alerting.forecast_lines(host.id)),
                views.card_keyboard(host, plotting.available_series(host), procs=procs is not None, role=role))

    async def _visible_hosts(self, user_id: int) -> tuple[list[Host], dict[int, str]]:
        """The hosts the user may see (their own, then those shared with them) and their role on the shared ones."""
        found = await self._db.read(store.hosts_of_user, user_id)
        return [host for host, _role in found], {host.id: role for host, role in found if role != access.OWNER}

    # --- teams: /share, /shares, /unshare, /set (mbot.access) ----------------------------------------------------

    async def _team_command(self, ctx: Context, name: str, args: Sequence[str], now: float) -> None:
        if name == "share":
            role = access.parse_role(args[1]) if len(args) > 1 else access.VIEWER
            if role is None:
                raise ServiceError(_("A host is shared as viewer or operator: /share NAME [viewer|operator]"))
            code = users.new_code()
            host = await self._writer.call(service.share, ctx.user_id, args[0], role, users.code_hash(code), now)
            log.info("user %d made a one-time link sharing host %s as %s", ctx.user_id, host.name, role)
            self._send(ctx, *views.share_link(host, role, users.invite_link(self._username, code), code, ctx.user_id,
                                              users.INVITE_TTL / 3600))
        elif name == "shares":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "shares")
            self._send(ctx, *views.shares_view(host, await self._db.read(store.roles_of_host, host.id)))
        elif name == "unshare":
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "unshare")
            user_id = await self._db.read(service.person_named, host.id, args[1])
            if user_id is None:
                raise ServiceError(_("Nobody called {who} has a role on {name}: /shares {name} lists them.",
                                     who=args[1][:64], name=host.name))
            await self._unshare(ctx, host, user_id, now)
        elif not args:
            default = await self._chat_default(ctx)
            self._send(ctx, _("This chat's default host is <b>{name}</b>. /set off forgets it.",
                              name=views.e(default.name)) if default is not None else _("No default host in this chat. /set NAME makes one: then /status, "
                                                  "/plot, /setalert and the others work without NAME."))
        elif args[0].lower() == "off":
            await self._writer.call(store.set_chat_default, ctx.chat_id, ctx.user_id, None)
            self._send(ctx, _("No default host in this chat any more: commands need NAME again."))
        else:
            host = await self._db.read(service.resolve, ctx.user_id, args[0], "set")
            await self._writer.call(store.set_chat_default, ctx.chat_id, ctx.user_id, host.id)
            self._send(ctx, _("<b>{name}</b> is this chat's default host: /status, /plot, /setalert and the others "
                              "work without NAME. /set off forgets it.", name=views.e(host.name)))

    async def _unshare(self, ctx: Context, host: Host, user_id: int, now: float) -> None:
        await self._writer.call(service.unshare, ctx.user_id, host.id, user_id, now)
        log.info("user %d took user %d's access to host %s away", ctx.user_id, user_id, host.name)
        self._send(ctx, _("{who} no longer has access to <b>{name}</b>.", who=str(user_id), name=views.e(host.name)))

    async def _default_host(self, ctx: Context, name: str, args: tuple[str, ...]) -> tuple[str, ...]:
        """`args` with this chat's default host (/set) put in front when NAME is missing: a command of fixed
        arguments given one too few, /status alone, or a first word that names none of the user's hosts."""
        spec = commands.COMMANDS[name]
        if len(args) >= spec.low and args and (name == "status" or spec.low == spec.high
                                               or await self._db.read(_names_a_host, ctx.user_id, args[0])):
            return args
        host = await self._chat_default(ctx)
        if host is not None:
            return (host.name, *args)
        if len(args) < spec.low:
            raise UsageError(commands.usage(name))
        return args

    async def _chat_default(self, ctx: Context) -> Host | None:
        """The user's default host in this chat (/set) while they still may see it; one they lost is forgotten."""
        host_id = await self._db.read(store.chat_default, ctx.chat_id, ctx.user_id)
        if host_id is None:
            return None
        try:
            return await self._db.read(service.host_for, ctx.user_id, host_id, "set")
        except NoSuchHost:  # gone, or no longer shared with them
            await self._writer.call(store.set_chat_default, ctx.chat_id, ctx.user_id, None)
            return None

    async def _invite(self, ctx: Context, now: float) -> None:
        if self._role(ctx.user_id) != users.ADMIN:
            self._send(ctx, _(views.NOT_ADMIN))
            return
        code = users.new_code()
        await self._writer.call(users.add_invite, users.code_hash(code), now, ctx.user_id)
        log.info("user %d made a one-time invite (valid %.0f h)", ctx.user_id, users.INVITE_TTL / 3600)
        link = users.invite_link(self._username, code)
        self._send(ctx, *views.invite(code, link, ctx.user_id, users.INVITE_TTL / 3600))

    async def _alert_command(self, ctx: Context, command: Command, now: float) -> None:
        name, args = command.name, list(command.args)
        if name == "alerts":
            hosts, _roles = await self._visible_hosts(ctx.user_id)
            self._send(ctx, views.alerts_overview([h for h in hosts if h.revoked is None], self._alerting.engine, now))
            return
        if name == "setalert":
            spec = alert_commands.parse_setalert(args)
            host = await self._db.read(service.resolve, ctx.user_id, spec.name, "setalert")
            rule = spec.rule(host.id)
            await self._alerting.set_rule(rule)
            self._send(ctx, _("Alert set on <b>{name}</b>: {rule}.", name=views.e(host.name),
                              rule=views.e(views.rule_text(rule))))
        elif name == "delalert":
            delete = alert_commands.parse_delalert(args)
            host = await self._db.read(service.resolve, ctx.user_id, delete.name, "delalert")
            if await self._alerting.delete_rule(host.id, delete.metric):
                if delete.metric != "offline":  # (offline alerts are turned off, not deleted: their end still comes)
                    self._alert_delivery.rule_deleted(host.id, delete.metric, host.name)
                self._send(ctx, _("Alert {metric} removed from <b>{name}</b>.", metric=views.e(delete.metric),
                                  name=views.e(host.name)))
            else:
                self._send(ctx, _("<b>{name}</b> has no {metric} alert. /alerts lists them.", name=views.e(host.name),
                                  metric=views.e(delete.metric)))
        elif name == "mute":
            mute = alert_commands.parse_mute(args)
            host = await self._db.read(service.resolve, ctx.user_id, mute.name, "mute")
            self._alerting.mute(host.id, now + mute.duration)
            await self._alert_delivery.muted(host.id, now + mute.duration, ctx.who)
            self._send(ctx, _("<b>{name}</b> muted for {duration}; what is still firing then will be reported. "
                              "/unmute ends it sooner.", name=views.e(host.name),
                              duration=format_duration(mute.duration)))
        elif name == "unmute":
            host = await self._db.read(service.resolve, ctx.user_id, alert_commands.parse_unmute(args), "unmute")
            muted_until = self._alerting.engine.host_status(host.id).muted_until
            if muted_until is None or muted_until <= now:
                self._send(ctx, _("<b>{name}</b> is not muted.", name=views.e(host.name)))
            else:
                self._alerting.unmute(host.id)  # its MuteEnded message says what is still firing

    async def _chart(self, ctx: Context, host: Host, words: Sequence[str], span: float, limit: float | None,
                     unit: str | None, span_label: str | None, *, replace: bool = False) -> None:
        """Render off the event loop and send (or, for a range button, replace the picture in place)."""
        if not replace:
            # A hint that something is coming; it costs nothing if it fails.
            self._outbox.submit(ctx.chat_id, partial(self._api.send_chat_action, ctx.chat_id, "upload_photo",
                                                     thread_id=ctx.thread_id))
        spec = await self._db.read(plotting.build_spec, host, words, span, limit, unit, self._settings.tiers,
                                   self._settings.tz, self._clock())
        try:
            png = await trio.to_thread.run_sync(charts.render, spec, limiter=self._charts)
        except charts.NoData:
            self._send(ctx, _("No data from <b>{name}</b> for {what}.", name=views.e(host.name),
                              what=views.e(spec.title.split(' · ')[-1])))
            return
        keyboard = views.range_keyboard(host.id, words, unit, span_label)
        caption = views.e(spec.title)
        if replace and ctx.message_id is not None:
            self._outbox.submit(ctx.chat_id, partial(self._api.edit_message_media, ctx.chat_id, ctx.message_id, png,
                                                     caption, keyboard))
        else:
            self._outbox.submit(ctx.chat_id, partial(self._api.send_photo, ctx.chat_id, png, caption, keyboard,
                                                     thread_id=ctx.thread_id))

    async def _answer(self, query: dict[str, Any], text: str | None = None) -> None:
        try:
            await self._api.answer_callback_query(query["id"], text, show_alert=text is not None)
        except TelegramError as exc:
            log.info("answerCallbackQuery failed: %s", exc)

    async def _on_callback(self, query: dict[str, Any]) -> None:
        # Answered as soon as we know whether the press is the presser's to make (a primary-key read at most): the
        # client shows a spinner until then, and gives up after ~15 s.
        message = query.get("message") or {}
        if "chat" not in message:
            await self._answer(query)
            return
        ctx = Context(user_id=query["from"]["id"], chat_id=message["chat"]["id"], message_id=message["message_id"],
                      who=_who(query["from"]), thread_id=groups.topic_of(message))
        private = message["chat"].get("type") == "private"
        if self._role(ctx.user_id) is None:
            await self._answer(query)
            return
        callback = views.decode_callback(query.get("data", ""))
        if callback is None:
            if private:
                await self._answer(query)
                self._edit(ctx, _("This button is no longer valid."))
            else:  # in a group the message may be someone else's: say it to the presser alone
                await self._answer(query, _("This button is no longer valid."))
            return
        if not await self._pressed_by_its_user(ctx, callback, private):
            log.info("user %d pressed a %s button meant for someone else in chat %d", ctx.user_id, callback.action,
                     ctx.chat_id)
            await self._answer(query, _(views.NOT_YOUR_BUTTON))
            return
        if callback.action in views.HOST_ACTIONS:
            try:  # the presser's role, now: what it does not allow is said to the presser alone
                await self._db.read(service.host_for, ctx.user_id, int(callback.args[0]),
                                    _ACCESS.get(callback.action, callback.action))
            except NotAllowed as exc:
                log.info("user %d pressed a %s button their role does not allow", ctx.user_id, callback.action)
                await self._answer(query, str(exc)[:200])
                return
            except NoSuchHost:
                pass  # answered below, as for a missing host
        await self._answer(query)
        try:
            await self._button(ctx, callback)
        except NoSuchHost as exc:
            self._edit(ctx, views.e(str(exc)))
        except ServiceError as exc:
            self._send(ctx, views.e(str(exc)))

    async def _pressed_by_its_user(self, ctx: Context, callback: Callback, private: bool) -> bool:
        """Whether the presser is the user this button was made for, before anything is done or edited.

        confirm, cancel and delete name their user in their data (and a power nonce knows its user here); host
        buttons belong to whoever has a role on the host (what the role allows is checked next). In a private chat the presser is the only member, so a host button
        naming a missing or foreign host is theirs to press and gets the "No such host" a missing host gets (no hint
        whether the host exists); in a group, it gets the alert and the message is left alone."""
        intended = views.button_user(callback)
        if intended is not None and intended != ctx.user_id:
            return False
        if intended is None and callback.action in ("confirm", "cancel", "delete") and not private:
            return False  # an old button that does not say whose it is: only safe in a private chat
        if callback.action in ("confirm", "cancel"):
            request = self._pending.get(callback.args[0])
            if request is not None and request.user_id != ctx.user_id:
                return False
        if callback.action in views.HOST_ACTIONS and not private:
            host = await self._db.read(store.host_by_id, int(callback.args[0]))
            if host is None:
                return False
            granted = await self._db.read(store.role_on, host.id, ctx.user_id)
            if access.role_of(host.owner, ctx.user_id, granted) is None:
                return False
        return True

    async def _button(self, ctx: Context, callback: Callback) -> None:
        action, args = callback.action, callback.args
        now = self._clock()
        if action == "delete":
            assert ctx.message_id is not None
            self._outbox.submit(ctx.chat_id, partial(self._api.delete_message, ctx.chat_id, ctx.message_id))
        elif action in ("card", "refresh"):
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), action)
            text, keyboard = await self._card(host, now, ctx.user_id)
            if action == "card":
                self._send(ctx, text, keyboard)
            else:
                self._edit(ctx, text, keyboard)
        elif action == "procs":  # the card's Processes button (a new message), or that message's Refresh (edit)
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), "procs")
            procs = await self._db.read(store.latest_snapshot, host.id, processes.KIND)
            text, keyboard = views.processes_view(host, procs, now)
            if args[1:] == ("r",):
                self._edit(ctx, text, keyboard)
            else:
                self._send(ctx, text, keyboard)
        elif action == "info":
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), "info")
            self._send(ctx, *views.inventory_view(host, now, await self._db.read(store.services_items, host.id)))
        elif action == "containers":
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), "containers")
            await self._containers(ctx, host, now, edit=len(args) == 2)
        elif action in ("chart", "range"):
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), "chart")
            span, unit, words = args[1], None if args[2] == "-" else args[2], tuple(args[3].split(";"))
            try:
                await self._chart(ctx, host, words, views.CHART_SPANS[span], None, unit, span,
                                  replace=action == "range")
            except PlotUsageError as exc:
                self._send(ctx, views.e(str(exc)))
        elif action in ("amute", "ack", "aprocs"):
            await self._alert_button(ctx, callback, now)
        elif action == "stability":
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), "stability")
            self._start_stability(ctx, host, stability.StabilitySpec(host.name, stability.DEFAULT_INTERVAL,
                                                                     stability.DEFAULT_DURATION))
        elif action == "speedtest":
            self._start_speedtest(ctx, await self._db.read(service.host_for, ctx.user_id, int(args[0]), "speedtest"))
        elif action == "power":
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), "power")
            if not self._hub.is_connected(host.id):
                self._send(ctx, _("<b>{name}</b> is offline.", name=views.e(host.name)))
                return
            nonce = secrets.token_urlsafe(9)
            self._forget_expired(now)
            self._pending[nonce] = PowerRequest(ctx.user_id, host.id, args[1], now + CONFIRM_SECONDS)
            self._send(ctx, *views.power_question(host, args[1], nonce, ctx.user_id))
        elif action == "cancel":
            request = self._pending.get(args[0])
            if request is not None and request.user_id == ctx.user_id:  # checked before; kept next to the pop
                del self._pending[args[0]]
            self._edit(ctx, _("Cancelled."))
        elif action == "confirm":
            await self._confirm(ctx, args[0], now)
        elif action == "unshare":
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), "unshare")
            await self._unshare(ctx, host, int(args[1]), now)
        elif action == "revoke":
            host = await self._db.read(service.host_for, ctx.user_id, int(args[0]), "revoke")
            if args[1] == "no":
                self._edit(ctx, _("Cancelled."))
                return
            await self._writer.call(partial(service.revoke, wipe=args[1] == "wipe"), ctx.user_id, host.id)
            self._alerting.host_removed(host.id)
            await self._hub.disconnect(host.id, protocol.CLOSE_REVOKED, "key revoked")
            log.info("user %d revoked host %s (%s)", ctx.user_id, host.name,
                     "history deleted" if args[1] == "wipe" else "history kept")
            kept = (_("Its history is deleted.") if args[1] == "wipe"
                    else _("Its history is kept; /rotate gives it a new key."))
            self._edit(ctx, _("<b>{name}</b> is revoked: its agent was disconnected.", name=views.e(host.name))
                       + " " + kept)

    async def _alert_button(self, ctx: Context, callback: Callback, now: float) -> None:
        """Under an alert (mbot/telegram/alert_delivery.py): Mute 1h, Ack, Processes."""
        host = await self._db.read(service.host_for, ctx.user_id, int(callback.args[0]),
                                   _ACCESS.get(callback.action, callback.action))
        name = views.e(host.name)
        if callback.action == "amute":
            self._alerting.mute(host.id, now + views.ALERT_MUTE)
            await self._alert_delivery.muted(host.id, now + views.ALERT_MUTE, ctx.who)
            self._send(ctx, _("<b>{name}</b> muted for 1 h; what is still firing then will be reported. "
                              "/unmute {name} ends it sooner.", name=name))
            return
        alert = await self._db.read(store.alert_message, int(callback.args[1]))
        if alert is None or alert.host_id != host.id:  # pruned a week after it ended (or never this host's)
            self._send(ctx, _("This alert is too old: its details are no longer kept."))
        elif callback.action == "aprocs":
            self._send(ctx, views.captured_processes(host, alert, now))
        elif alert.resolved is None and self._alerting.ack(host.id, alert.metric, alert.series):
            label = views.e(alert_text.series_label(alert.series))
            await self._alert_delivery.acknowledged(host.id, alert.metric, alert.series, ctx.who)
            self._send(ctx, _("Acknowledged: no more reminders for {label} on <b>{name}</b> until it resolves.",
                              label=label, name=name))
        else:
            self._send(ctx, _("This alert on <b>{name}</b> is no longer firing.", name=name))

    # --- the stability test (mbot/stability.py) ------------------------------------------------------------------

    def _start_stability(self, ctx: Context, host: Host, spec: stability.StabilitySpec) -> None:
        """Refused at once when the host is offline, already under test, or the server's probe budget is spent;
        otherwise its place is taken now (a second request finds it taken) and the test runs in the bot's nursery,
        so other updates are not held up for its minutes."""
        try:
            self._hub.claim_stability(host.id, spec.interval)
        except TestRefused as refused:
            self._send(ctx, refused.text(f"<b>{views.e(host.name)}</b>", escape=views.e))
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._run_stability, ctx, host, spec)

    async def _run_stability(self, ctx: Context, host: Host, spec: stability.StabilitySpec) -> None:
        try:
            await self._stability(ctx, host, spec)
        except Exception:
            # Isolated like any update: a test that breaks must not end the bot's nursery (and the bot).
            log.exception("stability test of host %s failed", host.name)
            self._send(ctx, _("The stability test of <b>{name}</b> failed; the server's log says why.",
                              name=views.e(host.name)))
        finally:
            self._hub.stability_budget.release(host.id)

    async def _stability(self, ctx: Context, host: Host, spec: stability.StabilitySpec) -> None:
        name = views.e(host.name)
        head = n_("Stability test of <b>{name}</b>: {n} probes every {interval} for {duration}...",
                  "Stability test of <b>{name}</b>: {n} probes every {interval} for {duration}...", spec.count,
                  name=name, interval=stability.interval_text(spec.interval), duration=format_duration(spec.duration))
        try:
            sent = await self._outbox.request(ctx.chat_id, partial(self._api.send_message, ctx.chat_id, head,
                                                                   thread_id=ctx.thread_id))
        except (TelegramError, OutboxDropped):
            sent = None  # no progress message to edit: the result still comes
        progress_ctx = Context(ctx.user_id, ctx.chat_id, (sent or {}).get("message_id"), ctx.who, ctx.thread_id)

        def progress(run: stability.StabilityRun, now: float) -> None:
            if progress_ctx.message_id is not None:
                self._edit(progress_ctx, f"{head}\n{views.e(run.progress(now))}")

        run = stability.StabilityRun(spec, start=trio.current_time())
        try:
            await self._hub.stability(host.id, run, progress, stability.progress_every(spec.duration))
        except LookupError:
            self._edit(progress_ctx, _("<b>{name}</b> went offline before the test started.", name=name))
            return
        figures = await trio.to_thread.run_sync(run.figures)  # a sort of up to 600,000 RTTs: not in the loop
        log.info("user %d ran a stability test of host %s: %d probes, %.1f %% lost", ctx.user_id, host.name,
                 figures.sent, figures.loss)
        done = _("Stability test of <b>{name}</b>: done.", name=name)
        if figures.slots < spec.count:
            done = n_("Stability test of <b>{name}</b>: its agent disconnected after {n} probes.",
                      "Stability test of <b>{name}</b>: its agent disconnected after {n} probes.", figures.slots,
                      name=name)
        self._edit(progress_ctx, done)
        png = await trio.to_thread.run_sync(stabilitychart.render, run, _("{name} · stability", name=host.name),
                                            limiter=self._charts)
        self._outbox.submit(ctx.chat_id, partial(self._api.send_photo, ctx.chat_id, png,
                                                 views.e(stability.caption(host.name, spec, figures)),
                                                 thread_id=ctx.thread_id))

    # --- the speed test (mbot/speedtest.py) ---------------------------------------------------------------------

    def _start_speedtest(self, ctx: Context, host: Host) -> None:
        try:
            self._hub.claim_speed(host.id)  # taken now: a second request finds it taken
        except TestRefused as refused:
            self._send(ctx, refused.text(f"<b>{views.e(host.name)}</b>", escape=views.e))
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._run_speedtest, ctx, host)

    async def _run_speedtest(self, ctx: Context, host: Host) -> None:
        name = views.e(host.name)
        try:
            seconds = self._hub.speed_seconds
            self._send(ctx, _("Speed test of <b>{name}</b>: about {duration}, download then upload...", name=name,
                              duration=format_duration(2 * seconds)))
            try:
                down, up = await self._hub.speedtest(host.id)
            except LookupError:
                self._send(ctx, _("<b>{name}</b> went offline before the speed test started.", name=name))
                return
            log.info("user %d ran a speed test of host %s: down %s, up %s", ctx.user_id, host.name,
                     down and speedtest.mbit(down.rate), up and speedtest.mbit(up.rate))
            self._send(ctx, views.e(speedtest.reply(host.name, down, up)))
        except Exception:
            log.exception("speed test of host %s failed", host.name)
            self._send(ctx, _("The speed test of <b>{name}</b> failed; the server's log says why.", name=name))
        finally:
            self._hub.speed_busy = False

    def _forget_expired(self, now: float) -> None:
        for nonce in [n for n, r in self._pending.items() if r.expires < now]:
            del self._pending[nonce]

    async def _confirm(self, ctx: Context, nonce: str, now: float) -> None:
        request = self._pending.get(nonce)
        if request is not None and request.user_id == ctx.user_id:
            del self._pending[nonce]  # one time: a second press finds nothing; someone else's press spends nothing
        if request is None or request.user_id != ctx.user_id or request.expires < now:
            self._edit(ctx, _("This confirmation has expired; nothing was done."))
            return
        host = await self._db.read(service.host_for, ctx.user_id, request.host_id, "power")
        audit_id = await self._writer.call(partial(store.add_audit, ts=now, user_id=ctx.user_id, host_id=host.id,
                                                   host_name=host.name, action=request.action,
                                                   outcome="requested"))
        if not self._hub.is_connected(host.id):
            await self._finish_power(ctx, host, request.action, audit_id, "offline",
                                     _("<b>{name}</b> is offline; nothing was sent.", name=views.e(host.name)))
            return
        self._edit(ctx, _("Asking <b>{name}</b> to reboot...", name=views.e(host.name)) if request.action == "reboot"
                   else _("Asking <b>{name}</b> to shutdown...", name=views.e(host.name)))
        assert self._nursery is not None
        # Waiting for the agent's answer may take seconds: not while other updates wait behind it.
        self._nursery.start_soon(self._run_power, ctx, host, request.action, audit_id)

    async def _run_power(self, ctx: Context, host: Host, action: str, audit_id: int) -> None:
        name = views.e(host.name)
        # The maintenance window opens before the command goes out: the machine may go down before its answer
        # arrives. From here the alert engine watches it go and come back (PowerBack, RebootOverdue).
        self._alerting.expect_power(host.id, action, host.facts.get("boot_time"))
        try:
            result = await self._hub.run_command(host.id, action, COMMAND_TIMEOUT)
        except LookupError:
            self._alerting.cancel_power(host.id)
            await self._finish_power(ctx, host, action, audit_id, "offline", _("<b>{name}</b> is offline.", name=name))
            return
        if result is None:  # it may be going down without a word: the window stays open
            await self._finish_power(ctx, host, action, audit_id, "no answer",
                                     _("<b>{name}</b> did not answer within {seconds} s.", name=name,
                                       seconds=f"{COMMAND_TIMEOUT:.0f}"))
        elif not result.ok and result.message == "disabled":
            self._alerting.cancel_power(host.id)
            await self._finish_power(ctx, host, action, audit_id, "disabled",
                                     (_("<b>{name}</b> did not reboot.", name=name) if action == "reboot"
                                      else _("<b>{name}</b> did not shutdown.", name=name))
                                     + " " + _(views.POWER_DISABLED_HINT))
        elif not result.ok:
            self._alerting.cancel_power(host.id)
            await self._finish_power(ctx, host, action, audit_id, f"failed: {result.message}",
                                     _("<b>{name}</b> could not reboot: {error}", name=name,
                                       error=views.e(result.message)) if action == "reboot" else
                                     _("<b>{name}</b> could not shutdown: {error}", name=name,
                                       error=views.e(result.message)))
        else:
            await self._finish_power(ctx, host, action, audit_id, "ok", views.power_started(host.name, action))

    async def _finish_power(self, ctx: Context, host: Host, action: str, audit_id: int, outcome: str,
                            text: str) -> None:
        await self._writer.call(store.set_audit_outcome, audit_id, outcome)
        log.info("user %d asked host %s to %s: %s", ctx.user_id, host.name, action, outcome)
        self._edit(ctx, text)

    # --- sending ---------------------------------------------------------------------------------------------

    async def _send_key(self, ctx: Context, key: NewKey) -> None:
        """The key reply, then the agent and its ready .env as files: a working agent from the phone."""
        self._send(ctx, *views.new_key(key, self._endpoint, ctx.user_id))
        await self._send_agent_file(ctx)
        name, content, caption, keyboard = views.agent_env(key, self._endpoint, ctx.user_id)
        self._outbox.submit(ctx.chat_id, partial(self._api.send_document, ctx.chat_id, name, content, caption,
                                                 keyboard, content_type="text/plain", thread_id=ctx.thread_id))

    async def _send_agent_file(self, ctx: Context) -> None:
        try:
            data = await trio.to_thread.run_sync(AGENT_FILE.read_bytes)
        except OSError as exc:
            log.warning("cannot read the agent file %s: %s", AGENT_FILE, exc)
            self._send(ctx, _("The agent file is not on this server; get agent/mbot_agent.py from mbot's repository."))
            return
        self._outbox.submit(ctx.chat_id, partial(self._api.send_document, ctx.chat_id, "mbot_agent.py", data,
                                                 _(views.AGENT_CAPTION), content_type="text/x-python",
                                                 thread_id=ctx.thread_id))

    def _send(self, ctx: Context, text: str, keyboard: views.Keyboard | None = None) -> None:
        self._outbox.submit(ctx.chat_id, partial(self._api.send_message, ctx.chat_id, text, reply_markup=keyboard,
                                                 thread_id=ctx.thread_id))

    def _edit(self, ctx: Context, text: str, keyboard: views.Keyboard | None = None) -> None:
        if ctx.message_id is None:
            self._send(ctx, text, keyboard)
            return
        self._outbox.submit(ctx.chat_id, partial(self._api.edit_message_text, ctx.chat_id, ctx.message_id, text,
                                                 reply_markup=keyboard))
