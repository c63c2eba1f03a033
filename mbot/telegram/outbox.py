"""The one way out to Telegram: a bounded, rate-limited, per-chat-fair queue of sends.

Telegram throttles bots that send more than about 1 message/s to a chat, 20/min to a group or 30/s overall;
an alert storm sent directly would earn 429s and delays for everything else. Here it queues instead.

A queued message is a zero-argument async callable, normally a functools.partial of a BotApi method:

    outbox.submit(chat_id, partial(api.send_message, chat_id, text))            # fire and forget
    outbox.submit(chat_id, partial(api.send_message, chat_id, text), on_sent=remember)  # remember(Message)
    msg = await outbox.request(chat_id, partial(api.send_photo, chat_id, png))  # need the message_id

Per chat, messages go out in order, one at a time, and a message's `on_sent` runs before the next one to its
chat goes: a later send can use what an earlier one returned (an alert's edit, the message_id of its first message)
without its caller waiting for either. Across chats, due chats are served round-robin.
TelegramRejected drops the message (logged); TelegramUnavailable keeps it at the head of its chat's queue and
pauses the whole outbox for a while: an outage delays messages, it does not lose them, up to `max_queued`,
beyond which the oldest queued message is dropped.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import trio

from mbot.telegram.api import TelegramRejected, TelegramUnavailable

log = logging.getLogger(__name__)

Send = Callable[[], Awaitable[Any]]
ChatId = int | str


class RateLimiter:
    """Pure and clock-free: when may the next message to a chat go out, given the sends recorded so far?

    Spacing rather than windows: at most one message per `per_chat` seconds to a private chat, one per
    `per_group` seconds to a group (negative chat id; 20/min), and one per 1/`global_rate` seconds overall.
    """

    def __init__(self, *, per_chat: float = 1.0, per_group: float = 3.0, global_rate: float = 30.0) -> None:
        self.per_chat = per_chat
        self.per_group = per_group
        self.global_interval = 1.0 / global_rate
        self._chat_next: dict[ChatId, float] = {}
        self._global_next = -math.inf

    def _interval(self, chat_id: ChatId) -> float:
        # Groups and channels have negative ids; a "@channel" username is never a private chat.
        is_group = isinstance(chat_id, str) or chat_id < 0
        return self.per_group if is_group else self.per_chat

    def next_allowed(self, chat_id: ChatId, now: float) -> float:
        """The earliest time >= now at which a message to chat_id may be sent."""
        return max(now, self._global_next, self._chat_next.get(chat_id, -math.inf))

    def record(self, chat_id: ChatId, now: float) -> None:
        """Note a send to chat_id at time now."""
        self._global_next = now + self.global_interval
        self._chat_next[chat_id] = now + self._interval(chat_id)
        if len(self._chat_next) > 1024:  # forget chats whose spacing has long passed
            self._chat_next = {c: t for c, t in self._chat_next.items() if t > now}


class OutboxDropped(Exception):
    """Raised to a `request` caller whose message was dropped because the outbox was full."""


@dataclass(eq=False)
class _Message:
    seq: int
    chat_id: ChatId
    send: Send
    waiter: _Waiter | None = None
    on_sent: Callable[[Any], None] | None = None

    def describe(self) -> str:
        func = self.send.func if isinstance(self.send, functools.partial) else self.send
        return f"{getattr(func, '__name__', 'send')} to chat {self.chat_id}"


@dataclass(eq=False)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


def _settle(message: _Message, result: Any = None, error: BaseException | None = None) -> None:
    if message.waiter is not None and not message.waiter.done.is_set():
        message.waiter.result, message.waiter.error = result, error
        message.waiter.done.set()


class Outbox:
    """Start `run()` in the app's nursery; `submit`/`request` from anywhere in the same trio run."""

    def __init__(
        self,
        *,
        max_queued: int = 1000,
        max_in_flight: int = 4,
        limiter: RateLimiter | None = None,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ) -> None:
        if max_queued < 1 or max_in_flight < 1:
            raise ValueError("max_queued and max_in_flight must be >= 1")
        self.max_queued = max_queued
        self.limiter = limiter or RateLimiter()
        self.dropped = 0  # queued messages thrown away because the queue was full
        self.rejected = 0  # messages Telegram refused
        self.sent = 0
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._next_retry_delay = retry_delay
        self._paused_until = -math.inf
        self._outage_since: float | None = None
        self._seq = 0
        self._depth = 0
        # Invariant: a chat is in _ready iff it has queued messages and none in flight.
        self._queues: dict[ChatId, deque[_Message]] = {}
        self._ready: deque[ChatId] = deque()
        self._in_flight: set[ChatId] = set()
        self._slots = trio.Semaphore(max_in_flight)
        self._wake = trio.Event()

    @property
    def depth(self) -> int:
        """Messages queued and not yet handed to Telegram."""
        return self._depth

    def submit(self, chat_id: ChatId, send: Send, *, on_sent: Callable[[Any], None] | None = None) -> None:
        """Queue a send; never blocks. Failures are logged, not reported; `on_sent` gets the result of a send
        that went through (in the outbox's task: it must not block)."""
        self._enqueue(chat_id, send, None).on_sent = on_sent

    async def request(self, chat_id: ChatId, send: Send) -> Any:
        """Queue a send and wait for its result (e.g. the Message, for its message_id).

        Raises TelegramRejected if Telegram refused it, OutboxDropped if it was pushed out of a full queue.
        Cancelling the caller withdraws the message if it has not been sent yet.
        """
        message = self._enqueue(chat_id, send, _Waiter())
        waiter = message.waiter
        assert waiter is not None
        try:
            await waiter.done.wait()
        finally:
            if not waiter.done.is_set():
                self._withdraw(message)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def run(self) -> NoReturn:
        async with trio.open_nursery() as nursery:
            while True:
                await self._slots.acquire()
                message = await self._next_due()
                nursery.start_soon(self._deliver, message)

    # --- queue bookkeeping --------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    def _enqueue(self, chat_id: ChatId, send: Send, waiter: _Waiter | None) -> _Message:
        self._seq += 1
        message = _Message(self._seq, chat_id, send, waiter)
        self._push(message, front=False)
        return message

    def _push(self, message: _Message, *, front: bool) -> None:
        chat = message.chat_id
        queue = self._queues.get(chat)
        if queue is None:
            queue = self._queues[chat] = deque()
            if chat not in self._in_flight:
                self._ready.append(chat)
        if front:
            queue.appendleft(message)
        else:
            queue.append(message)
        self._depth += 1
        while self._depth > self.max_queued:
            self._drop_oldest()
        self._notify()

    def _take(self, chat: ChatId) -> _Message:
        queue = self._queues[chat]
        message = queue.popleft()
        if not queue:
            del self._queues[chat]
        self._depth -= 1
        return message

    def _remove(self, message: _Message) -> None:
        chat = message.chat_id
        queue = self._queues[chat]
        queue.remove(message)
        if not queue:
            del self._queues[chat]
            if chat in self._ready:
                self._ready.remove(chat)
        self._depth -= 1

    def _drop_oldest(self) -> None:
        # Each chat's queue is in submission order (a retried message keeps its old seq), so the oldest
        # message overall is the oldest of the heads.
        chat = min(self._queues, key=lambda c: self._queues[c][0].seq)
        message = self._queues[chat][0]
        self._remove(message)
        self.dropped += 1
        log.warning("outbox full (%d queued): dropped the oldest message, %s", self.max_queued, message.describe())
        _settle(message, error=OutboxDropped(f"outbox full: dropped {message.describe()}"))

    def _withdraw(self, message: _Message) -> None:
        queue = self._queues.get(message.chat_id)
        if queue is not None and message in queue:
            self._remove(message)

    # --- sending ------------------------------------------------------------------------------------------

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until deadline or until the queue changes, whichever comes first."""
        wake = self._wake
        with trio.move_on_at(deadline):
            await wake.wait()

    async def _next_due(self) -> _Message:
        while True:
            now = trio.current_time()
            if self._paused_until > now:
                await trio.sleep_until(self._paused_until)
                continue
            earliest = math.inf
            for index, chat in enumerate(self._ready):
                due = self.limiter.next_allowed(chat, now)
                if due <= now:
                    del self._ready[index]
                    self._in_flight.add(chat)
                    self.limiter.record(chat, now)
                    return self._take(chat)
                earliest = min(earliest, due)
            await self._sleep_until(earliest)

    async def _deliver(self, message: _Message) -> None:
        chat = message.chat_id
        try:
            result = await message.send()
        except TelegramRejected as exc:
            self.rejected += 1
            log.warning("outbox: telegram refused %s (%s); dropped", message.describe(), exc)
            _settle(message, error=exc)
        except TelegramUnavailable as exc:
            self._hold(message, exc)
        except Exception as exc:
            # A broken send callable must not take the outbox (and every later alert) down with it.
            log.exception("outbox: %s failed; dropped", message.describe())
            _settle(message, error=exc)
        else:
            self.sent += 1
            if self._outage_since is not None:
                log.info(
                    "outbox: telegram reachable again after %.1f s; %d message(s) queued",
                    trio.current_time() - self._outage_since,
                    self._depth,
                )
                self._outage_since = None
            self._next_retry_delay = self._retry_delay
            _settle(message, result=result)
            if message.on_sent is not None:
                try:
                    message.on_sent(result)
                except Exception:
                    log.exception("outbox: the callback of %s failed", message.describe())
        finally:
            self._in_flight.discard(chat)
            if chat in self._queues and chat not in self._ready:
                self._ready.append(chat)
            self._slots.release()
            self._notify()

    def _hold(self, message: _Message, exc: TelegramUnavailable) -> None:
        now = trio.current_time()
        if exc.retry_after is not None:
            delay = exc.retry_after
        else:
            delay = self._next_retry_delay
            self._next_retry_delay = min(self._max_retry_delay, self._next_retry_delay * 2)
        self._paused_until = max(self._paused_until, now + delay)
        if self._outage_since is None:
            self._outage_since = now
            log.warning("outbox: telegram unavailable (%s); holding messages, retrying in %.1f s", exc, delay)
        else:
            log.debug("outbox: still unavailable (%s); retrying in %.1f s", exc, delay)
        self._push(message, front=True)
