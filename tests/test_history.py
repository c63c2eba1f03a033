"""History in a real sqlite file: rollups by arrival, retention, range queries, and charts drawn from them."""
from __future__ import annotations

import json
import time
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import trio

from helpers import add_host, read_db
from mbot import charts, history, plotting, protocol, rollup, store
from mbot.faults import Faults
from mbot.rollup import make_tiers
from mbot.writer import Writer

# A bucket edge for 1 m, 10 m and 1 h (a multiple of 3600), two days ago: inside the window of timestamps the server
# stores (protocol.out_of_window).
T0 = float((int(time.time()) // 86400 - 2) * 86400)


def sample(seq: int, ts: float, cpu: float, disks: bool = False) -> protocol.Samples:
    metrics = {"cpu": cpu, "ram": {"used": 1.0, "total": 4.0}}
    if disks:
        metrics["disks"] = {"/": {"used": 1.0, "total": 2.0}}
    return protocol.parse_agent_frame(json.dumps({"type": "sample", "seq": seq, "ts": ts, "metrics": metrics}))


async def store_samples(settings, host_id: int, points: list[tuple[float, float]], *, disks_from: int | None = None):
    writer = Writer(settings.db_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.hello(host_id, protocol.parse_agent_frame(json.dumps(
            {"type": "hello", "v": 1, "agent": "t", "epoch": 1, "interval": 5})))
        seq0 = await writer.call(lambda conn: conn.execute("SELECT last_seq FROM hosts WHERE id = ?",
                                                           (host_id,)).fetchone()[0])
        for i, (ts, cpu) in enumerate(points, start=seq0 + 1):
            await writer.samples(host_id, 1, sample(i, ts, cpu, disks_from is not None and i >= disks_from),
                                 lambda seq: None)
        await writer.call(lambda conn: None)
        writer.close()


def roll_all(settings) -> int:
    conn = store.connect(settings.db_path)
    try:
        total = 0
        while True:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                n = history.rollup_step(conn, limit=50)
            total += n
            if n == 0:
                return total
    finally:
        conn.close()


def query(settings, host_id, names, start, end, tier_name):
    conn = store.connect(settings.db_path, readonly=True)
    try:
        tier = next(t for t in make_tiers() if t.name == tier_name)
        return history.load(conn, host_id, names, start, end, tier)
    finally:
        conn.close()


async def test_rollup_matches_the_pure_maths_and_counts_each_sample_once(settings):
    host = add_host(settings, "box1")
    rng = np.random.default_rng(1)
    points = [(T0 + i * 5 + float(rng.uniform(0, 4.9)), float(rng.uniform(0, 100))) for i in range(1000)]
    await store_samples(settings, host.host_id, points)
    assert roll_all(settings) == 1000
    assert roll_all(settings) == 0  # the watermark moved: nothing is folded twice
    for name, width in (("1m", 60), ("10m", 600), ("1h", 3600)):
        got = query(settings, host.host_id, ["cpu"], T0, T0 + 6000, name)["cpu"]
        want = rollup.rollup(points, width)
        assert [(a.start, a.count) for a in got] == [(a.start, a.count) for a in want]
        for g, w in zip(got, want):
            # float32 storage: close, not bit-equal
            assert g.min == pytest.approx(w.min, rel=1e-6) and g.max == pytest.approx(w.max, rel=1e-6)
            assert g.avg == pytest.approx(w.avg, rel=1e-5)


async def test_a_step_over_hundreds_of_buckets_combines_each_with_what_it_held(settings):
    # 400 minutes in one step: more buckets than one query reads (store.agg_rows), each combined with its row.
    host = add_host(settings, "box1")
    await store_samples(settings, host.host_id, [(T0 + i * 60, 10.0) for i in range(400)])
    with store.connect(settings.db_path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        assert history.rollup_step(conn) == 400
    await store_samples(settings, host.host_id, [(T0 + i * 60 + 30, 30.0) for i in range(400)])
    with store.connect(settings.db_path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        assert history.rollup_step(conn) == 400
    minutes = query(settings, host.host_id, ["cpu"], T0, T0 + 400 * 60, "1m")["cpu"]
    assert [(m.start, m.count, m.min, m.avg, m.max) for m in minutes] == [
        (T0 + i * 60, 2, 10.0, 20.0, 30.0) for i in range(400)]
    hours = query(settings, host.host_id, ["cpu"], T0, T0 + 400 * 60, "1h")["cpu"]
    assert [h.count for h in hours] == [120] * 6 + [80] and all(h.avg == pytest.approx(20.0) for h in hours)


async def test_a_damaged_bucket_is_replaced_not_combined(settings):
    host = add_host(settings, "box1")
    await store_samples(settings, host.host_id, [(T0 + i * 5, 3.0) for i in range(12)])
    ((layout, size),) = read_db(settings, "SELECT layout_id, length(vals) FROM samples LIMIT 1")
    with store.connect(settings.db_path) as conn:
        good = store.pack_values([9.0] * (size // 4))
        # What a bad disk or an older version could leave: a short blob, a count that is no count.
        conn.execute("INSERT INTO agg_1m VALUES (?, ?, ?, 5, ?, ?, ?)", (host.host_id, int(T0), layout, b"x" * 4,
                                                                         good, good))
        conn.execute("INSERT INTO agg_10m VALUES (?, ?, ?, 'many', ?, ?, ?)", (host.host_id, int(T0), layout, good,
                                                                               good, good))
    roll_all(settings)
    for tier in ("1m", "10m", "1h"):
        (bucket,) = query(settings, host.host_id, ["cpu"], T0, T0 + 59, tier)["cpu"]
        assert (bucket.count, bucket.min, bucket.avg, bucket.max) == (12, 3.0, 3.0, 3.0)


async def test_a_bucket_that_cannot_be_written_fails_alone(settings):
    good, bad = add_host(settings, "good"), add_host(settings, "bad")
    await store_samples(settings, good.host_id, [(T0 + i * 5, 1.0) for i in range(12)])
    await store_samples(settings, bad.host_id, [(T0 + i * 5, 2.0) for i in range(12)])
    faults = Faults()
    with store.connect(settings.db_path) as conn:
        # Whatever makes one row fail (here a trigger): the other rows of the step are written all the same.
        conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON agg_10m WHEN NEW.host_id = {bad.host_id} "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
        conn.execute("BEGIN IMMEDIATE")
        assert history.rollup_step(conn, faults=faults) == 24
        conn.execute("COMMIT")
    assert faults.counts["rollup"] == 1
    for tier, hosts in (("1m", {good, bad}), ("10m", {good}), ("1h", {good, bad})):
        for host in (good, bad):
            got = query(settings, host.host_id, ["cpu"], T0, T0 + 59, tier)["cpu"]
            # The watermark moved past the rows: the one bucket that failed is missing from its tier, nothing else.
            assert [a.count for a in got] == ([12] if host in hosts else [])


async def test_replayed_samples_land_in_their_old_buckets(settings):
    host = add_host(settings, "box1")
    await store_samples(settings, host.host_id, [(T0 + i * 5, 10.0) for i in range(12)])  # one full minute
    roll_all(settings)
    # An agent replays a late sample into the same minute (new seq, old ts): combined, not a second point.
    await store_samples(settings, host.host_id, [(T0 + 59, 70.0)])
    roll_all(settings)
    (minute,) = query(settings, host.host_id, ["cpu"], T0, T0 + 59, "1m")["cpu"]
    assert minute.count == 13 and minute.max == 70 and minute.avg == pytest.approx((12 * 10 + 70) / 13)


async def test_queries_include_samples_not_rolled_up_yet(settings):
    host = add_host(settings, "box1")
    await store_samples(settings, host.host_id, [(T0 + i * 5, 1.0) for i in range(24)])
    roll_all(settings)
    await store_samples(settings, host.host_id, [(T0 + 120 + i * 5, 2.0) for i in range(6)])  # not rolled up
    minutes = query(settings, host.host_id, ["cpu"], T0, T0 + 600, "1m")["cpu"]
    assert [(m.start, m.count, m.avg) for m in minutes] == [(T0, 12, 1.0), (T0 + 60, 12, 1.0), (T0 + 120, 6, 2.0)]


async def test_a_new_series_mid_bucket_is_one_point(settings):
    host = add_host(settings, "box1")
    await store_samples(settings, host.host_id, [(T0 + i * 5, 5.0) for i in range(12)], disks_from=7)
    roll_all(settings)
    data = query(settings, host.host_id, ["cpu", "disk:/"], T0, T0 + 59, "1m")
    assert [(a.count, a.avg) for a in data["cpu"]] == [(12, 5.0)]
    assert [(a.count, a.avg) for a in data["disk:/"]] == [(6, 50.0)]


async def test_retention_deletes_only_what_is_rolled_up_and_old(settings):
    host = add_host(settings, "box1")
    await store_samples(settings, host.host_id, [(T0 + i * 60, 1.0) for i in range(10)])
    tiers = make_tiers(raw=300, m1=600, m10=3600, h1=7200)
    conn = store.connect(settings.db_path)
    now = T0 + 9 * 60 + 1
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        assert history.retention_step(conn, tiers, now) == 0  # nothing rolled up yet: raw rows stay
    roll_all(settings)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        deleted = history.retention_step(conn, tiers, now)
    kept = [r[0] for r in conn.execute("SELECT ts FROM samples ORDER BY ts")]
    assert kept == [T0 + i * 60 for i in range(5, 10)] and deleted == 5
    assert [r[0] for r in conn.execute("SELECT bucket FROM agg_1m WHERE host_id = ?", (host.host_id,))][0] >= now - 600
    conn.close()


async def test_chart_from_sqlite_is_a_png_and_shows_the_gap(settings):
    host_key = add_host(settings, "box1")
    # 20 minutes of samples, 30 minutes offline, 10 more minutes.
    points = [(T0 + i * 5, 50.0) for i in range(240)] + [(T0 + 3000 + i * 5, 60.0) for i in range(120)]
    await store_samples(settings, host_key.host_id, points)
    roll_all(settings)
    conn = store.connect(settings.db_path, readonly=True)
    host = store.host_by_id(conn, host_key.host_id)
    now = T0 + 3600
    for span in (3600, 6 * 3600):  # raw, then 1-minute aggregates
        spec = plotting.build_spec(conn, host, ["cpu"], span, None, None, make_tiers(raw=10 * 365 * 86400),
                                   ZoneInfo("UTC"), now)
        data = charts.plot_data(spec)
        (line,) = data.lines
        # The offline half hour is a break in the line and a shaded span, not a straight line across.
        inside = (line.x > T0 + 1300) & (line.x < T0 + 2900)
        assert np.isnan(line.y[inside]).all()
        assert any(lo <= T0 + 2000 <= hi for lo, hi in data.shaded)
        png = charts.render(spec)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(png[16:20], "big") == 1280 and int.from_bytes(png[20:24], "big") == 640
    conn.close()
