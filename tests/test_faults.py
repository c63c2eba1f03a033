"""Fault tests: real processes, real sockets, the real agent (agent/mbot_agent.py); no mbot code is mocked.

What the issue promises, under faults: at-least-once in, exactly-once stored; acks follow commits; kill -9 at any
moment loses nothing acked; the sqlite file passes `PRAGMA integrity_check` afterwards.

- the server SIGKILLed while 20 agents stream, restarted on the same port after an outage
- an hour of buffered samples replayed after an outage while live samples keep flowing
- a TCP proxy that cuts the agent's connection at random points, 15 times (MBOT_TEST_SEED=N replays a schedule)
- the database locked by another connection during writes (Writer level: app.serve has no busy_timeout knob)
- the disk full under a running server (a real ENOSPC: the server runs in its own mount namespace on a tiny tmpfs)

Waiting is done on events (commits, log lines, process exit). The sqlite file of a server in another process is the
one thing nothing can notify about: it is polled in 0.05 s steps under a deadline. The only plain sleeps are fault
durations (how long the server stays dead, how long the lock or the full disk lasts), never waits for something.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
import trio
import trio_websocket

from helpers import BASE_TS, ROOT, add_host, certificate, load_agent, make_settings, read_db
from mbot import app, protocol, store, tls
from mbot.writer import Writer
from tcpproxy import TcpProxy

agent = load_agent()

UP = rb"mbot is up: agents on port (\d+), certificate fingerprint ([0-9a-f]{64})"


# --- helpers ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now; the server binds it (SO_REUSEADDR), and binds it again after a kill."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = store.connect(db, readonly=True)
    try:
        return [tuple(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def last_seqs(db: Path) -> dict[int, int]:
    return dict(query(db, "SELECT id, last_seq FROM hosts"))


def assert_exactly_once(db: Path, at_least: dict[int, int]) -> dict[int, int]:
    """Per host: seqs stored are exactly 1..max, once each, max >= at_least[host]; the file is intact.
    Returns {host: max seq}."""
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    maxima = {}
    for host_id, floor in at_least.items():
        seqs = [row[0] for row in query(db, "SELECT seq FROM samples WHERE host_id = ? ORDER BY seq", host_id)]
        assert seqs == list(range(1, len(seqs) + 1)), f"host {host_id}: gaps or duplicates"
        assert len(seqs) >= floor, f"host {host_id}: acked up to {floor}, stored {len(seqs)}"
        (last_seq, count), = query(db, "SELECT last_seq, samples_count FROM hosts WHERE id = ?", host_id)
        assert last_seq == count == len(seqs)
        maxima[host_id] = len(seqs)
    return maxima


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """For state in another process's sqlite file only: nothing there can notify, so poll under a deadline."""
    try:
        with trio.fail_after(timeout):
            while not check():
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


def acked(a: "agent.Agent") -> int:
    """The highest seq the agent has had acked (acked samples leave its buffer)."""
    first = a.buffer.first_seq
    return a.seq if first is None else first - 1


def make_agent(secret: str, port: int, fingerprint: str, tmp_path: Path, **overrides: Any) -> "agent.Agent":
    config = agent.AgentConfig(secret=secret, server="127.0.0.1", port=port, interval=0.2, fingerprint=fingerprint,
                               fingerprint_file=str(tmp_path / "fp.json"), connect_timeout=5.0,
                               backoff_min=0.05, backoff_max=0.3)
    return agent.Agent(dataclasses.replace(config, **overrides), agent.Collector(gpu=False))


async def run_agents(agents: list["agent.Agent"], *,
                     task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the agents as run_agent() does; the scope handed back stops them all. An agent that gives up fails."""

    async def one(a: "agent.Agent") -> None:
        try:
            await a.refresh_facts()
            status = await a.run()
        finally:
            a.collector.close()
        raise AssertionError(f"agent stopped with status {status}")

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            for a in agents:
                nursery.start_soon(one, a)
            task_status.started(scope)


class LogWatch(logging.Handler):
    """Records of one logger, and a way to wait for one (woken by each record, from any thread)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []
        self._token = trio.lowlevel.current_trio_token()
        self._changed = trio.Event()

    def __enter__(self) -> "LogWatch":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def messages(self, pattern: str) -> list[str]:
        return [m for r in self.records if re.search(pattern, m := r.getMessage())]

    async def wait_for(self, predicate: Callable[[logging.LogRecord], bool]) -> logging.LogRecord:
        seen = 0
        while True:
            for record in self.records[seen:]:
                if predicate(record):
                    return record
            seen = len(self.records)
            await self._changed.wait()


def server_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BOT_TOKEN", "ALLOWED_USERS", "TELEGRAM_API_URL")}
    env.update(MBOT_DATA_DIR=str(data_dir), PORT=str(port), MBOT_HOST="127.0.0.1", MBOT_PUBLIC_HOST="127.0.0.1",
               MBOT_LOG_LEVEL="INFO", MPLCONFIGDIR=str(data_dir.parent / "mpl"))
    return env


# `python -m mbot` with its imports done ahead of time: the process imports what a server start imports (a second
# or two of it, here), then waits for its stdin to close before it runs mbot's __main__ as `-m` does. A restart's
# new process gets ready during the outage and is let go when the outage ends, so the outage is what the test says.
WARM_MBOT = [sys.executable, "-c", "import runpy, sys; import mbot.app, mbot.cli; sys.stdin.read(); "
                                   "runpy.run_module('mbot', run_name='__main__', alter_sys=True)"]


class ServerProcess:
    """`python -m mbot` in a process of its own (or a command that runs it), its log read as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str], *, stdin: bool = False) -> None:
        self.argv, self.env, self.stdin = argv, env, stdin
        self.process: trio.Process | None = None
        self.log = b""
        self.port = 0
        self.fingerprint = ""
        self._eof = False
        self._changed = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        await self.launch(nursery)
        await self.up()

    async def launch(self, nursery: trio.Nursery) -> None:
        """The process, its log read from now on; `up()` waits until it serves."""
        self.process = await trio.lowlevel.open_process(
            self.argv, env=self.env, cwd=ROOT, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL)
        nursery.start_soon(self._read_log)

    async def release(self) -> None:
        """Lets a WARM_MBOT process go on into the server's start."""
        assert self.process is not None and self.process.stdin is not None
        await self.process.stdin.aclose()

    async def up(self) -> None:
        match = await self.wait_for(UP)
        self.port, self.fingerprint = int(match[1]), match[2].decode()

    async def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async with self.process.stderr:
            while chunk := await self.process.stderr.receive_some():
                self.log += chunk
                self._wake()
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, pattern: bytes, timeout: float = 20.0) -> re.Match[bytes]:
        with trio.move_on_after(timeout):
            while not (match := re.search(pattern, self.log)):
                if self._eof:
                    break
                await self._changed.wait()
            else:
                return match
        raise AssertionError(f"the server never logged {pattern!r}; its log:\n{self.text}")

    def count(self, pattern: bytes) -> int:
        return len(re.findall(pattern, self.log))

    @property
    def text(self) -> str:
        return self.log.decode(errors="replace")

    async def wait(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        with trio.fail_after(timeout):
            return await self.process.wait()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
def agent_logs(caplog):
    """The agent logs every failed reconnect; keep those (and the server's) in caplog for a failing test."""
    caplog.set_level(logging.INFO, logger="mbot")
    return caplog


# --- the server killed with SIGKILL under load -----------------------------------------------------------------

AGENTS = 20
INTERVAL = 0.1
# The issue says "restarted 30 s later"; 1 s of a 0.1 s interval exercises the same thing (10 samples buffered per
# agent, several failed reconnects with a backoff of at most 0.5 s) in a thirtieth of the time.
OUTAGE = 1.0


async def test_sigkill_under_20_agents_loses_nothing_acked(tmp_path, agent_logs):
    data = tmp_path / "data"
    port = free_port()
    settings = make_settings(data, port=port)
    certificate(settings)  # before the hosts, as newkey does: the server refuses to replace a missing one
    keys = [add_host(settings, f"box{i}") for i in range(AGENTS)]
    db = settings.db_path

    with trio.fail_after(50):
        async with trio.open_nursery() as nursery:
            first = ServerProcess([sys.executable, "-m", "mbot"], server_env(data, port))
            second = ServerProcess(WARM_MBOT, server_env(data, port), stdin=True)
            try:
                await first.start(nursery)
                assert first.port == port
                await second.launch(nursery)  # imports while the first one serves; started after the outage
                agents = [make_agent(k.secret, port, first.fingerprint, tmp_path, interval=INTERVAL,
                                     backoff_max=0.5) for k in keys]
                agents_scope = await nursery.start(run_agents, agents)

                # All 20 streaming (a few samples each committed), then SIGKILL with commits in flight.
                await until(lambda: min(last_seqs(db).values()) >= 5, 20, "every agent streaming")
                first.process.kill()
                assert await first.wait() == -signal.SIGKILL
                at_kill = [a.seq for a in agents]

                await trio.sleep(OUTAGE)  # the outage itself: how long the server stays dead

                # Every ack any agent ever got came from the dead server: each one must be on disk.
                promised = {k.host_id: acked(a) for k, a in zip(keys, agents)}
                assert query(db, "PRAGMA integrity_check") == [("ok",)]
                on_disk = last_seqs(db)
                assert all(on_disk[h] >= seq for h, seq in promised.items()), (promised, on_disk)
                # The agents kept collecting into their buffers meanwhile.
                for a, before in zip(agents, at_kill):
                    assert a.seq - before >= OUTAGE / INTERVAL / 2
                    assert len(a.buffer) >= a.seq - before

                await second.release()  # same port, same file
                await second.up()
                assert second.fingerprint == first.fingerprint
                targets = {k.host_id: a.seq for k, a in zip(keys, agents)}
                await until(lambda: all(s >= targets[h] for h, s in last_seqs(db).items()), 30,
                            "every agent caught up after the restart")
                agents_scope.cancel()
                second.process.send_signal(signal.SIGTERM)
                assert await second.wait() == 0, second.text
            finally:
                await first.kill()
                await second.kill()
                nursery.cancel_scope.cancel()

    final = {k.host_id: max(targets[k.host_id], acked(a)) for k, a in zip(keys, agents)}
    assert_exactly_once(db, final)
    assert "Traceback" not in first.text + second.text
    assert second.count(rb"agent box\d+ connected") >= AGENTS


# --- an hour of samples replayed after an outage ---------------------------------------------------------------

HOUR = 3600  # one hour of samples at a 1 s interval


async def test_hour_outage_replayed_in_batches_while_live_samples_flow(tmp_path, agent_logs):
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))  # bound, never listening: the agent's connections are refused
    port = reserved.getsockname()[1]
    settings = make_settings(tmp_path / "data", port=port)
    cert = certificate(settings)
    key = add_host(settings, "box1", created=time.time() - HOUR - 60)  # the key was made before the outage
    a = make_agent(key.secret, port, cert.fingerprint, tmp_path, interval=0.1, backoff_max=0.2)

    # The hour the server was away: real metrics from the agent's collector, buffered through the agent's own
    # add_sample (what its collection loop calls), dated over the past hour. (Collecting them at the real pace
    # would take an hour; at a tiny interval the server's per-connection frame limit would bite once live.) A
    # minute of collections, repeated: real sizes and shapes without 3,600 collections (about 1 ms each).
    collector = agent.Collector(gpu=False)
    metrics = await trio.to_thread.run_sync(lambda: [collector.collect() for _ in range(60)])
    start = time.time() - HOUR
    for i in range(HOUR):
        a.add_sample(start + i, metrics[i % len(metrics)])
    assert len(a.buffer) == HOUR

    commits: list[tuple[float, int, int]] = []  # (wall time, host's last_seq, writer batches) after each commit

    recorded = trio.Event()

    async def record_commits(server: app.Server) -> None:
        nonlocal recorded
        while True:
            await server.writer.next_commit()
            (last,), = read_db(settings, "SELECT last_seq FROM hosts")
            commits.append((time.time(), last, server.writer.batches))
            recorded.set()
            recorded = trio.Event()

    async def committed(seq: int) -> float:
        """Until the commit record covers `seq`; returns when that commit was seen."""
        while not commits or commits[-1][1] < seq:
            await recorded.wait()
        return next(t for t, last, _ in commits if last >= seq)

    with LogWatch("mbot.agent") as agent_log, LogWatch("mbot.agents") as server_log, trio.fail_after(40), \
            contextlib.closing(reserved):
        async with trio.open_nursery() as nursery:
            agents_scope = await nursery.start(run_agents, [a])
            # The agent keeps collecting while it cannot connect and retries with backoff.
            waiting = re.compile(r"cannot connect .* \((\d+) samples waiting\)")
            await agent_log.wait_for(lambda r: (m := waiting.search(r.getMessage())) is not None
                                     and int(m[1]) >= HOUR + 2)

            reserved.close()
            server = await nursery.start(functools.partial(app.serve, settings, cert, handle_signals=False))
            up_at = time.time()
            nursery.start_soon(record_commits, server)
            backlog = a.seq
            drained_at = await committed(backlog)
            live_target = a.seq + 5  # five more live samples after the backlog is in
            await committed(live_target)
            agents_scope.cancel()
            await server.aclose()
            nursery.cancel_scope.cancel()

    assert_exactly_once(settings.db_path, {key.host_id: live_target})
    # Drained quickly, on ONE connection: the server closes a connection that sends more than 200 frames in a burst
    # (20/s after that), so 3,600 samples could not have been replayed one per frame.
    assert drained_at - up_at < 10
    assert len(agent_log.messages(r"^connected to ")) == 1, agent_log.messages(r"connect")
    assert not server_log.messages("too many frames")
    batches_when_drained = next(b for _, last, b in commits if last >= backlog)
    assert batches_when_drained <= 20  # 3,600+ samples (and the hello) in at most 20 transactions

    # Collection never paused during the replay, and live samples were committed soon after they were taken.
    rows = read_db(settings, "SELECT seq, ts FROM samples WHERE seq > ? ORDER BY seq", HOUR)
    live = [(seq, ts) for seq, ts in rows if ts >= up_at]
    assert len(live) >= 5
    assert max(b[1] - a_[1] for a_, b in zip(rows, rows[1:])) < 1.5
    # The spool goes oldest first, so a live sample taken during the replay waits for the rest of it, and no
    # longer: the bound is the replay's own length (under 10 s, above), not a figure of this machine's speed.
    replay = drained_at - up_at
    for seq, ts in live:
        committed_at = next(t for t, last, _ in commits if last >= seq)
        assert committed_at - ts < max(3.0, replay + 1.0), (
            f"live sample {seq} waited {committed_at - ts:.2f} s (the replay took {replay:.2f} s)")


# --- a proxy that cuts the connection at random points ---------------------------------------------------------


CUTS = 15


def _seed() -> int:
    """MBOT_TEST_SEED=N replays a run's fault schedule; without it each run draws a new one. Printed either way, so
    pytest shows it beside any failure (under "Captured stdout"), whatever the failure is: a timeout too. The
    schedule is what the seed fixes; how it meets the agent's timing still varies from run to run."""
    seed = int(os.environ.get("MBOT_TEST_SEED") or random.randrange(2**32))
    print(f"fault schedule: MBOT_TEST_SEED={seed}")
    return seed


async def test_random_connection_cuts_lose_and_double_nothing(server, settings, tmp_path, agent_logs):
    seed = _seed()
    rng = random.Random(seed)
    key = add_host(settings, "box1")
    proxy = TcpProxy(server.port, rng=rng)
    # Some connections die after a random number of bytes (in the TLS handshake, the upgrade, the hello, a frame or
    # an ack), the others at a random moment.
    proxy.cut_after = lambda: rng.randrange(100, 12_000) if rng.random() < 0.6 else None
    stop_cutting = trio.Event()

    async def cut_at_random_moments() -> None:
        while not stop_cutting.is_set():
            with trio.move_on_after(rng.uniform(0.03, 0.3)):  # a random moment (the fault schedule)
                await stop_cutting.wait()
            if not stop_cutting.is_set():
                proxy.cut()

    async def committed(seq: int) -> None:
        while read_db(settings, "SELECT last_seq FROM hosts")[0][0] < seq:
            await server.writer.next_commit()

    with LogWatch("mbot.agent") as agent_log, LogWatch("mbot.agents") as server_log, trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            # connect_timeout short: a cut during the WebSocket upgrade stalls the agent that long (see the xfail below).
            a = make_agent(key.secret, proxy.port, server.fingerprint, tmp_path, interval=0.06, backoff_max=0.2,
                           connect_timeout=0.5)
            agents_scope = await nursery.start(run_agents, [a])
            nursery.start_soon(cut_at_random_moments)
            await proxy.wait_cuts(CUTS)
            stop_cutting.set()
            proxy.cut_after = None
            target = a.seq  # then let it settle: everything collected so far must arrive
            await committed(target)
            agents_scope.cancel()
            nursery.cancel_scope.cancel()

    context = f"MBOT_TEST_SEED={seed}, {proxy.cuts} cuts, {proxy.accepted} connections"
    stored = assert_exactly_once(settings.db_path, {key.host_id: max(target, acked(a))})
    assert stored[key.host_id] >= 20, context
    # The cuts hit established streams too, not only handshakes: the agent got back in several times.
    assert len(agent_log.messages(r"^connected to ")) >= 3, context
    assert not [r for r in server_log.records if r.levelno >= logging.ERROR], context
    assert not [r for r in agent_log.records if r.levelno >= logging.ERROR], context


# --- the database locked during writes -------------------------------------------------------------------------


def _samples(*seqs: int) -> protocol.Samples:
    return protocol.Samples(tuple(
        protocol.parse_agent_frame(json.dumps({"type": "sample", "seq": s, "ts": BASE_TS + s, "metrics": {"cpu": 5.0}}))
        .items[0] for s in seqs))


def _hello(epoch: int) -> protocol.Hello:
    frame = protocol.parse_agent_frame(json.dumps({"type": "hello", "v": 1, "agent": "t", "epoch": epoch}))
    assert isinstance(frame, protocol.Hello)
    return frame


async def test_locked_database_is_retried_unacked_and_logged_once(settings, caplog):
    caplog.set_level(logging.INFO, logger="mbot.writer")
    host = add_host(settings, "box1")
    writer = Writer(settings.db_path, busy_timeout=0.05)
    acks: list[int] = []
    with LogWatch("mbot.writer") as watch, trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            assert await writer.hello(host.host_id, _hello(5)) == 0

            blocker = sqlite3.connect(settings.db_path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                for seq in range(1, 51):
                    await writer.samples(host.host_id, 5, _samples(seq), acks.append)
                await watch.wait_for(lambda r: r.levelno == logging.WARNING)
                for seq in range(51, 101):  # more keep coming while the writer retries
                    await writer.samples(host.host_id, 5, _samples(seq), acks.append)
                await trio.sleep(0.3)  # the lock lasts a while longer: failed tries at 0 and 0.15 s, the next at 0.4 s
                assert acks == []
                assert read_db(settings, "SELECT count(*) FROM samples") == [(0,)]
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()

            while not acks or acks[-1] < 100:
                await writer.next_commit()
            writer.close()

    assert acks == list(range(1, 101))  # every item acked once, in order, after its commit
    assert read_db(settings, "SELECT seq FROM samples ORDER BY rowid") == [(s,) for s in range(1, 101)]
    failed = [r for r in caplog.records if r.name == "mbot.writer" and r.levelno == logging.WARNING]
    assert len(failed) == 1 and "database is locked" in failed[0].getMessage()
    recovered = [r.getMessage() for r in caplog.records if r.name == "mbot.writer" and r.levelno == logging.INFO]
    assert len(recovered) == 1
    assert int(re.search(r"after (\d+) failed tries", recovered[0])[1]) >= 2


# --- the disk full under a running server ----------------------------------------------------------------------


def _namespaces_work() -> bool:
    if not shutil.which("unshare") or sys.platform != "linux":
        return False
    try:
        done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


_QUERY = "import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); " \
         "print(json.dumps(c.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall()))"


async def query_inside(pid: int, db: Path, sql: str, *params: Any) -> list[list[Any]]:
    """Query a sqlite file in another mount namespace. Not through /proc/PID/root: sqlite resolves symbolic links
    itself, and that magic one reads as "/", which would open our own (empty) directory instead."""
    done = await trio.run_process(["nsenter", "-t", str(pid), "-U", "-m", "--preserve-credentials", sys.executable,
                                   "-c", _QUERY, str(db), sql, json.dumps(params)], capture_stdout=True)
    return json.loads(done.stdout)


async def until_inside(pid: int, db: Path, host_id: int, seq: int, what: str) -> None:
    """The server's sqlite file in its namespace: poll under a deadline (nothing there can notify)."""
    with trio.move_on_after(20):
        while (await query_inside(pid, db, "SELECT last_seq FROM hosts WHERE id = ?", host_id))[0][0] < seq:
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within 20 s: {what}")


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096, 512, 1):
            block = b"\0" * chunk
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


@pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -rm (user and mount namespaces) to mount a tmpfs")
async def test_disk_full_is_retried_unacked_and_logged_once(tmp_path, agent_logs):
    # The server runs in a mount namespace of its own with its data directory on a 4 MB tmpfs, so that ENOSPC is
    # real (sqlite: "database or disk is full") and nothing outside is touched. The test reaches that tmpfs through
    # /proc/PID/root. The shell stays after the server exits so that the final file can still be checked.
    stage = tmp_path / "stage"
    data = tmp_path / "data"
    data.mkdir()
    settings = make_settings(stage)
    certificate(settings)
    key = add_host(settings, "box1")
    script = ('mount -t tmpfs -o size=4m tmpfs "$MBOT_DATA_DIR" && cp -a "$STAGE"/. "$MBOT_DATA_DIR"/ '
              '&& "$PYTHON" -m mbot; echo "mbot exited with $?" >&2; exec cat >/dev/null')
    env = {**server_env(data, 0), "STAGE": str(stage), "PYTHON": sys.executable}
    server = ServerProcess(["unshare", "-rm", "sh", "-c", script], env, stdin=True)

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            try:
                await server.start(nursery)
                pid = server.process.pid
                inside = Path(f"/proc/{pid}/root{data}")  # for plain file operations (the kernel resolves it)
                db = data / "mbot.sqlite3"  # the path inside the namespace
                a = make_agent(key.secret, server.port, server.fingerprint, tmp_path, interval=0.05,
                               backoff_max=0.2)
                agents_scope = await nursery.start(run_agents, [a])
                await until_inside(pid, db, key.host_id, 5, "the agent streaming")

                filler = fill(inside)
                # (The line should name the cause; it does not: see test_disk_full_warning_names_the_cause.)
                await server.wait_for(rb"WARNING mbot\.writer: database write failed")
                query_mark = functools.partial(query_inside, pid, db, "SELECT last_seq FROM hosts WHERE id = ?",
                                               key.host_id)
                (stuck,), = await query_mark()
                # The disk stays full a while: several failed tries (the writer retries after 0.1, 0.2, 0.4, 0.8 s:
                # the third try is 0.3 s after the first, the fourth 0.7 s; the disk is freed between the two).
                await trio.sleep(0.3)
                (stored,), = await query_mark()
                assert stored == stuck  # nothing committed while the disk is full ...
                assert acked(a) <= stored  # ... so nothing more acked (acks follow commits) ...
                assert a.seq >= stored + 5  # ... while the agent keeps collecting and sending

                filler.unlink()
                recovered = await server.wait_for(rb"database writes work again after (\d+) failed tries")
                assert int(recovered[1]) >= 2
                target = a.seq
                await until_inside(pid, db, key.host_id, target, "the agent caught up")
                agents_scope.cancel()

                mbot = psutil.Process(pid).children()
                assert len(mbot) == 1
                mbot[0].send_signal(signal.SIGTERM)
                await server.wait_for(rb"mbot exited with 0")
                # The server is gone, the namespace (and its tmpfs) still there: copy the file out and check it.
                copy = tmp_path / "copy"
                copy.mkdir()
                for name in ("mbot.sqlite3", "mbot.sqlite3-wal"):
                    if (inside / name).exists():
                        shutil.copyfile(inside / name, copy / name)
                assert_exactly_once(copy / "mbot.sqlite3", {key.host_id: max(target, acked(a))})
                await server.process.stdin.aclose()
                assert await server.wait() == 0
            finally:
                if server.process is not None and server.process.returncode is None:
                    for child in psutil.Process(server.process.pid).children(recursive=True):
                        child.kill()
                    await server.kill()
                nursery.cancel_scope.cancel()

    assert server.count(rb"database write failed") == 1, server.text
    assert server.count(rb"database writes work again") == 1, server.text
    assert "Traceback" not in server.text


_WRITER_ON_FULL_DISK = r"""
import errno, json, logging, os, sys, time
from pathlib import Path
import trio
import trio_websocket
sys.path.insert(0, sys.argv[2])
from mbot import protocol, service, store
from mbot.writer import Writer

data = Path(sys.argv[1])
conn = store.connect(data / "db")
with conn:
    conn.execute("BEGIN IMMEDIATE")
    host = service.new_key(conn, "box1", 0).host_id
conn.close()

def frame(obj):
    return protocol.parse_agent_frame(json.dumps(obj))

def sample(seq):
    return frame({"type": "sample", "seq": seq, "ts": time.time() - 3600 + seq, "metrics": {"cpu": 5.0}})

def fill():
    fd = os.open(data / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    for chunk in (1 << 20, 4096, 512, 1):
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.close(fd)

async def main():
    warnings, warned = [], trio.Event()
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: (warnings.append(record.getMessage()), warned.set())
    logging.getLogger("mbot.writer").addHandler(handler)
    writer = Writer(data / "db", busy_timeout=0.05)
    acks = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.hello(host, frame({"type": "hello", "v": 1, "agent": "t", "epoch": 1}))
            await writer.samples(host, 1, sample(1), acks.append)
            await writer.next_commit()
            fill()
            await writer.samples(host, 1, sample(2), acks.append)
            await warned.wait()
            os.unlink(data / "filler")
            while acks[-1] < 2:
                await writer.next_commit()
            writer.close()
    print(json.dumps(warnings))

trio.run(main)
"""


@pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -rm (user and mount namespaces) to mount a tmpfs")
async def test_disk_full_warning_names_the_cause(tmp_path):
    # The real Writer in a process of its own, its database on a 2 MB tmpfs in a private mount namespace.
    data = tmp_path / "data"
    data.mkdir()
    script = 'mount -t tmpfs -o size=2m tmpfs "$1" && exec "$0" -c "$SCRIPT" "$1" "$2"'
    with trio.fail_after(20):
        done = await trio.run_process(["unshare", "-rm", "sh", "-c", script, sys.executable, str(data), str(ROOT)],
                                      env={**os.environ, "SCRIPT": _WRITER_ON_FULL_DISK}, capture_stdout=True,
                                      capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    warnings = json.loads(done.stdout)
    assert len(warnings) == 1
    assert "database or disk is full" in warnings[0], warnings[0]


# --- a connection dropped during the WebSocket upgrade ---------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "agent/mbot_agent.py Agent._connect_and_serve: when the connection drops after the agent sent its upgrade "
    "request and before the 101 (a network cut, a server killed at that moment), trio_websocket."
    "wrap_client_stream never returns nor raises (trio-websocket 0.12.2: _abort_web_socket does not set "
    "_open_handshake), so the agent sits out its whole connect_timeout (15 s by default) before it retries, "
    "instead of retrying after its backoff. Nothing is lost, but every such cut costs 15 s of delay; it happens "
    "0 to 3 times per run of test_random_connection_cuts_lose_and_double_nothing (hence its connect_timeout=0.5)."))
async def test_cut_during_the_upgrade_is_retried_after_backoff(settings, tmp_path):
    # A peer with the server's certificate that completes TLS, reads the upgrade request and hangs up: what the
    # agent sees when the network drops the connection at that moment.
    cert = certificate(settings)
    opened: list[float] = []
    closed: list[float] = []
    changed = trio.Event()

    async def hang_up_after_the_request(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal changed
        opened.append(trio.current_time())
        try:
            await stream.do_handshake()
            request = b""
            while b"\r\n\r\n" not in request and (chunk := await stream.receive_some()):
                request += chunk
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)
            closed.append(trio.current_time())
            changed.set()
            changed = trio.Event()

    listeners = await trio.open_ssl_over_tcp_listeners(0, tls.server_context(cert), host="127.0.0.1",
                                                       https_compatible=True)
    port = listeners[0].transport_listener.socket.getsockname()[1]
    a = make_agent("secret", port, cert.fingerprint, tmp_path, backoff_min=0.05, backoff_max=0.1,
                   connect_timeout=1.2)  # well above the 0.75 s below, whatever the handshake before it took
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, hang_up_after_the_request, listeners)
            await nursery.start(run_agents, [a])
            while len(opened) < 2:
                await changed.wait()
            nursery.cancel_scope.cancel()
    # Backoff is at most 0.1 s: the next try should follow the hang-up at once, not after connect_timeout.
    assert opened[1] - closed[0] < 0.75, f"the agent waited {opened[1] - closed[0]:.2f} s to retry"


async def test_drop_right_after_the_upgrade_does_not_kill_the_agent(settings, tmp_path):
    # A peer with the server's certificate that accepts the upgrade and hangs up at once, five times.
    cert = certificate(settings)
    served = 0
    changed = trio.Event()

    async def accept_then_hang_up(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal served, changed
        try:
            await stream.do_handshake()
            async with trio.open_nursery() as nursery:
                request = await trio_websocket.wrap_server_stream(nursery, stream)
                await request.accept()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio_websocket.ConnectionClosed):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            served += 1
            changed.set()
            changed = trio.Event()

    listeners = await trio.open_ssl_over_tcp_listeners(0, tls.server_context(cert), host="127.0.0.1",
                                                       https_compatible=True)
    port = listeners[0].transport_listener.socket.getsockname()[1]
    a = make_agent("secret", port, cert.fingerprint, tmp_path, backoff_min=0.05, backoff_max=0.1)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, accept_then_hang_up, listeners)
                await nursery.start(run_agents, [a])
                while served < 5:  # the agent keeps reconnecting, whatever moment the drop hits
                    await changed.wait()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        crash = next((e for e in _all_leaves(group) if isinstance(e, RecursionError)), None)
        if crash is None:
            raise
        raise AssertionError(f"the agent died: {crash!r}") from None


def _all_leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _all_leaves(inner)
    else:
        yield exc
