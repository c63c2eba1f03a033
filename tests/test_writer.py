"""The single writer against a real sqlite file."""
from __future__ import annotations

import json

import trio

from helpers import BASE_TS, add_host, read_db
from mbot import protocol
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
