"""Routes Telegram updates to service calls and views. Holds no business logic of its own.

Who may talk to it is mbot.users: ALLOWED_USERS plus the `users` table (claim and invite codes); everyone else gets
one polite refusal. Every command and every button re-checks, on the server, that the sender owns the host
(service.owned_host); a forged callback naming someone else's host gets exactly the answer a missing host gets.
A button acts only for the user it was made for (the host's owner, or the user its data names): in a group, another
member's press gets a "not for you" alert and the message stays as it is. Replies go through the outbox
(rate-limited); only answerCallbackQuery goes direct, because the client spins until it is answered.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import trio

from .. import alerts, charts, containers, plotspec, plotting, protocol, selfwatch, service, store, users
from ..agents import AgentHub
from ..alerting import Alerting
from .alert_commands import AlertUsageError
from ..plotspec import PlotUsageError
from ..config import Settings
from ..durations import format_duration
from ..model import Host, NewKey
from ..service import NoSuchHost, ServiceError
from ..store import Database
from ..writer import Writer
from . import alert_commands, commands, views
from .api import BotApi, TelegramError, poll_updates
from .commands import Command, UsageError
from .outbox import Outbox
from .views import Callback

log = logging.getLogger(__name__)

OFFSET_KEY = "telegram.offset"
AGENT_FILE = Path(__file__).resolve().parents[2] / "agent" / "mbot_agent.py"
CONFIRM_SECONDS = 60.0
COMMAND_TIMEOUT = 30.0
WATCH_OFFLINE = 600.0  # how long after a reboot to wait for the host to drop off
WATCH_ONLINE = 1800.0  # ... and to come back
# /newkey per user: a burst for setting up a rack at once, then one a minute; MBOT_MAX_HOSTS_PER_USER caps the total.
NEWKEY_BURST, NEWKEY_EVERY = 10, 60.0
# Invite codes a stranger may try: a few typos, then one per 10 minutes (codes are unguessable; this bounds the
# database work and the replies a stranger can cause).
CODE_BURST, CODE_EVERY = 5, 600.0
# tell_owner: the same text to the same owner at most once per this long.
TELL_REPEAT = 600.0


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
                 hub: AgentHub, alerting: Alerting, *, fingerprint: str, agent_port: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._api = api
        self._outbox = outbox
        self._db = db
        self._writer = writer
        self._hub = hub
        self._alerting = alerting
        alerting.set_notify(self._notify)
        self._fingerprint = fingerprint
        self._agent_port = agent_port
        self._clock = clock
        self._username: str | None = None
        self._pending: dict[str, PowerRequest] = {}
        self._users: dict[int, str] = {}  # the `users` table (loaded in run); ALLOWED_USERS come from settings
        self._refused = users.Seen()  # strangers already told "private": once each, in bounded memory
        self._newkey_limit = users.RateLimit(NEWKEY_BURST, NEWKEY_EVERY)
        self._code_limit = users.RateLimit(CODE_BURST, CODE_EVERY)
        self._tell_limit = users.RateLimit(1, TELL_REPEAT)
        self._charts = trio.CapacityLimiter(2)  # renders at once: matplotlib is CPU-bound, keep a core for ingest
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Long-running: polls updates; work that outlives an update (waiting on an agent) runs in its nursery."""
        # Who may use the bot is known before the first update is handled.
        self._users = await self._db.read(users.load_users)
        self._username = await self._db.read(store.get_kv, users.USERNAME_KEY)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
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
            await self._api.set_my_commands(commands.MENU)
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

    def tell_owner(self, owner: int, html_text: str) -> None:
        """Tell a host's owner something the server did to their host (a limit it enforced), as a plain chat
        message through the outbox. Call it from the trio thread; it never blocks and never raises.

        The same text to the same owner goes out at most once per TELL_REPEAT (10 min), so a misbehaving agent
        cannot flood its owner's chat; the outbox bounds the rest. Hosts made by the CLI without --owner (owner 0)
        have nobody to tell."""
        if owner <= 0:
            return
        if not self._tell_limit.take((owner, html_text), self._clock()).allowed:
            return
        self._outbox.submit(owner, partial(self._api.send_message, owner, html_text))

    # --- routing ---------------------------------------------------------------------------------------------

    async def handle(self, update: dict[str, Any]) -> None:
        if "message" in update:
            await self._on_message(update["message"])
        elif "callback_query" in update:
            await self._on_callback(update["callback_query"])

    def _role(self, user_id: int) -> str | None:
        return users.role_of(user_id, self._settings.allowed_users, self._users)

    async def _on_message(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        sender = message.get("from") or {}
        if not text or "id" not in sender:
            return
        ctx = Context(user_id=sender["id"], chat_id=message["chat"]["id"])
        if self._role(ctx.user_id) is None:
            await self._stranger(ctx, text, private=message["chat"].get("type") == "private")
            return
        try:
            command = commands.parse(text, self._username)
        except UsageError as exc:
            self._send(ctx, views.e(str(exc)))
            return
        if command is None:
            return
        try:
            await self._command(ctx, command)
        except (ServiceError, AlertUsageError, PlotUsageError) as exc:
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
            self._send(ctx, views.NOT_ALLOWED)

    async def _redeem(self, ctx: Context, code: str) -> None:
        role = None
        if users.looks_like_code(code):
            role = await self._writer.call(partial(users.redeem, first_is_admin=self._settings.allowed_users is None),
                                           users.code_hash(code), ctx.user_id, self._clock())
        if role is None:
            log.warning("Telegram user %d sent an unknown, used or expired invite code", ctx.user_id)
            self._send(ctx, views.BAD_INVITE)
            return
        self._users[ctx.user_id] = role
        log.info("Telegram user %d joined with a code, as %s", ctx.user_id, role)
        if role == users.ADMIN:
            await self._writer.call(selfwatch.adopt, ctx.user_id)  # the server's own host is the admin's
        self._send(ctx, views.welcome(role))

    async def _command(self, ctx: Context, command: Command) -> None:
        now = self._clock()
        name, args = command.name, command.args
        if name in ("start", "help"):
            # /start CODE from someone who already is a user: the code is left unspent for whoever it was meant for.
            self._send(ctx, views.help_text(admin=self._role(ctx.user_id) == users.ADMIN))
        elif name == "invite":
            await self._invite(ctx, now)
        elif name in ("setalert", "delalert", "alerts", "mute", "unmute"):
            await self._alert_command(ctx, command, now)
        elif name == "plot":
            longest = max(tier.retention for tier in self._settings.tiers)
            request = plotspec.parse_plot(args, max_span=longest)
            host = await self._db.read(service.resolve_host, ctx.user_id, request.host)
            await self._chart(ctx, host, request.metrics, request.span, request.limit, request.unit, None)
        elif name == "newkey":
            decision = self._newkey_limit.take(ctx.user_id, now)
            if not decision.allowed:
                if decision.first_refusal:  # told once per stretch of refusals: a flood gets one answer
                    log.warning("user %d is registering hosts too fast; /newkey refused for now", ctx.user_id)
                    self._send(ctx, views.slow_down("/newkey works", NEWKEY_BURST, NEWKEY_EVERY,
                                                    decision.retry_after))
                return
            key = await self._writer.call(partial(service.new_key, max_hosts=self._settings.max_hosts_per_user),
                                          args[0], ctx.user_id)
            log.info("user %d registered host %s (key %s)", ctx.user_id, key.name, key.key_id)
            await self._send_key(ctx, key)
        elif name == "agent":
            await self._send_agent_file(ctx)
        elif name == "hosts":
            self._send(ctx, *views.host_list(await self._db.read(store.list_hosts, ctx.user_id), now))
        elif name == "status" and not args:
            self._send(ctx, *views.summary(await self._db.read(store.list_hosts, ctx.user_id), now))
        elif name == "status":
            host = await self._db.read(service.resolve_host, ctx.user_id, args[0])
            self._send(ctx, views.host_card(host, now), views.card_keyboard(host, plotting.available_series(host)))
        elif name == "containers":
            host = await self._db.read(service.resolve_host, ctx.user_id, args[0])
            await self._containers(ctx, host, now, edit=False)
        elif name == "rename":
            host = await self._writer.call(service.rename, ctx.user_id, args[0], args[1])
            self._send(ctx, f"<b>{views.e(host.name)}</b> is now <b>{views.e(args[1])}</b>.")
        elif name == "revoke":
            host = await self._db.read(service.resolve_host, ctx.user_id, args[0])
            self._send(ctx, *views.revoke_question(host))
        elif name == "rotate":
            host = await self._db.read(service.resolve_host, ctx.user_id, args[0])
            key = await self._writer.call(service.rotate, ctx.user_id, host.id)
            await self._hub.disconnect(host.id, protocol.CLOSE_REVOKED, "key rotated")
            log.info("user %d rotated the key of host %s", ctx.user_id, host.name)
            await self._send_key(ctx, key)

    async def _containers(self, ctx: Context, host: Host, now: float, *, edit: bool) -> None:
        snapshot = await self._db.read(store.latest_snapshot, host.id, containers.KIND)
        text, keyboard = views.containers_view(host, None if snapshot is None else snapshot.items,
                                               None if snapshot is None else snapshot.received, now)
        (self._edit if edit else self._send)(ctx, text, keyboard)

    async def _invite(self, ctx: Context, now: float) -> None:
        if self._role(ctx.user_id) != users.ADMIN:
            self._send(ctx, views.NOT_ADMIN)
            return
        code = users.new_code()
        await self._writer.call(users.add_invite, users.code_hash(code), now, ctx.user_id)
        log.info("user %d made a one-time invite (valid %.0f h)", ctx.user_id, users.INVITE_TTL / 3600)
        link = users.invite_link(self._username, code)
        self._send(ctx, *views.invite(code, link, ctx.user_id, users.INVITE_TTL / 3600))

    async def _alert_command(self, ctx: Context, command: Command, now: float) -> None:
        name, args = command.name, list(command.args)
        if name == "alerts":
            hosts = await self._db.read(store.list_hosts, ctx.user_id)
            self._send(ctx, views.alerts_overview([h for h in hosts if h.revoked is None], self._alerting.engine, now))
            return
        if name == "setalert":
            spec = alert_commands.parse_setalert(args)
            host = await self._db.read(service.resolve_host, ctx.user_id, spec.name)
            rule = spec.rule(host.id)
            await self._alerting.set_rule(rule)
            self._send(ctx, f"Alert set on <b>{views.e(host.name)}</b>: {views.e(views.rule_text(rule))}.")
        elif name == "delalert":
            delete = alert_commands.parse_delalert(args)
            host = await self._db.read(service.resolve_host, ctx.user_id, delete.name)
            if await self._alerting.delete_rule(host.id, delete.metric):
                self._send(ctx, f"Alert {views.e(delete.metric)} removed from <b>{views.e(host.name)}</b>.")
            else:
                self._send(ctx, f"<b>{views.e(host.name)}</b> has no {views.e(delete.metric)} alert. /alerts lists them.")
        elif name == "mute":
            mute = alert_commands.parse_mute(args)
            host = await self._db.read(service.resolve_host, ctx.user_id, mute.name)
            self._alerting.mute(host.id, now + mute.duration)
            self._send(ctx, f"<b>{views.e(host.name)}</b> muted for {format_duration(mute.duration)}; "
                            "what is still firing then will be reported. /unmute ends it sooner.")
        elif name == "unmute":
            host = await self._db.read(service.resolve_host, ctx.user_id, alert_commands.parse_unmute(args))
            muted_until = self._alerting.engine.host_status(host.id).muted_until
            if muted_until is None or muted_until <= now:
                self._send(ctx, f"<b>{views.e(host.name)}</b> is not muted.")
            else:
                self._alerting.unmute(host.id)  # its MuteEnded message says what is still firing

    async def _chart(self, ctx: Context, host: Host, words: Sequence[str], span: float, limit: float | None,
                     unit: str | None, span_label: str | None, *, replace: bool = False) -> None:
        """Render off the event loop and send (or, for a range button, replace the picture in place)."""
        if not replace:
            # A hint that something is coming; it costs nothing if it fails.
            self._outbox.submit(ctx.chat_id, partial(self._api.send_chat_action, ctx.chat_id, "upload_photo"))
        spec = await self._db.read(plotting.build_spec, host, words, span, limit, unit, self._settings.tiers,
                                   self._settings.tz, self._clock())
        try:
            png = await trio.to_thread.run_sync(charts.render, spec, limiter=self._charts)
        except charts.NoData:
            self._send(ctx, f"No data from <b>{views.e(host.name)}</b> for {views.e(spec.title.split(' · ')[-1])}.")
            return
        keyboard = views.range_keyboard(host.id, words, unit, span_label)
        caption = views.e(spec.title)
        if replace and ctx.message_id is not None:
            self._outbox.submit(ctx.chat_id, partial(self._api.edit_message_media, ctx.chat_id, ctx.message_id, png,
                                                     caption, keyboard))
        else:
            self._outbox.submit(ctx.chat_id, partial(self._api.send_photo, ctx.chat_id, png, caption, keyboard))

    def _notify(self, owner: int, text: str, event: alerts.Event) -> None:
        keyboard = None
        rule = getattr(event, "rule", None)
        metric = alerts.metric_of(rule.metric) if isinstance(rule, alerts.AlertRule) else None
        if metric is not None and metric.kind == alerts.STATE:  # a container: its list says more than a chart
            keyboard = views.keyboard([views.button("🐳 Containers", Callback("containers", (str(event.host_id),)))])
        elif isinstance(rule, alerts.AlertRule):
            callback = views.chart_callback("chart", event.host_id, "1h", None, (rule.metric,))
            if callback is not None:
                keyboard = views.keyboard([views.button("📈 Last hour", callback)])
        self._outbox.submit(owner, partial(self._api.send_message, owner, text, reply_markup=keyboard))

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
        ctx = Context(user_id=query["from"]["id"], chat_id=message["chat"]["id"], message_id=message["message_id"])
        private = message["chat"].get("type") == "private"
        if self._role(ctx.user_id) is None:
            await self._answer(query)
            return
        callback = views.decode_callback(query.get("data", ""))
        if callback is None:
            if private:
                await self._answer(query)
                self._edit(ctx, "This button is no longer valid.")
            else:  # in a group the message may be someone else's: say it to the presser alone
                await self._answer(query, "This button is no longer valid.")
            return
        if not await self._pressed_by_its_user(ctx, callback, private):
            log.info("user %d pressed a %s button meant for someone else in chat %d", ctx.user_id, callback.action,
                     ctx.chat_id)
            await self._answer(query, views.NOT_YOUR_BUTTON)
            return
        await self._answer(query)
        try:
            await self._button(ctx, callback)
        except NoSuchHost as exc:
            self._edit(ctx, views.e(str(exc)))

    async def _pressed_by_its_user(self, ctx: Context, callback: Callback, private: bool) -> bool:
        """Whether the presser is the user this button was made for, before anything is done or edited.

        confirm, cancel and delete name their user in their data (and a power nonce knows its user here); host
        buttons belong to the host's owner. In a private chat the presser is the only member, so a host button
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
            if host is None or host.owner != ctx.user_id:
                return False
        return True

    async def _button(self, ctx: Context, callback: Callback) -> None:
        action, args = callback.action, callback.args
        now = self._clock()
        if action == "delete":
            assert ctx.message_id is not None
            self._outbox.submit(ctx.chat_id, partial(self._api.delete_message, ctx.chat_id, ctx.message_id))
        elif action in ("card", "refresh"):
            host = await self._db.read(service.owned_host, ctx.user_id, int(args[0]))
            text, keyboard = views.host_card(host, now), views.card_keyboard(host, plotting.available_series(host))
            if action == "card":
                self._send(ctx, text, keyboard)
            else:
                self._edit(ctx, text, keyboard)
        elif action == "containers":
            host = await self._db.read(service.owned_host, ctx.user_id, int(args[0]))
            await self._containers(ctx, host, now, edit=len(args) == 2)
        elif action in ("chart", "range"):
            host = await self._db.read(service.owned_host, ctx.user_id, int(args[0]))
            span, unit, words = args[1], None if args[2] == "-" else args[2], tuple(args[3].split(";"))
            try:
                await self._chart(ctx, host, words, views.CHART_SPANS[span], None, unit, span,
                                  replace=action == "range")
            except PlotUsageError as exc:
                self._send(ctx, views.e(str(exc)))
        elif action == "power":
            host = await self._db.read(service.owned_host, ctx.user_id, int(args[0]))
            if not self._hub.is_connected(host.id):
                self._send(ctx, f"<b>{views.e(host.name)}</b> is offline.")
                return
            nonce = secrets.token_urlsafe(9)
            self._forget_expired(now)
            self._pending[nonce] = PowerRequest(ctx.user_id, host.id, args[1], now + CONFIRM_SECONDS)
            self._send(ctx, *views.power_question(host, args[1], nonce))
        elif action == "cancel":
            request = self._pending.get(args[0])
            if request is not None and request.user_id == ctx.user_id:  # checked before; kept next to the pop
                del self._pending[args[0]]
            self._edit(ctx, "Cancelled.")
        elif action == "confirm":
            await self._confirm(ctx, args[0], now)
        elif action == "revoke":
            host = await self._db.read(service.owned_host, ctx.user_id, int(args[0]))
            if args[1] == "no":
                self._edit(ctx, "Cancelled.")
                return
            await self._writer.call(partial(service.revoke, wipe=args[1] == "wipe"), ctx.user_id, host.id)
            self._alerting.host_removed(host.id)
            await self._hub.disconnect(host.id, protocol.CLOSE_REVOKED, "key revoked")
            log.info("user %d revoked host %s (%s)", ctx.user_id, host.name,
                     "history deleted" if args[1] == "wipe" else "history kept")
            kept = "Its history is deleted." if args[1] == "wipe" else "Its history is kept; /rotate gives it a new key."
            self._edit(ctx, f"<b>{views.e(host.name)}</b> is revoked: its agent was disconnected. {kept}")

    def _forget_expired(self, now: float) -> None:
        for nonce in [n for n, r in self._pending.items() if r.expires < now]:
            del self._pending[nonce]

    async def _confirm(self, ctx: Context, nonce: str, now: float) -> None:
        request = self._pending.get(nonce)
        if request is not None and request.user_id == ctx.user_id:
            del self._pending[nonce]  # one time: a second press finds nothing; someone else's press spends nothing
        if request is None or request.user_id != ctx.user_id or request.expires < now:
            self._edit(ctx, "This confirmation has expired; nothing was done.")
            return
        host = await self._db.read(service.owned_host, ctx.user_id, request.host_id)
        audit_id = await self._writer.call(partial(store.add_audit, ts=now, user_id=ctx.user_id, host_id=host.id,
                                                   host_name=host.name, action=request.action,
                                                   outcome="requested"))
        if not self._hub.is_connected(host.id):
            await self._finish_power(ctx, host, request.action, audit_id, "offline",
                                     f"<b>{views.e(host.name)}</b> is offline; nothing was sent.")
            return
        self._edit(ctx, f"Asking <b>{views.e(host.name)}</b> to {request.action}...")
        assert self._nursery is not None
        # Waiting for the agent's answer may take seconds: not while other updates wait behind it.
        self._nursery.start_soon(self._run_power, ctx, host, request.action, audit_id)

    async def _run_power(self, ctx: Context, host: Host, action: str, audit_id: int) -> None:
        name = views.e(host.name)
        try:
            result = await self._hub.run_command(host.id, action, COMMAND_TIMEOUT)
        except LookupError:
            await self._finish_power(ctx, host, action, audit_id, "offline", f"<b>{name}</b> is offline.")
            return
        if result is None:
            await self._finish_power(ctx, host, action, audit_id, "no answer",
                                     f"<b>{name}</b> did not answer within {COMMAND_TIMEOUT:.0f} s.")
        elif not result.ok and result.message == "disabled":
            await self._finish_power(ctx, host, action, audit_id, "disabled",
                                     f"<b>{name}</b> did not {action}. {views.POWER_DISABLED_HINT}")
        elif not result.ok:
            await self._finish_power(ctx, host, action, audit_id, f"failed: {result.message}",
                                     f"<b>{name}</b> could not {action}: {views.e(result.message)}")
        else:
            await self._finish_power(ctx, host, action, audit_id, "ok",
                                     f"<b>{name}</b>: {action} started.")
            await self._watch_restart(ctx, host)

    async def _finish_power(self, ctx: Context, host: Host, action: str, audit_id: int, outcome: str,
                            text: str) -> None:
        await self._writer.call(store.set_audit_outcome, audit_id, outcome)
        log.info("user %d asked host %s to %s: %s", ctx.user_id, host.name, action, outcome)
        self._edit(ctx, text)

    async def _watch_restart(self, ctx: Context, host: Host) -> None:
        """After a reboot or shutdown: say when the host drops off, and when (if) it comes back."""
        name = views.e(host.name)
        with trio.move_on_after(WATCH_OFFLINE):
            await self._hub.wait_until(host.id, connected=False)
            went = self._clock()
            self._send(ctx, f"<b>{name}</b> is offline.")
            with trio.move_on_after(WATCH_ONLINE):
                await self._hub.wait_until(host.id, connected=True)
                self._send(ctx, f"<b>{name}</b> is back online after {format_duration(self._clock() - went)}.")

    # --- sending ---------------------------------------------------------------------------------------------

    async def _send_key(self, ctx: Context, key: NewKey) -> None:
        """The key reply, then the agent and its ready .env as files: a working agent from the phone."""
        public, port, fingerprint = self._settings.public_host, self._agent_port, self._fingerprint
        self._send(ctx, *views.new_key(key, public, port, fingerprint, ctx.user_id))
        await self._send_agent_file(ctx)
        name, content, caption, keyboard = views.agent_env(key, public, port, fingerprint, ctx.user_id)
        self._outbox.submit(ctx.chat_id, partial(self._api.send_document, ctx.chat_id, name, content, caption,
                                                 keyboard, content_type="text/plain"))

    async def _send_agent_file(self, ctx: Context) -> None:
        try:
            data = await trio.to_thread.run_sync(AGENT_FILE.read_bytes)
        except OSError as exc:
            log.warning("cannot read the agent file %s: %s", AGENT_FILE, exc)
            self._send(ctx, "The agent file is not on this server; get agent/mbot_agent.py from mbot's repository.")
            return
        self._outbox.submit(ctx.chat_id, partial(self._api.send_document, ctx.chat_id, "mbot_agent.py", data,
                                                 views.AGENT_CAPTION, content_type="text/x-python"))

    def _send(self, ctx: Context, text: str, keyboard: views.Keyboard | None = None) -> None:
        self._outbox.submit(ctx.chat_id, partial(self._api.send_message, ctx.chat_id, text, reply_markup=keyboard))

    def _edit(self, ctx: Context, text: str, keyboard: views.Keyboard | None = None) -> None:
        if ctx.message_id is None:
            self._send(ctx, text, keyboard)
            return
        self._outbox.submit(ctx.chat_id, partial(self._api.edit_message_text, ctx.chat_id, ctx.message_id, text,
                                                 reply_markup=keyboard))
