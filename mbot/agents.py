"""The agent endpoint: TLS listener, handshake authentication, one task per agent connection.

The listener is trio's own (serve_listeners over SSL listeners) with trio-websocket wrapping each stream, rather than
trio_websocket.serve_websocket, so that each connection is isolated: a peer that breaks TLS or HTTP in some new way
ends its own task with a log line and never the server; and the 10 s handshake deadline covers TLS as well.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, wrap_server_stream

from . import protocol, store
from .limits import AuthThrottle, FrameBucket
from .protocol import Hello, ProtocolError, Result, Samples
from .store import Database
from .writer import Writer

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
HELLO_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
AGENT_PATH = "/agent"


def secret_hash(secret: str) -> str:
    """Secrets carry 256 random bits, so a plain SHA-256 is enough (no password stretching needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _peer(stream: trio.SSLStream[Any]) -> tuple[str, str]:
    """(address, address:port) of the peer."""
    try:
        addr = stream.transport_stream.socket.getpeername()  # type: ignore[attr-defined]
        return addr[0], f"{addr[0]}:{addr[1]}"
    except (OSError, AttributeError):
        return "?", "?"


def _bearer(request: WebSocketRequest) -> str | None:
    for name, value in request.headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


@dataclass
class _Awaited:
    done: trio.Event = field(default_factory=trio.Event)
    result: Result | None = None


class AgentConnection:
    """One authenticated agent: reads frames, feeds the writer, sends coalesced acks."""

    def __init__(self, host: store.Host, ws: WebSocketConnection, peer: str, writer: Writer) -> None:
        self.host = host
        self.ws = ws
        self.peer = peer
        self.hello: Hello | None = None
        self._writer = writer
        self._committed = 0
        self._ack_wanted = trio.Event()
        self._bucket = FrameBucket(now=trio.current_time())
        self._awaiting: dict[str, _Awaited] = {}
        self._closing = False
        self._closed = trio.Event()

    async def serve(self) -> None:
        if not await self._guarded(self._receive_hello):
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_acks)
            await self._guarded(self._receive_samples)
            nursery.cancel_scope.cancel()

    async def _guarded(self, receive: Callable[[], Awaitable[None]]) -> bool:
        """Run a receive step; a bad frame or a closed socket ends the connection here, with a log line."""
        try:
            await receive()
            return True
        except ProtocolError as exc:
            log.warning("agent %s (%s): %s; closing with %d", self.host.name, self.peer, exc.reason,
                        exc.close_code)
            await self._close_for(exc)
        except ConnectionClosed as exc:
            reason = exc.reason
            log.info("agent %s (%s) disconnected (code %s%s)", self.host.name, self.peer,
                     getattr(reason, "code", "?"), f", {reason.reason}" if getattr(reason, "reason", None) else "")
        return False

    async def close(self, code: int, reason: str) -> None:
        """Close from another task (shutdown, replacement); bounded even when the peer is gone."""
        self._closing = True
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.ws.aclose(code, reason[:120])
        self._closed.set()

    async def finish_closing(self) -> None:
        """After serve(): if another task is closing us, let its close handshake finish before the socket goes
        (the reader task that completes the handshake dies with this connection's nursery)."""
        if self._closing:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._closed.wait()

    async def _close_for(self, exc: ProtocolError) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self.ws.send_message(protocol.error("bad_frame", exc.reason))
            except ConnectionClosed:
                return
            await self.ws.aclose(exc.close_code, exc.reason[:120])

    async def _receive_hello(self) -> None:
        with trio.move_on_after(HELLO_TIMEOUT) as scope:
            frame = protocol.parse_agent_frame(await self.ws.get_message())
        if scope.cancelled_caught:
            raise ProtocolError(f"no hello within {HELLO_TIMEOUT:g} s", protocol.CLOSE_POLICY)
        if not isinstance(frame, Hello):
            raise ProtocolError("the first frame must be a hello", protocol.CLOSE_POLICY)
        self.hello = frame
        self._committed = await self._writer.hello(self.host.id, frame)
        log.info("agent %s connected from %s (agent %s, %s)", self.host.name, self.peer, frame.agent_version,
                 frame.facts.get("os") or "unknown OS")
        await self.ws.send_message(protocol.ack(self._committed))

    async def _receive_samples(self) -> None:
        assert self.hello is not None
        while True:
            message = await self.ws.get_message()
            if not self._bucket.take(trio.current_time()):
                raise ProtocolError("too many frames: over the per-connection rate limit", protocol.CLOSE_POLICY)
            frame = protocol.parse_agent_frame(message)
            if isinstance(frame, Samples):
                await self._writer.samples(self.host.id, self.hello.epoch, frame, self._on_commit)
            elif isinstance(frame, Hello):
                raise ProtocolError("hello sent twice", protocol.CLOSE_POLICY)
            elif isinstance(frame, Result):
                awaited = self._awaiting.pop(frame.command_id, None)
                if awaited is None:
                    log.warning("agent %s sent a result for command %r it was never sent; ignored", self.host.name,
                                frame.command_id[:64])
                else:
                    awaited.result = frame
                    awaited.done.set()

    async def run_command(self, action: str, timeout: float) -> Result | None:
        """Send a command and wait for its result; None when the agent did not answer in time."""
        command_id = secrets.token_hex(8)
        awaited = self._awaiting[command_id] = _Awaited()
        try:
            await self.ws.send_message(protocol.command(command_id, action, time.time() + timeout))
            with trio.move_on_after(timeout):
                await awaited.done.wait()
        except ConnectionClosed:
            pass
        finally:
            self._awaiting.pop(command_id, None)
        return awaited.result

    def _on_commit(self, seq: int) -> None:
        if seq > self._committed:
            self._committed = seq
            self._ack_wanted.set()

    async def _send_acks(self) -> None:
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted = trio.Event()
            try:
                await self.ws.send_message(protocol.ack(self._committed))
            except ConnectionClosed:
                return


class AgentHub:
    """Accepts agents and keeps the one live connection of each host."""

    def __init__(self, db: Database, writer: Writer, *, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self._db = db
        self._writer = writer
        self._handshake_timeout = handshake_timeout
        self._throttle = AuthThrottle()
        self.connections: dict[int, AgentConnection] = {}
        self._changed = trio.Event()  # replaced on every connect/disconnect; wakes wait_until()

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host, https_compatible=True)
        bound = listeners[0].transport_listener.socket.getsockname()[1]
        log.info("listening for agents on %s:%d (TLS)", host, bound)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(bound)

    def is_connected(self, host_id: int) -> bool:
        return host_id in self.connections

    async def wait_until(self, host_id: int, *, connected: bool) -> None:
        while self.is_connected(host_id) != connected:
            await self._changed.wait()

    def _notify_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run_command(self, host_id: int, action: str, timeout: float = 30.0) -> Result | None:
        """Run a command on a connected agent. Raises LookupError when it is not connected: a command is never
        queued for later, so a reboot cannot fire hours after it was asked for."""
        connection = self.connections.get(host_id)
        if connection is None:
            raise LookupError(host_id)
        return await connection.run_command(action, timeout)

    async def disconnect(self, host_id: int, code: int, reason: str) -> None:
        connection = self.connections.get(host_id)
        if connection is not None:
            await connection.close(code, reason)

    async def close_all(self, code: int, reason: str) -> None:
        async with trio.open_nursery() as nursery:
            for connection in list(self.connections.values()):
                nursery.start_soon(connection.close, code, reason)

    async def _handle(self, stream: trio.SSLStream[Any]) -> None:
        address, peer = _peer(stream)
        try:
            # One deadline for TLS, the upgrade and authentication: a slow client cannot pin a socket.
            with trio.move_on_after(self._handshake_timeout) as deadline:
                await stream.do_handshake()
            if deadline.cancelled_caught:
                log.info("TLS handshake from %s did not finish within %g s; dropped", peer, self._handshake_timeout)
                return
            async with trio.open_nursery() as nursery:
                await self._session(nursery, stream, address, peer, deadline.deadline)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as group:
            first = group.exceptions[0]
            log.info("connection from %s failed: %s", peer, first.__cause__ or first)
        except* Exception:
            # Isolation: whatever one peer manages to break ends its own connection, never the listener.
            log.exception("connection from %s crashed", peer)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
                await _close_quietly(stream)
            if scope.cancelled_caught:
                await trio.aclose_forcefully(stream)

    async def _session(self, nursery: trio.Nursery, stream: trio.SSLStream[Any], address: str, peer: str,
                       deadline: float) -> None:
        with trio.move_on_at(deadline) as scope:
            request = await wrap_server_stream(nursery, stream, max_message_size=protocol.MAX_FRAME_BYTES)
            host = await self._authenticate(request, address, peer)
        if scope.cancelled_caught:
            log.info("WebSocket handshake from %s did not finish within %g s; dropped", peer,
                     self._handshake_timeout)
            return
        if host is None:
            return
        ws = await request.accept()
        connection = AgentConnection(host, ws, peer, self._writer)
        previous = self.connections.get(host.id)
        self.connections[host.id] = connection
        self._notify_change()
        if previous is not None:
            log.info("agent %s: a new connection from %s replaces the one from %s", host.name, peer, previous.peer)
            nursery.start_soon(previous.close, protocol.CLOSE_REPLACED, "replaced by a newer connection")
        try:
            await connection.serve()
            await connection.finish_closing()
        finally:
            if self.connections.get(host.id) is connection:
                del self.connections[host.id]
                self._notify_change()

    async def _authenticate(self, request: WebSocketRequest, address: str, peer: str) -> store.Host | None:
        if request.path.split("?")[0] != AGENT_PATH:
            log.info("rejected connection from %s: unknown path %r", peer, request.path[:80])
            await request.reject(404, body=b"not found\n")
            return None
        secret = _bearer(request)
        host = await self._db.read(store.host_by_secret_hash, secret_hash(secret)) if secret else None
        if host is None:
            delay = self._throttle.delay(address, trio.current_time())
            self._throttle.failed(address, trio.current_time())
            log.warning("rejected agent connection from %s: %s%s", peer,
                        "unknown secret" if secret else "no Authorization: Bearer header",
                        f" (answering after {delay:g} s: repeated failures)" if delay else "")
            await trio.sleep(delay)
            await request.reject(401, body=b"secret rejected\n")
            return None
        self._throttle.succeeded(address)
        return host


async def _close_quietly(stream: trio.SSLStream[Any]) -> None:
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
        pass
