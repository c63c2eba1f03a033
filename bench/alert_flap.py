"""A flapping host for an hour: what reaches the chat (issue 16: messages per host-hour).

(The hour, then 31 minutes of the host staying: what its end says is counted too.)

    .venv/bin/python bench/alert_flap.py                   # this checkout's server, about 10 s
    .venv/bin/python bench/alert_flap.py --repo /work/main # another checkout's (the behaviour before)

The real server in this process (app.serve) with the fake Bot API server (tests/fakebot.py), and one host whose agent
(a bare protocol client: what is measured is the server) comes back with a hello and a sample, then is gone again:
offline every 2 minutes, 30 times in an hour. Time is the server's injected clock, moved forward
instead of waited for. Printed: the Bot API calls to the owner's chat by method, and the messages that notify
(new messages; edits do not) and that start a thread (new messages that are no reply), per host-hour.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def flap(cycles: int, group_wait: float, verbose: bool) -> Counter[str]:
    import trio

    from fakebot import FakeBot
    from helpers import ack_reaching, certificate, hello_frame, make_settings, open_tls, receive_json, sample_frame, upgrade
    from mbot import app
    from mbot.telegram.outbox import Outbox, RateLimiter

    user = 1001
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            fake = FakeBot()
            await nursery.start(fake.serve)
            settings = make_settings(Path(tmp) / "data")
            # The tests' settings send each alert at once: the server's default wait here (an older checkout's
            # Settings may not have it).
            wait = {"alert_group_wait": group_wait} if "alert_group_wait" in {
                f.name for f in dataclasses.fields(settings)} else {}
            settings = dataclasses.replace(settings, bot_token=fake.token, telegram_api_url=fake.url,
                                           allowed_users=(user,), **wait)
            outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
            server = await nursery.start(lambda task_status: app.serve(
                settings, certificate(settings), handle_signals=False, outbox=outbox, clock=clock,
                task_status=task_status))
            since = len(fake.sent)
            fake.push_message(user, "/newkey box1")
            key = await fake.wait_for(lambda c: "AGENT_SECRET=" in (c.params.get("text") or ""), since=since)
            secret = re.search(r"AGENT_SECRET=(\S+)", key.params["text"]).group(1)
            await fake.wait_for("sendDocument", since=since)
            await fake.wait_for(lambda c: c.method == "sendDocument" and c.params.get("caption", "").startswith(
                "Settings"), since=since)
            start = len(fake.sent)
            seq = 0
            for _ in range(cycles):
                stream = await open_tls(server.port)
                ws = await upgrade(nursery, stream, secret)
                await ws.send_message(hello_frame(epoch=1))
                await receive_json(ws)
                seq += 1  # back: a hello and a sample (the agent's clock is real time, as the server expects)
                await ws.send_message(sample_frame(seq, ts=time.time()))
                await ack_reaching(ws, seq)
                await trio.aclose_forcefully(stream)
                sent = len(fake.sent)
                # Gone until the next cycle: the offline alert comes after 30 s of silence (and, since storms are
                # folded, MBOT_ALERT_GROUP_WAIT later). Time moves in steps, each followed by a short real wait for
                # the alert, so that the step that makes it and the one that ends its group wait are apart.
                moved = 0.0
                while moved < 120:
                    step = 35.0 if moved == 0 else 5.0  # the first past the offline delay
                    clock.offset += step
                    moved += step
                    server.alerting.clock_moved()
                    with trio.move_on_after(0.15):
                        await fake.wait_for(lambda c: "is offline (last seen" in (c.params.get("text") or ""),
                                            since=sent)
                        break
                clock.offset += 120 - moved
            # The last return, and everything it says (a "back online" reply, or once it has been steady for 30
            # minutes, that it is steady again): it stays for 31 minutes of server time, its offline delay made an
            # hour long first, so that its silence in this one jump is not an outage.
            fake.push_message(user, "/setalert box1 offline 1h")
            await fake.wait_for(lambda c: "Alert set" in (c.params.get("text") or ""), since=len(fake.sent))
            stream = await open_tls(server.port)
            ws = await upgrade(nursery, stream, secret)
            await ws.send_message(hello_frame(epoch=1))
            await receive_json(ws)
            await trio.sleep(0.5)  # the delivery task's turn (what it sends is counted below, not waited for)
            clock.offset += 31 * 60
            server.alerting.clock_moved()
            await trio.sleep(0.5)
            await trio.aclose_forcefully(stream)
            counts: Counter[str] = Counter()
            latest = None  # the latest thread's message: a reply ("back online", "steady") must answer that one
            for call in fake.sent[start:]:
                if call.params.get("chat_id") != user or (call.params.get("text") or "").startswith("Alert set on"):
                    continue  # (the reply to the bench's own /setalert is no alert)
                counts[call.method] += 1
                if call.method == "sendMessage" and not call.params.get("reply_parameters"):
                    latest = call.result["message_id"]
                reply = (call.params.get("reply_parameters") or {}).get("message_id")
                if reply is not None and reply != latest:
                    counts["replies out of order"] += 1
                if call.method in ("sendMessage", "sendPhoto"):
                    counts["notifying"] += 1
                    if not call.params.get("reply_parameters"):
                        counts["new threads"] += 1
            if verbose:
                for call in fake.sent[start:]:
                    if call.params.get("chat_id") == user and call.method.startswith(("send", "edit")):
                        print(f"  {call.method}: {call.params.get('text') or call.params.get('caption')}")
            await server.aclose()
            nursery.cancel_scope.cancel()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose mbot to run (default: this one)")
    parser.add_argument("--cycles", type=int, default=30, help="offline/online cycles (30: an hour)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print what the chat got")
    parser.add_argument("--group-wait", type=float, default=30.0,
                        help="MBOT_ALERT_GROUP_WAIT in seconds (default: 30, the server's default)")
    args = parser.parse_args()
    sys.path[:0] = [str(args.repo.resolve()), str(ROOT / "tests")]
    import trio

    counts = trio.run(flap, args.cycles, args.group_wait, args.verbose)
    hours = args.cycles / 30
    print(f"{args.repo}: a host offline and back every 2 minutes, {args.cycles} times ({hours:g} host-hour)")
    for name, count in sorted(counts.items()):
        print(f"  {name:>20}: {count / hours:6.1f} per host-hour")


if __name__ == "__main__":
    main()
