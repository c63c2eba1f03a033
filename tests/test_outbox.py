"""Outbox timing and failure policy with trio's MockClock and a fake sender (no network), plus RateLimiter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from mbot.telegram.api import TelegramRejected, TelegramUnavailable
from mbot.telegram.outbox import Outbox, OutboxDropped, RateLimiter

# --- RateLimiter: pure, no clock --------------------------------------------------------------------------


def test_limiter_spaces_one_chat_by_a_second() -> None:
    limiter = RateLimiter()
    assert limiter.next_allowed(1, 100.0) == 100.0
    limiter.record(1, 100.0)
    assert limiter.next_allowed(1, 100.0) == 101.0
    assert limiter.next_allowed(1, 100.5) == 101.0
    assert limiter.next_allowed(1, 102.0) == 102.0


def test_limiter_global_rate_and_groups() -> None:
    limiter = RateLimiter(global_rate=30.0)
    limiter.record(1, 10.0)
    assert limiter.next_allowed(2, 10.0) == pytest.approx(10.0 + 1 / 30)  # another chat: only the global gap
    limiter.record(-1001, 20.0)
    assert limiter.next_allowed(-1001, 20.0) == 23.0  # groups: 20 per minute
    limiter.record("@channel", 30.0)
    assert limiter.next_allowed("@channel", 30.0) == 33.0


def test_limiter_forgets_old_chats() -> None:
    limiter = RateLimiter()
    for chat in range(2000):
        limiter.record(chat, float(chat))
    assert len(limiter._chat_next) <= 1025


# --- Outbox with MockClock --------------------------------------------------------------------------------


class FakeSender:
    """Records (time, chat, n) per send; can fail chosen sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, Any, int]] = []
        self.failures: dict[int, list[BaseException]] = {}
        self._changed = trio.Event()

    async def send(self, chat_id: Any, n: int) -> dict[str, Any]:
        errors = self.failures.get(n)
        if errors:
            raise errors.pop(0)
        self.sent.append((trio.current_time(), chat_id, n))
        self._changed.set()
        self._changed = trio.Event()
        return {"message_id": n, "chat": {"id": chat_id}}

    def submit(self, outbox: Outbox, chat_id: Any, n: int) -> None:
        outbox.submit(chat_id, partial(self.send, chat_id, n))

    async def wait_count(self, count: int) -> None:
        while len(self.sent) < count:
            await self._changed.wait()

    def times(self, chat_id: Any = None) -> list[float]:
        return [t for t, c, _ in self.sent if chat_id is None or c == chat_id]


@asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[Outbox]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run)
        yield outbox
        nursery.cancel_scope.cancel()


async def test_one_chat_gets_one_message_per_second(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox()
    for n in range(10):
        sender.submit(outbox, 42, n)
    assert outbox.depth == 10
    async with running(outbox):
        await sender.wait_count(10)
    times = sender.times()
    assert [n for _, _, n in sender.sent] == list(range(10))  # in order
    assert times[-1] - times[0] >= 9.0
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:]))
    assert outbox.depth == 0 and outbox.sent == 10


async def test_many_chats_share_thirty_per_second(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox()
    for chat in range(60):
        sender.submit(outbox, chat + 1, chat)
    async with running(outbox):
        await sender.wait_count(60)
    times = sender.times()
    assert 1.9 <= times[-1] - times[0] <= 2.1  # 60 messages at 30/s
    window = 1.0 - 1e-9  # spacing is exactly 1/30 s, so a closed 1 s window would see 31 (float noise)
    assert max(sum(1 for t in times if start <= t < start + window) for start in times) <= 30


async def test_busy_chat_does_not_starve_others(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox()
    for n in range(20):
        sender.submit(outbox, 1, n)  # an alert storm in one chat, queued first
    sender.submit(outbox, 2, 100)
    sender.submit(outbox, 3, 101)
    async with running(outbox):
        await sender.wait_count(22)
    start = sender.times()[0]
    assert sender.times(2)[0] - start < 0.5 and sender.times(3)[0] - start < 0.5


async def test_overflow_drops_oldest(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox(max_queued=5)
    for n in range(8):
        sender.submit(outbox, 1 + n % 2, n)
    assert outbox.depth == 5 and outbox.dropped == 3
    async with running(outbox):
        await sender.wait_count(5)
    assert sorted(n for _, _, n in sender.sent) == [3, 4, 5, 6, 7]


async def test_request_returns_result_and_reports_drop(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox(max_queued=1)
    async with running(outbox):
        message = await outbox.request(5, partial(sender.send, 5, 1))
        assert message["message_id"] == 1

    outbox = Outbox(max_queued=1)
    errors: list[BaseException] = []

    async def doomed() -> None:
        try:
            await outbox.request(5, partial(sender.send, 5, 2))
        except OutboxDropped as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(doomed)
        await trio.testing.wait_all_tasks_blocked()
        sender.submit(outbox, 6, 3)  # pushes the waiting request out of the one-slot queue
    assert len(errors) == 1 and outbox.dropped == 1


async def test_rejected_is_dropped_and_the_rest_flows(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox()
    sender.failures[1] = [TelegramRejected(403, "Forbidden: bot was blocked by the user")]
    sender.submit(outbox, 9, 0)
    sender.submit(outbox, 9, 1)
    sender.submit(outbox, 9, 2)
    async with running(outbox):
        await sender.wait_count(2)
        sender.failures[3] = [TelegramRejected(400, "Bad Request: chat not found")]
        with pytest.raises(TelegramRejected):
            await outbox.request(9, partial(sender.send, 9, 3))
    assert [n for _, _, n in sender.sent] == [0, 2]
    assert outbox.rejected == 2 and outbox.dropped == 0


async def test_unavailable_delays_but_keeps_order(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox(retry_delay=1.0, max_retry_delay=60.0)
    sender.failures[0] = [TelegramUnavailable("down")] * 3  # Telegram down for the first three tries
    for n in range(3):
        sender.submit(outbox, 7, n)
    start = trio.current_time()
    async with running(outbox):
        await sender.wait_count(3)
    assert [n for _, _, n in sender.sent] == [0, 1, 2]
    assert sender.times()[0] - start >= 1.0 + 2.0 + 4.0  # paused 1, 2, 4 s between tries
    assert outbox.dropped == 0 and outbox.sent == 3


async def test_unavailable_honours_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox()
    sender.failures[0] = [TelegramUnavailable("429", retry_after=30.0)]
    sender.submit(outbox, 7, 0)
    sender.submit(outbox, 8, 1)  # the pause holds every chat, not only the one that hit flood control
    start = trio.current_time()
    async with running(outbox):
        await sender.wait_count(2)
    assert min(sender.times()) - start >= 30.0


async def test_outage_keeps_messages_up_to_the_bound(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox(max_queued=3)
    sender.failures[0] = [TelegramUnavailable("down")]
    async with running(outbox):
        sender.submit(outbox, 1, 0)
        await trio.testing.wait_all_tasks_blocked()  # 0 failed and is held
        for n in range(1, 4):
            sender.submit(outbox, 1, n)
        await sender.wait_count(3)
    assert outbox.dropped == 1
    assert [n for _, _, n in sender.sent] == [1, 2, 3]  # the oldest (the held one) made room


async def test_cancelled_request_is_withdrawn(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox()
    sender.submit(outbox, 1, 0)
    async with running(outbox):
        with trio.move_on_after(0.5):
            await outbox.request(1, partial(sender.send, 1, 1))  # due at t=1, cancelled before
        assert outbox.depth == 0
        await trio.sleep(5)
    assert [n for _, _, n in sender.sent] == [0]


async def test_broken_send_callable_does_not_stop_the_outbox(autojump_clock: trio.testing.MockClock) -> None:
    sender, outbox = FakeSender(), Outbox()

    async def broken() -> None:
        raise ValueError("bug in a view")

    outbox.submit(1, broken)
    sender.submit(outbox, 1, 1)
    async with running(outbox):
        await sender.wait_count(1)
    assert [n for _, _, n in sender.sent] == [1]


async def test_on_sent_runs_before_the_next_message_to_that_chat(autojump_clock: trio.testing.MockClock) -> None:
    """What an alert's reminder and end rely on: they read the message_id of its first message when they are sent,
    and an outage in between (retries) changes nothing about that."""
    sender, outbox = FakeSender(), Outbox(max_in_flight=4)
    seen: list[int] = []
    sender.failures[1] = [TelegramUnavailable("down"), TelegramUnavailable("down")]
    outbox.submit(7, partial(sender.send, 7, 1), on_sent=lambda message: seen.append(message["message_id"]))

    async def reply() -> dict[str, Any]:
        assert seen == [1]  # the first message's id is known
        return await sender.send(7, 2)

    outbox.submit(7, reply)
    sender.failures[3] = [TelegramRejected(400, "Bad Request: chat not found")]
    outbox.submit(8, partial(sender.send, 8, 3), on_sent=lambda message: seen.append(-1))  # refused: not called

    def broken(message: Any) -> None:
        raise ValueError("bug in a callback")

    outbox.submit(8, partial(sender.send, 8, 4), on_sent=broken)
    sender.submit(outbox, 8, 5)
    async with running(outbox):
        await sender.wait_count(4)
    assert sorted(n for _, _, n in sender.sent) == [1, 2, 4, 5] and seen == [1]
