"""/status for a user with 50 hosts shared with them: update -> reply time through the fake Bot API.

    .venv/bin/python bench/shared_status.py [--shared 50] [--others 2000] [--runs 50]

The real server (real TLS, real sqlite in a temporary directory) with `--others` hosts of other users besides the
`--shared` hosts that 10 owners shared with one viewer (as /share links do: a host_roles row each), every shared host
online with a sample from a bare protocol client. The viewer sends /status `--runs` times, one after the other; the
clock runs from the update being queued at the fake server to the reply arriving there (long poll, routing, the
role query, rendering, outbox, HTTP). The bar (issue 17): under 0.5 s.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakebot import FakeBot  # noqa: E402
from helpers import certificate, hello_frame, make_settings, open_tls, receive_json, sample_frame, upgrade  # noqa: E402
from mbot import app, service, store  # noqa: E402
from mbot.telegram.outbox import Outbox, RateLimiter  # noqa: E402

VIEWER = 500
OWNERS = range(1000, 1010)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def prepare(settings, shared: int, others: int) -> list[str]:
    """The hosts and roles, straight into the database before the server starts: the secrets of the shared ones."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    conn = store.connect(settings.db_path)
    store.migrate(conn)
    secrets = []
    with store.transaction(conn):
        for i in range(shared):
            owner = OWNERS[i % len(OWNERS)]
            key = service.new_key(conn, f"shared{i}", owner)
            store.grant_role(conn, key.host_id, VIEWER, "viewer" if i % 2 else "operator", owner, time.time())
            secrets.append(key.secret)
        for i in range(others):
            service.new_key(conn, f"other{i}", 2000 + i % 200)
    conn.close()
    return secrets


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    data = Path(tempfile.mkdtemp(prefix="mbot-bench-shared-"))
    fake = FakeBot()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        settings = make_settings(data, bot_token=fake.token, telegram_api_url=fake.url,
                                 allowed_users=(OWNERS[0], VIEWER))
        secrets = prepare(settings, args.shared, args.others)
        outbox = Outbox(limiter=RateLimiter(per_chat=0.0001, per_group=0.0001, global_rate=1e6))
        server = await nursery.start(lambda task_status: app.serve(
            settings, certificate(settings), handle_signals=False, outbox=outbox, task_status=task_status))
        streams = []
        for secret in secrets:
            stream = await open_tls(server.port)
            streams.append(stream)
            ws = await upgrade(nursery, stream, secret)
            await ws.send_message(hello_frame())
            await receive_json(ws)
            await ws.send_message(sample_frame(1, cpu=50))
        while server.writer.committed_samples < len(secrets):
            await server.writer.next_commit()

        latencies = []
        for _ in range(args.runs):
            since = len(fake.sent)
            started = time.perf_counter()
            fake.push_message(VIEWER, "/status")
            reply = await fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == VIEWER,
                                        since=since, timeout=30)
            latencies.append(time.perf_counter() - started)
        text = reply.params["text"]
        assert text.count("👥 shared") == args.shared and "other" not in text, text[:300]
        print(f"/status of a viewer with {args.shared} shared hosts ({args.others} other hosts on the server), "
              f"{args.runs} runs: update->reply p50={percentile(latencies, 0.5) * 1000:.0f} ms "
              f"p99={percentile(latencies, 0.99) * 1000:.0f} ms max={max(latencies) * 1000:.0f} ms "
              f"(bar: 500 ms) {'OK' if max(latencies) < 0.5 else 'OVER'}")
        for stream in streams:
            await trio.aclose_forcefully(stream)
        await server.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=int, default=50)
    parser.add_argument("--others", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=50)
    trio.run(main, parser.parse_args())
