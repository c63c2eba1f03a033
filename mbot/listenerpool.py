"""Listener processes (MBOT_LISTENERS = N > 1): the main process serves agents itself and starts N - 1 listener
processes (mbot/listener.py) that accept on the same listening sockets, so TLS, WebSocket and the protocol's checks
of the agents' frames use more than one core. The main process keeps what must be one: the writer, alerting, the
bot, the control socket, and the registry of live connections (AgentHub.connections), where a connection of a
listener is a RemoteConnection.

Why the sockets are inherited rather than bound again with SO_REUSEPORT: one bind (port 0 in tests, one error line
for a port in use), no other process of the same user can join the group and take agents' connections, and the
kernel hands each new connection to whichever process accepts first: a process whose loop is busy accepts fewer,
where SO_REUSEPORT's hash would give each the same share whatever its load.

Per listener: a socketpair (the channel, mbot/channel.py), the child process (trio.run_process, restarted with
backoff when it ends on its own, SIGTERM'd when the services are cancelled), and a _Link that reads the child's
messages: a connection authenticated there ("connected": the hub adopts a RemoteConnection, which closes the host's
previous connection wherever it is, and makes is_connected() true), its hello (stored by the writer, answered with
the seq already committed and the host's checks), its samples (queued on the writer; each commit is told back,
and only then does the child's session ack), its snapshots, its end ("gone"). What the bot asks of a remote
connection (a command, its checks, a close, a speed or stability test) goes to the child as a request and the
answer comes back as a reply. A listener that dies takes its connections with it: they are forgotten at once (the
hosts are offline until their agents reconnect, within seconds, to the listeners left), and the server goes on.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

import trio

from . import store, tls
from .agents import CLOSE_TIMEOUT, AgentHub
from .channel import Channel, ChannelBroken, Message, send_quietly
from .listener import Setup
from .protocol import Hello, Result
from .speedtest import ANSWER_TIMEOUT as SPEED_ANSWER_TIMEOUT, Throughput
from .stability import PROBE_TIMEOUT as STABILITY_TIMEOUT, StabilityRun
from .writer import LimitExceeded, Writer

log = logging.getLogger(__name__)

READY_TIMEOUT = 15.0  # start-up waits this long for the listeners, then goes on (they keep being started)
RESTART_MIN, RESTART_MAX = 1.0, 30.0
STABLE_AFTER = 60.0  # a listener that ran this long starts the backoff afresh when it ends
TOTAL_EVERY = 1.0  # how often listeners hear the server's number of connections (their acks' and probes' pace)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class RemoteConnection:
    """A connection served by a listener process, as the hub, the bot and the control socket see it
    (agents.Connection)."""

    def __init__(self, link: _Link, conn_id: int, host: store.Host, peer: str) -> None:
        self.host, self.peer, self.where = host, peer, link.index
        self.hello: Hello | None = None
        self.gone = trio.Event()
        self._link, self._id = link, conn_id

    async def close(self, code: int, reason: str) -> None:
        self._link.channel.put(("close", self._id, code, reason))
        with trio.move_on_after(CLOSE_TIMEOUT + 1.0):
            await self.gone.wait()

    async def send_checks(self) -> None:
        self._link.channel.put(("checks", self._id, self._link.hub.check_specs.get(self.host.id, [])))

    async def run_command(self, action: str, timeout: float) -> Result | None:
        result: Result | None = await self._link.request(("command", self._id, action, timeout), timeout + 5.0)
        return result

    async def speedtest(self, seconds: float, max_bytes: int) -> tuple[Throughput | None, Throughput | None]:
        answer = await self._link.request(("speedtest", self._id, seconds, max_bytes),
                                          2 * (seconds + SPEED_ANSWER_TIMEOUT) + 10.0)
        return answer if answer is not None else (None, None)

    async def stability(self, run: StabilityRun, progress: Callable[[StabilityRun, float], None],
                        progress_every: float) -> None:
        def adopt(remote: StabilityRun) -> None:
            # The child's run, on the child's clock: its figures as they are, its times moved to ours.
            for f in dataclasses.fields(remote):
                if f.name not in ("spec", "start", "ended"):
                    setattr(run, f.name, getattr(remote, f.name))
            run.ended = None if remote.ended is None else run.start + (remote.ended - remote.start)

        def on_progress(remote: StabilityRun) -> None:
            adopt(remote)
            progress(run, trio.current_time())

        final = await self._link.request(("stability", self._id, run.spec, progress_every),
                                         run.spec.duration + STABILITY_TIMEOUT + 10.0, on_progress)
        if final is not None:
            adopt(final)
        elif run.ended is None:
            run.end(trio.current_time())


class _Link:
    """The main process's end of one running listener: its messages in, requests out."""

    def __init__(self, index: int, channel: Channel, hub: AgentHub, writer: Writer) -> None:
        self.index, self.channel, self.hub, self._writer = index, channel, hub, writer
        self.remotes: dict[int, RemoteConnection] = {}
        self.ready = trio.Event()
        self.pid = 0
        self.told_total = -1  # the server's number of connections as last told to this listener
        self._requests: dict[int, tuple[trio.Event, list[Any], Callable[[Any], None] | None]] = {}
        self._next_request = itertools.count(1)
        self._ended = False

    async def request(self, message: Message, timeout: float, progress: Callable[[Any], None] | None = None) -> Any:
        """Ask the listener; its answer, or None when it does not come in time or the listener is gone."""
        if self._ended:
            return None
        req = next(self._next_request)
        done, answer = trio.Event(), [None]
        self._requests[req] = (done, answer, progress)
        try:
            self.channel.put((message[0], req, *message[1:]))
            with trio.move_on_after(timeout):
                await done.wait()
        finally:
            self._requests.pop(req, None)
        return answer[0]

    async def serve(self, nursery: trio.Nursery) -> None:
        """Until the listener closes the channel (it ended)."""
        while (batch := await self.channel.receive()) is not None:
            for message in batch:
                await self._take(message, nursery)

    async def _take(self, message: Message, nursery: trio.Nursery) -> None:
        kind = message[0]
        if kind == "samples":
            _kind, conn_id, host_id, epoch, samples = message
            await self._writer.samples(host_id, epoch, samples, partial(self._committed, conn_id),
                                       partial(self._failed, conn_id))
        elif kind == "snapshot":
            await self._writer.snapshot(message[1], message[2])
        elif kind == "hello":
            nursery.start_soon(self._hello, message[1], message[2], message[3])
        elif kind == "connected":
            _kind, conn_id, host, peer = message
            remote = self.remotes[conn_id] = RemoteConnection(self, conn_id, host, peer)
            self.hub.adopt(remote, nursery)
        elif kind == "gone":
            if message[1] in self.remotes:
                remote = self.remotes.pop(message[1])
                remote.gone.set()
                self.hub.forget(remote)
        elif kind == "limit":
            _kind, host, limit, detail = message
            self.hub.over_limit(host, LimitExceeded(limit, detail))
        elif kind in ("reply", "progress"):
            waiting = self._requests.get(message[1])
            if waiting is None:
                return
            done, answer, progress = waiting
            if kind == "reply":
                answer[0] = message[2]
                done.set()
            elif progress is not None:
                progress(message[2])
        elif kind == "ready":
            self.pid = message[1]
            self.ready.set()

    def end(self) -> None:
        """The listener is gone: so are its connections, and nothing it was asked will be answered."""
        self._ended = True
        for remote in self.remotes.values():
            remote.gone.set()
            self.hub.forget(remote)
        self.remotes.clear()
        for done, _answer, _progress in self._requests.values():
            done.set()

    async def _hello(self, conn_id: int, host_id: int, hello: Hello) -> None:
        try:
            committed: int | None = await self._writer.hello(host_id, hello)
        except Exception:
            log.exception("listener %d: the hello of host %d could not be stored", self.index, host_id)
            committed = None
        if (remote := self.remotes.get(conn_id)) is not None:
            remote.hello = hello
        self.channel.put(("stored", conn_id, committed, self.hub.check_specs.get(host_id, [])))

    def _committed(self, conn_id: int, seq: int) -> None:
        self.channel.put(("committed", conn_id, seq))

    def _failed(self, conn_id: int, exc: BaseException) -> None:
        if isinstance(exc, LimitExceeded):
            self.channel.put(("failed", conn_id, exc.limit, exc.detail))
        else:
            self.channel.put(("failed", conn_id, None, str(exc)[:200]))


def restart_delay(failures: int) -> float:
    return min(RESTART_MAX, RESTART_MIN * 2 ** max(0, failures - 1))


def child_environment(base: dict[str, str]) -> dict[str, str]:
    """Ours, without the bot's token (a listener never talks to Telegram: exactly one process polls it, and a
    secret it does not need is not in its memory), with this package first on the import path."""
    env = {k: v for k, v in base.items() if k != "BOT_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), base.get("PYTHONPATH", "")) if p)
    return env


class ListenerPool:
    """Keeps `count` listener processes running (each in this nursery tree, restarted with backoff when it dies)."""

    def __init__(self, hub: AgentHub, writer: Writer, db_path: Path, cert: tls.Certificate, count: int) -> None:
        self.hub, self._writer, self._db_path, self._cert, self.count = hub, writer, db_path, cert, count
        self.links: dict[int, _Link] = {}
        self.starts = 0  # listener processes started (for tests and the log)
        self._changed = trio.Event()  # replaced whenever a listener comes or goes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the listeners, report started once all are ready (or READY_TIMEOUT passed), keep them running
        until cancelled."""
        async with trio.open_nursery() as nursery:
            for index in range(1, self.count + 1):
                nursery.start_soon(self._keep, index)
            nursery.start_soon(self._tell_totals)
            with trio.move_on_after(READY_TIMEOUT):
                await self.wait_ready()
            if len(self.links) < self.count or not all(link.ready.is_set() for link in self.links.values()):
                log.warning("not every listener process is ready after %g s; going on without it", READY_TIMEOUT)
            task_status.started()

    async def wait_ready(self) -> None:
        """Until every listener is up and serving."""
        while len(self.links) < self.count or not all(link.ready.is_set() for link in self.links.values()):
            waiting = [link for link in self.links.values() if not link.ready.is_set()]
            if waiting:
                await waiting[0].ready.wait()
            else:
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def accepting(self, index: int, accept: bool) -> None:
        """Let listener `index` (0: this process) take new connections, or not: the others take them meanwhile.
        (Tests use it to place a connection; an operator has no reason to.)"""
        if index == 0:
            (self.hub.accept_gate.open if accept else self.hub.accept_gate.close)()
        else:
            await self.links[index].request(("accept", accept), CLOSE_TIMEOUT)

    async def closing(self, code: int, reason: str) -> None:
        """Shutdown: every listener stops accepting and closes its connections (with `code`), in parallel."""
        async with trio.open_nursery() as nursery:
            for link in list(self.links.values()):
                nursery.start_soon(link.request, ("closing", code, reason), CLOSE_TIMEOUT + 2.0)

    async def _tell_totals(self) -> None:
        while True:
            total = self.hub.connection_count()
            for link in self.links.values():
                if link.told_total != total:
                    link.channel.put(("total", total))
                    link.told_total = total
            await trio.sleep(TOTAL_EVERY)

    async def _keep(self, index: int) -> None:
        failures = 0
        while True:
            started = trio.current_time()
            try:
                status = await self._run_once(index)
            except Exception:  # (one that cannot even start: the server goes on, and tries again)
                log.exception("listener %d failed", index)
                status = None
            failures = 1 if trio.current_time() - started >= STABLE_AFTER else failures + 1
            delay = restart_delay(failures)
            log.warning("listener %d exited with status %s; starting it again in %.0f s", index, status, delay)
            await trio.sleep(delay)

    async def _run_once(self, index: int) -> int | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [sock.fileno() for sock in self.hub.sockets]
        command = [sys.executable, "-m", "mbot.listener", "--channel-fd", str(theirs.fileno()),
                   *itertools.chain.from_iterable(("--listen-fd", str(fd)) for fd in fds)]
        channel = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        link = _Link(index, channel, self.hub, self._writer)
        status: int | None = None
        try:
            async with trio.open_nursery() as nursery:
                process: trio.Process = await nursery.start(partial(
                    trio.run_process, command, env=child_environment(dict(os.environ)),
                    pass_fds=[*fds, theirs.fileno()], stdin=subprocess.DEVNULL, check=False))
                theirs.close()
                self.starts += 1
                channel.put(("setup", Setup(
                    index=index, db_path=str(self._db_path), cert=self._cert, ack_policy=self.hub.ack_policy,
                    link_policy=self.hub.link_policy, gather_policy=self.hub.gather_policy,
                    handshake_timeout=self.hub._handshake_timeout, speed_seconds=self.hub.speed_seconds,
                    downloads=self.hub.downloads)))
                self.links[index] = link
                self._notify()
                nursery.start_soon(send_quietly, channel, f"listener {index}")
                try:
                    await link.serve(nursery)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ChannelBroken) as exc:
                    log.warning("listener %d: channel broken: %s", index, exc)
                finally:
                    link.end()
                    if self.links.get(index) is link:
                        del self.links[index]
                    self._notify()
                with trio.move_on_after(CLOSE_TIMEOUT):
                    status = await process.wait()
                nursery.cancel_scope.cancel()  # (a listener that closed its channel but lingers is stopped)
        finally:
            theirs.close()
            ours.close()
        return status



