"""The single writer: every write of the server goes through one connection, in batched transactions.

Connection tasks and the bot submit items on a bounded memory channel; the writer takes whatever has queued up,
commits it in ONE transaction in a worker thread, and only then resolves the items (so an agent is acked only for
what is on disk). While a commit runs, new items queue: under load batches grow by themselves (group commit).
A full channel makes submitters wait, which stops reading their sockets: backpressure reaches the agents over TCP.
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import trio

from . import store
from .metrics import Histogram
from .protocol import Hello, Sample, Samples

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_ITEMS = 10_000
BATCH_ITEMS = 2_000
_RETRY_FIRST, _RETRY_MAX = 0.1, 5.0


@dataclass
class _Pending:
    """An item waiting for its commit. `result` is set just before `done` fires."""

    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None

    async def wait(self) -> Any:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class HelloWrite(_Pending):
    host_id: int = 0
    hello: Hello | None = None
    seen: float = 0.0


@dataclass
class SamplesWrite(_Pending):
    host_id: int = 0
    epoch: int = 0
    samples: Samples | None = None
    seen: float = 0.0
    # Called (in the trio thread) with the highest seq committed for this host and epoch.
    on_commit: Callable[[int], None] | None = None


@dataclass
class CallWrite(_Pending):
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()


class CommitListener(Protocol):
    def on_hello(self, host_id: int, hello: Hello) -> None: ...

    def on_samples(self, host_id: int, samples: list[Sample]) -> None: ...


@dataclass
class _HostMark:
    epoch: int
    last_seq: int


class Writer:
    def __init__(self, db_path: Path, *, busy_timeout: float = 10.0) -> None:
        # busy_timeout: how long one try waits on a lock held by another process (the CLI) before it counts as a
        # failed try and is retried with backoff.
        self._conn = store.connect(db_path, busy_timeout=busy_timeout)
        self._send, self._receive = trio.open_memory_channel[_Pending](QUEUE_ITEMS)
        self._layouts: dict[tuple[str, ...], int] = {}
        self.committed_samples = 0
        self.batches = 0
        self.commit_latency = Histogram()  # receive -> commit, per frame of samples (for /metrics)
        # Told, in the trio thread, about what each commit stored (the alert engine): never about duplicates.
        self.listeners: list[CommitListener] = []
        self._progress = trio.Event()

    # --- submitting ------------------------------------------------------------------------------------------

    async def hello(self, host_id: int, hello: Hello) -> int:
        """Record a hello; returns the highest seq already committed for its epoch (0 for a new epoch)."""
        item = HelloWrite(host_id=host_id, hello=hello, seen=time.time())
        await self._send.send(item)
        return await item.wait()

    async def samples(self, host_id: int, epoch: int, samples: Samples, on_commit: Callable[[int], None]) -> None:
        """Queue samples; on_commit(highest committed seq) runs after their transaction commits."""
        await self._send.send(SamplesWrite(host_id=host_id, epoch=epoch, samples=samples, seen=time.time(),
                                           on_commit=on_commit))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) inside the writer's next transaction and return its result."""
        item = CallWrite(fn=fn, args=args)
        await self._send.send(item)
        return await item.wait()

    async def next_commit(self) -> None:
        """Wait for the next batch to commit (whoever needs to react to new data waits here, never polls)."""
        await self._progress.wait()

    def close(self) -> None:
        """No more submissions: the writer commits what is queued, then run() returns."""
        self._send.close()

    # --- the task --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with self._receive:
                while True:
                    try:
                        batch = [await self._receive.receive()]
                    except trio.EndOfChannel:
                        return
                    while len(batch) < BATCH_ITEMS:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._commit_with_retry(batch)
        finally:
            self._conn.close()

    async def _commit_with_retry(self, batch: list[_Pending]) -> None:
        delay, failures = _RETRY_FIRST, 0
        while True:
            try:
                # Not cancellable on purpose: a commit in flight finishes, so shutdown never loses acked data.
                outcome = await trio.to_thread.run_sync(self._commit, batch)
                break
            except sqlite3.OperationalError as exc:
                # Disk full, database locked: nothing was acked, so retrying the same batch loses nothing. One log
                # line per outage, not one per try.
                if failures == 0:
                    log.warning("database write failed, retrying until it works: %s", exc)
                failures += 1
                await trio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        if failures:
            log.info("database writes work again after %d failed tries", failures)
        layouts, results = outcome
        self._layouts.update(layouts)
        self.batches += 1
        committed_at = time.time()
        for item, result in zip(batch, results):
            if isinstance(result, BaseException):
                item.error = result
            else:
                item.result = result
                if isinstance(item, SamplesWrite):
                    self.commit_latency.observe(committed_at - item.seen)
                    if result is not None:
                        last_seq, fresh = result
                        item.result = last_seq
                        if fresh:
                            for listener in self.listeners:
                                listener.on_samples(item.host_id, fresh)
                        if item.on_commit is not None:
                            item.on_commit(last_seq)
                elif isinstance(item, HelloWrite):
                    for listener in self.listeners:
                        listener.on_hello(item.host_id, item.hello)
            item.done.set()
        self._progress.set()
        self._progress = trio.Event()

    # --- in the worker thread --------------------------------------------------------------------------------

    def _commit(self, batch: list[_Pending]) -> tuple[dict[tuple[str, ...], int], list[Any]]:
        """One transaction for the whole batch. The layout cache changes only through the returned value, after
        COMMIT, so a rolled-back batch leaves no stale layout ids behind."""
        conn = self._conn
        marks: dict[int, _HostMark] = {}
        layouts: dict[tuple[str, ...], int] = {}
        results: list[Any] = []
        rows: list[tuple[int, float, int, int, bytes]] = []
        inserted = 0

        def flush() -> None:
            nonlocal inserted
            if rows:
                conn.executemany("INSERT INTO samples (host_id, ts, seq, layout_id, vals) VALUES (?, ?, ?, ?, ?)",
                                 rows)
                inserted += len(rows)
                rows.clear()

        conn.execute("BEGIN IMMEDIATE")
        try:
            for item in batch:
                if isinstance(item, HelloWrite):
                    results.append(self._apply_hello(conn, item, marks))
                elif isinstance(item, SamplesWrite):
                    results.append(self._apply_samples(conn, item, marks, layouts, rows))
                elif isinstance(item, CallWrite):
                    flush()  # a call sees every write queued before it
                    results.append(self._apply_call(conn, item))
            flush()
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (disk full): a second ROLLBACK would fail and hide the cause.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.committed_samples += inserted
        return layouts, results

    def _mark(self, conn: sqlite3.Connection, host_id: int, marks: dict[int, _HostMark]) -> _HostMark | None:
        """The host's high-water mark as of this transaction. Read from the row (a primary-key lookup) rather
        than cached across batches, so a revoke, a wipe or the CLI can change hosts without telling the writer."""
        mark = marks.get(host_id)
        if mark is None:
            row = conn.execute("SELECT epoch, last_seq FROM hosts WHERE id = ?", (host_id,)).fetchone()
            if row is None:
                return None
            mark = _HostMark(row[0], row[1])
        return _HostMark(mark.epoch, mark.last_seq)

    def _apply_hello(self, conn: sqlite3.Connection, item: HelloWrite, marks: dict[int, _HostMark]) -> int:
        assert item.hello is not None
        mark = self._mark(conn, item.host_id, marks)
        if mark is None:
            return 0
        if mark.epoch != item.hello.epoch:
            mark = _HostMark(item.hello.epoch, 0)
        conn.execute("UPDATE hosts SET facts = ?, epoch = ?, last_seq = ?, last_seen = ? WHERE id = ?",
                     (json.dumps(item.hello.facts), mark.epoch, mark.last_seq, item.seen, item.host_id))
        marks[item.host_id] = mark
        return mark.last_seq

    def _apply_samples(self, conn: sqlite3.Connection, item: SamplesWrite, marks: dict[int, _HostMark],
                       layouts: dict[tuple[str, ...], int], rows: list[tuple[int, float, int, int, bytes]],
                       ) -> tuple[int, list[Sample]] | None:
        assert item.samples is not None
        mark = self._mark(conn, item.host_id, marks)
        if mark is None:
            return None  # host revoked meanwhile: nothing to store, nothing to ack
        if mark.epoch != item.epoch:
            return None  # a connection of an older epoch, already replaced
        fresh = [s for s in item.samples.items if s.seq > mark.last_seq]
        for sample in fresh:
            names = tuple(sample.series)
            layout_id = layouts.get(names) or self._layouts.get(names) or self._intern(conn, names, layouts)
            values = [v if math.isfinite(v) else 0.0 for v in sample.series.values()]
            rows.append((item.host_id, sample.ts, sample.seq, layout_id, store.pack_values(values)))
        if fresh:
            last = fresh[-1]
            mark.last_seq = last.seq
            dropped = sum(int(s.metrics.get("dropped", 0)) for s in fresh)
            conn.execute(
                "UPDATE hosts SET last_seq = ?, last_ts = ?, last_seen = ?, last_metrics = ?, "
                "samples_count = samples_count + ?, dropped = dropped + ? WHERE id = ?",
                (last.seq, last.ts, item.seen, json.dumps(last.metrics), len(fresh), dropped, item.host_id),
            )
        else:
            conn.execute("UPDATE hosts SET last_seen = ? WHERE id = ?", (item.seen, item.host_id))
        marks[item.host_id] = mark
        # Duplicates (seq at or below the mark) are acked too: the agent may drop them from its spool.
        return mark.last_seq, fresh

    def _intern(self, conn: sqlite3.Connection, names: tuple[str, ...], layouts: dict[tuple[str, ...], int]) -> int:
        encoded = json.dumps(list(names))
        conn.execute("INSERT OR IGNORE INTO layouts (names) VALUES (?)", (encoded,))
        layout_id = conn.execute("SELECT id FROM layouts WHERE names = ?", (encoded,)).fetchone()[0]
        layouts[names] = layout_id
        return layout_id

    def _apply_call(self, conn: sqlite3.Connection, item: CallWrite) -> Any:
        assert item.fn is not None
        conn.execute("SAVEPOINT call")
        try:
            result = item.fn(conn, *item.args)
        except Exception as exc:
            # A failing call (e.g. a name already taken) must not roll back the samples batched with it.
            conn.execute("ROLLBACK TO call")
            conn.execute("RELEASE call")
            return exc
        conn.execute("RELEASE call")
        return result
