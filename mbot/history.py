"""History in sqlite: rolled-up tiers, their retention, and range queries for charts.

Rollup goes by arrival, not by time: a watermark on the raw table's rowid (in `kv`) marks what has been rolled up,
and each step folds the next rows into the 1-minute, 10-minute and 1-hour tables in the same transaction that moves
the watermark. So every sample is counted exactly once, whenever it arrives: an agent replaying hours of spool
lands in the right buckets (combined with what was there), and nothing waits for a bucket to "close".

Each aggregate row holds, for one host, one bucket and one layout (the set of series names, as in `samples`), the
sample count and float32 arrays of min, avg and max per series. Averages are combined weighted by count, so an
average of averages stays the average of the samples (up to float32 rounding).

Functions take a sqlite3 connection: the server runs writes through its single writer (`Writer.call`) in bounded
steps, reads through `Database.read`; the CLI and the benchmark call them directly. The SQL itself is in mbot.store
(which owns the schema); this module holds what the rows mean: folding, combining, what to delete, what to read.

Poison rows (a timestamp no agent can send any more, a damaged blob, left by an older version or a bad disk) are
skipped by the rollup with a log line and a count, and the watermark moves past them: a row that cannot be folded
must not stop history, or crash the server at every start.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import trio

from . import limits, store
from .faults import Faults
from .rollup import Agg, Tier, combine, rollup
from .writer import Writer

log = logging.getLogger(__name__)

WATERMARK_KEY = store.ROLLUP_WATERMARK
STEP_ROWS = 2000  # raw rows per rollup transaction: tens of milliseconds, so ingest never waits long
DELETE_ROWS = 5000
_F32 = np.dtype("<f4")

# The tier behind each aggregate table (store.AGG_TABLES). The raw tier is `samples`.
TABLE_OF_TIER = {"1m": "agg_1m", "10m": "agg_10m", "1h": "agg_1h"}


def _foldable(ts: Any, vals: Any) -> bool:
    return (isinstance(ts, (int, float)) and limits.TS_FLOOR <= ts <= limits.TS_CEILING
            and isinstance(vals, bytes) and len(vals) % 4 == 0 and len(vals) > 0)


def rollup_step(conn: sqlite3.Connection, limit: int = STEP_ROWS, faults: Faults | None = None) -> int:
    """Fold the next `limit` raw rows into every aggregate tier; returns how many rows it went through (0: caught
    up). Call inside a transaction (the writer's): the upserts and the watermark commit together. Rows that cannot
    be folded are skipped, logged and counted in `faults`."""
    faults = faults or Faults()
    watermark = int(store.get_kv(conn, WATERMARK_KEY) or 0)
    rows = store.raw_rows_after(conn, watermark, limit)
    if not rows:
        return 0
    # Rows by the length of their values (one layout, one length), in arrival order: each class is one 2-D array,
    # folded per tier with a few vectorised reductions rather than a few per bucket.
    classes: dict[int, list[tuple[int, int, int, bytes]]] = {}
    skipped = 0
    for _, host_id, ts, layout_id, vals in rows:
        if _foldable(ts, vals):
            classes.setdefault(len(vals), []).append((host_id, int(ts // 60) * 60, layout_id, vals))
        else:
            skipped += 1
    if skipped:
        faults.isolated("rollup", f"{skipped} raw row(s) before rowid {rows[-1][0]}",
                        ValueError("timestamp outside 2001-2096 or damaged values; left out of history"))
    for table, width in store.AGG_TABLES.items():
        _store_tier(conn, table, [_fold(members, width) for members in classes.values()], faults)
    store.set_kv(conn, WATERMARK_KEY, str(rows[-1][0]))
    return len(rows)


@dataclass
class _Folds:
    """This step's rows of one length class per bucket: row g of each array belongs to keys[g]."""

    keys: list[store.AggKey]
    counts: np.ndarray  # int64
    mins: np.ndarray  # float32
    sums: np.ndarray  # float64: exact enough for thousands of float32 values
    maxs: np.ndarray  # float32


def _fold(members: list[tuple[int, int, int, bytes]], width: int) -> _Folds:
    """Count, min, sum and max per (host, bucket of `width`, layout) of rows of one length, in arrival order."""
    index: dict[store.AggKey, int] = {}
    groups = np.fromiter((index.setdefault((host_id, minute // width * width, layout_id), len(index))
                          for host_id, minute, layout_id, _ in members), dtype=np.intp, count=len(members))
    values = np.frombuffer(b"".join(vals for *_, vals in members), dtype=_F32).reshape(len(members), -1)
    order = np.argsort(groups, kind="stable")
    values = values[order]
    starts = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1]])
    return _Folds(list(index), np.diff(np.r_[starts, len(members)]).astype(np.int64),
                  np.minimum.reduceat(values, starts, axis=0), np.add.reduceat(values.astype(np.float64), starts,
                                                                                 axis=0),
                  np.maximum.reduceat(values, starts, axis=0))


def _store_tier(conn: sqlite3.Connection, table: str, classes: list[_Folds], faults: Faults) -> None:
    """Fold this step's buckets into the table: what the buckets held, read at once, combined per length class
    (vectorised), written at once. A bucket holds one length: should rows of one layout disagree (damaged), the
    first class wins."""
    owner: dict[store.AggKey, int] = {}
    for c, folds in enumerate(classes):
        for key in folds.keys:
            owner.setdefault(key, c)
    old_rows = store.agg_rows(conn, table, list(owner))
    new_rows: list[store.AggPut] = []
    for c, folds in enumerate(classes):
        take = [g for g, key in enumerate(folds.keys) if owner[key] == c]
        try:
            new_rows.extend(_combined(folds, take, old_rows))
        except Exception as exc:  # buckets that cannot be combined are left as they were
            faults.isolated("rollup", f"{len(take)} bucket(s) of {table}", exc)
    _put(conn, table, new_rows, faults)


def _combined(folds: _Folds, take: list[int], old_rows: dict[store.AggKey, tuple[int, bytes, bytes, bytes]]
              ) -> list[store.AggPut]:
    """The rows `take` of `folds` as they are to be stored: what each bucket held (if anything) folded in."""
    counts, mins, sums, maxs = folds.counts, folds.mins, folds.sums, folds.maxs
    size = 4 * mins.shape[1]
    have, olds = [], []
    for g in take:
        old = old_rows.get(folds.keys[g])
        # A damaged old row (a count that is no count, blobs of another length) is replaced, not combined.
        if (old is not None and isinstance(old[0], int) and 0 < old[0] <= limits.MAX_INT
                and len(old[1]) == len(old[2]) == len(old[3]) == size):
            have.append(g)
            olds.append(old)
    if have:
        old_counts = np.array([old[0] for old in olds], dtype=np.int64)
        old_mins, old_avgs, old_maxs = (
            np.frombuffer(b"".join(blobs), dtype=_F32).reshape(len(olds), -1)
            for blobs in ([old[1] for old in olds], [old[2] for old in olds], [old[3] for old in olds]))
        sums[have] += old_avgs.astype(np.float64) * old_counts[:, None]
        mins[have] = np.minimum(mins[have], old_mins)
        maxs[have] = np.maximum(maxs[have], old_maxs)
        counts[have] += old_counts
    avgs = np.clip(sums / counts[:, None], mins, maxs)  # float rounding must not put the mean outside [min, max]
    mins32, avgs32, maxs32 = mins.astype(_F32), avgs.astype(_F32), maxs.astype(_F32)
    return [(*folds.keys[g], int(counts[g]), mins32[g].tobytes(), avgs32[g].tobytes(), maxs32[g].tobytes())
            for g in take]


def _put(conn: sqlite3.Connection, table: str, rows: list[store.AggPut], faults: Faults) -> None:
    """All rows in one statement; should that fail, row by row, each failing row alone (isolated and counted)."""
    try:
        with store.savepoint(conn, "upserts"):
            store.put_agg_rows(conn, table, rows)
        return
    except sqlite3.OperationalError:
        raise  # the database itself: the writer retries
    except Exception:
        pass
    for row in rows:
        try:
            with store.savepoint(conn, "upsert"):
                store.put_agg_rows(conn, table, [row])
        except sqlite3.OperationalError:
            raise
        except Exception as exc:
            faults.isolated("rollup", f"{table} bucket {row[1]} of host {row[0]}", exc)


def retention_step(conn: sqlite3.Connection, tiers: Sequence[Tier], now: float, limit: int = DELETE_ROWS) -> int:
    """Delete at most about `limit` rows that are past their tier's retention; returns how many went. Raw rows
    go only once they are rolled up (below the watermark), so no sample leaves history before it is aggregated."""
    retention = {tier.name: tier.retention for tier in tiers}
    watermark = int(store.get_kv(conn, WATERMARK_KEY) or 0)
    # Rows from the future (a clock that was wrong before the server bounded timestamps) would outlive every
    # retention: they go too.
    future = now + limits.MAX_SAMPLE_AHEAD
    deleted = store.delete_raw_rows(conn, up_to_rowid=watermark, before=now - retention["raw"], after=future,
                                    limit=limit)
    host_ids = store.host_ids(conn)
    for tier_name, table in TABLE_OF_TIER.items():
        cutoff = now - retention[tier_name]
        for host_id in host_ids:
            deleted += store.delete_agg_rows(conn, table, host_id, before=cutoff, after=future)
    return deleted


async def maintain(writer: Writer, tiers: Sequence[Tier], *, clock: Callable[[], float] = time.time,
                   period: float = 10.0, retention_every: float = 600.0,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The long-running rollup and retention task. Works in bounded steps, each its own short transaction on the
    single writer, so ingest interleaves and never waits long; after downtime it simply catches up.

    Poison rows are isolated inside the steps. A step that still raises (a bug) is restarted with backoff rather
    than taking the server down: rollup then lags, which /metrics (mbot_isolated_failures_total) and the log show."""
    task_status.started()
    last_retention = -math.inf
    failures = 0
    while True:
        try:
            folded = 0
            while (step := await writer.call(rollup_step, STEP_ROWS, writer.faults)) == STEP_ROWS:
                folded += step
            folded += step
            if folded > STEP_ROWS:
                log.info("rolled up %d samples", folded)
            if clock() - last_retention >= retention_every:
                deleted = 0
                while (step := await writer.call(retention_step, tiers, clock())) >= DELETE_ROWS:
                    deleted += step
                deleted += step
                if deleted:
                    log.info("retention: deleted %d rows past their tier's retention", deleted)
                last_retention = clock()
            failures = 0
        except Exception as exc:
            writer.faults.isolated("rollup", "a rollup or retention step", exc)
            failures += 1
        await trio.sleep(period if not failures else min(period * 2 ** min(failures, 6), 600.0))


# --- reading ---------------------------------------------------------------------------------------------------


def _layout_index(conn: sqlite3.Connection, cache: dict[int, dict[str, int]], layout_id: int) -> dict[str, int]:
    if layout_id not in cache:
        cache[layout_id] = {name: i for i, name in enumerate(store.layout_names(conn, layout_id))}
    return cache[layout_id]


def load(conn: sqlite3.Connection, host_id: int, names: Sequence[str], start: float, end: float,
         tier: Tier) -> dict[str, list[Agg]]:
    """The named series of one host over [start, end] from one tier, oldest first (raw points as count-1 Aggs)."""
    layouts: dict[int, dict[str, int]] = {}
    out: dict[str, list[Agg]] = {name: [] for name in names}
    if tier.is_raw:
        for ts, layout_id, vals in store.raw_rows_of_host(conn, host_id, start, end):
            index = _layout_index(conn, layouts, layout_id)
            values = np.frombuffer(vals, dtype=_F32)
            for name in names:
                i = index.get(name)
                if i is not None and math.isfinite(v := float(values[i])):
                    out[name].append(Agg(ts, 1, v, v, v))
        return out
    table = TABLE_OF_TIER[tier.name]
    # Read the watermark first: a rollup committing in between then shows up in the aggregates, never in both.
    watermark = int(store.get_kv(conn, WATERMARK_KEY) or 0)
    rows = store.agg_rows_of_host(conn, table, host_id, start - tier.width, end)
    for bucket, layout_id, count, mins, avgs, maxs in rows:
        index = _layout_index(conn, layouts, layout_id)
        lo, mid, hi = (np.frombuffer(b, dtype=_F32) for b in (mins, avgs, maxs))
        for name in names:
            i = index.get(name)
            if i is None:
                continue
            agg = Agg(float(bucket), count, float(lo[i]), float(mid[i]), float(hi[i]))
            series = out[name]
            # Two layouts in one bucket (a disk mounted mid-minute): one point, combined.
            if series and series[-1].start == agg.start:
                series[-1] = combine(series[-1], agg)
            else:
                series.append(agg)
    # Samples not rolled up yet (the last seconds, or a replay just received): fold them in here, so a chart
    # always reaches up to now.
    fresh: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for ts, layout_id, vals in store.raw_rows_of_host_after(conn, host_id, watermark):
        if start - tier.width <= ts <= end:
            index = _layout_index(conn, layouts, layout_id)
            values = np.frombuffer(vals, dtype=_F32)
            for name in names:
                if (i := index.get(name)) is not None:
                    fresh[name].append((ts, float(values[i])))
    for name, points in fresh.items():
        if points:
            merged: dict[float, Agg] = {agg.start: agg for agg in out[name]}
            for agg in rollup(points, tier.width):
                merged[agg.start] = combine(merged[agg.start], agg) if agg.start in merged else agg
            out[name] = [merged[key] for key in sorted(merged)]
    return out
