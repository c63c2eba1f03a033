"""Listening sockets for the server's two endpoints (agents, /metrics): open them, or fail in one line that names
the variable to change, then hand each connection to a handler in its own task (trio.serve_listeners)."""
from __future__ import annotations

import errno
import logging
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

    async def accept(self, listener: trio.SocketListener) -> trio.SocketStream:
        while True:
            await self._open.wait()
            with trio.CancelScope() as scope:
                self._waiting.add(scope)
                try:
                    # trio's accept() cannot lose a connection to a cancellation: after the accept(2) that took
                    # one, it only checkpoints shielded.
                    return await listener.accept()
                finally:
                    self._waiting.discard(scope)


class _Gated(trio.abc.Listener[trio.SocketStream]):
    def __init__(self, listener: trio.SocketListener, gate: AcceptGate) -> None:
        self._listener, self._gate = listener, gate

    async def accept(self) -> trio.SocketStream:
        return await self._gate.accept(self._listener)

    async def aclose(self) -> None:
        await self._listener.aclose()


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
    served: list[trio.abc.Listener[trio.SocketStream]] = (
        list(listeners) if gate is None else [_Gated(listener, gate) for listener in listeners])
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, served)
        task_status.started(bound)


async def serve_sockets(handler: Callable[[trio.SocketStream], Awaitable[object]],
                        sockets: list[trio.socket.SocketType], gate: AcceptGate) -> None:
    """Serve listening sockets opened by another process (inherited) until cancelled."""
    await trio.serve_listeners(handler, [_Gated(trio.SocketListener(sock), gate) for sock in sockets])


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
