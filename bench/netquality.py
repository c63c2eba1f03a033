"""Link quality benchmark: what continuous RTT probing (mbot/linkquality.py) costs the server per agent.

    .venv/bin/python bench/netquality.py --agents 1000 --every 1 --duration 20
    .venv/bin/python bench/netquality.py --stability     # stability at 1 ms and 10 ms beside ping; speed test
                                                         # beside a raw TLS copy

N simulated agents (real TLS WebSockets in this process; their WebSocket library answers pings by itself, like the
real agent's) connect to the real server in its own process, send their hello and then stay idle, so that the only
work left is probing. Two rounds, one server each: probing off, then every EVERY seconds per connection. The
difference in the server's CPU time, divided by the probes it sent, is the cost of one probe; at the default period
(10 s) one agent costs that / 10 per second. Prints both rounds, the cost per probe and per agent, and what 5,000
agents at the default period would take. The simulated agents share this machine's cores with the server: CPU
figures are the server process's own CPU time, not wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio
import trio_websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mbot import service, store  # noqa: E402
from mbot.linkquality import LinkPolicy  # noqa: E402

DEFAULT_EVERY = LinkPolicy().every


def serve(data: str, port: int, every: float) -> None:
    """The server process: mbot's own serve(), with the probe period set on its hub before any agent connects."""
    from mbot import app, tls
    from mbot.config import load_settings

    settings = load_settings({"MBOT_DATA_DIR": data, "PORT": str(port), "MBOT_HOST": "127.0.0.1",
                              "MBOT_PUBLIC_HOST": "127.0.0.1", "MBOT_WATCH_SELF": "0", "MBOT_LOG_LEVEL": "WARNING"})
    cert = tls.ensure_certificate(Path(data), ["127.0.0.1"])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lambda task_status: app.serve(settings, cert, task_status=task_status))
            server.hub.link_policy = LinkPolicy(every=every)
            print("ready", flush=True)

    trio.run(main)


async def agent(secret: str, port: int, connected: list[int], errors: list[int], stop: trio.Event,
                connecting: trio.CapacityLimiter) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        async with trio.open_nursery() as nursery:
            async with connecting:
                with trio.fail_after(120):
                    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx,
                                                                 https_compatible=True)
                    ws = await trio_websocket.wrap_client_stream(
                        nursery, stream, "127.0.0.1", "/agent",
                        extra_headers=[(b"Authorization", f"Bearer {secret}".encode())])
                    await ws.send_message(json.dumps({"type": "hello", "v": 1, "agent": "bench", "epoch": 1,
                                                      "hostname": "sim", "interval": 3600}))
                    await ws.get_message()
            connected[0] += 1
            await stop.wait()
            nursery.cancel_scope.cancel()
    except* (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError, OSError, trio.BrokenResourceError,
             trio.TooSlowError):
        errors[0] += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def round_(args: argparse.Namespace, data: Path, secrets: list[str], every: float) -> tuple[float, int]:
    """One server, every agent connected and idle: the server's CPU (% of one core) over the measured window."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(data), str(port), str(every)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    proc = psutil.Process(server.pid)
    try:
        assert server.stdout is not None
        await trio.to_thread.run_sync(server.stdout.readline)  # "ready"
        connected, errors, stop = [0], [0], trio.Event()
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(args.connect_concurrency)
            for secret in secrets:
                nursery.start_soon(agent, secret, port, connected, errors, stop, limiter)
            while connected[0] + errors[0] < len(secrets):
                await trio.sleep(0.2)
            await trio.sleep(max(2.0, 1.5 * every if every < 1e6 else 2.0))  # past every first probe
            cpu0, t0 = proc.cpu_times(), time.perf_counter()
            await trio.sleep(args.duration)
            cpu1, elapsed = proc.cpu_times(), time.perf_counter() - t0
            stop.set()
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed * 100
        return cpu, connected[0]
    finally:
        server.terminate()
        server.wait(30)


async def run(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="mbot-bench-net-"))
    conn = store.connect(data / "mbot.sqlite3")
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        secrets = [service.new_key(conn, f"sim{i}").secret for i in range(args.agents)]
    conn.close()
    idle, n0 = await round_(args, data, secrets, 1e9)
    probing, n1 = await round_(args, data, secrets, args.every)
    probes_per_s = n1 / args.every
    per_probe = (probing - idle) / 100 / probes_per_s  # CPU seconds per probe
    per_agent = per_probe / DEFAULT_EVERY
    print(f"agents={args.agents} (connected {n0} / {n1}) window={args.duration:g}s")
    print(f"server CPU, agents idle, probing off: {max(0.0, idle):.1f} % of one core")
    print(f"server CPU, probing every {args.every:g} s ({probes_per_s:.0f} probes/s): {probing:.1f} % of one core")
    print(f"cost of one probe: {per_probe * 1e6:.1f} us of server CPU")
    print(f"at the default period ({DEFAULT_EVERY:g} s): {per_agent * 1e6:.2f} us/s per agent = "
          f"{per_agent * 100 * 1000:.2f} % of a core per 1,000 agents, {per_agent * 100 * 5000:.2f} % for 5,000")


async def streamer(port: int, secret: str, latencies: list[float]) -> None:
    try:
        await _stream(port, secret, latencies)
    except* trio_websocket.ConnectionClosed:
        pass  # the server stopped


async def _stream(port: int, secret: str, latencies: list[float]) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    async with trio.open_nursery() as nursery:
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx, https_compatible=True)
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", "/agent",
                                                     extra_headers=[(b"Authorization", f"Bearer {secret}".encode())])
        await ws.send_message(json.dumps({"type": "hello", "v": 1, "agent": "bench", "epoch": 1, "interval": 0.1}))
        await ws.get_message()
        sent: dict[int, float] = {}

        async def acks() -> None:
            while True:
                seq = json.loads(await ws.get_message())["seq"]
                now = time.perf_counter()
                for s in [s for s in sent if s <= seq]:
                    latencies.append(now - sent.pop(s))

        nursery.start_soon(acks)
        seq = 0
        while True:
            seq += 1
            sent[seq] = time.perf_counter()
            await ws.send_message(json.dumps({"type": "sample", "seq": seq, "ts": time.time(),
                                              "metrics": {"cpu": 1.0}}))
            await trio.sleep(0.1)


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no acks"
    ordered = sorted(latencies)
    return (f"{len(ordered)} samples, p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, "
            f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms")


async def raw_tls_copy(cert, seconds: float) -> float:
    """Bytes/s through a plain trio TLS stream over loopback (no WebSocket, no mbot): the physical limit here."""
    from mbot import tls

    received = [0]

    async def sink(stream: trio.SSLStream) -> None:
        while data := await stream.receive_some(1 << 20):
            received[0] += len(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_ssl_over_tcp, sink, 0, tls.server_context(cert))
        port = listeners[0].transport_listener.socket.getsockname()[1]
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx)
        chunk = os.urandom(64 * 1024)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            await stream.send_all(chunk)
        await stream.aclose()
        elapsed = time.perf_counter() - start
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    return received[0] / elapsed


async def stability_round(args: argparse.Namespace) -> None:
    """The stability test at 1 ms against the real agent in its own process: probes/s achieved, the RTT floor,
    the server's CPU per probe; beside `ping -i 0.01 127.0.0.1` (ICMP, the kernel alone) in the same run."""
    from mbot import app, stability, tls
    from mbot.config import load_settings

    data = Path(tempfile.mkdtemp(prefix="mbot-bench-stab-"))
    settings = load_settings({"MBOT_DATA_DIR": str(data), "PORT": "0", "MBOT_HOST": "127.0.0.1",
                              "MBOT_PUBLIC_HOST": "127.0.0.1", "MBOT_WATCH_SELF": "0"})
    from mbot.config import prepare_data_dir
    prepare_data_dir(settings)
    cert = tls.ensure_certificate(data, ["127.0.0.1"])
    conn = store.connect(settings.db_path)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        key = service.new_key(conn, "box1", 0)
        other = service.new_key(conn, "box2", 0)
    conn.close()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: app.serve(settings, cert, handle_signals=False,
                                                                   task_status=task_status))
        env = {**os.environ, "AGENT_SERVER_IP": "127.0.0.1", "AGENT_PORT": str(server.port),
               "AGENT_SECRET": key.secret, "AGENT_FINGERPRINT": server.fingerprint, "AGENT_INTERVAL": "5",
               "HOME": str(data)}
        agent = subprocess.Popen([sys.executable, str(ROOT / "agent" / "mbot_agent.py")], env=env, cwd=data,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with trio.fail_after(60):
                await server.hub.wait_until(1, connected=True)
            # Another host streaming a sample every 100 ms: does the test delay its samples (send -> ack)?
            latencies: list[float] = []
            nursery.start_soon(streamer, server.port, other.secret, latencies)
            await trio.sleep(3)
            print(f"box2's send->ack before any test: {summary(latencies)}")
            for interval in args.stability_intervals:
                latencies.clear()
                spec = stability.StabilitySpec("box1", interval, args.stability_duration)
                run = stability.StabilityRun(spec, start=trio.current_time())
                cpu0, agent0 = time.process_time(), psutil.Process(agent.pid).cpu_times()
                await server.hub.stability(1, run, lambda run, now: None, 3600)
                cpu, agent1 = time.process_time() - cpu0, psutil.Process(agent.pid).cpu_times()
                agent_cpu = agent1.user + agent1.system - agent0.user - agent0.system
                f = run.figures()
                print(f"stability every {interval * 1000:g} ms for {spec.duration:g} s: {f.sent} probes sent "
                      f"({f.rate:.0f}/s of {1 / interval:.0f}/s asked), skipped {f.skipped}, lost {f.lost}; RTT "
                      f"min {min(r for _, r in run.answered_points()):.3f} ms p50 {f.p50:.3f} p95 {f.p95:.3f} "
                      f"max {f.max:.3f} jitter {f.jitter:.3f} ms; server CPU {cpu / max(f.sent, 1) * 1e6:.0f} us "
                      f"per probe ({100 * cpu / f.elapsed:.0f} % of a core); the agent's CPU {100 * agent_cpu / f.elapsed:.0f} % "
                      "of a core")
                print(f"  box2's send->ack meanwhile: {summary(latencies)}")
            server.hub.speed_seconds = args.speed_seconds
            await trio.sleep(1)
            latencies.clear()
            cpu0 = time.process_time()
            down, up = await server.hub.speedtest(1)
            cpu = time.process_time() - cpu0
            for result in (down, up):
                print(f"speed test {result.direction if result else '?'}: "
                      + (f"{result.rate * 8 / 1e6:.0f} Mbit/s ({result.bytes / 1e6:.0f} MB in {result.seconds:.1f} s)"
                         if result else "no answer"))
            print(f"  server CPU {100 * cpu / (2 * args.speed_seconds):.0f} % of a core; box2's send->ack meanwhile: "
                  f"{summary(latencies)}")
            print(f"raw TLS socket copy on loopback, one process, {args.speed_seconds:g} s: "
                  f"{await raw_tls_copy(cert, args.speed_seconds) * 8 / 1e6:.0f} Mbit/s")
        finally:
            agent.terminate()
            agent.wait(10)
        ping = await trio.run_process(["ping", "-q", "-c", "100", "-i", "0.01", "127.0.0.1"], capture_stdout=True,
                                      check=False)
        print("ping -c 100 -i 0.01 127.0.0.1:", ping.stdout.decode().strip().splitlines()[-1])
        await server.aclose()
        nursery.cancel_scope.cancel()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--every", type=float, default=1.0, help="probe period in the measured round (s)")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--stability", action="store_true", help="the stability test's round instead")
    parser.add_argument("--stability-intervals", type=float, nargs="+", default=[0.001, 0.01])
    parser.add_argument("--stability-duration", type=float, default=5.0)
    parser.add_argument("--speed-seconds", type=float, default=5.0, help="each way, in the --stability round")
    random.seed(1)
    args = parser.parse_args()
    trio.run(stability_round if args.stability else run, args)


if __name__ == "__main__":
    main()
