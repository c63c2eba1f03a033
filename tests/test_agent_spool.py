"""The agent's spool (agent/mbot_agent.py): the sqlite3 file behind AGENT_SPOOL_FILE, the dropped-count rule, and
the real agent against the real server across restarts, a server that is not there yet, and an overflow.

Real files in tmp_path; no sleeps: the tests wait on the server's commits and on the collector's own count."""
from __future__ import annotations

import dataclasses
import json
import logging
import socket
import sqlite3

import pytest
import trio

from helpers import add_host, certificate, load_agent, make_settings, read_db, server_certificate, wait_for_samples
from mbot import app
from mbot.writer import Writer

agent = load_agent()

TS = 1_700_000_000.0


def _fill(spool, first, last):
    for seq in range(first, last + 1):
        spool.append(seq, agent.encode_sample(seq, TS + seq, {"cpu": float(seq % 100)}), TS + seq)


def _seqs(spool, after=0):
    return [seq for seq, _ in spool.pending_after(after)]


def _query(conn):
    return ([r[0] for r in conn.execute("SELECT seq FROM spool ORDER BY seq")],
            dict(conn.execute("SELECT key, value FROM meta")))


def _rows(path):
    """(seqs, meta) in a closed spool file."""
    conn = sqlite3.connect(str(path))
    try:
        return _query(conn)
    finally:
        conn.close()


def _disk(spool):
    """(seqs, meta) on disk, of an open spool (its file is locked: read through its own connection)."""
    return _query(spool._conn)


@pytest.fixture
def spool_path(tmp_path):
    return tmp_path / "spool" / "agent.sqlite3"  # the directory is created on open


def _open(path, maxlen=100):
    spool = agent.open_spool(str(path), maxlen)
    assert isinstance(spool, agent.SqliteSpool)
    return spool


# --- the file --------------------------------------------------------------------------------------------------


def test_epoch_and_seq_survive_close_and_reopen(spool_path):
    spool = _open(spool_path)
    assert not spool.resumed and spool.seq == 0 and spool.epoch > 0
    epoch = spool.epoch
    _fill(spool, 1, 10)
    spool.ack(4)
    spool.close()
    assert _rows(spool_path)[0] == list(range(5, 11))  # acked ones deleted by the close at the latest

    again = _open(spool_path)
    try:
        assert again.resumed and (again.epoch, again.seq) == (epoch, 10)
        assert _seqs(again) == list(range(5, 11)) and len(again) == 6
        assert again.pending_after(0)[0][1] == agent.encode_sample(5, TS + 5, {"cpu": 5.0})
        _fill(again, 11, 11)  # the next seq: no gap, no duplicate
        with pytest.raises(ValueError):
            again.append(13, "{}")
        with pytest.raises(ValueError):
            again.append(5, "{}")
    finally:
        again.close()
    with sqlite3.connect(str(spool_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_empty_spool_keeps_the_seq(spool_path):
    spool = _open(spool_path)
    _fill(spool, 1, 3)
    spool.ack(3)
    spool.close()
    again = _open(spool_path)
    assert (again.seq, len(again), again.resumed) == (3, 0, True)
    again.close()


def test_ack_deletes_up_to_seq_with_the_next_write(spool_path):
    spool = _open(spool_path)
    try:
        _fill(spool, 1, 6)
        assert spool.ack(3) == 3 and _seqs(spool) == [4, 5, 6]
        assert _disk(spool)[0] == [1, 2, 3, 4, 5, 6]  # not yet on disk: acks never touch it
        _fill(spool, 7, 7)  # the collector thread's write deletes them in the same transaction
        assert _disk(spool)[0] == [4, 5, 6, 7]
        assert spool.ack(99) == 4 and len(spool) == 0
        spool.flush()
        assert _disk(spool)[0] == []
    finally:
        spool.close()


def test_overflow_drops_the_oldest_and_counts_across_restarts(spool_path):
    spool = _open(spool_path, maxlen=5)
    _fill(spool, 1, 8)
    assert _seqs(spool) == [4, 5, 6, 7, 8] and (spool.dropped, spool.unreported) == (3, 3)
    rows, meta = _disk(spool)
    assert rows == [4, 5, 6, 7, 8] and (meta["seq"], meta["dropped"], meta["unreported"]) == (8, 3, 3)
    spool.close()

    smaller = _open(spool_path, maxlen=2)  # AGENT_SPOOL_MAX lowered since: the oldest go, counted
    try:
        assert _seqs(smaller) == [7, 8] and (smaller.dropped, smaller.unreported) == (6, 6)
        assert _disk(smaller) == ([7, 8], {"epoch": smaller.epoch, "seq": 8, "unreported": 6, "dropped": 6,
                                          "sent": 0})
    finally:
        smaller.close()


def test_dropped_count_carried_until_acked_across_restarts(spool_path):
    spool = _open(spool_path, maxlen=3)
    _fill(spool, 1, 5)  # 1, 2 dropped
    assert spool.attach_unreported(3) == 3 and spool.unreported == 0
    spool.close()  # e.g. the agent restarts before the server acked 3

    again = _open(spool_path, maxlen=3)
    assert again.reports == {3: 2} and again.unreported == 0
    first = json.loads(again.pending_after(0)[0][1])
    assert first["seq"] == 3 and first["metrics"]["dropped"] == 2  # sent again with the same count
    _fill(again, 6, 6)  # 3 is dropped in turn: its 2, plus itself
    assert (again.reports, again.unreported, again.dropped) == ({}, 3, 3)
    assert again.attach_unreported(4) == 4
    again.close()

    third = _open(spool_path, maxlen=3)
    try:
        assert third.reports == {4: 3}
        third.ack(4)  # committed, count and all
        assert (third.reports, third.unreported) == ({}, 0)
        assert all("dropped" not in json.loads(t)["metrics"] for _, t in third.pending_after(0))
    finally:
        third.close()
    assert _rows(spool_path)[1]["unreported"] == 0


def test_sent_then_evicted_waits_for_the_server_to_say(spool_path):
    """A sample evicted after it was sent may still be committed: its count (and itself) wait for an ack."""
    memory = agent.SampleBuffer(3)
    _fill(memory, 1, 5)  # 1, 2 lost before anything was sent
    assert memory.attach_unreported(3) == 3
    memory.mark_sent(5)  # 3..5 go out, 3 carrying 2
    _fill(memory, 6, 7)  # 3 and 4 evicted before the ack: maybe committed
    assert (memory.dropped, memory.unreported, memory.limbo) == (2, 0, {3: 2, 4: 0})
    memory.ack(4)  # they were: nothing more is lost, the 2 arrived with 3
    assert (memory.dropped, memory.unreported, memory.limbo) == (2, 0, {})

    memory.mark_sent(7)
    _fill(memory, 8, 9)  # 5, 6 evicted in flight; then the connection breaks
    assert memory.limbo == {5: 0, 6: 0}
    assert memory.ack(5, first=True) == 0  # the next connection's hello: the server has up to 5, so 6 is lost
    assert (memory.dropped, memory.unreported, memory.limbo) == (3, 1, {})
    _fill(memory, 10, 10)  # 7 evicted: sent on the broken connection, not at the server: lost at once
    assert (memory.dropped, memory.unreported) == (4, 2)

    spool = _open(spool_path, maxlen=2)  # the same in a file, across a restart
    _fill(spool, 1, 3)
    assert spool.attach_unreported(2) == 2 and spool.reports == {2: 1}
    spool.mark_sent(3)
    _fill(spool, 4, 5)
    assert spool.limbo == {2: 1, 3: 0}
    spool.close()
    again = _open(spool_path, maxlen=2)
    try:
        assert (again.limbo, again.unreported, again.dropped) == ({2: 1, 3: 0}, 0, 1)
        again.ack(2, first=True)  # 2 (and its count) arrived, 3 did not
        assert (again.limbo, again.unreported, again.dropped) == ({}, 1, 2)
        again.flush()
        assert again._conn.execute("SELECT count(*) FROM limbo").fetchone()[0] == 0
    finally:
        again.close()


def test_limbo_is_bounded(monkeypatch):
    monkeypatch.setattr(agent, "LIMBO_MAX", 3)
    memory = agent.SampleBuffer(2)
    _fill(memory, 1, 2)
    for seq in range(3, 10):  # a server that takes everything and never acks
        memory.mark_sent(seq - 1)
        _fill(memory, seq, seq)
    assert sorted(memory.limbo) == [5, 6, 7] and memory.dropped == 4


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 5000])
def test_corrupt_file_moved_aside_new_epoch(spool_path, content, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    spool = _open(spool_path)
    old_epoch = spool.epoch
    _fill(spool, 1, 3)
    spool.close()
    spool_path.write_bytes(content)

    fresh = _open(spool_path)
    try:
        assert not fresh.resumed and fresh.epoch >= old_epoch and fresh.seq == 0 and len(fresh) == 0
        _fill(fresh, 1, 2)
    finally:
        fresh.close()
    aside = [p for p in spool_path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(spool_path) in errors[0].getMessage() and "new epoch" in errors[0].getMessage()


def test_bad_meta_or_foreign_database_is_moved_aside(spool_path, caplog):
    spool = _open(spool_path)
    spool.close()
    with sqlite3.connect(str(spool_path)) as conn:
        conn.execute("UPDATE meta SET value = -1 WHERE key = 'seq'")
    conn.close()
    fresh = _open(spool_path)
    assert not fresh.resumed
    fresh.close()

    other = spool_path.with_name("other.sqlite3")
    with sqlite3.connect(str(other)) as conn:
        conn.execute("CREATE TABLE precious (x)")
    conn.close()
    fresh = _open(other)
    fresh.close()
    assert len([p for p in spool_path.parent.iterdir() if p.name.startswith("other.sqlite3.corrupt-")]) == 1


def test_file_in_use_or_unusable_means_memory_only(spool_path, tmp_path, caplog):
    first = _open(spool_path)
    try:
        second = agent.open_spool(str(spool_path), 10)  # another agent with the same file
        assert type(second) is agent.SampleBuffer
        assert "in use" in caplog.text
    finally:
        first.close()
    assert type(agent.open_spool(str(tmp_path), 10)) is agent.SampleBuffer  # a directory
    assert type(agent.open_spool(None, 10)) is agent.SampleBuffer
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert type(agent.open_spool(str(blocker / "spool.sqlite3"), 10)) is agent.SampleBuffer
    assert not [r for r in caplog.records if r.levelno > logging.ERROR]


def test_write_failure_moves_the_file_aside_and_goes_on_in_memory(spool_path, caplog):
    spool = _open(spool_path)
    _fill(spool, 1, 3)
    spool._conn.close()  # the next write fails (as on a full disk)
    _fill(spool, 4, 5)
    assert _seqs(spool) == [1, 2, 3, 4, 5] and spool.seq == 5  # nothing lost in this process
    assert "cannot write the spool file" in caplog.text
    assert not spool_path.exists() and [p for p in spool_path.parent.iterdir() if ".failed-" in p.name]
    spool.close()
    fresh = _open(spool_path)  # the stale seq is never reused: a new epoch
    assert not fresh.resumed and fresh.seq == 0
    fresh.close()


# --- the real agent against the real server --------------------------------------------------------------------


class CountingCollector(agent.Collector):
    """The real collector, counting its samples so that a test can wait for the n-th one."""

    def __init__(self):
        super().__init__(gpu=False)
        self.count = 0
        self._targets = []

    def collect(self):
        metrics = super().collect()
        self.count += 1
        for n, event in list(self._targets):
            if self.count >= n:
                trio.from_thread.run_sync(event.set)  # in the agent's worker thread
        return metrics

    async def wait_for(self, n):
        event = trio.Event()
        self._targets.append((n, event))
        if self.count < n:
            with trio.fail_after(10):
                await event.wait()
        self._targets.remove((n, event))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_server(nursery, settings):
    return await nursery.start(lambda task_status: app.serve(settings, server_certificate(settings),
                                                             handle_signals=False, task_status=task_status))


def config(secret, port, fingerprint, tmp_path, **overrides):
    base = agent.AgentConfig(secret=secret, server="127.0.0.1", port=port, interval=0.05, fingerprint=fingerprint,
                             fingerprint_file=str(tmp_path / "fp.json"), backoff_min=0.02, backoff_max=0.1,
                             spool_file=str(tmp_path / "agent" / "spool.sqlite3"))
    return dataclasses.replace(base, **overrides)


def stored(settings, host="box1"):
    return [r[0] for r in read_db(settings, "SELECT seq FROM samples s JOIN hosts h ON h.id = s.host_id "
                                            "WHERE h.name = ? ORDER BY s.rowid", host)]


async def test_restarts_go_on_in_the_same_epoch(tmp_path, nursery, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agent")
    settings = make_settings(tmp_path / "data", port=free_port())
    key = add_host(settings, "box1")
    cfg = config(key.secret, settings.port, certificate(settings).fingerprint, tmp_path)
    collector = CountingCollector()

    # 1. The server is not there: samples wait in the spool file, then the agent stops (a restart).
    async with trio.open_nursery() as run:
        run.start_soon(agent.run_agent, cfg, collector)
        await collector.wait_for(3)
        run.cancel_scope.cancel()
    spooled = collector.count
    epoch = _rows(tmp_path / "agent" / "spool.sqlite3")[1]["epoch"]

    server = await start_server(nursery, settings)
    try:
        # 2. Restarted with the server up: what the first run collected arrives, in the file's epoch.
        async with trio.open_nursery() as run:
            run.start_soon(agent.run_agent, cfg, collector)
            await wait_for_samples(server, settings, "box1", spooled + 3)
            run.cancel_scope.cancel()
        assert "going on with epoch" in caplog.text
        first = stored(settings)
        assert first == list(range(1, len(first) + 1)) and len(first) >= spooled + 3
        assert read_db(settings, "SELECT epoch FROM hosts") == [(epoch,)]

        # 3. Restarted again: more samples of the same epoch, no gap, no duplicate.
        async with trio.open_nursery() as run:
            run.start_soon(agent.run_agent, cfg, collector)
            await wait_for_samples(server, settings, "box1", len(first) + 3)
            run.cancel_scope.cancel()
    finally:
        await server.aclose()
    seqs = stored(settings)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= len(first) + 3
    assert read_db(settings, "SELECT epoch, dropped FROM hosts") == [(epoch, 0)]


async def test_agent_started_before_the_server_sends_everything(tmp_path, nursery):
    settings = make_settings(tmp_path / "data", port=free_port())
    key = add_host(settings, "box1")
    collector = CountingCollector()
    # Without a spool file: the in-memory spool does the same within one process.
    cfg = config(key.secret, settings.port, certificate(settings).fingerprint, tmp_path, spool_file=None)
    async with trio.open_nursery() as run:
        run.start_soon(agent.run_agent, cfg, collector)
        await collector.wait_for(4)  # the agent started, and collects, with nothing listening
        server = await start_server(nursery, settings)
        try:
            down = collector.count
            await wait_for_samples(server, settings, "box1", down + 2)
            run.cancel_scope.cancel()
        finally:
            await server.aclose()
    seqs = stored(settings)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= down + 2
    assert read_db(settings, "SELECT dropped FROM hosts") == [(0,)]


async def test_overflow_is_reported_to_the_server(tmp_path, nursery, monkeypatch):
    settings = make_settings(tmp_path / "data", port=free_port())
    key = add_host(settings, "box1")
    collector = CountingCollector()
    cfg = config(key.secret, settings.port, certificate(settings).fingerprint, tmp_path, spool_max=5,
                 interval=0.08)
    received = {}
    async with trio.open_nursery() as run:
        run.start_soon(agent.run_agent, cfg, collector)
        await collector.wait_for(9)  # 5 kept, at least 4 dropped
        original = Writer.samples

        async def spy(self, *args, **kwargs):  # what the server receives, before it commits it
            for frame in args:
                for item in getattr(frame, "items", ()):
                    received[item.seq] = item.metrics
            return await original(self, *args, **kwargs)

        # On the class, before the server starts: the agent (retrying every 0.1 s) may be in before a spy put on
        # the running server's writer, and its first samples, the report among them, would go unseen.
        monkeypatch.setattr(Writer, "samples", spy)
        server = await start_server(nursery, settings)
        try:
            await wait_for_samples(server, settings, "box1", 5 + 2)
            run.cancel_scope.cancel()
        finally:
            await server.aclose()
    seqs = stored(settings)
    lost = seqs[0] - 1
    assert lost >= 4
    assert seqs == list(range(lost + 1, lost + 1 + len(seqs)))  # the newest, a gap only where the drop was
    reports = {seq: m["dropped"] for seq, m in received.items() if "dropped" in m}
    assert reports == {lost + 1: lost}  # the first sample sent after the outage says how many
    assert read_db(settings, "SELECT dropped FROM hosts") == [(lost,)]
    spool = agent.open_spool(cfg.spool_file, 5)
    try:
        assert spool.unreported == 0 and spool.dropped == lost
    finally:
        spool.close()
