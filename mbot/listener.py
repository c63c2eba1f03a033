"""A listener process (MBOT_LISTENERS > 1): serves agents on the listening sockets it inherited from the main
process, which started it (mbot/listenerpool.py), and hands what they send, checked, to that process.

    python -m mbot.listener --channel-fd N --listen-fd M [--listen-fd M2]     (started by the main process only)

Everything an agent connection does here is agents.py's, unchanged: the pre-auth gate, TLS, the request head, the
WebSocket upgrade, authentication (a read-only connection to the database, WAL), AgentSession (mbot/session.py, the
one place of the protocol's rules) and its driver AgentConnection with acks, link probes and tests. Only its sink
differs: hello, samples and snapshots go over the channel (mbot/channel.py) to the main process, whose writer commits
them and says which seqs are committed, so acks still follow commits. Which connection is a host's live one, and
what the bot asks of it (commands, checks, tests, closes), is the main process's call: it is told of every
connection and every end of one, and sends its requests here.

The process ends when the channel does (the main process is gone: it must not keep accepting agents for a server
that no longer exists), and at SIGTERM (the main process's stop, after it had the connections closed with 1012).
SIGINT is ignored: a Ctrl-C in a terminal reaches the whole process group, and the main process decides the order.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import signal
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import trio

from . import gcpace, install, store, tls
from .agents import AgentConnection, AgentHub, Connection
from .channel import Channel, Message, send_quietly
from .limits import PreAuthGate, preauth_total
from .listening import raise_nofile_limit
from .linkquality import LinkPolicy
from .protocol import CLOSE_REPLACED, Hello, Samples, Snapshot
from .session import AckPolicy, GatherPolicy
from .stability import StabilityRun, StabilitySpec
from .store import Database
from .writer import LimitExceeded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """What the main process tells a listener first: where things are and its hub's policies (tests give the main
    hub faster ones; a listener follows them)."""

    index: int
    db_path: str
    cert: tls.Certificate
    ack_policy: AckPolicy
    link_policy: LinkPolicy
    gather_policy: GatherPolicy
    handshake_timeout: float
    speed_seconds: float
    downloads: install.Downloads | None


class _Reply:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None


class ChannelSink:
    """One connection's IngestSink: its frames to the main process (agents.IngestSink)."""

    def __init__(self, hub: ListenerHub, conn_id: int) -> None:
        self._hub, self._id = hub, conn_id

    async def hello(self, host_id: int, hello: Hello) -> int:
        reply = self._hub.hellos[self._id] = _Reply()
        try:
            await self._hub.channel.put_data(("hello", self._id, host_id, hello))
            await reply.done.wait()
        finally:
            self._hub.hellos.pop(self._id, None)
        if reply.value is None:
            raise RuntimeError("the main process could not store the hello")
        committed: int = reply.value
        return committed

    async def samples(self, host_id: int, epoch: int, samples: Samples, on_commit: Callable[[int], None],
                      on_error: Callable[[BaseException], None] | None = None) -> None:
        # on_commit and on_error are the connection's own (AgentConnection._on_commit, _on_store_error): the
        # main process's answers name the connection, and ListenerHub.answer calls them.
        await self._hub.channel.put_data(("samples", self._id, host_id, epoch, samples))

    async def snapshot(self, host_id: int, snapshot: Snapshot) -> None:
        await self._hub.channel.put_data(("snapshot", host_id, snapshot))


class ListenerHub(AgentHub):
    """The hub of a listener process: agents.AgentHub serving the inherited sockets, each connection with a
    ChannelSink, every connection and its end told to the main process."""

    def __init__(self, db: Database, channel: Channel, setup: Setup, *, gate: PreAuthGate) -> None:
        super().__init__(db, None, handshake_timeout=setup.handshake_timeout, gate=gate)
        self.channel = channel
        self.ack_policy = setup.ack_policy
        self.link_policy = setup.link_policy
        self.gather_policy = setup.gather_policy
        self.speed_seconds = setup.speed_seconds
        self.downloads = setup.downloads
        self.by_id: dict[int, AgentConnection] = {}
        self._ids: dict[AgentConnection, int] = {}
        self._next_id = itertools.count(1)
        self.hellos: dict[int, _Reply] = {}
        self.total = 0  # connections of the whole server, as the main process last said

    def connection_count(self) -> int:
        return max(self.total, len(self.connections))

    def connection(self, host: store.Host, ws: Any, peer: str) -> AgentConnection:
        conn_id = next(self._next_id)
        connection = AgentConnection(host, ws, peer, ChannelSink(self, conn_id), self)
        self.by_id[conn_id], self._ids[connection] = connection, conn_id
        return connection

    def adopt(self, connection: Connection, nursery: trio.Nursery) -> None:
        # A second connection of a host in this process replaces the first here; the main process replaces one in
        # another process, and logs the replacement (agents.AgentHub.adopt).
        assert isinstance(connection, AgentConnection)
        previous = self.connections.get(connection.host.id)
        self.connections[connection.host.id] = connection
        if previous is not None:
            nursery.start_soon(previous.close, CLOSE_REPLACED, "replaced by a newer connection")
        self.channel.put(("connected", self._ids[connection], connection.host, connection.peer))

    def forget(self, connection: Connection) -> None:
        assert isinstance(connection, AgentConnection)
        conn_id = self._ids.pop(connection)
        del self.by_id[conn_id]
        if self.connections.get(connection.host.id) is connection:
            del self.connections[connection.host.id]
        self.channel.put(("gone", conn_id))

    def over_limit(self, host: store.Host, exc: LimitExceeded) -> None:
        # Counted, and told to the owner at most once a day, by the main process.
        self.channel.put(("limit", host, exc.limit, exc.detail))

    async def answer(self, message: Message, nursery: trio.Nursery) -> None:
        """One message from the main process."""
        kind = message[0]
        if kind == "committed":
            _kind, conn_id, seq = message
            if (connection := self.by_id.get(conn_id)) is not None:
                connection._on_commit(seq)
        elif kind == "failed":
            _kind, conn_id, limit, detail = message
            if (connection := self.by_id.get(conn_id)) is not None:
                connection._on_store_error(LimitExceeded(limit, detail) if limit else RuntimeError(detail))
        elif kind == "stored":
            _kind, conn_id, committed, specs = message
            if (connection := self.by_id.get(conn_id)) is not None:
                self.check_specs[connection.host.id] = specs
            if (reply := self.hellos.get(conn_id)) is not None:
                reply.value = committed
                reply.done.set()
        elif kind == "total":
            self.total = message[1]
        elif kind == "close":
            _kind, conn_id, code, reason = message
            if (connection := self.by_id.get(conn_id)) is not None:
                nursery.start_soon(connection.close, code, reason)
        elif kind == "checks":
            _kind, conn_id, specs = message
            if (connection := self.by_id.get(conn_id)) is not None:
                self.check_specs[connection.host.id] = specs
                nursery.start_soon(connection.send_checks)
        else:  # a request: its answer goes back as ("reply", request id, value)
            nursery.start_soon(self._request, message)

    async def _request(self, message: Message) -> None:
        kind, req = message[0], message[1]
        value: Any = None
        if kind == "accept":
            (self.accept_gate.open if message[2] else self.accept_gate.close)()
        elif kind == "closing":
            await self.close_all(message[2], message[3])
        elif (connection := self.by_id.get(message[2])) is None:
            pass  # gone meanwhile: the main process hears "gone" and answers its caller as for a silent agent
        elif kind == "command":
            value = await connection.run_command(message[3], message[4])
        elif kind == "speedtest":
            value = await connection.speedtest(message[3], message[4])
        elif kind == "stability":
            spec: StabilitySpec = message[3]
            run = StabilityRun(spec, start=trio.current_time())
            await connection.stability(run, lambda run, now: self.channel.put(("progress", req, _copy(run))),
                                       message[4])
            value = run
        self.channel.put(("reply", req, value))


def _copy(run: StabilityRun) -> StabilityRun:
    # Pickled when the channel sends it, by which time the test has moved on: send its state as of now.
    return dataclasses.replace(run, rtts=run.rtts[:], skipped=run.skipped[:])


async def serve(channel_fd: int, listen_fds: list[int]) -> None:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=channel_fd)))
    channel = Channel(stream)
    sockets = [trio.socket.from_stdlib_socket(socket.socket(fileno=fd)) for fd in listen_fds]
    first = await channel.receive()
    assert first and first[0][0] == "setup", first
    setup: Setup = first[0][1]
    logging.getLogger().handlers[0].setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s listener {setup.index} %(name)s: %(message)s"))
    db = Database(Path(setup.db_path), migrate=False)  # (opens nothing yet: each reader thread connects)
    hub = ListenerHub(db, channel, setup, gate=PreAuthGate(total=preauth_total(raise_nofile_limit())))
    context: ssl.SSLContext = tls.server_context(setup.cert)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_quietly, channel, "listener")
        nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
        nursery.start_soon(hub.serve_sockets, sockets, context)
        channel.put(("ready", os.getpid()))
        for message in first[1:]:
            await hub.answer(message, nursery)
        while (batch := await channel.receive()) is not None:
            for message in batch:
                await hub.answer(message, nursery)
        log.info("the main process closed the channel: stopping")
        nursery.cancel_scope.cancel()


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _signum in signals:
            scope.cancel()
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mbot.listener", description="an mbot listener process "
                                     "(started by the server when MBOT_LISTENERS > 1)")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=os.environ.get("MBOT_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s listener %(name)s: %(message)s")
    gcpace.tune()
    trio.run(serve, args.channel_fd, args.listen_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
