"""Bot benchmark: updates handled per second and update->reply latency, with 100 online hosts.

    .venv/bin/python bench/bot.py --updates 2000

Runs the real server (real TLS, real sqlite) with 100 connected agents (bare protocol clients, one per host, each
host owned by its own Telegram user) and the tests' fake Bot API server over HTTP. Users send /status NAME and
/hosts; the clock runs from the update being queued at the fake server to the reply arriving there (long poll,
routing, sqlite read, rendering, outbox, HTTP). Two runs: the outbox at Telegram's real limits (30 messages/s in
all), and with the limits lifted, which shows the bot's own capacity.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakebot import FakeBot  # noqa: E402
from helpers import certificate, hello_frame, make_settings, open_tls, receive_json, sample_frame, upgrade  # noqa: E402
from mbot import app  # noqa: E402
from mbot.telegram.outbox import Outbox, RateLimiter  # noqa: E402

HOSTS = 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_once(updates: int, outbox: Outbox, label: str) -> None:
    data = Path(tempfile.mkdtemp(prefix="mbot-bench-bot-"))
    fake = FakeBot()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        users = list(range(10_000, 10_000 + HOSTS))
        # The bot is closed by default: the benchmark's users are ALLOWED_USERS.
        settings = make_settings(data, bot_token=fake.token, telegram_api_url=fake.url, allowed_users=tuple(users))
        server = await nursery.start(lambda task_status: app.serve(
            settings, certificate(settings), handle_signals=False, outbox=outbox, task_status=task_status))
        streams = []
        for i, user in enumerate(users):
            fake.push_message(user, f"/newkey host{i}")
        # Setting up: each /newkey answers with the key, the agent file and a .env; wait until all are out.
        await fake.wait_for(lambda c: c.method == "sendMessage" and "host99" in c.params["text"], timeout=120)
        while outbox.depth:  # a benchmark may poll: nothing else says when the outbox is empty
            await trio.sleep(0.1)
        secrets = {c.params["chat_id"]: re.search(r"AGENT_SECRET=(\S+)", c.params["text"]).group(1)
                   for c in fake.calls("sendMessage") if "AGENT_SECRET" in c.params["text"]}
        for user in users:
            stream = await open_tls(server.port)
            streams.append(stream)
            ws = await upgrade(nursery, stream, secrets[user])
            await ws.send_message(hello_frame())
            await receive_json(ws)
            await ws.send_message(sample_frame(1, cpu=50))
        assert len(server.hub.connections) == HOSTS

        pushed: dict[int, float] = {}
        latencies: list[float] = []
        done = trio.Event()
        base = len(fake.sent)

        async def collect() -> None:
            index = base
            while len(latencies) < updates:
                call = await fake.wait_for(lambda c: c.method == "sendMessage", since=index, timeout=600)
                index = fake.sent.index(call) + 1
                chat = call.params["chat_id"]
                latencies.append(time.perf_counter() - pushed.pop(chat))
            done.set()

        nursery.start_soon(collect)
        started = time.perf_counter()
        # Each user waits for its reply before asking again, as a person would; all users at once.
        async def user_loop(user: int, index: int, count: int) -> None:
            for n in range(count):
                text = f"/status host{index}" if n % 2 == 0 else "/hosts"
                pushed[user] = time.perf_counter()
                fake.push_message(user, text)
                while user in pushed:
                    await fake._changed_wait()

        async with trio.open_nursery() as users_nursery:
            for index, user in enumerate(users):
                users_nursery.start_soon(user_loop, user, index, updates // HOSTS)
        await done.wait()
        elapsed = time.perf_counter() - started
        print(f"{label}: {len(latencies)} updates from {HOSTS} users in {elapsed:.1f} s = "
              f"{len(latencies) / elapsed:.1f} updates/s; update->reply p50={percentile(latencies, 0.5) * 1000:.0f} ms "
              f"p99={percentile(latencies, 0.99) * 1000:.0f} ms")
        for stream in streams:
            await trio.aclose_forcefully(stream)
        await server.aclose()
        nursery.cancel_scope.cancel()


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    await run_once(args.updates, Outbox(limiter=RateLimiter(per_chat=0.0001, per_group=0.0001, global_rate=1e6)),
                   "bot capacity (no Telegram limits)")
    await run_once(min(args.updates, 600), Outbox(), "at Telegram's limits (30 msg/s overall)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=2000)
    trio.run(main, parser.parse_args())
