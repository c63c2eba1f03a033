"""The single writer: every write of the server goes through one connection, in batched transactions.

Connection tasks and the bot submit items on a bounded memory channel; the writer takes whatever has queued up,
commits it in ONE transaction in a worker thread, and only then resolves the items (so an agent is acked only for
what is on disk). While a commit runs, new items queue: under load batches grow by themselves (group commit).
A full channel makes submitters wait, which stops reading their sockets: backpressure reaches the agents over TCP.

Isolation: each item runs in its own SAVEPOINT. An item that raises (a value SQLite cannot store, a bug) is rolled
back alone, fails with its error and is counted in Faults; the rest of the batch commits. Only errors of the
database itself (sqlite3.OperationalError: disk full, locked) fail the whole batch, which is then retried, since
retrying cannot help a poison item but does help a full disk.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import trio

from . import limits, protocol, snapshots, store
from .faults import Faults
from .metrics import Histogram
from .protocol import Hello, Sample, Samples, Snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_ITEMS = 10_000
BATCH_ITEMS = 2_000
LAYOUT_CACHE = 20_000  # layout ids remembered by digest (LRU): ~2 MB, whatever the size of the layouts
_RETRY_FIRST, _RETRY_MAX = 0.1, 5.0
# A sample's metrics as json.dumps writes them, without its search for cycles (parsed JSON has none).
_METRICS_ENCODER = json.JSONEncoder(check_circular=False)


class LimitExceeded(Exception):
    """A host went over one of its limits; `limit` names it for the owner's message and the close reason."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"{limit}: {detail}")
        self.limit = limit
        self.detail = detail


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
    # Called (in the trio thread) with the highest seq committed for this host and epoch ...
    on_commit: Callable[[int], None] | None = None
    # ... or with the error when this item failed alone (a limit, a poison value): the connection closes.
    on_error: Callable[[BaseException], None] | None = None


@dataclass
class SnapshotWrite(_Pending):
    host_id: int = 0
    snapshot: Snapshot | None = None  # stored with the time of its commit (nothing waits for it)


@dataclass
class CallWrite(_Pending):
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()


class CommitListener(Protocol):
    def on_hello(self, host_id: int, hello: Hello) -> None: ...

    def on_samples(self, host_id: int, samples: list[Sample]) -> None: ...


class SnapshotListener(Protocol):
    def on_snapshot(self, host_id: int, kind: str, events: list[snapshots.SnapshotEvent]) -> None:
        """What changed from the host's previous snapshot of this kind (never called with no events)."""


class SnapshotStateListener(Protocol):
    def on_snapshot_stored(self, host_id: int, snapshot: Snapshot) -> None:
        """The host's latest snapshot of a kind, after each commit of one, baseline included: for whoever needs
        the whole list rather than what changed (member alerts: the state of a watched service)."""


@dataclass
class _HostMark:
    epoch: int
    last_seq: int


class Writer:
    def __init__(self, db_path: Path, *, busy_timeout: float = 10.0, faults: Faults | None = None) -> None:
        # busy_timeout: how long one try waits on a lock held by another process (the CLI) before it counts as a
        # failed try and is retried with backoff.
        self._conn = store.connect(db_path, busy_timeout=busy_timeout)
        self._send, self._receive = trio.open_memory_channel[_Pending](QUEUE_ITEMS)
        # Layout ids by a digest of the names: the cache costs the same whatever a hostile agent names its series.
        self._layouts: OrderedDict[bytes, int] = OrderedDict()
        self._layout_budgets: dict[int, limits.TokenBucket] = {}  # host id -> bytes of new layouts it may add
        self._next_rowid = 0  # set at the start of each transaction (store.next_sample_rowid)
        self.faults = faults or Faults()
        self.committed_samples = 0
        self.rejected_samples: dict[str, int] = {protocol.TOO_OLD: 0, protocol.TOO_NEW: 0}
        self.batches = 0
        self.commit_latency = Histogram()  # receive -> commit, per frame of samples (for /metrics)
        # Told, in the trio thread, about what each commit stored (the alert engine): never about duplicates.
        self.listeners: list[CommitListener] = []
        # Told, in the trio thread, what each committed snapshot changed (alerting may subscribe later).
        self.snapshot_listeners: list[SnapshotListener] = []
        self.snapshot_state_listeners: list[SnapshotStateListener] = []
        self.committed_snapshots = 0
        self._progress = trio.Event()

    # --- submitting ------------------------------------------------------------------------------------------

    async def hello(self, host_id: int, hello: Hello) -> int:
        """Record a hello; returns the highest seq already committed for its epoch (0 for a new epoch)."""
        item = HelloWrite(host_id=host_id, hello=hello, seen=time.time())
        await self._send.send(item)
        return await item.wait()

    async def samples(self, host_id: int, epoch: int, samples: Samples, on_commit: Callable[[int], None],
                      on_error: Callable[[BaseException], None] | None = None) -> None:
        """Queue samples; on_commit(highest committed seq) runs after their transaction commits, on_error(exc)
        instead when this item failed alone."""
        await self._send.send(SamplesWrite(host_id=host_id, epoch=epoch, samples=samples, seen=time.time(),
                                           on_commit=on_commit, on_error=on_error))

    async def snapshot(self, host_id: int, snapshot: Snapshot) -> None:
        """Queue a snapshot: it replaces the host's latest of its kind. Nothing waits for it (no ack: only the
        latest counts); one that fails alone is logged and counted like any item, and the connection goes on."""
        await self._send.send(SnapshotWrite(host_id=host_id, snapshot=snapshot))

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
        for digest, layout_id in layouts.items():
            self._remember_layout(digest, layout_id)
        self.batches += 1
        committed_at = time.time()
        for item, result in zip(batch, results):
            if isinstance(result, BaseException):
                item.error = result
                if isinstance(item, SamplesWrite) and item.on_error is not None:
                    item.on_error(result)
            else:
                item.result = result
                if isinstance(item, SamplesWrite):
                    self.commit_latency.observe(committed_at - item.seen)
                    if result is not None:
                        item.result = result.last_seq
                        self.committed_samples += len(result.stored)
                        for reason, count in result.rejected.items():
                            self.rejected_samples[reason] += count
                        if result.stored:
                            self._tell(lambda listener: listener.on_samples(item.host_id, result.stored))
                        if item.on_commit is not None:
                            item.on_commit(result.last_seq)
                elif isinstance(item, HelloWrite):
                    hello = item.hello
                    assert hello is not None
                    self._tell(lambda listener: listener.on_hello(item.host_id, hello))
                elif isinstance(item, SnapshotWrite):
                    self.committed_snapshots += 1
                    if result:
                        self._tell_snapshot(item, result)
                    self._tell_snapshot_state(item)
            item.done.set()
        self._progress.set()
        self._progress = trio.Event()

    def _tell(self, call: Callable[[CommitListener], None]) -> None:
        """A listener that raises on one commit must not take the writer (and every agent's acks) down with it."""
        for listener in self.listeners:
            try:
                call(listener)
            except Exception as exc:
                self.faults.isolated("alerting", f"commit listener {type(listener).__name__}", exc)

    def _tell_snapshot(self, item: SnapshotWrite, events: list[snapshots.SnapshotEvent]) -> None:
        assert item.snapshot is not None
        for listener in self.snapshot_listeners:
            try:
                listener.on_snapshot(item.host_id, item.snapshot.kind, events)
            except Exception as exc:
                self.faults.isolated("alerting", f"snapshot listener {type(listener).__name__}", exc)

    def _tell_snapshot_state(self, item: SnapshotWrite) -> None:
        assert item.snapshot is not None
        for listener in self.snapshot_state_listeners:
            try:
                listener.on_snapshot_stored(item.host_id, item.snapshot)
            except Exception as exc:
                self.faults.isolated("alerting", f"snapshot listener {type(listener).__name__}", exc)

    def _remember_layout(self, digest: bytes, layout_id: int) -> None:
        self._layouts[digest] = layout_id
        self._layouts.move_to_end(digest)
        while len(self._layouts) > LAYOUT_CACHE:
            self._layouts.popitem(last=False)

    # --- in the worker thread --------------------------------------------------------------------------------

    def _commit(self, batch: list[_Pending]) -> tuple[dict[bytes, int], list[Any]]:
        """One transaction for the whole batch, one savepoint per item. The layout cache changes only through the
        returned value, after COMMIT, so a rolled-back batch leaves no stale layout ids behind."""
        conn = self._conn
        marks: dict[int, _HostMark] = {}
        layouts: dict[bytes, int] = {}
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._next_rowid = store.next_sample_rowid(conn)
            for item in batch:
                # A failed item takes back exactly what it did: its rows (the savepoint), its host's mark (the
                # _apply functions replace a mark, never change one in place) and the layouts it made.
                host_id = getattr(item, "host_id", None)
                mark_before = marks.get(host_id) if host_id is not None else None
                new_layouts: dict[bytes, int] = {}
                conn.execute("SAVEPOINT item")
                try:
                    if isinstance(item, HelloWrite):
                        result: Any = self._apply_hello(conn, item, marks)
                    elif isinstance(item, SamplesWrite):
                        result = self._apply_samples(conn, item, marks, layouts, new_layouts)
                    elif isinstance(item, SnapshotWrite):
                        result = self._apply_snapshot(conn, item)
                    else:
                        assert isinstance(item, CallWrite)
                        result = self._apply_call(conn, item)
                except sqlite3.OperationalError:
                    raise  # the database itself (disk full, locked): retry the whole batch
                except Exception as exc:
                    conn.execute("ROLLBACK TO item")
                    conn.execute("RELEASE item")
                    if host_id is not None:
                        if mark_before is None:
                            marks.pop(host_id, None)
                        else:
                            marks[host_id] = mark_before
                    if not isinstance(exc, (LimitExceeded, _CallFailed)):
                        self.faults.isolated("writer", _describe(item), exc)
                    results.append(exc.error if isinstance(exc, _CallFailed) else exc)
                    continue
                conn.execute("RELEASE item")
                layouts.update(new_layouts)
                results.append(result)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (disk full): a second ROLLBACK would fail and hide the cause.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
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
                       layouts: dict[bytes, int], new_layouts: dict[bytes, int]) -> _Stored | None:
        assert item.samples is not None
        mark = self._mark(conn, item.host_id, marks)
        if mark is None:
            return None  # host revoked meanwhile: nothing to store, nothing to ack
        if mark.epoch != item.epoch:
            return None  # a connection of an older epoch, already replaced
        fresh = [s for s in item.samples.items if s.seq > mark.last_seq]
        stored: list[Sample] = []
        rows: list[tuple[int, int, float, int, int, bytes]] = []
        rejected = {protocol.TOO_OLD: 0, protocol.TOO_NEW: 0}
        for sample in fresh:
            reason = protocol.out_of_window(sample.ts, item.seen)
            if reason is not None:
                rejected[reason] += 1  # acked below with the rest, so the agent lets go of it, but not stored
                continue
            layout_id = self._layout_id(conn, item.host_id, tuple(sample.series), layouts, new_layouts)
            values = list(sample.series.values())
            if not math.isfinite(sum(values)):  # a NaN or an infinity makes the sum one: then find it
                values = [v if math.isfinite(v) else 0.0 for v in values]
            rows.append((self._next_rowid, item.host_id, sample.ts, sample.seq, layout_id,
                         store.pack_values(values)))
            self._next_rowid += 1
            stored.append(sample)
        if rows:
            conn.executemany("INSERT INTO samples (rowid, host_id, ts, seq, layout_id, vals) VALUES (?, ?, ?, ?, ?, ?)",
                             rows)
        if fresh:
            last = fresh[-1]
            mark.last_seq = last.seq
            dropped = sum(int(s.metrics.get("dropped", 0)) for s in fresh)
            counts = (last.seq, item.seen, len(stored), dropped, limits.MAX_INT, sum(rejected.values()),
                      limits.MAX_INT)
            if stored:  # one statement, one rewrite of the row
                latest = stored[-1]
                conn.execute(
                    "UPDATE hosts SET last_seq = ?, last_seen = ?, samples_count = samples_count + ?, "
                    "dropped = min(dropped + ?, ?), rejected = min(rejected + ?, ?), last_ts = ?, last_metrics = ? "
                    "WHERE id = ?", (*counts, latest.ts, _METRICS_ENCODER.encode(latest.metrics), item.host_id))
            else:
                conn.execute(
                    "UPDATE hosts SET last_seq = ?, last_seen = ?, samples_count = samples_count + ?, "
                    "dropped = min(dropped + ?, ?), rejected = min(rejected + ?, ?) WHERE id = ?",
                    (*counts, item.host_id))
        else:
            conn.execute("UPDATE hosts SET last_seen = ? WHERE id = ?", (item.seen, item.host_id))
        marks[item.host_id] = mark
        # Duplicates (seq at or below the mark) are acked too: the agent may drop them from its spool.
        return _Stored(mark.last_seq, stored, rejected)

    def _layout_id(self, conn: sqlite3.Connection, host_id: int, names: tuple[str, ...],
                   layouts: dict[bytes, int], new_layouts: dict[bytes, int]) -> int:
        # The digest of the names joined by NUL: a fraction of the JSON's cost, and as exact, since no series name
        # holds a NUL (labels are cleaned of control characters); should one ever, the JSON it is.
        joined = "\0".join(names)
        encoded = None
        if joined.count("\0") == len(names) - 1:
            key = b"n" + joined.encode(errors="surrogatepass")
        else:
            encoded = json.dumps(list(names))
            key = b"j" + encoded.encode()
        digest = hashlib.blake2b(key, digest_size=16).digest()
        layout_id = new_layouts.get(digest) or layouts.get(digest) or self._layouts.get(digest)
        if layout_id is not None:
            return layout_id
        encoded = encoded or json.dumps(list(names))
        row = conn.execute("SELECT id FROM layouts WHERE names = ?", (encoded,)).fetchone()
        if row is None:
            # A new set of series names costs the host budget: names churning on every frame would otherwise
            # grow the layouts table (and every cache of it) without bound.
            budget = self._layout_budgets.get(host_id)
            if budget is None:
                budget = self._layout_budgets[host_id] = limits.TokenBucket(
                    rate=limits.LAYOUT_REFILL_PER_S, capacity=limits.LAYOUT_BUDGET_BYTES, now=time.monotonic())
            if not budget.take(len(encoded), time.monotonic()):
                raise LimitExceeded("new series names", "the host keeps sending new sets of series names "
                                    f"(more than {limits.LAYOUT_BUDGET_BYTES // 1024} KiB of names per hour)")
            inserted = conn.execute("INSERT INTO layouts (names) VALUES (?)", (encoded,)).lastrowid
            assert inserted is not None
            layout_id = inserted
        else:
            layout_id = row[0]
        new_layouts[digest] = layout_id
        return layout_id

    def _apply_snapshot(self, conn: sqlite3.Connection, item: SnapshotWrite) -> list[snapshots.SnapshotEvent]:
        snapshot = item.snapshot
        assert snapshot is not None
        if conn.execute("SELECT 1 FROM hosts WHERE id = ?", (item.host_id,)).fetchone() is None:
            return []  # host deleted meanwhile
        if snapshot.kind == "inventory":  # a hello fact that changed: the hosts row keeps it, as after a hello
            if snapshot.items:
                store.set_inventory(conn, item.host_id, json.dumps(snapshot.items[0]))
            return []
        if not self.snapshot_listeners:  # nobody to tell what changed: the previous one need not be read
            store.put_snapshot(conn, item.host_id, snapshot.kind, snapshot.v, snapshot.ts, time.time(),
                               snapshot.items_json)
            return []
        previous = store.latest_snapshot_json(conn, item.host_id, snapshot.kind)
        store.put_snapshot(conn, item.host_id, snapshot.kind, snapshot.v, snapshot.ts, time.time(),
                           snapshot.items_json)
        if previous == (snapshot.v, snapshot.items_json):
            return []  # the same list again (a reconnect sends it): nothing changed, nothing to decode
        return snapshots.diff_stored(snapshot.kind, None if previous is None else (
            previous[0], store.snapshot_items(item.host_id, snapshot.kind, previous[1])), snapshot.v, snapshot.items)

    def _apply_call(self, conn: sqlite3.Connection, item: CallWrite) -> Any:
        assert item.fn is not None
        try:
            return item.fn(conn, *item.args)
        except sqlite3.OperationalError:
            raise
        except Exception as exc:
            # A failing call (e.g. a name already taken) is the caller's answer, not a fault of the writer: its
            # writes are rolled back and the exception goes back to whoever called.
            raise _CallFailed(exc) from exc


@dataclass
class _Stored:
    last_seq: int  # the highest seq now committed for the host's epoch: what the ack says
    stored: list[Sample]
    rejected: dict[str, int]  # reason -> samples acked but not stored (outside the time window)


class _CallFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _describe(item: _Pending) -> str:
    if isinstance(item, SamplesWrite):
        return f"samples of host {item.host_id}"
    if isinstance(item, HelloWrite):
        return f"hello of host {item.host_id}"
    if isinstance(item, SnapshotWrite):
        return f"snapshot of host {item.host_id}"
    if isinstance(item, CallWrite):
        return f"call {getattr(item.fn, '__name__', item.fn)!r}"
    return repr(item)
