"""BotApi and poll_updates against the fake Bot API server, over real HTTP with the real clock."""

from __future__ import annotations

import logging
import socket
import struct
import zlib
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from fakebot import FakeBot, running_fakebot
from mbot.telegram.api import (
    BotApi,
    RetryPolicy,
    TelegramRejected,
    TelegramUnavailable,
    poll_updates,
    quiet_httpx_logging,
    redact,
)

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, deadline=5.0)


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture
async def fake():
    async with running_fakebot() as bot:
        yield bot


@pytest.fixture
async def api(fake: FakeBot):
    async with BotApi(fake.url, fake.token, retry=FAST) as api:
        yield api


class MemoryOffsets:
    def __init__(self) -> None:
        self.offset = 0
        self.saved: list[int] = []

    async def load(self) -> int:
        return self.offset

    async def save(self, offset: int) -> None:
        self.offset = offset
        self.saved.append(offset)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_round_trips(fake: FakeBot, api: BotApi) -> None:
    me = await api.get_me()
    assert me["is_bot"] and me["username"]
    assert await api.set_my_commands([("status", "Host status"), ("help", "Help")]) is True
    assert fake.commands == [{"command": "status", "description": "Host status"},
                             {"command": "help", "description": "Help"}]

    keyboard = {"inline_keyboard": [[{"text": "Refresh", "callback_data": "refresh:web1"}]]}
    msg = await api.send_message(42, "<b>web1</b> is up &amp; fine", reply_markup=keyboard)
    assert msg["chat"]["id"] == 42 and msg["text"].startswith("<b>web1")
    call = fake.calls("sendMessage")[0]
    assert call.params["reply_markup"] == keyboard and call.params["parse_mode"] == "HTML"

    edited = await api.edit_message_text(42, msg["message_id"], "web1 is down")
    assert edited["text"] == "web1 is down" and "reply_markup" not in edited
    assert await api.edit_message_reply_markup(42, msg["message_id"], keyboard)
    assert await api.answer_callback_query("cbq-1", "Refreshing", show_alert=True) is True
    assert fake.calls("answerCallbackQuery")[0].params["show_alert"] is True
    assert await api.send_chat_action(42, "upload_photo") is True
    assert await api.delete_message(42, msg["message_id"]) is True
    assert (42, msg["message_id"]) not in fake.messages


async def test_multipart_uploads_deliver_exact_bytes(fake: FakeBot, api: BotApi) -> None:
    png = tiny_png()
    keyboard = {"inline_keyboard": [[{"text": "1h", "callback_data": "plot:1h"}]]}
    msg = await api.send_photo(-100, png, caption="<i>cpu</i>", reply_markup=keyboard)
    call = fake.calls("sendPhoto")[0]
    assert call.files["photo"].data == png and call.files["photo"].content_type == "image/png"
    assert call.params == {"chat_id": -100, "caption": "<i>cpu</i>", "parse_mode": "HTML", "reply_markup": keyboard}
    assert msg["photo"][0]["width"] == 3 and msg["photo"][0]["height"] == 2

    blob = bytes(range(256)) * 4 + b"\r\n--not-a-boundary\r\n"
    await api.send_document(7, "metrics.csv", blob, caption="export")
    doc = fake.calls("sendDocument")[0]
    assert doc.files["document"].data == blob and doc.files["document"].filename == "metrics.csv"

    png2 = tiny_png(5, 5)
    edited = await api.edit_message_media(-100, msg["message_id"], png2, caption="cpu, 24 h")
    media_call = fake.calls("editMessageMedia")[0]
    assert media_call.params["media"] == {"type": "photo", "media": "attach://photo", "caption": "cpu, 24 h",
                                          "parse_mode": "HTML"}
    assert media_call.files["photo"].data == png2
    assert edited["photo"][0]["width"] == 5 and edited["caption"] == "cpu, 24 h"


async def test_not_modified_is_success(fake: FakeBot, api: BotApi) -> None:
    msg = await api.send_message(42, "same")
    assert await api.edit_message_text(42, msg["message_id"], "same") is True
    assert api.errors["rejected"] == 0


async def test_rejected_is_not_retried(fake: FakeBot, api: BotApi) -> None:
    with pytest.raises(TelegramRejected) as info:
        await api.send_message(42, "x" * 5000)
    assert info.value.error_code == 400 and "too long" in info.value.description
    assert fake.attempts["sendMessage"] == 1 and api.errors["rejected"] == 1

    fake.fail_next("sendMessage", 403, description="Forbidden: bot was blocked by the user")
    with pytest.raises(TelegramRejected) as info:
        await api.send_message(42, "hi")
    assert info.value.error_code == 403 and fake.attempts["sendMessage"] == 2

    with pytest.raises(TelegramRejected) as info:
        await api.call("noSuchMethod")
    assert info.value.error_code == 404


async def test_429_waits_retry_after(fake: FakeBot, api: BotApi) -> None:
    fake.fail_next("sendMessage", 429, retry_after=1)
    start = trio.current_time()
    msg = await api.send_message(42, "after the flood")
    assert trio.current_time() - start >= 1.0
    assert msg["text"] == "after the flood"
    assert fake.attempts["sendMessage"] == 2 and api.errors["429"] == 1


async def test_429_longer_than_deadline_gives_up_with_retry_after(fake: FakeBot) -> None:
    fake.fail_next(None, 429, retry_after=30)
    async with BotApi(fake.url, fake.token, retry=FAST) as api:
        with pytest.raises(TelegramUnavailable) as info:
            await api.get_me()
    assert info.value.retry_after == 30


async def test_5xx_then_success(fake: FakeBot, api: BotApi) -> None:
    fake.fail_next("getMe", 502, count=2)
    assert (await api.get_me())["is_bot"]
    assert fake.attempts["getMe"] == 3 and api.errors["5xx"] == 2

    fake.fail_next("getMe", 500, count=10)
    with pytest.raises(TelegramUnavailable):
        await api.get_me()
    assert fake.attempts["getMe"] == 3 + FAST.max_attempts


async def test_timeout_is_retried(fake: FakeBot) -> None:
    fake.delay = 0.15
    client = httpx.AsyncClient(timeout=0.05)
    async with client, BotApi(fake.url, fake.token, client, retry=FAST) as api:
        with pytest.raises(TelegramUnavailable):
            await api.get_me()
        assert api.errors["timeout"] == FAST.max_attempts
        assert not client.is_closed  # a client passed in stays the caller's to close


async def test_connection_refused_gives_up_after_bounded_retries() -> None:
    async with BotApi(f"http://127.0.0.1:{closed_port()}", "1:secret", retry=FAST) as api:
        with pytest.raises(TelegramUnavailable) as info:
            await api.get_me()
    assert api.errors["network"] == FAST.max_attempts
    assert "secret" not in str(info.value)


async def test_token_never_logged(fake: FakeBot, caplog: pytest.LogCaptureFixture) -> None:
    # Even with httpx turned up to INFO, where it logs every request URL (the app turns it down).
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    errors: list[BaseException] = []
    async with BotApi(fake.url, fake.token, retry=FAST) as api:
        await api.get_me()
        fake.fail_next(None, 429, retry_after=0)
        fake.fail_next(None, 502)
        await api.get_me()
        for attempt in (lambda: api.call("nope"), lambda: api.send_message(1, "<oops")):
            try:
                await attempt()
            except TelegramRejected as exc:
                errors.append(exc)
                logging.getLogger("mbot.test").warning("dropped: %s", exc)
    async with BotApi(f"http://127.0.0.1:{closed_port()}", fake.token, retry=FAST) as api:
        try:
            await api.get_me()
        except TelegramUnavailable as exc:
            errors.append(exc)
            logging.getLogger("mbot.test").exception("telegram down")
    async with BotApi(fake.url, "999:wrong-token", retry=FAST) as api:
        with pytest.raises(TelegramRejected) as info:
            await api.get_me()
        assert info.value.error_code == 401
    assert len(errors) == 3
    assert any(r.name == "httpx" for r in caplog.records)  # the request lines were there, redacted
    assert fake.token not in caplog.text
    assert all(fake.token not in r.getMessage() for r in caplog.records)
    assert all(fake.token not in str(e) and e.__cause__ is None for e in errors)


def test_redact_and_quiet_logging() -> None:
    assert redact("POST http://x/bot1:abc/getMe", None) == "POST http://x/bot<redacted>/getMe"
    assert "abc" not in redact("token 1:abc here", "1:abc")
    httpx_logger = logging.getLogger("httpx")
    old = httpx_logger.level
    try:
        quiet_httpx_logging()
        assert httpx_logger.getEffectiveLevel() == logging.WARNING
    finally:
        httpx_logger.setLevel(old)


@given(st.integers(min_value=0, max_value=200))
def test_backoff_is_full_jitter_within_cap(attempt: int) -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    assert 0.0 <= policy.backoff(attempt) <= min(30.0, 0.5 * 2**attempt)


def run_poller(api: BotApi, store: MemoryOffsets, handler: Any, nursery: trio.Nursery) -> None:
    nursery.start_soon(partial(poll_updates, api, store, handler, timeout=1, backoff=FAST))


async def test_poll_updates(fake: FakeBot, api: BotApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mbot")
    store = MemoryOffsets()
    handled: list[dict[str, Any]] = []
    got: dict[int, trio.Event] = {}

    async def handler(update: dict[str, Any]) -> None:
        handled.append(update)
        if len(handled) in got:
            got[len(handled)].set()
        if update.get("message", {}).get("text") == "boom":
            raise RuntimeError("handler bug")

    first = [fake.push_message(1, "/status"), fake.push_message(1, "boom"), fake.push_callback(1, "refresh", 5)]
    fake.fail_next("getUpdates", 502, count=2)  # Telegram is down when polling starts
    got[3] = trio.Event()
    async with trio.open_nursery() as nursery:
        run_poller(api, store, handler, nursery)
        with trio.fail_after(5):
            await got[3].wait()
        nursery.cancel_scope.cancel()

    assert [u["update_id"] for u in handled] == [u["update_id"] for u in first]
    assert handled[2]["callback_query"]["data"] == "refresh"
    assert store.saved == [u["update_id"] + 1 for u in first]  # the failing update was saved past too
    assert fake.allowed_updates == ["message", "callback_query", "my_chat_member"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("getUpdates failing" in m for m in messages) == 1  # once per outage, not per attempt
    assert sum("recovered" in m for m in messages) == 1
    assert any("handler failed on update" in m for m in messages)

    # A restart from the saved offset does not see the old updates again, only new ones.
    handled.clear()
    new = fake.push_message(2, "/help")
    got.clear()
    got[1] = trio.Event()
    async with trio.open_nursery() as nursery:
        run_poller(api, store, handler, nursery)
        with trio.fail_after(5):
            await got[1].wait()
        nursery.cancel_scope.cancel()
    assert [u["update_id"] for u in handled] == [new["update_id"]]
    assert store.offset == new["update_id"] + 1


async def test_poll_updates_survives_unreachable_telegram(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mbot")
    async with BotApi(f"http://127.0.0.1:{closed_port()}", "1:secret") as api:
        with trio.move_on_after(0.25) as scope:
            await poll_updates(api, MemoryOffsets(), handler=None, timeout=1, backoff=FAST)  # type: ignore[arg-type]
    assert scope.cancelled_caught  # still polling (backing off), never raised
    assert api.errors["network"] > 3
    assert sum("getUpdates failing" in r.getMessage() for r in caplog.records) == 1
