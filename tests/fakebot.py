"""A fake Telegram Bot API server: real HTTP (h11 on trio) on 127.0.0.1, speaking Telegram's JSON.

    async with running_fakebot() as bot:                  # or: bot = FakeBot(); await nursery.start(bot.serve)
        async with BotApi(bot.url, bot.token) as api:
            bot.push_message(user_id=42, text="/status")
            call = await bot.wait_for("sendMessage")      # a Call: method, params, files, result

Use the real clock with it: under MockClock's autojump every socket wait looks idle, so timeouts fire at once.

Behaves like Telegram where tests can tell: URLs are /bot<token>/<method> (wrong token: 401, unknown method:
404), JSON, form and multipart bodies are accepted, getUpdates long-polls and forgets updates below `offset`,
sends return Messages with increasing message_id (a reply, by reply_parameters or the older
reply_to_message_id, carries reply_to_message; a missing one is 400 unless allow_sending_without_reply), an edit
that changes nothing is 400 "message is not modified", and a few limits are checked (text length, caption length, callback_data 1-64 bytes, HTML tags)
so that view bugs surface in tests rather than in production.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

DEFAULT_TOKEN = "123456789:AAFake-Token_for_tests"
BOT_USER = {"id": 123456789, "is_bot": True, "first_name": "mbot (fake)", "username": "mbot_fake_bot"}

# Form and multipart values are strings; these fields carry JSON or numbers in real Telegram requests.
_JSON_FIELDS = {"reply_markup", "media", "allowed_updates", "commands", "link_preview_options", "entities",
                "reply_parameters"}
_INT_FIELDS = {"chat_id", "message_id", "offset", "limit", "timeout", "cache_time", "reply_to_message_id",
               "message_thread_id", "user_id"}
_BOOL_FIELDS = {"show_alert", "disable_notification", "allow_sending_without_reply"}
_HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code",
              "pre", "blockquote", "tg-emoji"}


@dataclass
class Upload:
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Call:
    """One accepted API call (getUpdates excluded), as the server parsed it."""

    method: str
    params: dict[str, Any]
    files: dict[str, Upload] = field(default_factory=dict)
    result: Any = None

    @property
    def shown(self) -> str:
        """What the chat shows of a sent message: its text, or its caption (a photo, a document)."""
        return self.params.get("text") or self.params.get("caption") or ""


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


@dataclass
class _Failure:
    method: str | None
    status: int
    retry_after: int | None
    description: str | None
    count: int


class FakeBot:
    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.url = ""  # http://127.0.0.1:PORT once serving
        self.delay = 0.0  # seconds to wait before answering any request
        self.sent: list[Call] = []
        self.attempts: Counter[str] = Counter()  # every request per method, failed ones included
        self.messages: dict[tuple[int | str, int], dict[str, Any]] = {}  # current state of sent messages
        self.commands: list[dict[str, str]] = []  # the menu for everyone (setMyCommands without language_code)
        self.commands_by_language: dict[str, list[dict[str, str]]] = {}  # ... and for users of one language
        self.languages: dict[int, str] = {}  # user id -> the language_code their updates carry (default "en")
        self.allowed_updates: list[str] | None = None
        self.kicked: set[int | str] = set()  # chats the bot was removed from: sends there get 403, as Telegram's
        self.admins: dict[int, set[int]] = {}  # chat -> its administrators (getChatMember); other chats: not found
        self.usernames: dict[str, int] = {}  # "@channel" -> its chat id (getChat)
        self.updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self._update_ids = itertools.count(1000)
        self._message_ids = itertools.count(1)
        self._failures: list[_Failure] = []
        self._changed = trio.Event()
        # Telegram matches method names case-insensitively; calls are recorded under the documented name.
        self._methods: dict[str, tuple[str, Callable[..., Any]]] = {}
        for name in ("getMe", "getMyCommands", "setMyCommands", "getUpdates", "sendMessage", "sendPhoto",
                     "sendDocument", "editMessageText", "editMessageCaption", "editMessageReplyMarkup",
                     "editMessageMedia",
                     "answerCallbackQuery", "deleteMessage", "sendChatAction", "getChatMember", "getChat"):
            handler = getattr(self, "_" + re.sub(r"([A-Z])", r"_\1", name).lower())
            self._methods[name.lower()] = (name, handler)

    # --- serving ------------------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[FakeBot] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `await nursery.start(bot.serve)` returns once `url` is set."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._connection, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            task_status.started(self)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                status, payload = await self._answer(*request)
                data = json.dumps(payload).encode()
                headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
                if status == 429 and "parameters" in payload:
                    headers.append(("retry-after", str(payload["parameters"]["retry_after"])))
                reason = HTTPStatus(status).phrase.encode()
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers, reason=reason)))
                await stream.send_all(conn.send(h11.Data(data=data)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return  # the client went away (e.g. a cancelled long poll)
        finally:
            await stream.aclose()

    @staticmethod
    async def _read_request(
        conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, dict[str, Any]]:
        url = urlsplit(request.target.decode("latin-1"))
        match = re.fullmatch(r"/bot([^/]+)/(\w+)", url.path)
        if match is None:
            return 404, ApiError(404, "Not Found").body()
        if match[1] != self.token:
            return 401, ApiError(401, "Unauthorized").body()
        method = match[2]
        self.attempts[method] += 1
        if self.delay:
            await trio.sleep(self.delay)
        failure = self._take_failure(method)
        if failure is not None:
            return failure.code, failure.body()
        if method.lower() not in self._methods:
            return 404, ApiError(404, "Not Found").body()
        name, handler = self._methods[method.lower()]
        try:
            params, files = _parse_body(dict(request.headers), body)
            params = _normalize({**dict(parse_qsl(url.query)), **params})
            result = handler(params, files)
            if hasattr(result, "__await__"):
                result = await result
        except ApiError as exc:
            return exc.code, exc.body()
        except (KeyError, ValueError) as exc:
            return 400, _bad(f"bad or missing parameter: {exc}").body()
        if name != "getUpdates":
            self.sent.append(Call(name, params, files, result))
            self._notify()
        return 200, {"ok": True, "result": result}

    # --- test knobs and helpers ---------------------------------------------------------------------------

    def fail_next(
        self,
        method: str | None,
        status: int,
        retry_after: int | None = None,
        count: int = 1,
        description: str | None = None,
    ) -> None:
        """Answer the next `count` calls of `method` (any method if None) with an error instead."""
        self._failures.append(_Failure(method, status, retry_after, description, count))

    def _take_failure(self, method: str) -> ApiError | None:
        for failure in self._failures:
            if failure.method is None or failure.method.lower() == method.lower():
                failure.count -= 1
                if failure.count <= 0:
                    self._failures.remove(failure)
                parameters = None
                if failure.retry_after is not None:
                    parameters = {"retry_after": failure.retry_after}
                description = failure.description or HTTPStatus(failure.status).phrase
                if failure.status == 429 and failure.description is None:
                    description = f"Too Many Requests: retry after {failure.retry_after or 1}"
                return ApiError(failure.status, description, parameters)
        return None

    def push_message(self, user_id: int, text: str, chat_id: int | None = None,
                     thread_id: int | None = None) -> dict[str, Any]:
        """Queue an Update with a text message from user_id (in their private chat unless chat_id is given; in a
        forum topic of that group with thread_id)."""
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": _user(user_id, self.languages.get(user_id, "en")),
            "chat": _chat(user_id if chat_id is None else chat_id),
            "date": int(time.time()),
            "text": text,
        }
        if thread_id is not None:
            message.update(message_thread_id=thread_id, is_topic_message=True)
            message["chat"]["is_forum"] = True
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return self._push_update({"message": message})

    def push_callback(self, user_id: int, data: str, message_id: int, chat_id: int | None = None) -> dict[str, Any]:
        """Queue an Update with a callback_query: user_id pressed a button with `data` under message_id."""
        chat = user_id if chat_id is None else chat_id
        message = self.messages.get((chat, message_id)) or {
            "message_id": message_id, "from": BOT_USER, "chat": _chat(chat), "date": int(time.time())}
        update_id = next(self._update_ids)
        query = {"id": f"cbq-{update_id}", "from": _user(user_id, self.languages.get(user_id, "en")), "message": message,
                 "chat_instance": f"ci-{chat}", "data": data}
        return self._push_update({"callback_query": query}, update_id)

    def push_my_chat_member(self, user_id: int, chat_id: int, status: str) -> dict[str, Any]:
        """Queue a my_chat_member Update: user_id changed the bot's membership of a group to `status` (member,
        left, kicked ...)."""
        change = {"chat": _chat(chat_id), "from": _user(user_id), "date": int(time.time()),
                  "old_chat_member": {"user": BOT_USER, "status": "member"},
                  "new_chat_member": {"user": BOT_USER, "status": status}}
        return self._push_update({"my_chat_member": change})

    def push_migration(self, user_id: int, old: int, new: int) -> dict[str, Any]:
        """Queue the service message a group gets when it becomes a supergroup (a new chat id)."""
        message = {"message_id": next(self._message_ids), "from": _user(user_id), "chat": _chat(old),
                   "date": int(time.time()), "migrate_to_chat_id": new}
        return self._push_update({"message": message})

    def _push_update(self, body: dict[str, Any], update_id: int | None = None) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids) if update_id is None else update_id, **body}
        self.updates.append(update)
        self._notify()
        return update

    def calls(self, method: str) -> list[Call]:
        return [c for c in self.sent if c.method == method]

    async def wait_for(
        self, predicate: str | Callable[[Call], bool], timeout: float = 5.0, *, since: int = 0
    ) -> Call:
        """The first recorded call from index `since` on that matches (a method name or a predicate).

        Waits for it without polling; fails the test (AssertionError) after `timeout` seconds.
        """
        if isinstance(predicate, str):
            method = predicate
            predicate = lambda call: call.method == method  # noqa: E731
        index = since
        with trio.move_on_after(timeout):
            while True:
                while index < len(self.sent):
                    index += 1
                    if predicate(self.sent[index - 1]):
                        return self.sent[index - 1]
                await self._changed_wait()
        raise AssertionError(f"no matching call within {timeout} s; calls so far: {[c.method for c in self.sent]}")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _changed_wait(self) -> None:
        await self._changed.wait()

    # --- methods ------------------------------------------------------------------------------------------

    def _get_me(self, params: dict, files: dict) -> dict[str, Any]:
        return dict(BOT_USER, can_join_groups=True, can_read_all_group_messages=False, supports_inline_queries=False)

    def _set_my_commands(self, params: dict, files: dict) -> bool:
        commands = list(params["commands"])
        if params.get("language_code") is None:
            self.commands = commands
        else:
            if not re.fullmatch(r"[a-z]{2}", params["language_code"]):
                raise _bad("invalid language_code")
            self.commands_by_language[params["language_code"]] = commands
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", command["command"]) or not 1 <= len(command["description"]) <= 256:
                raise _bad(f"invalid bot command {command!r}")
        return True

    def _get_my_commands(self, params: dict, files: dict) -> list[dict[str, str]]:
        return self.commands

    async def _get_updates(self, params: dict, files: dict) -> list[dict[str, Any]]:
        offset = params.get("offset") or 0
        if offset > 0:  # like Telegram: asking from `offset` confirms (forgets) everything below it
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        if params.get("allowed_updates") is not None:  # remembered between calls, as Telegram does
            self.allowed_updates = list(params["allowed_updates"])
        limit = params.get("limit") or 100

        def pending() -> list[dict[str, Any]]:
            allowed = self.allowed_updates
            return [u for u in self.updates if not allowed or any(kind in u for kind in allowed)][:limit]

        with trio.move_on_after(params.get("timeout") or 0):
            while not pending():
                await self._changed_wait()
        return pending()

    def _new_message(self, params: dict, **content: Any) -> dict[str, Any]:
        chat_id = params["chat_id"]
        if chat_id in self.kicked:
            raise ApiError(403, "Forbidden: bot was kicked from the group chat")
        replied = self._replied(params)
        message = {"message_id": next(self._message_ids), "from": BOT_USER, "chat": _chat(chat_id),
                   "date": int(time.time()), **{k: v for k, v in content.items() if v is not None}}
        if params.get("message_thread_id") is not None:
            message.update(message_thread_id=params["message_thread_id"], is_topic_message=True)
        if replied is not None:
            message["reply_to_message"] = {k: v for k, v in replied.items() if k != "reply_to_message"}
        if params.get("reply_markup") is not None:
            message["reply_markup"] = _check_markup(params["reply_markup"])
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def _replied(self, params: dict) -> dict[str, Any] | None:
        """The message a send replies to (ReplyParameters, or the older reply_to_message_id), if it exists."""
        reply = params.get("reply_parameters")
        if reply is None and params.get("reply_to_message_id") is not None:
            reply = {"message_id": params["reply_to_message_id"],
                     "allow_sending_without_reply": params.get("allow_sending_without_reply", False)}
        if reply is None:
            return None
        if not isinstance(reply, dict) or not isinstance(reply.get("message_id"), int):
            raise _bad("invalid reply parameters")
        found = self.messages.get((reply.get("chat_id", params["chat_id"]), reply["message_id"]))
        if found is None and not reply.get("allow_sending_without_reply"):
            raise _bad("message to be replied not found")
        return found

    def _send_message(self, params: dict, files: dict) -> dict[str, Any]:
        text = params["text"]
        if not text.strip():
            raise _bad("message text is empty")
        if len(text) > 4096:
            raise _bad("message is too long")
        _check_parse_mode(params, text)
        return self._new_message(params, text=text)

    def _send_photo(self, params: dict, files: dict) -> dict[str, Any]:
        upload = files.get("photo")
        if upload is None:
            raise _bad("there is no photo in the request")
        caption = _caption(params)
        return self._new_message(params, photo=[_photo_size(upload.data)], caption=caption)

    def _send_document(self, params: dict, files: dict) -> dict[str, Any]:
        upload = files.get("document")
        if upload is None:
            raise _bad("there is no document in the request")
        document = {"file_id": f"doc-{len(self.sent)}", "file_unique_id": f"udoc-{len(self.sent)}",
                    "file_name": upload.filename, "mime_type": upload.content_type, "file_size": len(upload.data)}
        return self._new_message(params, document=document, caption=_caption(params))

    def _message(self, params: dict, verb: str = "edit") -> dict[str, Any]:
        message = self.messages.get((params["chat_id"], params["message_id"]))
        if message is None:
            raise _bad(f"message to {verb} not found")
        return message

    def _edit_message_text(self, params: dict, files: dict) -> dict[str, Any]:
        message = self._message(params)
        if "text" not in message:
            raise _bad("there is no text in the message to edit")
        text = params["text"]
        _check_parse_mode(params, text)
        markup = _check_markup(params["reply_markup"]) if params.get("reply_markup") is not None else None
        if text == message["text"] and markup == message.get("reply_markup"):
            raise _not_modified()
        message["text"] = text
        _set_markup(message, markup)
        return message

    def _edit_message_caption(self, params: dict, files: dict) -> dict[str, Any]:
        message = self._message(params)
        if not any(kind in message for kind in ("photo", "document", "video", "audio", "animation")):
            raise _bad("there is no caption in the message to edit")
        caption = _caption(params)
        markup = _check_markup(params["reply_markup"]) if params.get("reply_markup") is not None else None
        if caption == message.get("caption") and markup == message.get("reply_markup"):
            raise _not_modified()
        if caption:
            message["caption"] = caption
        else:
            message.pop("caption", None)
        _set_markup(message, markup)
        return message

    def _edit_message_reply_markup(self, params: dict, files: dict) -> dict[str, Any]:
        message = self._message(params)
        markup = _check_markup(params["reply_markup"]) if params.get("reply_markup") is not None else None
        if markup == message.get("reply_markup"):
            raise _not_modified()
        _set_markup(message, markup)
        return message

    def _edit_message_media(self, params: dict, files: dict) -> dict[str, Any]:
        message = self._message(params)
        media = params["media"]
        source = media.get("media", "")
        if media.get("type") != "photo" or not source.startswith("attach://") or source[9:] not in files:
            raise _bad("wrong file identifier/HTTP URL specified")
        message.pop("text", None)
        message["photo"] = [_photo_size(files[source[9:]].data)]
        message.pop("caption", None)
        if media.get("caption"):
            message["caption"] = _caption(media)
        markup = _check_markup(params["reply_markup"]) if params.get("reply_markup") is not None else None
        _set_markup(message, markup)
        return message

    def _answer_callback_query(self, params: dict, files: dict) -> bool:
        if len(params.get("text") or "") > 200:
            raise _bad("MESSAGE_TOO_LONG")
        return True

    def _delete_message(self, params: dict, files: dict) -> bool:
        self._message(params, verb="delete")
        del self.messages[(params["chat_id"], params["message_id"])]
        return True

    def _get_chat(self, params: dict, files: dict) -> dict[str, Any]:
        chat_id = self.usernames.get(params.get("chat_id"), params.get("chat_id"))
        if chat_id not in self.admins or chat_id in self.kicked:
            raise _bad("chat not found")
        return {**_chat(chat_id), "type": "channel"}

    def _get_chat_member(self, params: dict, files: dict) -> dict[str, Any]:
        chat_id, user_id = params.get("chat_id"), params.get("user_id")
        if chat_id not in self.admins or chat_id in self.kicked:
            raise _bad("chat not found")
        status = "administrator" if user_id in self.admins[chat_id] else "member"
        return {"user": _user(int(user_id)), "status": status}

    def _send_chat_action(self, params: dict, files: dict) -> bool:
        if not params["chat_id"] or not params.get("action"):
            raise _bad("chat_id and action are required")
        return True


@asynccontextmanager
async def running_fakebot(token: str = DEFAULT_TOKEN) -> AsyncIterator[FakeBot]:
    """A FakeBot serving for the duration of the block."""
    bot = FakeBot(token)
    async with trio.open_nursery() as nursery:
        await nursery.start(bot.serve)
        yield bot
        nursery.cancel_scope.cancel()


# --- parsing and checks ---------------------------------------------------------------------------------------


def _parse_body(headers: dict[bytes, bytes], body: bytes) -> tuple[dict[str, Any], dict[str, Upload]]:
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    if not body:
        return {}, {}
    if content_type.startswith("application/json"):
        return json.loads(body), {}
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode())), {}
    if content_type.startswith("multipart/form-data"):
        match = re.search(r'boundary="?([^";]+)"?', content_type)
        if match is None:
            raise _bad("multipart body without a boundary")
        return _parse_multipart(body, match[1].encode())
    raise _bad(f"unsupported content type {content_type!r}")


def _parse_multipart(body: bytes, boundary: bytes) -> tuple[dict[str, Any], dict[str, Upload]]:
    params: dict[str, Any] = {}
    files: dict[str, Upload] = {}
    # Each part is preceded by "--boundary" and its content ends with the CRLF that belongs to the next one.
    for raw in body.split(b"--" + boundary)[1:]:
        if raw.startswith(b"--"):
            break
        head, _, content = raw.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', headers.get("content-disposition", "")))
        name = disposition.get("name")
        if name is None:
            raise _bad("multipart part without a name")
        if "filename" in disposition:
            files[name] = Upload(disposition["filename"], headers.get("content-type"), content)
        else:
            params[name] = content.decode("utf-8")
    return params, files


def _normalize(params: dict[str, Any]) -> dict[str, Any]:
    """Give form-encoded values the types a JSON body would have had (Telegram accepts both)."""
    out = dict(params)
    for key, value in params.items():
        if not isinstance(value, str):
            continue
        if key in _JSON_FIELDS:
            out[key] = json.loads(value)
        elif key in _INT_FIELDS and re.fullmatch(r"-?\d+", value):
            out[key] = int(value)
        elif key in _BOOL_FIELDS:
            out[key] = value.lower() in ("true", "1")
    return out


def _user(user_id: int, language_code: str = "en") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": f"user{user_id}", "language_code": language_code}


def _chat(chat_id: int | str) -> dict[str, Any]:
    if isinstance(chat_id, int) and chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": f"user{chat_id}"}
    return {"id": chat_id, "type": "group", "title": f"group {chat_id}"}


def _not_modified() -> ApiError:
    return _bad("message is not modified: specified new message content and reply markup are exactly the same "
                "as a current content and reply markup of the message")


def _set_markup(message: dict[str, Any], markup: dict[str, Any] | None) -> None:
    if markup is None:
        message.pop("reply_markup", None)
    else:
        message["reply_markup"] = markup


def _check_markup(markup: dict[str, Any]) -> dict[str, Any]:
    for row in markup.get("inline_keyboard", []):
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(data.encode()) <= 64:
                raise _bad("BUTTON_DATA_INVALID")
            if not button.get("text"):
                raise _bad("inline keyboard button text is empty")
    return markup


def _caption(params: dict[str, Any]) -> str | None:
    caption = params.get("caption")
    if caption is None:
        return None
    if len(caption) > 1024:
        raise _bad("message caption is too long")
    _check_parse_mode(params, caption)
    return caption


def _check_parse_mode(params: dict[str, Any], text: str) -> None:
    """Reject HTML that Telegram would refuse: unknown tags, stray '<', bare '&'."""
    if (params.get("parse_mode") or "").upper() != "HTML":
        return
    for match in re.finditer(r"<(/?)([a-zA-Z-]*)[^<>]*(>?)", text):
        if not match[3] or match[2].lower() not in _HTML_TAGS:
            raise _bad(f"can't parse entities: unsupported start tag \"{match[2]}\" at byte offset {match.start()}")
    for match in re.finditer(r"&", text):
        if not re.match(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);", text[match.start():]):
            raise _bad(f"can't parse entities: character '&' is reserved at byte offset {match.start()}")


def _photo_size(data: bytes) -> dict[str, Any]:
    width = height = 0
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if width + height > 10000:
            raise _bad("PHOTO_INVALID_DIMENSIONS")
    if len(data) > 10 * 1024 * 1024:
        raise _bad("file is too big")
    return {"file_id": f"photo-{len(data)}", "file_unique_id": f"uphoto-{len(data)}", "width": width,
            "height": height, "file_size": len(data)}
