"""The control socket (edge): a unix socket in the data directory through which `python -m mbot nettest` runs a
stability or speed test with the server's connection to the agent. Protocol and figures: mbot/control.py.

Only the server's user gets in: the socket is made 0600 in the 0700 data directory. Still, what a client sends is
bounded like anything from the network: one request line (control.MAX_LINE) within control.REQUEST_TIMEOUT, one
request per connection, one task per connection whose failure ends that connection alone. A test runs through the
same hub calls as the chat's (AgentHub.claim_*, stability, speedtest), so the same refusals apply: one stability
test per host, a total probe rate, one speed test per server. A client that hangs up ends its test.
"""
from __future__ import annotations

import base64
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Awaitable, Callable

import trio

from . import control, service, speedtest, stabilitychart
from .agents import AgentHub, TestRefused
from .control import ControlError, NetTest
from .durations import format_duration
from .model import Host
from .stability import StabilityRun, progress_every
from .store import Database

log = logging.getLogger(__name__)

SEND_TIMEOUT = 10.0  # a client that stops reading: its test ends rather than waiting on it
Send = Callable[[bytes], Awaitable[None]]


class ControlServer:
    def __init__(self, path: Path, db: Database, hub: AgentHub, *,
                 request_timeout: float = control.REQUEST_TIMEOUT) -> None:
        self.path = path
        self._db, self._hub = db, hub
        self._request_timeout = request_timeout
        self._charts = trio.CapacityLimiter(1)  # the CLI's charts: one at a time, beside the bot's

    async def serve(self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; the socket file is removed when it ends. A path that cannot be a socket (too
        long for AF_UNIX, a file in the way) is one warning and no control socket: the server runs without it."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _remove_stale(self.path)
            await sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            identity = os.stat(self.path).st_ino
            sock.listen(128)
        except OSError as exc:
            sock.close()
            log.warning("no control socket at %s (%s): `python -m mbot nettest` cannot reach this server",
                        self.path, exc.strerror or exc)
            task_status.started(None)
            return
        log.info("control socket: %s", self.path)
        try:
            task_status.started(self.path)  # listening already: a client that connects now waits in the backlog
            await trio.serve_listeners(self._handle, [trio.SocketListener(sock)])
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if os.stat(self.path).st_ino == identity:  # ours, not a later server's
                        os.unlink(self.path)
                except OSError:
                    pass

    async def _handle(self, stream: trio.SocketStream) -> None:
        async def send(line: bytes) -> None:
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(line)

        # except*: a test's errors come out of its nurseries in groups.
        try:
            line = await self._request(stream)
            if line is not None:
                await self._serve(stream, send, control.parse_request(line))
        except* ControlError as refused:
            await _last_word(send, str(_first(refused)))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or stopped reading: nobody to tell
        except* Exception:
            log.exception("control socket: a request failed")
            await _last_word(send, "the request failed; the server's log says why")
        finally:
            await trio.aclose_forcefully(stream)

    async def _request(self, stream: trio.SocketStream) -> bytes | None:
        """The request line, or None for a client that closed without a word."""
        buffer = b""
        with trio.move_on_after(self._request_timeout):
            while b"\n" not in buffer:
                data = await stream.receive_some(control.MAX_LINE + 1 - len(buffer))
                if not data:
                    return buffer or None
                buffer += data
                if len(buffer) > control.MAX_LINE and b"\n" not in buffer:
                    raise ControlError(f"request line over {control.MAX_LINE} bytes")
            return buffer.split(b"\n", 1)[0]
        raise ControlError(f"no request within {self._request_timeout:g} s")

    async def _serve(self, stream: trio.SocketStream, send: Send, test: NetTest) -> None:
        try:
            host = await self._db.read(service.any_owner_host, test.host, test.owner)
        except service.ServiceError as exc:
            raise ControlError(str(exc)) from None
        try:
            if test.kind == "stability":
                self._hub.claim_stability(host.id, test.interval)
            else:
                self._hub.claim_speed(host.id)
        except TestRefused as refused:
            raise ControlError(refused.text(host.name)) from None
        try:
            async with trio.open_nursery() as nursery:
                # One request per connection: the client hanging up (or sending more) ends its test.
                nursery.start_soon(_cancel_on_input, stream, nursery.cancel_scope)
                if test.kind == "stability":
                    await self._stability(send, host, test)
                else:
                    await self._speed(send, host)
                nursery.cancel_scope.cancel()
        finally:
            if test.kind == "stability":
                self._hub.stability_budget.release(host.id)
            else:
                self._hub.speed_busy = False

    async def _stability(self, send: Send, host: Host, test: NetTest) -> None:
        spec = test.spec(host.name)
        await send(control.progress_line(control.stability_head(host.name, spec)))
        latest: list[str] = []
        wake = trio.Event()

        def progress(run: StabilityRun, now: float) -> None:  # called in the test's loop: never blocks on the client
            nonlocal wake
            latest[:] = [run.progress(now)]
            wake.set()

        async def forward() -> None:
            nonlocal wake
            while True:
                await wake.wait()
                wake = trio.Event()
                await send(control.progress_line(latest[0]))

        run = StabilityRun(spec, start=trio.current_time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                await self._hub.stability(host.id, run, progress, progress_every(spec.duration))
            except LookupError:
                raise ControlError(f"{host.name} went offline before the test started") from None
            nursery.cancel_scope.cancel()
        figures = await trio.to_thread.run_sync(run.figures)
        log.info("control socket: a stability test of host %s: %d probes, %.1f %% lost", host.name, figures.sent,
                 figures.loss)
        complete = figures.slots >= spec.count
        await send(control.progress_line(f"Stability test of {host.name}: " + (
            "done." if complete else f"its agent disconnected after {figures.slots} probes.")))
        result = control.stability_result(host.name, spec, figures, complete=complete)
        if test.chart:
            png = await trio.to_thread.run_sync(stabilitychart.render, run, f"{host.name} · stability",
                                                limiter=self._charts)
            result["chart_png"] = base64.b64encode(png).decode()
        await send(control.result_line(result))

    async def _speed(self, send: Send, host: Host) -> None:
        await send(control.progress_line(f"Speed test of {host.name}: about "
                                         f"{format_duration(2 * self._hub.speed_seconds)}, download then upload..."))
        try:
            down, up = await self._hub.speedtest(host.id)
        except LookupError:
            raise ControlError(f"{host.name} went offline before the speed test started") from None
        log.info("control socket: a speed test of host %s: down %s, up %s", host.name,
                 down and speedtest.mbit(down.rate), up and speedtest.mbit(up.rate))
        await send(control.result_line(control.speed_result(host.name, down, up)))


def _remove_stale(path: Path) -> None:
    """A socket left by a server that did not stop cleanly; anything else at that name is not ours to delete."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise OSError(0, f"{path.name} exists and is not a socket")
    path.unlink()


async def _cancel_on_input(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        await stream.receive_some(1)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


def _first(group: BaseExceptionGroup[ControlError]) -> ControlError:
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):  # nurseries nest their groups
        found = found.exceptions[0]
    assert isinstance(found, ControlError)
    return found


async def _last_word(send: Send, text: str) -> None:
    try:
        await send(control.error_line(text))
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        pass
