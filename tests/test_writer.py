"""The single writer against a real sqlite file."""
from __future__ import annotations

import json

import trio

from helpers import BASE_TS, add_host, read_db
from mbot import protocol, store
from mbot.writer import Writer


def samples(*seqs: int, cpu: float = 5.0) -> protocol.Samples:
    return protocol.Samples(tuple(
        protocol.parse_agent_frame(json.dumps({"type": "sample", "seq": s, "ts": BASE_TS + s, "metrics": {"cpu": cpu}}))
        .items[0] for s in seqs))


def hello(epoch: int) -> protocol.Hello:
    return protocol.parse_agent_frame(json.dumps({"type": "hello", "v": 1, "agent": "t", "epoch": epoch}))


async def test_close_commits_everything_queued(settings, nursery):
    host = add_host(settings, "box1")
    writer = Writer(settings.db_path)
    finished = trio.Event()

    async def run():
        await writer.run()
        finished.set()

    acked: list[int] = []
    nursery.start_soon(run)
    assert await writer.hello(host.host_id, hello(9)) == 0
    for seq in range(1, 101):
        await writer.samples(host.host_id, 9, samples(seq), acked.append)
    writer.close()  # right away: 100 samples are still queued
    await finished.wait()
    assert acked[-1] == 100 and acked == sorted(acked)
    assert read_db(settings, "SELECT count(*), min(seq), max(seq) FROM samples") == [(100, 1, 100)]
    assert read_db(settings, "SELECT epoch, last_seq, samples_count FROM hosts") == [(9, 100, 100)]


async def test_failed_call_does_not_lose_the_batch(settings, nursery):
    host = add_host(settings, "box1")
    writer = Writer(settings.db_path)
    nursery.start_soon(writer.run)
    await writer.hello(host.host_id, hello(1))

    def boom(conn):
        conn.execute("INSERT INTO kv VALUES ('x', 'y')")
        raise ValueError("no")

    acked: list[int] = []
    await writer.samples(host.host_id, 1, samples(1), acked.append)
    try:
        await writer.call(boom)
    except ValueError:
        pass
    else:
        raise AssertionError("the call's error must reach its caller")
    await writer.samples(host.host_id, 1, samples(2), acked.append)
    assert await writer.call(lambda conn: conn.execute("SELECT count(*) FROM samples").fetchone()[0]) == 2
    assert read_db(settings, "SELECT count(*) FROM kv") == [(0,)]  # the failed call was rolled back alone
    writer.close()


async def test_each_set_of_series_names_has_its_own_layout(settings, nursery):
    # Layouts are found by a digest of the names joined by NUL; names that would join alike (only possible with a
    # NUL inside one, which cleaned labels never hold) must still get layouts of their own.
    host = add_host(settings, "box1")
    writer = Writer(settings.db_path)
    nursery.start_soon(writer.run)
    await writer.hello(host.host_id, hello(1))
    name_sets = [{"a": 1.0, "b": 2.0}, {"a\0b": 3.0}, {"a": 4.0, "b": 5.0}, {"cpu": 6.0}, {"a\0b": 7.0}]
    for seq, series in enumerate(name_sets, start=1):
        sample = protocol.Sample(seq=seq, ts=BASE_TS + seq, metrics={}, series=series)
        await writer.samples(host.host_id, 1, protocol.Samples((sample,)), lambda seq: None)
    await writer.call(lambda conn: None)
    rows = read_db(settings, "SELECT l.names, s.vals FROM samples s JOIN layouts l ON l.id = s.layout_id "
                             "ORDER BY s.seq")
    assert [(json.loads(names), store.pack_values(list(series.values())) == vals)
            for (names, vals), series in zip(rows, name_sets)] == [(list(series), True) for series in name_sets]
    assert read_db(settings, "SELECT count(*) FROM layouts") == [(3,)]
    writer.close()
