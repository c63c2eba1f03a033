"""Poison: one frame, row or value that used to kill the whole server (issue: "no agent can take the server down").

Each case checks what a user would notice: the server is still up, a good agent's samples after the poison are
committed, and a restart on the same database is clean.
"""
from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest
import trio
import trio.testing

from helpers import (BASE_TS, ack_reaching, add_host, hello_frame, make_settings, open_tls, read_db, receive_json,
                     sample_frame, server_certificate, upgrade)
from mbot import app, history, protocol, store
from mbot.config import Settings
from mbot.protocol import Sample, Samples
from mbot.writer import Writer


async def start(settings: Settings, nursery: trio.Nursery) -> app.Server:
    return await nursery.start(lambda task_status: app.serve(settings, server_certificate(settings),
                                                             handle_signals=False, task_status=task_status))


async def streaming(connect, settings: Settings, name: str, epoch: int = 1):
    """A good agent's connection: returns send(seq) that waits for the ack."""
    key = add_host(settings, name)
    ws = await connect(key.secret)
    await ws.send_message(hello_frame(epoch=epoch))
    await receive_json(ws)

    async def send(seq: int, **frame) -> None:
        await ws.send_message(sample_frame(seq, **frame))
        await ack_reaching(ws, seq)

    return ws, send


async def scrape(server: app.Server) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{server.metrics_port}/metrics")


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "data", metrics_port=0)


# --- the three frames of the audit ------------------------------------------------------------------------------


@pytest.mark.parametrize("poison", [
    {"cpu": 1, "dropped": 1e19},  # used to overflow SQLite INTEGER in the writer and end the root nursery
    {"cpu": 1, "dropped": 2**64},
    {"cpu": 1e300},
])
async def test_absurd_numbers_close_only_their_connection(server, settings, connect, poison):
    bad, _ = await streaming(connect, settings, "bad")
    _, good = await streaming(connect, settings, "good")
    await bad.send_message(json.dumps({"type": "sample", "seq": 1, "ts": time.time(), "metrics": poison}))
    await good(1)
    await good(2)
    assert read_db(settings, "SELECT name, samples_count FROM hosts ORDER BY name") == [("bad", 0), ("good", 2)]


async def test_a_timestamp_far_in_the_future_is_refused_and_the_server_restarts_clean(settings, connect, nursery,
                                                                                       server):
    bad, _ = await streaming(connect, settings, "bad")
    _, good = await streaming(connect, settings, "good")
    await bad.send_message(json.dumps({"type": "sample", "seq": 1, "ts": 1e19, "metrics": {"cpu": 1}}))
    await good(1)
    # The next rollup runs over everything stored; a restart runs it again at once.
    await server.writer.call(history.rollup_step)
    await server.aclose()
    again = await start(settings, nursery)
    assert read_db(settings, "SELECT count(*) FROM samples WHERE ts > 4e9") == [(0,)]
    await again.aclose()


async def test_a_lone_surrogate_in_a_label_is_cleaned_and_metrics_keep_working(server, settings, connect):
    _, good = await streaming(connect, settings, "good")
    ws, _ = await streaming(connect, settings, "odd")
    # json.dumps writes the lone surrogate as the escape "\ud800", which is valid JSON.
    await ws.send_message(json.dumps({"type": "sample", "seq": 1, "ts": time.time(), "metrics": {
        "disks": {"/\ud800": {"used": 1, "total": 2}}, "temps": {"a\nb\x1b[31m": 40}}}))
    await ack_reaching(ws, 1)
    await good(1)
    for _ in range(2):  # every later scrape too
        response = await scrape(server)
        assert response.status_code == 200
    assert 'disk="/\ufffd"' in response.text
    assert 'sensor="a\ufffdb\ufffd[31m"' in response.text
    (metrics,), = read_db(settings, "SELECT last_metrics FROM hosts WHERE name = 'odd'")
    assert list(json.loads(metrics)["disks"]) == ["/\ufffd"]


# --- poison already in the database (written by an older version) ------------------------------------------------


def plant(settings: Settings, host_id: int) -> None:
    """What the landed version could leave behind: a raw row from year 3e11 and a lone surrogate in the latest
    values, both of which killed the server again at every start."""
    conn = sqlite3.connect(settings.db_path)
    with conn:
        layout = conn.execute("INSERT INTO layouts (names) VALUES (?)", ('["cpu"]',)).lastrowid
        conn.execute("INSERT INTO samples (host_id, ts, seq, layout_id, vals) VALUES (?, ?, ?, ?, ?)",
                     (host_id, 1e19, 1, layout, store.pack_values([1.0])))
        conn.execute("UPDATE hosts SET last_metrics = ?, facts = ? WHERE id = ?",
                     ('{"cpu": 5, "disks": {"/\\ud800": {"used": 1, "total": 2}}}', "{not json", host_id))
    conn.close()


async def test_a_server_that_finds_poison_in_its_database_carries_on_and_says_so(settings, nursery, caplog):
    key = add_host(settings, "old")
    store.connect(settings.db_path).close()
    plant(settings, key.host_id)
    server = await start(settings, nursery)
    # The rollup's first steps run at start: wait until the watermark has passed the planted row.
    while int(read_db(settings, "SELECT coalesce((SELECT value FROM kv WHERE key = 'rollup.rowid'), 0)")[0][0]) < 1:
        await server.writer.next_commit()
    response = await scrape(server)
    assert response.status_code == 200
    assert 'mbot_isolated_failures_total{task="rollup"} 1' in response.text
    assert 'mbot_host_up{host="old"' in response.text
    assert any("left out of history" in r.getMessage() for r in caplog.records)
    await server.aclose()


async def test_good_samples_still_roll_up_after_a_poison_row(settings, nursery):
    key = add_host(settings, "old")
    plant(settings, key.host_id)
    server = await start(settings, nursery)
    good_key = add_host(settings, "good")
    stream = await open_tls(server.port)
    ws = await upgrade(nursery, stream, good_key.secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    for seq in range(1, 4):
        await ws.send_message(sample_frame(seq))
    await ack_reaching(ws, 3)
    while await server.writer.call(history.rollup_step):
        pass
    assert read_db(settings, "SELECT sum(count) FROM agg_1m WHERE host_id = ?", good_key.host_id) == [(3,)]
    await trio.aclose_forcefully(stream)
    await server.aclose()


# --- the writer: one item fails alone ----------------------------------------------------------------------------


def _samples(seq: int, **metrics) -> Samples:
    series = protocol.flatten(protocol.validate_metrics({"cpu": 5.0}))
    return Samples((Sample(seq=seq, ts=BASE_TS + seq, metrics={"cpu": 5.0, **metrics}, series=series),))


async def test_a_poison_item_fails_alone_and_the_rest_of_its_batch_commits(settings):
    """Built past the protocol's checks on purpose: whatever slips through one day must not cost the others."""
    hosts = [add_host(settings, name) for name in ("a", "b", "c")]
    writer = Writer(settings.db_path)
    hello = protocol.parse_agent_frame(hello_frame(epoch=1))
    acked: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    failed: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for key in hosts:
            await writer.hello(key.host_id, hello)
        writer.close()
    writer = Writer(settings.db_path)
    # Queued before the writer runs: one batch holds all three.
    await writer.samples(hosts[0].host_id, 1, _samples(1), acked["a"].append)
    await writer.samples(hosts[1].host_id, 1, _samples(1, dropped=1e19), acked["b"].append, failed.append)
    await writer.samples(hosts[2].host_id, 1, _samples(1), acked["c"].append)
    writer.close()
    await writer.run()
    assert acked == {"a": [1], "b": [], "c": [1]}
    assert len(failed) == 1 and isinstance(failed[0], OverflowError)
    assert writer.faults.counts["writer"] == 1
    assert read_db(settings, "SELECT name, last_seq, samples_count FROM hosts ORDER BY name") == [
        ("a", 1, 1), ("b", 0, 0), ("c", 1, 1)]


async def test_a_listener_that_raises_does_not_stop_the_writer(settings):
    key = add_host(settings, "a")
    writer = Writer(settings.db_path)

    class Broken:
        def on_hello(self, host_id, hello):
            raise RuntimeError("boom")

        def on_samples(self, host_id, samples):
            raise RuntimeError("boom")

    writer.listeners.append(Broken())
    acked: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.hello(key.host_id, protocol.parse_agent_frame(hello_frame(epoch=1)))
        for seq in (1, 2):
            await writer.samples(key.host_id, 1, _samples(seq), acked.append)
        await writer.call(lambda conn: None)
        writer.close()
    assert acked == [1, 2] and writer.faults.counts["alerting"] == 3


# --- /metrics survives what it cannot render ----------------------------------------------------------------------


async def test_metrics_leave_out_a_damaged_host_and_count_it(settings, nursery):
    server = await start(settings, nursery)
    fine, broken = add_host(settings, "fine"), add_host(settings, "broken")
    conn = sqlite3.connect(settings.db_path)
    with conn:  # an online host whose latest value /metrics cannot use: "used" missing
        conn.execute("UPDATE hosts SET last_metrics = ?, last_seen = ? WHERE id = ?",
                     ('{"ram": {"total": 1}}', time.time(), broken.host_id))
    conn.close()
    response = await scrape(server)
    assert response.status_code == 200
    assert f'mbot_host_up{{host="fine",key="{fine.key_id}"}}' in response.text
    assert 'host="broken"' not in response.text
    assert 'mbot_isolated_failures_total{task="metrics"} 1' in response.text
    await server.aclose()


async def test_alert_messages_wait_out_a_failing_store_read(settings, nursery, monkeypatch):
    """Alerting reads hosts before it speaks: a read that fails must neither end the task nor lose the message."""
    from mbot.alerting import Alerting
    from mbot.alerts import AlertRule
    from mbot.store import Database

    key = add_host(settings, "box1", owner=42)
    db, writer = Database(settings.db_path), Writer(settings.db_path)
    nursery.start_soon(writer.run)
    alerting = Alerting(db, writer)
    sent: list[tuple[int, str]] = []
    alerting.set_notify(lambda owner, text, event: sent.append((owner, text)))
    await nursery.start(alerting.run)
    await alerting.set_rule(AlertRule(key.host_id, "cpu", 50.0))
    real_read, failing = db.read, [True]

    async def read(fn, *args):
        if failing and fn.__name__ == "_hosts_by_id":
            failing.clear()
            raise sqlite3.OperationalError("disk I/O error")
        return await real_read(fn, *args)

    monkeypatch.setattr(db, "read", read)
    alerting.on_samples(key.host_id, list(_samples(1).items))  # cpu 5: nothing yet
    sample = protocol.parse_agent_frame(sample_frame(2, cpu=99.0)).items[0]
    alerting.on_samples(key.host_id, [sample])
    with trio.fail_after(10):
        while not sent:
            alerting.clock_moved()  # a wake-up: the task tries the delivery again
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert sent[0][0] == 42 and sent[0][1].startswith("box1: CPU 99")
    assert writer.faults.counts["alerting"] == 1
    writer.close()
