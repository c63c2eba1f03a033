"""A small TCP proxy for fault tests: forwards bytes untouched (TLS passes through, so pinning still works) and
cuts connections on command or after a random number of bytes.

    proxy = TcpProxy(server_port, rng=random.Random(seed))
    port = await nursery.start(proxy.run)        # listens on 127.0.0.1:0; point the agent at `port`
    proxy.cut()                                  # cut every current connection now
    proxy.cut_after = lambda: rng.randrange(100, 20_000)   # each new connection dies after that many bytes
    proxy.refuse = True                          # new connections are closed at once ("the server is down")
    proxy.freeze()                               # current connections forward nothing more, close nothing:
                                                 # paths that silently went dead (new connections pass)
    await proxy.wait_cuts(15)                    # woken by each cut, never polled

A cut closes both halves of a connection, with a FIN or (at random when an rng is given, or with reset=True) an RST,
so the peers see every way a network drops a connection.
"""
from __future__ import annotations

import random
import socket
import struct
from typing import Callable

import trio

CHUNK = 65536


class _Link:
    """One proxied connection: client <-> upstream."""

    def __init__(self, client: trio.SocketStream, budget: int | None) -> None:
        self.client = client
        self.upstream: trio.SocketStream | None = None
        self.scope = trio.CancelScope()
        self.budget = budget  # bytes (both directions together) before it is cut; None: never
        self.forwarded = 0
        self.cut = False
        self.reset = False
        self.frozen = False  # forwards nothing more, closes nothing (TcpProxy.freeze)


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *,
                 rng: random.Random | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.rng = rng
        self.port = 0
        # Called for each new connection: the number of bytes after which it is cut, or None to leave it alone.
        self.cut_after: Callable[[], int | None] | None = None
        self.refuse = False
        self.accepted = 0  # connections accepted (refused ones included)
        self.cuts = 0  # live connections cut (by cut() or by their byte budget)
        self.bytes = 0  # bytes forwarded, both directions, all connections
        self._links: set[_Link] = set()
        self._changed = trio.Event()

    # --- control ----------------------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._links)

    def cut(self, *, reset: bool | None = None) -> int:
        """Cut every current connection; returns how many."""
        links = list(self._links)
        for link in links:
            self._cut(link, reset)
        return len(links)

    def freeze(self) -> int:
        """Current connections go silent both ways without a FIN or an RST (only keepalives notice); new ones pass.
        Returns how many were frozen."""
        for link in self._links:
            link.frozen = True
        return len(self._links)

    async def wait_cuts(self, count: int) -> None:
        while self.cuts < count:
            await self._changed.wait()

    async def wait_connections(self, count: int) -> None:
        """Until at least `count` connections are open through the proxy."""
        while len(self._links) < count:
            await self._changed.wait()

    # --- the task ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _cut(self, link: _Link, reset: bool | None) -> None:
        if link.cut:
            return
        link.cut = True
        link.reset = reset if reset is not None else (self.rng is not None and self.rng.random() < 0.5)
        link.scope.cancel()
        self.cuts += 1
        self._notify()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        if self.refuse:
            _abort(client.socket)
            return
        link = _Link(client, self.cut_after() if self.cut_after is not None else None)
        self._links.add(link)
        self._notify()
        sock = trio.socket.socket()
        try:
            with link.scope:
                try:
                    await sock.connect((self.target_host, self.target_port))
                    link.upstream = trio.SocketStream(sock)
                except OSError:
                    return  # nothing listens there, or it is already gone: the client sees its connection closed
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, client, link.upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, link, link.upstream, client, nursery.cancel_scope)
        finally:
            self._links.discard(link)
            if link.reset:
                _abort(client.socket)
                _abort(sock)
            else:
                client.socket.close()
                sock.close()
            self._notify()

    async def _pump(self, link: _Link, source: trio.SocketStream, sink: trio.SocketStream,
                    done: trio.CancelScope) -> None:
        try:
            while True:
                data = await source.receive_some(CHUNK)
                if link.frozen:
                    await trio.sleep_forever()  # until the connection is cut (by the proxy)
                if not data:
                    # Half-close: pass the FIN on, keep the other direction going.
                    try:
                        await sink.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        done.cancel()
                    return
                if link.budget is not None and link.forwarded + len(data) >= link.budget:
                    data = data[:max(0, link.budget - link.forwarded)]
                    if data:
                        await sink.send_all(data)
                    link.forwarded += len(data)
                    self.bytes += len(data)
                    self._cut(link, None)
                    return
                await sink.send_all(data)
                link.forwarded += len(data)
                self.bytes += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            done.cancel()  # one side is gone: so is the connection


def _abort(sock: trio.socket.SocketType) -> None:
    """Close with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
