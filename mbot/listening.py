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


async def serve_tcp(handler: Callable[[trio.SocketStream], Awaitable[object]], host: str, port: int, *,
                    port_variable: str, host_variable: str, announce: str,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `task_status` gets the bound port (the real one when `port` is 0). `announce` is the
    start-up log line, with %s for the address and %d for the port."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise listen_error(port_variable, host_variable, host, port, exc) from None
    bound: int = listeners[0].socket.getsockname()[1]
    log.info(announce, host, bound)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept, listener, handler, nursery)
        task_status.started(bound)


ACCEPT_BATCH = 64  # connections accepted per turn of the event loop, at most
# What accept(2) may say of one connection that is gone already (trio's list): the next one is tried.
_SKIP = {errno.ECONNABORTED, errno.EPERM, errno.EPROTO}
# The process or the system is out of something: accepting again at once would spin (trio waits 0.1 s too).
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _accept(listener: trio.SocketListener, handler: Callable[[trio.SocketStream], Awaitable[object]],
                  nursery: trio.Nursery) -> None:
    # A duplicate of the listening socket, so that accept(2) can be called in a loop without a trip through the
    # scheduler for each connection (trio's socket yields after every call).
    async with listener:
        with socket.socket(fileno=os.dup(listener.socket.fileno())) as sock:
            sock.setblocking(False)
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(ACCEPT_BATCH):
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
