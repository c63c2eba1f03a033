"""The local channel between the main process and its listener processes (MBOT_LISTENERS, mbot/listenerpool.py):
messages (tuples whose first member names them), each a length-prefixed frame, over a socketpair the main process
made; what is queued goes in one write.

Pickle, because both ends are our own processes of the same version, on a socket nobody else can open (a
socketpair, inherited, never a path), and what crosses is already checked (protocol.Hello, Samples, Snapshot, ...):
pickle carries those dataclasses as they are, about ten times faster than encoding them to JSON and validating them
again. Nothing read from an agent is ever unpickled: only what our own process pickled.

Back-pressure: data (hello, samples, snapshots) takes a place of `room` before it is queued and gives it back once
it is on the socket; a stalled peer fills the socket buffer, then the room, and then whoever queues data waits,
which stops the agent connections reading their sockets: TCP back-pressure as with the writer's own channel, and
bounded memory. Control messages (acks of commits, closes, replies) never wait: there are at most a few per
connection and per request in flight.
"""
from __future__ import annotations

import logging
import pickle
import struct
from collections import deque
from typing import Any

import trio

HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 2**20  # one message: a checked agent frame pickles to a few MB at most; more is a broken peer
DATA_ROOM = 512  # data messages queued or in flight per channel

Message = tuple[Any, ...]

log = logging.getLogger(__name__)


class ChannelBroken(Exception):
    """The peer sent something that is not a frame of ours (a bug, or a process that is not ours)."""


class Channel:
    def __init__(self, stream: trio.abc.Stream, *, room: int = DATA_ROOM) -> None:
        self._stream = stream
        self._queue: deque[Message] = deque()
        self._data_queued = 0
        self._room = trio.Semaphore(room)
        self._wake = trio.Event()
        self.sent = 0  # messages sent (for tests and logs)
        self._buffer = bytearray()

    def put(self, message: Message) -> None:
        """Queue a control message (never waits)."""
        self._queue.append(message)
        self._wake.set()

    async def put_data(self, message: Message) -> None:
        """Queue a data message: waits while `room` data messages are queued and not yet sent."""
        await self._room.acquire()
        self._queue.append(message)
        self._data_queued += 1
        self._wake.set()

    async def send_loop(self) -> None:
        """Send what is queued, in one write, until cancelled or the peer is gone. Each message is a frame of its
        own, so a frame is bounded by one message (a checked agent frame, at most limits.MAX_FRAME_BYTES of JSON),
        whatever the number queued."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch = list(self._queue)
            self._queue.clear()
            data, self._data_queued = self._data_queued, 0
            frames = [pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL) for message in batch]
            await self._stream.send_all(b"".join(HEADER.pack(len(frame)) + frame for frame in frames))
            self.sent += len(batch)
            for _ in range(data):
                self._room.release()

    async def receive(self) -> list[Message] | None:
        """The messages that have come (at least one), in order; None once the peer closed the channel."""
        while True:
            messages: list[Message] = []
            at = 0
            while len(self._buffer) - at >= HEADER.size:
                (size,) = HEADER.unpack_from(self._buffer, at)
                if size > MAX_FRAME:
                    raise ChannelBroken(f"a frame of {size} bytes")
                if len(self._buffer) - at - HEADER.size < size:
                    break
                messages.append(pickle.loads(self._buffer[at + HEADER.size:at + HEADER.size + size]))
                at += HEADER.size + size
            del self._buffer[:at]
            if messages:
                return messages
            chunk = await self._stream.receive_some(1 << 20)
            if not chunk:
                return None
            self._buffer += chunk


async def send_quietly(channel: Channel, who: str) -> None:
    """channel.send_loop(), ended by the peer's end without an error: the reader's end of the channel (EOF) is
    where each side learns it and acts."""
    try:
        await channel.send_loop()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("%s: channel closed: %s", who, exc)
