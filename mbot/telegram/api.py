"""The Bot API edge: every call to Telegram goes through `BotApi.call`.

One call path means one place for the failure policy (429 waits, backoff on 5xx and network errors,
rejections never retried), one place for token redaction and one set of error counters.

Token hygiene: request URLs are `{base_url}/bot{token}/{method}`, so anything that prints a URL leaks the
token. Our exceptions carry redacted text only and are raised `from None` so a logged traceback cannot show
httpx's original exception. httpx itself logs every request URL at INFO on the "httpx" logger: the app calls
`quiet_httpx_logging()` at startup (sets it to WARNING), and each BotApi also puts a redacting filter on that
logger in case someone turns it back up while debugging.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import httpx
import trio

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.telegram.org"
# my_chat_member: the bot was added to or removed from a group (mbot/telegram/groups.py drops what it bound there).
ALLOWED_UPDATES = ["message", "callback_query", "my_chat_member"]
REDACTED = "<redacted>"

# Any "/bot<something>/" path segment: catches tokens even where we do not know which token it is.
_BOT_SEGMENT = re.compile(r"/bot[^/\s\"']+")

# (filename, content, content type): the httpx `files` tuple form.
FileField = tuple[str, bytes, str]


def redact(text: str, token: str | None = None) -> str:
    """Text with the bot token (and any /bot<...> URL segment) replaced by <redacted>."""
    if token:
        text = text.replace(token, REDACTED)
    return _BOT_SEGMENT.sub("/bot" + REDACTED, text)


def quiet_httpx_logging() -> None:
    """Set httpx's loggers to WARNING: at INFO httpx logs each request URL, and ours contain the token."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


class _RedactFilter(logging.Filter):
    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._token in message or "/bot" in message:
            record.msg, record.args = redact(message, self._token), None
        return True


class TelegramError(Exception):
    """Base class; messages never contain the token."""


class TelegramUnavailable(TelegramError):
    """Telegram could not be reached or kept failing (5xx, network, timeout, 429) after the retries allowed.

    retry_after is set when Telegram asked us to wait (429) longer than the retry policy allowed.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TelegramRejected(TelegramError):
    """Telegram refused the request (400/401/403/404/409...). Retrying the same request cannot help."""

    def __init__(self, error_code: int, description: str, parameters: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{error_code} {description}")
        self.error_code = error_code
        self.description = description
        self.parameters = dict(parameters or {})


@dataclass(frozen=True)
class RetryPolicy:
    """How long `call` keeps retrying transient failures before raising TelegramUnavailable."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    deadline: float = 90.0  # seconds since the first attempt; no retry is started that would end past it

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**attempt)], attempt counting from 0."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(attempt, 62))
        return random.uniform(0.0, ceiling)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
# A callback answer is worthless after ~15 s (the client gives up), so do not retry past that.
CALLBACK_RETRY = RetryPolicy(max_attempts=3, deadline=10.0)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _form_value(value: Any) -> str:
    # Multipart fields are strings: Telegram reads objects and arrays as JSON, booleans as true/false.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _clean(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if v is not None}


class BotApi:
    """Async Bot API client. Use as `async with BotApi(url, token) as api:` (it closes a client it created)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        client: httpx.AsyncClient | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if not token:
            raise ValueError("BotApi needs a bot token")
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"TELEGRAM_API_URL must be an http(s) URL, got {base_url!r}")
        self._base = base_url.rstrip("/")
        self._token = token
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        self._retry = retry
        self.errors: Counter[str] = Counter()  # failed attempts by kind: 429, 5xx, network, timeout, rejected
        self._log_filter = _RedactFilter(token)
        logging.getLogger("httpx").addFilter(self._log_filter)

    async def __aenter__(self) -> BotApi:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        logging.getLogger("httpx").removeFilter(self._log_filter)
        if self._owns_client:
            await self._client.aclose()

    def redact(self, text: str) -> str:
        return redact(text, self._token)

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        files: Mapping[str, FileField] | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> Any:
        """Call a Bot API method and return its `result`.

        Raises TelegramRejected at once for a refusal, TelegramUnavailable once the retry policy is spent.
        An edit that changes nothing ("message is not modified") returns True.
        """
        policy = retry or self._retry
        started = trio.current_time()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(method, params, files, timeout)
            except _Retryable as exc:
                wait = exc.retry_after if exc.retry_after is not None else policy.backoff(attempt - 1)
                spent = trio.current_time() - started
                if attempt >= policy.max_attempts or spent + wait > policy.deadline:
                    raise TelegramUnavailable(
                        f"{method}: {exc.reason} (gave up after {attempt} attempt(s))", retry_after=exc.retry_after
                    ) from None
                log.debug("telegram %s: %s; retry %d in %.2f s", method, exc.reason, attempt, wait)
                await trio.sleep(wait)

    async def _attempt(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        files: Mapping[str, FileField] | None,
        timeout: httpx.Timeout | None,
    ) -> Any:
        url = f"{self._base}/bot{self._token}/{method}"
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if files:
            kwargs["data"] = {k: _form_value(v) for k, v in _clean(params).items()}
            kwargs["files"] = dict(files)
        else:
            kwargs["json"] = _clean(params)
        try:
            response = await self._client.post(url, **kwargs)
        except httpx.TimeoutException as exc:
            self.errors["timeout"] += 1
            raise _Retryable(f"timeout ({type(exc).__name__})") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            self.errors["network"] += 1
            raise _Retryable(f"network error ({type(exc).__name__}: {self.redact(str(exc))})") from None
        return self._result(method, response)

    def _result(self, method: str, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if body.get("ok") is True and response.status_code < 400:
            return body.get("result")
        error_code = body.get("error_code")
        code: int = error_code if isinstance(error_code, int) else response.status_code
        description = self.redact(str(body.get("description") or response.reason_phrase or "no description"))
        given = body.get("parameters")
        parameters: dict[str, Any] = given if isinstance(given, dict) else {}
        if code == 429:
            self.errors["429"] += 1
            retry_after = parameters.get("retry_after") or response.headers.get("retry-after") or 1
            retry_after = max(0.0, float(retry_after))
            log.warning("telegram flood control on %s: retry after %g s", method, retry_after)
            raise _Retryable("429 Too Many Requests", retry_after=retry_after)
        if code >= 500 or (code < 400 and not body):
            # A 5xx, or a 2xx that is not the Bot API's JSON (a proxy's page): Telegram is having trouble.
            self.errors["5xx"] += 1
            raise _Retryable(f"HTTP {code} {description}")
        if code == 400 and "message is not modified" in description:
            log.debug("telegram %s: message is not modified; treated as done", method)
            return True
        self.errors["rejected"] += 1
        raise TelegramRejected(code, description, parameters)

    # --- methods ------------------------------------------------------------------------------------------

    async def get_me(self) -> dict[str, Any]:
        return await self.call("getMe")

    async def set_my_commands(self, commands: Iterable[tuple[str, str]], language_code: str | None = None) -> bool:
        """`language_code`: the menu for users of that language (None: everyone else's)."""
        payload = [{"command": c, "description": d} for c, d in commands]
        params: dict[str, Any] = {"commands": payload}
        if language_code is not None:
            params["language_code"] = language_code
        return await self.call("setMyCommands", params)

    async def get_updates(
        self, offset: int | None = None, timeout: int = 50, *, limit: int = 100, retry: RetryPolicy | None = None
    ) -> list[dict[str, Any]]:
        params = {"offset": offset or None, "timeout": timeout, "limit": limit, "allowed_updates": ALLOWED_UPDATES}
        # The read timeout must outlast the long poll, or every quiet poll would end as a client timeout.
        http_timeout = httpx.Timeout(30.0, connect=10.0, read=timeout + 15.0)
        return await self.call("getUpdates", params, retry=retry, timeout=http_timeout)

    async def send_message(
        self,
        chat_id: int | str,
        text: str,
        parse_mode: str | None = "HTML",
        reply_markup: dict[str, Any] | None = None,
        *,
        disable_notification: bool = False,
        link_preview: bool = False,
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """`reply_to`: a message of this chat to answer; sent all the same if that message is gone. `thread_id`:
        the forum topic of a group to post in (None: the chat itself, or a group's General topic)."""
        params = {
            "chat_id": chat_id,
            "message_thread_id": thread_id,
            "text": text,
            "parse_mode": parse_mode,
            "reply_markup": reply_markup,
            "disable_notification": disable_notification or None,
            "link_preview_options": None if link_preview else {"is_disabled": True},
            "reply_parameters": None if reply_to is None else {"message_id": reply_to,
                                                                "allow_sending_without_reply": True},
        }
        return await self.call("sendMessage", params)

    async def edit_message_text(
        self,
        chat_id: int | str,
        message_id: int,
        text: str,
        parse_mode: str | None = "HTML",
        reply_markup: dict[str, Any] | None = None,
        *,
        link_preview: bool = False,
    ) -> dict[str, Any] | bool:
        params = {
            "chat_id": chat_id,
            "message_id": message_id,
            "text": text,
            "parse_mode": parse_mode,
            "reply_markup": reply_markup,
            "link_preview_options": None if link_preview else {"is_disabled": True},
        }
        return await self.call("editMessageText", params)

    async def edit_message_caption(
        self,
        chat_id: int | str,
        message_id: int,
        caption: str,
        parse_mode: str | None = "HTML",
        reply_markup: dict[str, Any] | None = None,
    ) -> dict[str, Any] | bool:
        params = {"chat_id": chat_id, "message_id": message_id, "caption": caption, "parse_mode": parse_mode,
                  "reply_markup": reply_markup}
        return await self.call("editMessageCaption", params)

    async def edit_message_reply_markup(
        self, chat_id: int | str, message_id: int, reply_markup: dict[str, Any] | None = None
    ) -> dict[str, Any] | bool:
        """Replace the inline keyboard; None removes it."""
        params = {"chat_id": chat_id, "message_id": message_id, "reply_markup": reply_markup}
        return await self.call("editMessageReplyMarkup", params)

    async def send_photo(
        self,
        chat_id: int | str,
        png_bytes: bytes,
        caption: str | None = None,
        reply_markup: dict[str, Any] | None = None,
        *,
        parse_mode: str | None = "HTML",
        filename: str = "chart.png",
        disable_notification: bool = False,
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        return await self._upload("sendPhoto", chat_id, caption, reply_markup, parse_mode,
                                  {"photo": (filename, png_bytes, "image/png")},
                                  disable_notification=disable_notification, thread_id=thread_id)

    async def send_document(
        self,
        chat_id: int | str,
        filename: str,
        data: bytes,
        caption: str | None = None,
        reply_markup: dict[str, Any] | None = None,
        *,
        parse_mode: str | None = "HTML",
        content_type: str = "application/octet-stream",
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        return await self._upload("sendDocument", chat_id, caption, reply_markup, parse_mode,
                                  {"document": (filename, data, content_type)}, thread_id=thread_id)

    async def _upload(self, method: str, chat_id: int | str, caption: str | None,
                      reply_markup: dict[str, Any] | None, parse_mode: str | None,
                      files: Mapping[str, FileField], *, disable_notification: bool = False,
                      thread_id: int | None = None) -> dict[str, Any]:
        params = {"chat_id": chat_id, "message_thread_id": thread_id, "caption": caption,
                  "parse_mode": parse_mode if caption else None,
                  "reply_markup": reply_markup, "disable_notification": disable_notification or None}
        return await self.call(method, params, files)

    async def edit_message_media(
        self,
        chat_id: int | str,
        message_id: int,
        png_bytes: bytes,
        caption: str | None = None,
        reply_markup: dict[str, Any] | None = None,
        *,
        parse_mode: str | None = "HTML",
        filename: str = "chart.png",
    ) -> dict[str, Any] | bool:
        """Replace a photo message's picture with an upload (InputMediaPhoto pointing at attach://photo)."""
        media = {"type": "photo", "media": "attach://photo"}
        if caption is not None:
            media["caption"] = caption
            if parse_mode:
                media["parse_mode"] = parse_mode
        params = {"chat_id": chat_id, "message_id": message_id, "media": media, "reply_markup": reply_markup}
        return await self.call("editMessageMedia", params, {"photo": (filename, png_bytes, "image/png")})

    async def answer_callback_query(
        self, callback_query_id: str, text: str | None = None, show_alert: bool = False
    ) -> bool:
        params = {"callback_query_id": callback_query_id, "text": text, "show_alert": show_alert or None}
        return await self.call("answerCallbackQuery", params, retry=CALLBACK_RETRY)

    async def delete_message(self, chat_id: int | str, message_id: int) -> bool:
        return await self.call("deleteMessage", {"chat_id": chat_id, "message_id": message_id})

    async def get_chat(self, chat_id: int | str) -> dict[str, Any]:
        return await self.call("getChat", {"chat_id": chat_id})

    async def get_chat_member(self, chat_id: int | str, user_id: int) -> dict[str, Any]:
        return await self.call("getChatMember", {"chat_id": chat_id, "user_id": user_id})

    async def send_chat_action(self, chat_id: int | str, action: str, *, thread_id: int | None = None) -> bool:
        """action: typing, upload_photo, upload_document, ..."""
        return await self.call("sendChatAction", {"chat_id": chat_id, "message_thread_id": thread_id,
                                                  "action": action})


# --- long polling --------------------------------------------------------------------------------------------


class OffsetStore(Protocol):
    """Where the next getUpdates offset survives restarts (the app backs it with SQLite via trio.to_thread)."""

    async def load(self) -> int: ...

    async def save(self, offset: int) -> None: ...


UpdateHandler = Callable[[dict[str, Any]], Awaitable[None]]

POLL_BACKOFF = RetryPolicy(base_delay=1.0, max_delay=60.0)


async def poll_updates(
    api: BotApi,
    offset_store: OffsetStore,
    handler: UpdateHandler,
    *,
    timeout: int = 50,
    backoff: RetryPolicy = POLL_BACKOFF,
) -> NoReturn:
    """Long-poll getUpdates forever, handing each update to `handler` in order.

    The offset is saved after each update is handled, so a crash re-delivers at most the update in flight.
    A handler that raises is logged and skipped (its offset is saved too): one bad update must not wedge
    the bot. Telegram being unreachable or refusing (bad token, another poller: 409) never raises out of
    here: the loop backs off, logs once when the outage starts and once when it ends. Handlers run one at a
    time; a slow one should hand its work to a task of its own.
    """
    offset = await offset_store.load()
    failures = 0
    outage_started: float | None = None
    while True:
        try:
            updates = await api.get_updates(offset, timeout=timeout, retry=NO_RETRY)
        except TelegramError as exc:
            if outage_started is None:
                outage_started = trio.current_time()
                log.warning("telegram getUpdates failing (%s); retrying with backoff until it recovers", exc)
            wait = backoff.backoff(failures)
            if isinstance(exc, TelegramUnavailable) and exc.retry_after is not None:
                wait = max(wait, exc.retry_after)
            if isinstance(exc, TelegramRejected):
                wait = max(wait, backoff.max_delay / 2)  # a refusal will not clear up quickly
            failures += 1
            await trio.sleep(wait)
            continue
        if outage_started is not None:
            log.info(
                "telegram getUpdates recovered after %.1f s and %d failed attempt(s)",
                trio.current_time() - outage_started,
                failures,
            )
            outage_started, failures = None, 0
        for update in updates:
            update_id = update.get("update_id")
            if not isinstance(update_id, int) or update_id < offset:
                continue
            try:
                await handler(update)
            except Exception:
                log.exception("handler failed on update %d; skipping it", update_id)
            offset = update_id + 1
            await offset_store.save(offset)
