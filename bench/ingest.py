"""Ingest benchmark: N simulated agents against the real server, each a real TLS WebSocket, the agents spread over
several processes of their own, the server (`python -m mbot`) in its own process, from any checkout.

    .venv/bin/python bench/ingest.py --agents 1000                       # this checkout, one point
    .venv/bin/python bench/ingest.py --agents 1000,2500,5000 --repo /work/main --repo .
                                                                         # main and this checkout, side by side
    .venv/bin/python bench/ingest.py --agents 1000 --rev HEAD~3          # a git revision, exported to a temp dir

Each point runs the checkout's server with a fresh data directory (N hosts, the first 20 owned by the chat user),
BOT_TOKEN and TELEGRAM_API_URL pointing at the tests' fake Bot API server (tests/fakebot.py), /metrics off and
MBOT_WATCH_SELF=0. The simulated agents behave as agent/mbot_agent.py does on the wire: a hello with an inventory
and capabilities, the 40-series sample every interval (random phase), a processes snapshot every --procs-every
intervals (30 members, their CPU changing), a services snapshot after each hello (40 units) and when one changes
(every 10 minutes or so), a keepalive ping once the server has sent no message for 30 s (its pings do not count,
as in the agent), the spool (samples stay until an ack covers them; a reconnect replays
what the first ack does not cover, in `samples` frames), `gather` (an ack that asks for batches: the samples wait
until the oldest is that old, then go in one `samples` frame with the latest snapshot of each kind;
docs/protocol.md); they answer the server's link probes (WebSocket pings) with pongs, as any WebSocket library
does. They connect at --connect-rate per second in all (a real fleet after a restart arrives over seconds, not in
one instant) and reconnect with the agent's backoff when a connection fails or is closed.

The simulators are cheap, so that the bench measures the server and not itself: each process runs one selectors
loop over non-blocking TLS sockets with a minimal WebSocket client (RFC 6455 framing, masked client frames) and a
heap of timers, and draws its samples and processes lists from pools encoded at start. Their CPU per sample taken
is printed: on the shared 2-core machine, against the same server back to back, 0.4 ms at 1,000 agents where the
trio-websocket simulator before it took 1.5-1.7 ms (0.7 against 2.5 ms at 200 agents, where every sample gets its
own ack; 0.23 ms at 2,500 agents gathering 2 samples a frame). What is left is mostly the kernel's and OpenSSL's
share of a send or a read per frame and the wakeups; the loop does not hold frames back to save wakeups, since
agents that send in clumps would make the server look cheaper than a real fleet does.

`--listeners 1,2` runs each point once per MBOT_LISTENERS value (docs/architecture.md, "Listener processes"), back
to back; the CPU of every server process (the listeners are its children) is printed apart.

Printed per point (after a warm-up of two intervals, over --duration seconds):
- committed samples/s (rows appearing in the database) against the expected agents/interval;
- send->commit (the sample's ts, taken just before the send, to the moment a reader polling the database every
  0.1 s sees the row: up to 0.1 s late) p50/p99/max: how fresh the data is, the figure the target is about; with
  agents gathering (a busy server's ack asks them to) it holds the gathering's wait, so frame->commit says the
  same from the first send of the sample's frame: what the server itself takes;
  send->ack (in the simulator: from the send to the ack that covers the sample), which on a server that paces its
  acks (docs/architecture.md, "Acks and probes under load") measures that pace, not the server's speed;
- the server's CPU per committed sample (all its threads, over the window): the figure that compares two checkouts
  best on a machine whose load drifts, since it does not depend on how much CPU the server was given;
- the chat's /status latency and a chart's (/plot of an owned host's CPU over the last hour, rendered by
  matplotlib in the server; the fake Bot API queues the update; the clock stops when the reply reaches it), one of
  them every 2 s during the window;
- the server's chatter, per second: the acks the agents read, the link probes they answered, the keepalive pings
  they sent;
- the CPU of every server process (its event loop thread apart) and of the simulators (per process, and per sample
  they took), the server's peak RSS, the load average of the machine over the window;
- samples not stored: after the window the simulators stop sampling and wait (up to 60 s) until everything is
  acked; then every sample they took should be in the database exactly once (what is not is still in a spool:
  a server that fell behind, not a loss).
A summary table of every point ends the run.

A server that has less CPU than its agents need, to see how a connection storm ends at fewer agents than a real
saturation takes (cgroup v1 here; v2 has cpu.max):

    mkdir /sys/fs/cgroup/cpu/mbotbench && echo 30000 > /sys/fs/cgroup/cpu/mbotbench/cpu.cfs_quota_us  # 30 % of a core
    .venv/bin/python bench/ingest.py --agents 1000 --server-cgroup /sys/fs/cgroup/cpu/mbotbench
"""
from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import heapq
import itertools
import json
import math
import os
import random
import selectors
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import trio

ROOT = Path(__file__).resolve().parent.parent
CHAT_USER = 4242
OWNED = 20  # hosts owned by the chat user: what /status summarises
STATUS_EVERY = 2.0
POLL_EVERY = 0.1


# --- the simulated agents (one process runs many: `ingest.py --sim`, its orders on stdin) -----------------------


def sample_metrics(rng: random.Random) -> dict[str, Any]:
    """A realistic sample: 8 cores, 3 disks, 2 interfaces, 2 temperatures (about 40 series)."""
    return {
        "cpu": round(rng.uniform(0, 100), 1), "cpu_cores": [round(rng.uniform(0, 100), 1) for _ in range(8)],
        "load": [round(rng.uniform(0, 4), 2) for _ in range(3)],
        "ram": {"used": 8_000_000_000 + rng.randrange(10**8), "total": 16_000_000_000},
        "swap": {"used": 100_000_000, "total": 2_000_000_000},
        "disks": {m: {"used": 50_000_000_000 + rng.randrange(10**6), "total": 100_000_000_000}
                  for m in ("/", "/home", "/var")},
        "disk_io": {"read": round(rng.uniform(0, 1e7), 1), "write": round(rng.uniform(0, 1e7), 1)},
        "net": {i: {"rx": round(rng.uniform(0, 1e6), 1), "tx": round(rng.uniform(0, 1e6), 1)}
                for i in ("eth0", "wlan0")},
        "temps": {"cpu": round(rng.uniform(30, 80), 1), "nvme": round(rng.uniform(30, 60), 1)},
        "uptime": 100000.0, "procs": 300,
    }


INVENTORY = {"cpu": {"model": "AMD EPYC 7763 64-Core Processor", "cores": 8, "threads": 8},
             "mem_total": 16_000_000_000, "swap_total": 2_000_000_000, "os": "Debian GNU/Linux 12 (bookworm)",
             "kernel": "6.1.0-18-amd64", "arch": "x86_64", "virt": "kvm", "boot_time": 1764000000.0,
             "agent": "0.2.0",
             "disks": [{"mount": m, "device": f"/dev/vda{i}", "fs": "ext4", "total": 100_000_000_000}
                       for i, m in enumerate(("/", "/home", "/var"))],
             "nics": [{"name": "eth0", "addrs": ["192.0.2.2/24", "fd00::2"], "mac": "02:fc:00:00:00:01",
                       "speed": 10000, "up": True}]}


def processes_items(rng: random.Random) -> list[dict[str, Any]]:
    names = ["postgres", "python3", "nginx", "systemd", "sshd", "containerd", "dockerd", "node", "java", "redis"]
    return [{"pid": 1000 + i, "name": names[i % len(names)], "user": "root" if i % 3 else "app",
             "cmd": f"/usr/bin/{names[i % len(names)]} --worker {i} --config /etc/app/{i}.conf",
             "cpu": round(rng.uniform(0, 50), 1), "rss": 50_000_000 + 1_000_000 * i} for i in range(30)]


def services_items(changed: int) -> list[dict[str, Any]]:
    units = [{"unit": f"unit{i}.service", "state": "active", "sub": "running"} for i in range(40)]
    units[changed % 40] = {**units[changed % 40], "state": "failed", "sub": "failed", "since": 1764012210.0}
    return units


# One context per process, as an agent has (making one loads the system's CA store: milliseconds of CPU).
CLIENT_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CLIENT_TLS.check_hostname, CLIENT_TLS.verify_mode = False, ssl.CERT_NONE

# Pre-encoded content: each process draws its samples' metrics and its processes lists from pools made by
# sample_metrics and processes_items at start (values from the same distributions, the same bytes on the wire),
# since encoding them afresh cost more CPU than everything else the simulator does per sample.
POOL = 512
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_BATCH = 500  # samples in one `samples` frame, as the agent's replay
READ_BUFFER = bytearray(1 << 16)  # every read goes here first: no buffer allocated (and mapped) per read
READ_VIEW = memoryview(READ_BUFFER)
OP_CONT, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA  # binary frames (speed tests) are ignored
RESTART_CODES = (1001, 1006, 1012)
SLACK = 0.005  # timers due this soon fire with the ones due now: fewer wakeups of the loop
CONNECT_TIMEOUT, ACK_TIMEOUT = 15.0, 30.0  # the agent's (AgentConfig.connect_timeout, ack_timeout)
KEEPALIVE = 30.0  # the agent's AgentConfig.ping_interval


def ws_frame(opcode: int, payload: bytes, rng: random.Random) -> bytes:
    """A client frame (FIN set), masked as RFC 6455 requires: the XOR done on the whole payload as one integer."""
    n = len(payload)
    mask = rng.getrandbits(32).to_bytes(4, "big")
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if not n:
        return head + mask
    key = int.from_bytes((mask * ((n + 3) // 4))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def parse_frames(buffer: bytearray) -> list[tuple[bool, int, bytes]]:
    """Take the complete server frames (fin, opcode, payload) off the front of `buffer`; a masked server frame is a
    protocol error (ValueError)."""
    frames = []
    while len(buffer) >= 2:
        b0, b1 = buffer[0], buffer[1]
        if b1 & 0x80:
            raise ValueError("masked frame from the server")
        n, start = b1 & 0x7F, 2
        if n == 126:
            if len(buffer) < 4:
                break
            n, start = int.from_bytes(buffer[2:4], "big"), 4
        elif n == 127:
            if len(buffer) < 10:
                break
            n, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + n:
            break
        frames.append((bool(b0 & 0x80), b0 & 0x0F, bytes(buffer[start:start + n])))
        del buffer[:start + n]
    return frames


def gather_of(frame: dict[str, Any]) -> float:
    """An ack's `gather` (seconds between batches the server asks for); 0 (at once) when absent or not a number
    with 0 < S <= 60, which the agent ignores likewise (docs/protocol.md)."""
    value = frame.get("gather")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 60:  # NaN too
        return 0.0
    return float(value)


@dataclass
class SimStats:
    connected: int = 0  # agents whose hello was acked at least once
    connects: int = 0  # hellos acked, reconnects included
    failures: int = 0  # connection attempts or connections that failed
    acks: list[tuple[float, float]] = field(default_factory=list)  # (send wall time, send->ack seconds)
    sends: list[tuple[str, int, float]] = field(default_factory=list)  # (secret[:12], seq, wall time of 1st send)
    sent: int = 0  # samples taken (each exactly once in the database at the end)
    unacked: int = 0  # samples still unacked at the end
    snapshots: int = 0
    batches: int = 0  # frames sent that carried samples
    why: dict[str, int] = field(default_factory=dict)  # failures by cause
    chatter: dict[str, int] = field(default_factory=lambda: {"acks": 0, "probes": 0, "keepalives": 0})


class Loop:
    """One process's event loop: a selector over every agent's socket and a heap of timers."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.order = itertools.count()  # ties in the heap never compare the callbacks

    def call_at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.timers, (when, next(self.order), fn, args))

    def run(self, done: Callable[[], bool]) -> None:
        timers, selector = self.timers, self.selector
        while not done():
            timeout = max(0.0, timers[0][0] - time.monotonic()) if timers else None
            for key, events in selector.select(timeout):
                key.data(events)
            soon = time.monotonic() + SLACK
            while timers and timers[0][0] <= soon:
                _, _, fn, args = heapq.heappop(timers)
                fn(*args)


class Conn:
    """One connection of one agent: TCP, TLS, the HTTP upgrade, the hello and its ack, then frames both ways.
    Non-blocking throughout; what the socket does not take waits in `out` until it is writable."""

    def __init__(self, agent: SimAgent) -> None:
        self.agent, self.loop = agent, agent.loop
        self.state = "tcp"  # tcp, tls, http, hello (waiting for the first ack), live, closing, closed
        self.inbuf = bytearray()
        self.out = bytearray()
        self.message: list[bytes] = []  # fragments of a text message that spans frames
        self.error = ""  # the code of the server's error frame, if one came
        self.key = base64.b64encode(agent.rng.getrandbits(128).to_bytes(16, "big"))
        self.started = time.monotonic()
        self.heard_at = -math.inf  # when the server's latest message came (the keepalive's clue, as the agent's)
        self.sock: socket.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.watching = 0

    def open(self) -> None:
        agent = self.agent
        try:
            # Each agent from an address of its own (127.0.0.0/8 is all loopback), as a real fleet: the server
            # bounds connections waiting for their handshake per address.
            self.sock.bind((agent.address, 0))
            err = self.sock.connect_ex(("127.0.0.1", agent.port))
        except OSError as e:
            err = e.errno or -1
        self.loop.selector.register(self.sock, selectors.EVENT_WRITE, self.ready)
        self.watching = selectors.EVENT_WRITE
        if err not in (0, errno.EINPROGRESS):
            self.end(type(OSError(err, "")).__name__, refused=True)
            return
        # The agent's timeouts: connect_timeout (15 s) for TCP, TLS and the upgrade, then ack_timeout (30 s) for the
        # hello's ack.
        self.loop.call_at(self.started + CONNECT_TIMEOUT, self.deadline)

    # -- IO

    def watch(self, events: int) -> None:
        if events != self.watching:
            self.loop.selector.modify(self.sock, events, self.ready)
            self.watching = events

    def ready(self, events: int) -> None:
        try:
            if self.state == "tcp":
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.end(type(OSError(err, "")).__name__, refused=True)
                    return
                self.loop.selector.unregister(self.sock)
                self.sock = CLIENT_TLS.wrap_socket(self.sock, server_hostname="127.0.0.1",
                                                   do_handshake_on_connect=False)
                self.loop.selector.register(self.sock, selectors.EVENT_READ, self.ready)
                self.watching, self.state = selectors.EVENT_READ, "tls"
                self.handshake()
                return
            if self.state == "tls":
                self.handshake()
                return
            if events & selectors.EVENT_WRITE and self.out:
                self.send(b"")
            if events & selectors.EVENT_READ and self.state != "closed":
                self.receive()
        except OSError as e:  # ssl.SSLError too
            if getattr(e, "reason", None) == "TLSV1_ALERT_USER_CANCELLED":
                self.end("busy (refused before TLS)")  # the server's cheap refusal: the agent backs off
            else:  # what agent/mbot_agent.py's server_gone() takes for a server that is not there
                gone = isinstance(e, (ConnectionError, ssl.SSLEOFError)) and self.state in ("tcp", "tls", "http")
                self.end(type(e).__name__, refused=gone)
        except ValueError as e:  # a frame or a text that breaks the protocol
            self.end(f"ProtocolError: {e}")

    def handshake(self) -> None:
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self.watch(selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self.watch(selectors.EVENT_WRITE)
            return
        self.state = "http"
        self.watch(selectors.EVENT_READ)
        self.send(b"GET /agent HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
                  % (self.agent.port, self.key, self.agent.secret.encode()))

    def send(self, data: bytes | bytearray) -> None:
        """Send now what the socket takes; keep the rest for when it is writable. (OpenSSL wants a write that could
        not finish retried with the same bytes at the front: `out` only ever grows at its end until sent.)"""
        if self.state == "closed":
            return
        if self.out:
            self.out += data
            data = self.out
        try:
            sent = self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            sent = 0
        except OSError as e:  # called from timers too: a broken connection ends here, not in the loop
            self.end(type(e).__name__)
            return
        if self.out:
            del self.out[:sent]
        elif sent < len(data):
            self.out = bytearray(data[sent:])
        self.watch(selectors.EVENT_READ | selectors.EVENT_WRITE if self.out else selectors.EVENT_READ)

    def send_texts(self, *texts: str) -> None:
        """Text messages in one write: a sample and its snapshot cost one TLS record and one syscall, not two."""
        rng = self.agent.rng
        self.send(b"".join([ws_frame(OP_TEXT, text.encode(), rng) for text in texts]))

    def receive(self) -> None:
        # One read per readiness, and more only while TLS holds decrypted bytes: what is left in the socket makes
        # the (level-triggered) selector report it again, which costs less than a read that finds nothing.
        while True:
            try:
                got = self.sock.recv_into(READ_BUFFER)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not got:
                self.end("closed 1006 (no close frame)" if self.state != "closing" else "")
                return
            self.inbuf += READ_VIEW[:got]
            if not self.sock.pending():  # type: ignore[attr-defined]
                break
        if self.state == "http":
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.inbuf) > 65536:
                    self.end("HandshakeError: response head too large")
                return
            head = bytes(self.inbuf[:end]).decode("latin-1").split("\r\n")
            del self.inbuf[:end + 4]
            status = head[0].split(" ")
            if len(status) < 2 or status[1] != "101":
                self.end(f"HTTP {status[1] if len(status) > 1 else '?'}")
                return
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
            if not any(h.lower().startswith("sec-websocket-accept:") and h.split(":", 1)[1].strip() == accept
                       for h in head[1:]):
                self.end("HandshakeError: wrong Sec-WebSocket-Accept")
                return
            self.state = "hello"
            self.send_texts(self.agent.hello)
        for fin, opcode, payload in parse_frames(self.inbuf):
            if opcode == OP_PING:
                self.send(ws_frame(OP_PONG, payload, self.agent.rng))  # the server's link probe
                self.agent.world.stats.chatter["probes"] += 1
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.state != "closing":
                    self.send(ws_frame(OP_CLOSE, payload[:2], self.agent.rng))
                self.end(f"closed {code}{f' ({self.error})' if self.error else ''}" if self.state != "closing"
                         else "", code=code)
                return
            elif opcode in (OP_TEXT, OP_CONT):
                self.message.append(payload)
                if fin:
                    text, self.message = b"".join(self.message), []
                    self.on_text(json.loads(text))
            if self.state == "closed":
                return

    def on_text(self, frame: Any) -> None:
        self.heard_at = time.monotonic()
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "ack":
            self.agent.world.stats.chatter["acks"] += 1
            if self.state == "hello":
                self.state = "live"
                self.loop.call_at(time.monotonic() + KEEPALIVE, self.keepalive)
                self.agent.connected(frame)
            else:
                self.agent.on_ack(frame)
        elif kind == "error":
            self.error = str(frame.get("code"))

    # -- timers

    def deadline(self) -> None:
        if self.state in ("tcp", "tls", "http"):
            self.end("TooSlowError")
        elif self.state == "hello":
            self.loop.call_at(self.started + CONNECT_TIMEOUT + ACK_TIMEOUT, self.ack_deadline)

    def ack_deadline(self) -> None:
        if self.state == "hello":
            self.end("no ack of the hello")

    def keepalive(self) -> None:
        """As the agent's: a ping once the server has sent no message for 30 s (its pings do not count), then 30 s
        before looking again."""
        if self.state != "live":
            return
        now = time.monotonic()
        if self.heard_at + KEEPALIVE > now:
            self.loop.call_at(self.heard_at + KEEPALIVE, self.keepalive)
            return
        self.send(ws_frame(OP_PING, b"keepalive", self.agent.rng))
        self.agent.world.stats.chatter["keepalives"] += 1
        self.loop.call_at(now + KEEPALIVE, self.keepalive)

    def close(self) -> None:
        """A close frame (1000); the server's answer or a second's wait ends it."""
        self.send(ws_frame(OP_CLOSE, (1000).to_bytes(2, "big"), self.agent.rng))
        self.state = "closing"
        self.loop.call_at(time.monotonic() + 2, lambda: self.end("") if self.state == "closing" else None)

    def end(self, why: str, *, refused: bool = False, code: int = 0) -> None:
        """The connection is over (`why` empty: as planned). The agent then reconnects, unless it is done."""
        if self.state == "closed":
            return
        was_live = self.state in ("live", "closing")
        self.state = "closed"
        try:
            self.loop.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.agent.disconnected(self, why, refused=refused, restart=was_live and (code in RESTART_CODES or
                                                                                  why.startswith("closed 1006")))


class SimAgent:
    """What agent/mbot_agent.py does on the wire: the hello, a sample every interval, the spool (samples stay until
    an ack covers them; after a reconnect what the first ack does not cover is replayed), snapshots (services at
    each connection and when one changes, every 5-15 minutes; processes every `procs_every` samples; only the
    latest of a kind is kept), `gather` from the acks, the keepalive pings and the pongs, reconnects with backoff."""

    def __init__(self, loop: Loop, world: SimWorld, secret: str, address: str, rng: random.Random) -> None:
        self.loop, self.world, self.stats = loop, world, world.stats
        self.secret, self.address, self.rng = secret, address, rng
        self.port, self.interval = world.port, world.interval
        self.epoch = int(time.time() * 1000) + rng.randrange(1000)
        self.seq = 0
        self.spool: dict[int, list[Any]] = {}  # seq -> [sample text, monotonic send (0: not sent), monotonic take]
        self.acked = 0  # the highest seq an ack covered
        self.sent_upto = 0  # the highest seq sent on this connection (or covered by its hello's ack)
        self.pending: dict[str, str] = {}  # kind -> the latest snapshot frame not sent yet
        self.gather = 0.0  # from the latest ack: send batches at most every `gather` seconds
        self.flush_at: float | None = None
        self.conn: Conn | None = None
        self.ever_connected = False
        self.services_change = 0
        self.attempt = 0  # failures in this run
        self.live_since = 0.0
        self.restart_until = 0.0  # after a restart close: refused connections are tried again within 1-2 s
        self.next_sample = 0.0
        self.hello = json.dumps({
            "type": "hello", "v": 1, "agent": "0.2.0", "epoch": self.epoch, "hostname": "sim",
            "os": "Linux 6.1.0-18-amd64", "platform": "linux", "arch": "x86_64", "cpu_count": 8,
            "mem_total": 16_000_000_000, "boot_time": 1764000000.0, "interval": self.interval,
            "disks": ["/", "/home", "/var"], "capabilities": ["speedtest", "checks"], "inventory": INVENTORY},
            separators=(",", ":"))

    def start(self) -> None:
        now = time.monotonic()
        self.next_sample = now + self.rng.uniform(0, self.interval)  # agents are not in phase
        self.loop.call_at(self.next_sample, self.tick)
        self.loop.call_at(now + self.rng.uniform(300, 900), self.services_changed)
        self.reconnect()

    # -- collection

    def tick(self) -> None:
        if self.world.stopping:
            return
        self.seq += 1
        now = time.monotonic()
        world = self.world
        self.spool[self.seq] = [f'{{"seq":{self.seq},"ts":{time.time()!r},"metrics":'
                                f'{world.samples[self.rng.randrange(POOL)]}}}', 0.0, now]
        self.stats.sent += 1
        if world.procs_every == 1 or self.seq % world.procs_every == 1:
            self.snapshot("processes", world.processes[self.rng.randrange(POOL)])
        self.next_sample += self.interval
        self.loop.call_at(self.next_sample, self.tick)
        self.pump()

    def services_changed(self) -> None:
        if self.world.stopping:
            return
        self.services_change += 1
        self.snapshot("services", json.dumps(services_items(self.services_change), separators=(",", ":")))
        self.loop.call_at(time.monotonic() + self.rng.uniform(300, 900), self.services_changed)

    def snapshot(self, kind: str, items: str) -> None:
        """Only the latest of a kind counts: one that was not sent yet is replaced."""
        self.pending[kind] = f'{{"type":"snapshot","kind":"{kind}","v":1,"ts":{time.time()!r},"items":{items}}}'

    # -- sending

    def pump(self) -> None:
        """Send what is due: everything at once, or with `gather`, once the oldest unsent sample is that old."""
        conn = self.conn
        if conn is None or conn.state != "live":
            return
        oldest = self.spool.get(self.sent_upto + 1)
        if not self.gather or self.world.stopping:
            if oldest is not None:
                self.flush(conn)
            return
        if oldest is None:
            return
        due = oldest[2] + self.gather
        if due <= time.monotonic() + SLACK:
            self.flush(conn)
        elif self.flush_at is None or due < self.flush_at:
            self.flush_at = due
            self.loop.call_at(due, self.flush_due, due)

    def flush_due(self, due: float) -> None:
        if self.flush_at == due:
            self.flush_at = None
            self.pump()

    def flush(self, conn: Conn) -> None:
        """Every unsent sample (one `sample` frame, or `samples` batches), then the latest snapshot of each kind."""
        now = time.monotonic()
        texts = []
        wall = time.time()
        for seq in range(self.sent_upto + 1, self.seq + 1):
            entry = self.spool.get(seq)
            if entry is not None:
                if not entry[1]:
                    self.stats.sends.append((self.secret[:12], seq, round(wall, 3)))
                entry[1] = now
                texts.append(entry[0])
        self.sent_upto = self.seq
        self.flush_at = None
        if len(texts) == 1:
            frames = ['{"type":"sample",' + texts[0][1:]]
        else:
            frames = ['{"type":"samples","samples":[' + ",".join(texts[i:i + MAX_BATCH]) + "]}"
                      for i in range(0, len(texts), MAX_BATCH)]
        self.stats.batches += len(frames)
        self.stats.snapshots += len(self.pending)
        conn.send_texts(*frames, *self.pending.values())
        self.pending.clear()

    # -- what the server says

    def connected(self, ack: dict[str, Any]) -> None:
        self.stats.connects += 1
        if not self.ever_connected:
            self.ever_connected = True
            self.stats.connected += 1
        self.live_since = time.monotonic()
        self.acked_to(ack)
        self.sent_upto = max(self.acked, int(ack.get("seq", 0)))
        # A new connection gets every kind once: the services at once, the processes with the first samples.
        self.snapshot("services", json.dumps(services_items(self.services_change), separators=(",", ":")))
        assert self.conn is not None
        self.conn.send_texts(self.pending.pop("services"))
        self.stats.snapshots += 1
        self.snapshot("processes", self.world.processes[self.rng.randrange(POOL)])
        self.flush_at = None
        if self.spool.get(self.sent_upto + 1) is not None:
            self.flush(self.conn)  # a new connection starts at once, `gather` or not
        if self.world.stopping and not self.spool and self.conn is not None and self.conn.state == "live":
            self.conn.close()

    def on_ack(self, ack: dict[str, Any]) -> None:
        before = self.gather
        self.acked_to(ack)
        if self.gather != before:
            self.flush_at = None
            self.pump()
        if self.world.stopping and not self.spool and self.conn is not None and self.conn.state == "live":
            self.conn.close()

    def acked_to(self, ack: dict[str, Any]) -> None:
        seq = int(ack.get("seq", 0))
        self.gather = gather_of(ack) or self.world.assume_gather
        if seq <= self.acked:
            return
        now, wall = time.monotonic(), time.time()
        for s in range(self.acked + 1, seq + 1):
            entry = self.spool.pop(s, None)
            if entry is not None and entry[1]:
                self.stats.acks.append((round(wall - (now - entry[1]), 3), round(now - entry[1], 4)))
        self.acked = seq

    def disconnected(self, conn: Conn, why: str, *, refused: bool, restart: bool) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        self.flush_at = None
        now = time.monotonic()
        if why:
            self.stats.failures += 1
            self.stats.why[why] = self.stats.why.get(why, 0) + 1
        if self.world.stopping and not self.spool:
            return
        # The agent's backoff (docs/protocol.md, "Reconnecting"): exponential with full jitter, a stable connection
        # (30 s) ends a run; a restart close after a stable connection, and refusals within the minute after it,
        # come back within seconds.
        stable = self.live_since and now - self.live_since >= 30
        self.live_since = 0.0
        if stable:
            self.attempt = 0
        if restart and stable:
            wait = self.rng.uniform(0.5, 3.0)
            self.restart_until = now + 60
        elif refused and now < self.restart_until:
            wait = self.rng.uniform(1.0, 2.0)
        else:
            wait = 1.0 if self.attempt == 0 else self.rng.uniform(0, min(60.0, 2.0 ** self.attempt))
            self.attempt += 1
        self.loop.call_at(now + wait, self.reconnect)

    def reconnect(self) -> None:
        if self.conn is None and not (self.world.stopping and not self.spool):
            self.conn = Conn(self)
            self.conn.open()


@dataclass
class SimWorld:
    """What one simulator process shares among its agents."""
    port: int
    interval: float
    procs_every: int
    assume_gather: float
    samples: list[str]
    processes: list[str]
    stats: SimStats = field(default_factory=SimStats)
    stopping: bool = False


def simulate(orders: dict[str, Any], stdin_rest: bytes) -> None:
    """One simulator process: its agents, started at `rate` per second; reports on stdout (JSON lines); a line on
    stdin says stop (sampling ends, what the agents hold is sent at once, the spools drain, results are printed)."""
    rng = random.Random(orders["seed"])
    world = SimWorld(orders["port"], orders["interval"], orders["procs_every"], orders.get("assume_gather", 0.0),
                     [json.dumps(sample_metrics(rng), separators=(",", ":")) for _ in range(POOL)],
                     [json.dumps(processes_items(rng), separators=(",", ":")) for _ in range(POOL)])
    stats = world.stats
    loop = Loop()
    agents = [SimAgent(loop, world, secret, f"127.{orders['seed'] + 1}.{i // 250}.{i % 250 + 1}",
                       random.Random(rng.random()))
              for i, secret in enumerate(orders["secrets"])]
    out = sys.stdout
    drain_until = math.inf
    finished = False

    def report(**kw: Any) -> None:
        out.write(json.dumps(kw) + "\n")
        out.flush()

    def stop(_events: int = 0) -> None:
        nonlocal drain_until
        if _events:
            loop.selector.unregister(sys.stdin.fileno())
        world.stopping = True
        drain_until = time.monotonic() + orders["drain"]
        for agent in agents:
            agent.pump()  # no more waiting for `gather`
            if not agent.spool and agent.conn is not None and agent.conn.state == "live":
                agent.conn.close()
        drained()

    def drained() -> None:
        nonlocal finished
        finished = time.monotonic() >= drain_until or not any(
            a.spool or (a.conn is not None and a.conn.state == "closing") for a in agents)
        if not finished:
            loop.call_at(time.monotonic() + 0.2, drained)

    def progress() -> None:
        report(connected=stats.connected, failures=stats.failures, sent=stats.sent, chatter=stats.chatter)
        loop.call_at(time.monotonic() + 0.5, progress)

    now = time.monotonic()
    for i, agent in enumerate(agents):
        loop.call_at(now + i / orders["rate"], agent.start)
    loop.call_at(now, progress)
    if stdin_rest:
        loop.call_at(now, stop)
    else:
        loop.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, stop)  # any line (or EOF): stop
    loop.run(lambda: finished)
    stats.unacked = sum(len(a.spool) for a in agents)
    report(result=True, sent=stats.sent, unacked=stats.unacked, failures=stats.failures, connects=stats.connects,
           connected=stats.connected, acks=stats.acks, snapshots=stats.snapshots, batches=stats.batches,
           why=stats.why, sends=stats.sends)


# --- the bench: a checkout's server, the simulators, the measurements ---------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEYS = """
import json, sys
from pathlib import Path
from mbot import service, store, tls
data, n, owner, owned = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tls.ensure_certificate(data, ["127.0.0.1"])  # before the hosts, as newkey does
conn = store.connect(data / "mbot.sqlite3")
with conn:
    conn.execute("BEGIN IMMEDIATE")
    secrets = [service.new_key(conn, f"sim{i}", owner if i < owned else 0).secret for i in range(n)]
conn.close()
json.dump(secrets, sys.stdout)
"""


def export_rev(rev: str) -> Path:
    """A git revision of this repository as a plain directory (removed at exit by the caller)."""
    target = Path(tempfile.mkdtemp(prefix="mbot-bench-rev-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def quantiles(values: list[float]) -> str:
    if not values:
        return "p50=- p99=- max=- (none)"
    return (f"p50={percentile(values, 0.5) * 1000:.0f} ms p99={percentile(values, 0.99) * 1000:.0f} ms "
            f"max={max(values) * 1000:.0f} ms (n={len(values)})")


def describe_checkout(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return f"{repo} @ {head}{'+dirty' if dirty else ''}"
    except (subprocess.CalledProcessError, OSError):
        return str(repo)


class Sims:
    """The simulator processes and what they report."""

    def __init__(self) -> None:
        self.procs: list[trio.Process] = []
        self.connected: dict[int, int] = {}
        self.failures: dict[int, int] = {}
        self.sent: dict[int, int] = {}  # samples taken so far, per process
        self.chatter: dict[int, dict[str, int]] = {}  # acks read, link probes answered, keepalive pings sent so far
        self.results: dict[int, dict[str, Any]] = {}

    async def start(self, nursery: trio.Nursery, secrets: list[str], port: int, args: argparse.Namespace) -> None:
        count = max(1, min(args.procs, len(secrets)))
        for i in range(count):
            orders = {"secrets": secrets[i::count], "port": port, "interval": args.interval, "seed": i,
                      "rate": args.connect_rate / count, "procs_every": args.procs_every, "drain": 60.0,
                      "assume_gather": args.assume_gather}
            proc = await trio.lowlevel.open_process([sys.executable, str(Path(__file__).resolve()), "--sim"],
                                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert proc.stdin is not None
            await proc.stdin.send_all(json.dumps(orders).encode() + b"\n")
            self.procs.append(proc)
            nursery.start_soon(self._read, i, proc)

    async def _read(self, i: int, proc: trio.Process) -> None:
        assert proc.stdout is not None
        buffer = b""
        while True:
            data = await proc.stdout.receive_some(1 << 20)
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = json.loads(line)
                if event.get("result"):
                    self.results[i] = event
                else:
                    self.connected[i], self.failures[i] = event["connected"], event["failures"]
                    self.sent[i], self.chatter[i] = event["sent"], event["chatter"]

    async def stop(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            try:
                await proc.stdin.send_all(b"stop\n")
            except trio.BrokenResourceError:
                pass
        with trio.move_on_after(90):
            while len(self.results) < len(self.procs):
                await trio.sleep(0.2)
        for proc in self.procs:
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()


def cpu_of(proc: Any) -> tuple[float, float]:
    """(process CPU seconds, its main thread's: the event loop)"""
    times = proc.cpu_times()
    main = next((t for t in proc.threads() if t.id == proc.pid), None)
    return times.user + times.system, (main.user_time + main.system_time) if main else 0.0


async def run_point(repo: Path, agents: int, args: argparse.Namespace, listeners: int | None = None) -> dict[str, Any]:
    import psutil

    sys.path.insert(0, str(ROOT / "tests"))
    from fakebot import FakeBot

    data = Path(tempfile.mkdtemp(prefix="mbot-bench-"))
    made = subprocess.run([sys.executable, "-c", KEYS, str(data), str(agents), str(CHAT_USER), str(OWNED)],
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
    if made.returncode:
        raise SystemExit(f"cannot make the hosts with {repo}: {made.stderr}")
    secrets = json.loads(made.stdout)
    port = free_port()
    fake = FakeBot()
    point: dict[str, Any] = {"repo": describe_checkout(repo) + (f" MBOT_LISTENERS={listeners}" if listeners else ""),
                             "agents": agents}
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        env = {**os.environ, "PYTHONPATH": str(repo), "MBOT_DATA_DIR": str(data), "PORT": str(port),
               "MBOT_HOST": "127.0.0.1", "MBOT_PUBLIC_HOST": "127.0.0.1", "MBOT_LOG_LEVEL": "WARNING",
               "MBOT_WATCH_SELF": "0", "BOT_TOKEN": fake.token, "TELEGRAM_API_URL": fake.url,
               "ALLOWED_USERS": str(CHAT_USER)}
        env.pop("MBOT_METRICS_PORT", None)
        env.pop("MBOT_LISTENERS", None)
        if listeners is not None:
            env["MBOT_LISTENERS"] = str(listeners)
        log = open(data / "server.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "mbot"], cwd=repo, env=env, stdout=log, stderr=log)
        if args.server_cgroup:  # every thread of the server, and the ones it starts later, share the group's quota
            Path(args.server_cgroup, "cgroup.procs").write_text(str(server.pid))
        sims = Sims()
        try:
            with trio.fail_after(60):
                while True:
                    try:
                        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await trio.sleep(0.1)
            started = time.monotonic()
            await sims.start(nursery, secrets, port, args)
            with trio.move_on_after(agents / args.connect_rate * 3 + 120):
                while sum(sims.connected.values()) < agents:
                    await trio.sleep(0.2)
            point["connect_s"] = time.monotonic() - started
            point["connected"] = sum(sims.connected.values())
            await trio.sleep(2 * args.interval)  # every agent in its rhythm, the first snapshots stored
            point.update(await measure(data, server.pid, sims, fake, args))
            await sims.stop()
            results = list(sims.results.values())
            sent = sum(r["sent"] for r in results)
            point["unacked"] = sum(r["unacked"] for r in results)
            point["failures"] = sum(r["failures"] for r in results)
            point["batches"] = sum(r.get("batches", 0) for r in results)
            point["why"] = {k: sum(r["why"].get(k, 0) for r in results) for r in results for k in r["why"]}
            point["reconnects"] = sum(r["connects"] for r in results) - sum(r["connected"] for r in results)
            acks = [(w, lat) for r in results for w, lat in r["acks"]]
            point["ack"] = [lat for w, lat in acks if point["t0"] <= w < point["t1"]]
            # frame->commit: from the first send of a sample's frame (after any gathering) to its row.
            sends = {(agent, seq): wall for r in results for agent, seq, wall in r.get("sends", [])}
            agent = {host_id: secrets[int(name[3:])][:12] for host_id, name in point.pop("names").items()}
            point["frame"] = [round(at - sends[(agent[host_id], seq)], 4) for host_id, seq, at in point.pop("seen")
                              if (agent.get(host_id), seq) in sends]
            with sqlite3.connect(f"file:{data / 'mbot.sqlite3'}?mode=ro", uri=True) as conn:
                stored = conn.execute("SELECT count(*), count(DISTINCT host_id || ':' || seq) FROM samples").fetchone()
            point["sent"], point["stored"], point["distinct"] = sent, stored[0], stored[1]
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
            for proc in sims.procs:
                if proc.returncode is None:
                    proc.kill()
            nursery.cancel_scope.cancel()
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    else:
        point["data"] = str(data)
    report(point, args)
    return point


async def measure(data: Path, pid: int, sims: Sims, fake: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The window: rows appearing in the database, /status and a chart in turn every 2 s, CPU, RSS, load."""
    import psutil

    server = psutil.Process(pid)
    server_procs = [server, *server.children(recursive=True)]
    sim_procs = [psutil.Process(p.pid) for p in sims.procs]
    conn = sqlite3.connect(f"file:{data / 'mbot.sqlite3'}?mode=ro", uri=True, check_same_thread=False)
    last_rowid = conn.execute("SELECT coalesce(max(rowid), 0) FROM samples").fetchone()[0]
    commit: list[float] = []
    seen: list[tuple[int, int, float]] = []  # (host id, seq, wall time the row was seen)
    status: list[float] = []
    chart: list[float] = []
    status_timeouts = 0
    rows = 0
    peak_rss = 0
    t0 = time.time()
    cpu0 = {p.pid: cpu_of(p) for p in server_procs}
    sim0 = {p.pid: cpu_of(p)[0] for p in sim_procs}
    taken0 = sum(sims.sent.values())
    chatter0 = chatter_of(sims)
    spy = None
    if args.py_spy:
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                                "--subprocesses", "--duration", str(int(args.duration)), "--rate", "50",
                                "--format", "raw", "--nonblocking", "--gil", "-o", args.py_spy],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = t0 + args.duration

    def poll(last: int) -> tuple[int, list[float]]:
        got = conn.execute("SELECT rowid, ts, host_id, seq FROM samples WHERE rowid > ? ORDER BY rowid",
                           (last,)).fetchall()
        now = time.time()
        seen.extend((host_id, seq, now) for _, _, host_id, seq in got)
        return (got[-1][0] if got else last), [now - ts for _, ts, _, _ in got]

    async def poller() -> None:
        nonlocal last_rowid, rows
        while time.time() < end:
            last_rowid, latencies = await trio.to_thread.run_sync(poll, last_rowid)
            rows += len(latencies)
            commit.extend(latencies)
            await trio.sleep(POLL_EVERY)

    async def prober() -> None:
        """/status and a chart (/plot of an owned host's CPU over the last hour) in turn, every STATUS_EVERY."""
        nonlocal status_timeouts
        for turn in itertools.count():
            if time.time() >= end - 1:
                break
            text, method, into = ("/status", "sendMessage", status) if turn % 2 == 0 else \
                ("/plot sim0 cpu 1h", "sendPhoto", chart)
            before = len(fake.calls(method))
            asked = time.monotonic()
            fake.push_message(CHAT_USER, text)
            with trio.move_on_after(30) as waited:
                while not any(c.params.get("chat_id") == CHAT_USER for c in fake.calls(method)[before:]):
                    await trio.sleep(0.01)
            if waited.cancelled_caught:
                status_timeouts += 1
            else:
                into.append(time.monotonic() - asked)
            await trio.sleep(max(0.0, STATUS_EVERY - (time.monotonic() - asked)))

    async def sampler() -> None:
        nonlocal peak_rss
        while time.time() < end:
            peak_rss = max(peak_rss, sum(p.memory_info().rss for p in server_procs))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller)
        nursery.start_soon(prober)
        nursery.start_soon(sampler)
    t1 = time.time()
    elapsed = t1 - t0
    load = os.getloadavg()
    cpu = {}
    for p in server_procs:
        total, main = cpu_of(p)
        cpu[f"{p.pid}"] = ((total - cpu0[p.pid][0]) / elapsed * 100, (main - cpu0[p.pid][1]) / elapsed * 100)
    sims_cpu = [(cpu_of(p)[0] - sim0[p.pid]) / elapsed * 100 for p in sim_procs]
    taken = sum(sims.sent.values()) - taken0  # as of their last reports, twice a second
    chatter = {k: (v - chatter0[k]) / elapsed for k, v in chatter_of(sims).items()}
    names = dict(conn.execute("SELECT id, name FROM hosts").fetchall())
    conn.close()
    if spy is not None:
        spy.wait()
    return {"t0": t0, "t1": t1, "elapsed": elapsed, "rows": rows, "commit": commit, "seen": seen, "names": names,
            "status": status, "chart": chart,
            "status_timeouts": status_timeouts, "chatter": chatter, "server_cpu": cpu, "sims_cpu": sims_cpu,
            "taken": taken, "rss": peak_rss,
            "load": load}


def chatter_of(sims: Sims) -> dict[str, int]:
    """Acks read, link probes answered and keepalive pings sent by the simulators so far, in all."""
    return {k: sum(c.get(k, 0) for c in sims.chatter.values()) for k in ("acks", "probes", "keepalives")}


def report(p: dict[str, Any], args: argparse.Namespace) -> None:
    expected = p["agents"] / args.interval
    lost = p["sent"] - p["distinct"]
    print(f"\n== {p['repo']}: {p['agents']} agents every {args.interval:g} s, window {p['elapsed']:.0f} s")
    print(f"connected {p['connected']}/{p['agents']} in {p['connect_s']:.1f} s (at {args.connect_rate:g}/s); "
          f"failed attempts {p['failures']} {p['why'] or ''}, reconnects {p['reconnects']}")
    print(f"committed {p['rows'] / p['elapsed']:.1f} samples/s (expected {expected:.1f})")
    print(f"send->ack    {quantiles(p['ack'])}")
    print(f"send->commit {quantiles(p['commit'])}")
    print(f"frame->commit {quantiles(p['frame'])} (from the frame's send, after the agent's gathering)")
    print(f"chat /status {quantiles(p['status'])}; a chart (/plot, the photo: it follows its upload_photo action "
          f"after the 1 s per-chat spacing, a floor) {quantiles(p['chart'])}; "
          f"{p['status_timeouts']} without an answer in 30 s")
    print("per second: " + ", ".join(f"{v:.0f} {k}" for k, v in p["chatter"].items())
          + " (acks the agents read, link probes they answered, keepalive pings they sent)")
    cpus = ", ".join(f"pid {pid}: {total:.0f}% (loop thread {main:.0f}%)" for pid, (total, main)
                     in p["server_cpu"].items())
    per_sample = sum(c for c, _ in p["server_cpu"].values()) / 100 * p["elapsed"] / max(1, p["rows"]) * 1000
    print(f"server CPU {cpus}; {per_sample:.2f} ms of CPU per committed sample; peak RSS {p['rss'] / 2**20:.0f} MiB")
    print(f"simulators CPU {' + '.join(f'{c:.0f}%' for c in p['sims_cpu'])} = {sum(p['sims_cpu']):.0f}%, "
          f"{sim_ms(p):.3f} ms per sample taken; "
          f"load average {p['load'][0]:.2f} {p['load'][1]:.2f} {p['load'][2]:.2f}")
    if "data" in p:
        print(f"data directory (server.log): {p['data']}")
    print(f"samples taken {p['sent']}, in the database {p['stored']} ({p['distinct']} distinct), not stored by "
          f"the end {lost} (still in the agents' spools: unacked {p['unacked']}); "
          f"{p['sent'] / max(1, p['batches']):.1f} samples per frame")
    sys.stdout.flush()


def sim_ms(p: dict[str, Any]) -> float:
    """The simulators' CPU per sample they took in the window: what the bench itself costs."""
    return sum(p["sims_cpu"]) / 100 * p["elapsed"] / max(1, p["taken"]) * 1000


def summary(points: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print("\n== summary (interval %g s; latencies in ms; CPU %% of one core; ms/smp: server CPU per committed "
          "sample)" % args.interval)
    print(f"{'checkout':<34} {'agents':>6} {'commit/s':>9} {'expect':>7} {'ack p99':>8} {'commit p99':>10} "
          f"{'commit max':>10} {'frame p99':>9} {'status p99':>10} {'srv CPU':>7} {'loop':>5} {'ms/smp':>6} {'RSS MiB':>7} {'sims':>5} "
          f"{'sim ms':>6} {'load1':>5} {'unstored':>8}")
    for p in points:
        total = sum(c for c, _ in p["server_cpu"].values())
        loop = max((m for _, m in p["server_cpu"].values()), default=0)

        def ms(values: list[float], q: float | None = 0.99) -> str:
            if not values:
                return "-"
            return f"{(percentile(values, q) if q is not None else max(values)) * 1000:.0f}"

        print(f"{p['repo'][-34:]:<34} {p['agents']:>6} {p['rows'] / p['elapsed']:>9.1f} "
              f"{p['agents'] / args.interval:>7.0f} {ms(p['ack']):>8} {ms(p['commit']):>10} "
              f"{ms(p['commit'], None):>10} {ms(p.get('frame', [])):>9} {ms(p['status']):>10} {total:>7.0f} "
              f"{loop:>5.0f} "
              f"{total / 100 * p['elapsed'] / max(1, p['rows']) * 1000:>6.2f} "
              f"{p['rss'] / 2**20:>7.0f} {sum(p['sims_cpu']):>5.0f} {sim_ms(p):>6.3f} {p['load'][0]:>5.2f} "
              f"{p['sent'] - p['distinct']:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="100", help="comma-separated counts, e.g. 1000,2500,5000")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0, help="the measured window, seconds")
    parser.add_argument("--procs", type=int, default=2, help="simulator processes")
    parser.add_argument("--connect-rate", type=float, default=100.0, help="new agents per second, in all")
    # The agent paces its process list to 0.01 % of a core: on hosts of a few hundred processes one list every
    # 20-30 s, i.e. every 4-6 samples at 5 s (every 2 before issue 14's last cut).
    parser.add_argument("--procs-every", type=int, default=5, help="a processes snapshot every N samples")
    parser.add_argument("--repo", action="append", default=[], help="a checkout whose server to run (repeat it "
                        "to compare; default: this one)")
    parser.add_argument("--rev", action="append", default=[], help="a git revision of this repository, exported "
                        "to a temporary directory (repeatable)")
    parser.add_argument("--assume-gather", type=float, default=0.0, metavar="S",
                        help="the simulated agents act as if every ack without `gather` said `gather: S` (batches "
                        "every S seconds, docs/protocol.md), to measure a server with its agents batching")
    parser.add_argument("--listeners", help="MBOT_LISTENERS for the server, a comma-separated list to compare "
                        "(e.g. 1,2: each value back to back per agent count and checkout); default: unset")
    parser.add_argument("--server-cgroup", metavar="DIR", help="run the server in this cgroup (a directory of "
                        "/sys/fs/cgroup with a CPU quota, made beforehand) to saturate it at fewer agents")
    parser.add_argument("--py-spy", metavar="FILE", help="record the server (and its listener processes) with py-spy "
                        "(raw) during the window; only the thread holding the GIL: where the CPU goes, not who "
                        "waits for it")
    parser.add_argument("--keep", action="store_true", help="keep the data directories (server.log is there)")
    parser.add_argument("--sim", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sim:
        line = b""
        while b"\n" not in line:  # unbuffered: the stop line must be left for the simulator's loop to see
            data = os.read(sys.stdin.fileno(), 1 << 20)
            if not data:
                return
            line += data
        orders, rest = line.split(b"\n", 1)
        simulate(json.loads(orders), rest)
        return
    exported = [export_rev(rev) for rev in args.rev]
    repos = [Path(r).resolve() for r in args.repo] + exported or [ROOT]
    points = []
    try:
        for n in [int(x) for x in args.agents.split(",")]:
            for repo in repos:  # back to back per count: the machine's load drifts less between the two
                for listeners in ([int(x) for x in args.listeners.split(",")] if args.listeners else [None]):
                    points.append(trio.run(run_point, repo, n, args, listeners))
    finally:
        for path in exported:
            shutil.rmtree(path, ignore_errors=True)
    if len(points) > 1:
        summary(points, args)

if __name__ == "__main__":
    main()
