"""The /metrics endpoint: plain HTTP (h11) on MBOT_METRICS_HOST:MBOT_METRICS_PORT, for Prometheus to scrape.

Off unless MBOT_METRICS_PORT is set, and bound to 127.0.0.1 by default: the figures name every host, so exposing
them is the operator's explicit choice.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import h11
import trio

from .listening import serve_tcp
from .faults import Faults
from .metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
MAX_REQUEST = 16 * 1024

Render = Callable[[], Awaitable[str]]


async def serve_metrics(host: str, port: int, render: Render, *, faults: Faults | None = None,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    faults = faults or Faults()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await _answer(stream, render, faults)
        except (trio.BrokenResourceError, h11.ProtocolError) as exc:
            log.debug("metrics request failed: %s", exc)
        except Exception as exc:
            # One request's failure (a bug the render met) ends that request, never the server.
            faults.isolated("metrics", "a /metrics request", exc)
        finally:
            await trio.aclose_forcefully(stream)

    await serve_tcp(handle, host, port, port_variable="MBOT_METRICS_PORT", host_variable="MBOT_METRICS_HOST",
                    announce="serving Prometheus metrics on http://%s:%d/metrics", task_status=task_status)


async def _answer(stream: trio.SocketStream, render: Render, faults: Faults) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            break
        return  # closed before a request
    path = event.target.split(b"?")[0]
    if event.method not in (b"GET", b"HEAD"):
        status, body, ctype = 405, b"only GET\n", "text/plain"
    elif path != b"/metrics":
        status, body, ctype = 404, b"not found: try /metrics\n", "text/plain"
    else:
        try:
            # "replace": a label that is not valid Unicode (a lone surrogate stored by an older version) must
            # not fail the whole scrape.
            status, body, ctype = 200, (await render()).encode("utf-8", "replace"), CONTENT_TYPE
        except Exception as exc:
            faults.isolated("metrics", "rendering /metrics", exc)
            status, body, ctype = 500, b"internal error; see the server log\n", "text/plain"
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Connection", "close")]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    if event.method != b"HEAD":
        await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))
