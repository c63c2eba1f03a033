"""Listening sockets for the server's two endpoints (agents, /metrics): open them, or fail in one line that names
the variable to change, then hand each connection to a handler in its own task.

Connections are accepted up to ACCEPT_BATCH at a time. trio's own listener accepts one per turn of the event loop,
and on a saturated loop a turn takes tens of milliseconds: the connections of a storm then waited in the kernel's
backlog, their agents' timeouts running, before the server even saw them (and could tell them it was busy:
mbot/admission.py)."""
from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Awaitable, Callable

import trio

from .config import ConfigError

log = logging.getLogger(__name__)


def listen_error(port_variable: str, host_variable: str, host: str, port: int, exc: OSError) -> ConfigError:
    """A listening socket the server cannot open, as the one-line error a bad variable gets, naming the variable to
    change: the port when it is taken, the address otherwise (not on this machine, a name that does not resolve)."""
    variable = port_variable if exc.errno == errno.EADDRINUSE else host_variable
    return ConfigError(variable, f"cannot listen on {host}:{port}: {exc.strerror or exc}")


class AcceptGate:
    """Whether this process takes new connections from listening sockets it shares with other processes
    (MBOT_LISTENERS): while it is closed the process calls no accept(), and the kernel's queue of new connections
    goes to the others. Closing it also withdraws an accept() already waiting, so that no connection that comes
    after it was closed lands here."""

    def __init__(self) -> None:
        self._open = trio.Event()
        self._open.set()
        self._waiting: set[trio.CancelScope] = set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()
        for scope in self._waiting:
            scope.cancel()

    async def wait_readable(self, sock: socket.socket) -> None:
        """Until the gate is open and `sock` has a connection to accept; a wait under way is withdrawn when the
        gate closes (and starts again when it opens)."""
        while True:
            await self._open.wait()
            with trio.CancelScope() as scope:
                self._waiting.add(scope)
                try:
                    await trio.lowlevel.wait_readable(sock)
                    return
                finally:
                    self._waiting.discard(scope)


async def serve_tcp(handler: Callable[[trio.SocketStream], Awaitable[object]], host: str, port: int, *,
                    port_variable: str, host_variable: str, announce: str, gate: AcceptGate | None = None,
                    opened: Callable[[list[trio.socket.SocketType]], object] | None = None,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `task_status` gets the bound port (the real one when `port` is 0). `announce` is the
    start-up log line, with %s for the address and %d for the port. `opened` is told the listening sockets (the
    listener processes get them: mbot/listenerpool.py); `gate` says when this process accepts."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise listen_error(port_variable, host_variable, host, port, exc) from None
    bound: int = listeners[0].socket.getsockname()[1]
    log.info(announce, host, bound)
    if opened is not None:
        opened([listener.socket for listener in listeners])
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept, listener, handler, nursery, gate)
        task_status.started(bound)


async def serve_sockets(handler: Callable[[trio.SocketStream], Awaitable[object]],
                        sockets: list[trio.socket.SocketType], gate: AcceptGate) -> None:
    """Serve listening sockets opened by another process (inherited) until cancelled."""
    async with trio.open_nursery() as nursery:
        for sock in sockets:
            nursery.start_soon(_accept, trio.SocketListener(sock), handler, nursery, gate)


ACCEPT_BATCH = 64  # connections accepted per turn of the event loop, at most
# What accept(2) may say of one connection that is gone already (trio's list): the next one is tried.
_SKIP = {errno.ECONNABORTED, errno.EPERM, errno.EPROTO}
# The process or the system is out of something: accepting again at once would spin (trio waits 0.1 s too).
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _accept(listener: trio.SocketListener, handler: Callable[[trio.SocketStream], Awaitable[object]],
                  nursery: trio.Nursery, gate: AcceptGate | None) -> None:
    # A duplicate of the listening socket, so that accept(2) can be called in a loop without a trip through the
    # scheduler for each connection (trio's socket yields after every call).
    async with listener:
        with socket.socket(fileno=os.dup(listener.socket.fileno())) as sock:
            sock.setblocking(False)
            while True:
                if gate is None:
                    await trio.lowlevel.wait_readable(sock)
                else:
                    await gate.wait_readable(sock)
                for _ in range(ACCEPT_BATCH):
                    if gate is not None and not gate.is_open:
                        break
                    try:
                        conn, _address = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _SKIP:
                            continue
                        if exc.errno not in _EXHAUSTED:
                            raise
                        log.error("accept: %s; trying again in 0.1 s", os.strerror(exc.errno or 0))
                        await trio.sleep(0.1)
                        break
                    nursery.start_soon(_serve_one, handler, trio.SocketStream(trio.socket.from_stdlib_socket(conn)))


async def _serve_one(handler: Callable[[trio.SocketStream], Awaitable[object]], stream: trio.SocketStream) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard one: every agent holds a socket, and the default soft limit
    (often 1024) would cap the server far below what the machine allows. Returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft
