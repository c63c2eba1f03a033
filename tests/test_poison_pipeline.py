"""Arbitrary frames from a valid agent, through everything they can reach: parse -> writer -> rollup -> alerts ->
/metrics -> chart. Whatever the frames hold, nothing raises past its own item and a good host sharing the writer
loses nothing."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from helpers import add_host, hello_frame, make_settings
from mbot import alerts, charts, history, metrics, plotspec, plotting, protocol, store
from mbot.protocol import ProtocolError, Samples
from mbot.rollup import make_tiers
from mbot.writer import Writer

# Mostly what a real agent sends (so samples get stored and reach rollup, alerts, /metrics and charts), with the
# hostile cases mixed in: lone surrogates and control characters in labels, huge and negative numbers, wrong types.
hostile_labels = st.text(st.characters(codec=None), max_size=300)
labels = st.sampled_from(["/", "/home", "eth0", "cpu"]) | hostile_labels
sane = st.floats(min_value=0, max_value=100)
hostile_numbers = (st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=False)
                   | st.sampled_from([1e19, -1, 2**63, 1e308, 5e-324]))
numbers = st.one_of(*[sane] * 8, hostile_numbers)
leaf = st.none() | st.booleans() | numbers | labels
values = st.recursive(leaf, lambda children: st.lists(children, max_size=5)
                      | st.dictionaries(labels, children, max_size=5), max_leaves=20)
used_total = st.one_of(
    st.tuples(st.floats(0, 1), st.floats(1, 1e12)).map(lambda p: {"used": p[0] * p[1], "total": p[1]}),
    st.fixed_dictionaries({"used": numbers, "total": numbers}))
metric_values = st.fixed_dictionaries({}, optional={
    "cpu": numbers, "cpu_cores": st.lists(numbers, max_size=4), "load": st.lists(numbers, min_size=3, max_size=3),
    "ram": used_total, "swap": used_total, "disks": st.dictionaries(labels, used_total, max_size=4),
    "disk_io": st.dictionaries(st.sampled_from(["read", "write"]), numbers),
    "net": st.dictionaries(labels, st.dictionaries(st.sampled_from(["rx", "tx"]), numbers), max_size=4),
    "temps": st.dictionaries(labels, numbers, max_size=4), "uptime": numbers, "procs": numbers, "dropped": numbers,
    "gpus": st.lists(st.dictionaries(st.sampled_from(["name", "util", "temp", "power"]), numbers), max_size=3),
    "extra": values,
})
timestamps = st.one_of(*[st.floats(min_value=-10 * 86400, max_value=600).map(lambda d: time.time() + d)] * 3,
                       st.floats(allow_nan=False), st.integers(), st.just(None))
frames = st.fixed_dictionaries({"metrics": st.one_of(metric_values, metric_values, metric_values, values),
                                "ts": timestamps})


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database without hosts, made once: each example starts from a copy (the schema's migrations, a
    commit each, were a good part of an example's time; they are not what this test is about)."""
    path = make_settings(tmp_path_factory.mktemp("template")).db_path
    store.connect(path).close()
    return path


async def run_pipeline(frame_list: list[dict], empty_database: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_settings(Path(tmp))
        shutil.copy2(empty_database, cfg.db_path)  # as store.connect left it: 0600, the WAL checkpointed into it
        bad, good = add_host(cfg, "bad"), add_host(cfg, "good")
        writer = Writer(cfg.db_path)
        hello = protocol.parse_agent_frame(hello_frame(epoch=1))
        engine = alerts.AlertEngine(now=time.time())
        for host in (bad, good):
            for metric in alerts.metric_words():
                if metric != "disk:/mount":
                    engine.set_rule(alerts.AlertRule(host.host_id, metric, 1.0))
        stored: list[protocol.Sample] = []
        acked: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.hello(bad.host_id, hello)
            await writer.hello(good.host_id, hello)
            for seq, frame in enumerate(frame_list, start=1):
                text = json.dumps({"type": "sample", "seq": seq, **frame})
                try:
                    parsed = protocol.parse_agent_frame(text)
                except ProtocolError:
                    parsed = None
                if isinstance(parsed, Samples):
                    await writer.samples(bad.host_id, 1, parsed, lambda s: None)
                    stored.extend(parsed.items)
                good_sample = protocol.parse_agent_frame(json.dumps(
                    {"type": "sample", "seq": seq, "ts": time.time(), "metrics": {"cpu": 5.0}}))
                await writer.samples(good.host_id, 1, good_sample, acked.append)
            await writer.call(lambda conn: None)
            writer.close()
        # The good host lost nothing, whatever its neighbour sent.
        assert acked == list(range(1, len(frame_list) + 1))
        conn = store.connect(cfg.db_path)
        try:
            assert conn.execute("SELECT samples_count FROM hosts WHERE id = ?", (good.host_id,)).fetchone()[0] == \
                len(frame_list)
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                while history.rollup_step(conn):
                    pass
            for sample in stored:
                engine.observe(bad.host_id, sample.ts, sample.series, time.time())
            engine.tick(time.time() + 86400)
            hosts = store.list_hosts(conn)
            metrics.render(hosts, metrics.ServerStats(0, 0, metrics.Histogram()), time.time()).encode("utf-8")
            bad_host = next(h for h in hosts if h.name == "bad")
            words = plotspec.host_metrics(plotting.available_series(bad_host))
            if words:
                spec = plotting.build_spec(conn, bad_host, words[:1], 3600.0, None, None, make_tiers(),
                                           ZoneInfo("UTC"), time.time())
                try:
                    charts.render(spec)
                except charts.NoData:
                    pass
        finally:
            conn.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(frames, min_size=1, max_size=4))
def test_arbitrary_frames_reach_everything_and_break_nothing(empty_database, frame_list):
    trio.run(run_pipeline, frame_list, empty_database)
