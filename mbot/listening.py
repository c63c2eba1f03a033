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
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)
