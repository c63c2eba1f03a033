"""`python -m mbot ...` as a user runs it: real processes, real files."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from helpers import (ROOT, ack_reaching, add_host, certificate, hello_frame, make_settings, open_tls, read_db, receive_json,
                     sample_frame, upgrade)
from mbot import plotspec, protocol


def mbot(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MBOT_DATA_DIR": str(data_dir), "MBOT_PUBLIC_HOST": "127.0.0.1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mbot", *args], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=60)


def test_newkey_hosts_fingerprint(tmp_path, cli):
    data_dir = tmp_path / "data"
    done = mbot(data_dir, "newkey", "box1")  # a real process: its stderr is the log a user would see
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert lines["AGENT_SERVER_IP"] == "127.0.0.1"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", lines["AGENT_SECRET"])
    # The reads that follow run in this process (the same main()): no interpreter start each.
    fingerprint = cli("fingerprint")[1].strip()
    assert lines["AGENT_FINGERPRINT"] == fingerprint and re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    # The secret is printed once and stored nowhere, not even in the log.
    assert lines["AGENT_SECRET"] not in done.stderr
    assert lines["AGENT_SECRET"].encode() not in (data_dir / "mbot.sqlite3").read_bytes()

    code, out, _ = cli("hosts")
    assert code == 0
    assert out.startswith("box1 offline, never seen, 0 samples")
    listed = json.loads(cli("hosts", "--json")[1])
    assert [(h["name"], h["online"], h["samples"]) for h in listed] == [("box1", False, 0)]


def test_newkey_refuses_bad_and_duplicate_names(cli):
    code, _, err = cli("newkey", "no spaces allowed")
    assert code == 1 and "1-32 characters" in err
    assert cli("newkey", "box1")[0] == 0
    code, _, err = cli("newkey", "box1")
    assert code == 1 and "already" in err
    # Names are unique per owner, not globally.
    assert cli("newkey", "box1", "--owner", "42")[0] == 0


@pytest.mark.parametrize("env, variable", [({"PORT": "abc"}, "PORT"), ({"MBOT_DATA_DIR": "/proc/nope"}, "MBOT_DATA_DIR")])
def test_bad_setting_is_one_line_and_exit_2(tmp_path, env, variable):
    done = mbot(tmp_path, "hosts", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"mbot: {variable}: ")


def test_missing_openssl_is_a_clear_error(tmp_path):
    done = mbot(tmp_path, "fingerprint", env={"PATH": str(tmp_path)})
    assert done.returncode == 1
    assert "openssl" in done.stderr and "Traceback" not in done.stderr


async def test_sigterm_closes_agents_commits_and_exits_0(tmp_path, nursery):
    env = {**os.environ, "MBOT_DATA_DIR": str(tmp_path), "MBOT_PUBLIC_HOST": "127.0.0.1", "PORT": "0",
           "MBOT_HOST": "127.0.0.1"}
    # What newkey leaves (its own output: test_newkey_hosts_fingerprint), without an interpreter start for it.
    settings = make_settings(tmp_path)
    certificate(settings)
    secret = add_host(settings, "box1").secret
    process = await trio.lowlevel.open_process([sys.executable, "-m", "mbot"], env=env, cwd=ROOT,
                                               stderr=subprocess.PIPE)
    log = b""
    try:
        with trio.fail_after(30):
            while not (match := re.search(rb"agents on 127\.0\.0\.1:(\d+)", log)):
                log += await process.stderr.receive_some()
        port = int(match.group(1))
        stream = await open_tls(port)
        ws = await upgrade(nursery, stream, secret)
        # A 0.1 s interval: the server process acks at most once per three of them (AckPolicy; conftest's acks at
        # once are for servers in this process), so the ack of the 20th comes within 0.3 s, not 3 s.
        await ws.send_message(hello_frame(interval=0.1))
        await receive_json(ws)
        for seq in range(1, 21):
            await ws.send_message(sample_frame(seq))
        await ack_reaching(ws, 20)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            code = await process.wait()
            while chunk := await process.stderr.receive_some():
                log += chunk
        assert code == 0, log.decode()
        with pytest.raises(Exception) as closed:
            await ws.get_message()
        assert getattr(closed.value, "reason").code == protocol.CLOSE_RESTART
        await trio.aclose_forcefully(stream)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
    assert b"Traceback" not in log
    assert read_db(settings, "SELECT count(*) FROM samples") == [(20,)]


async def test_plot_writes_the_chart_the_bot_would_send(tmp_path, nursery, cli):
    import time

    from mbot import app

    data_dir = tmp_path / "data"  # the `cli` fixture's
    settings = make_settings(data_dir)
    running = await nursery.start(lambda task_status: app.serve(settings, certificate(settings),
                                                                handle_signals=False, task_status=task_status))
    secret = add_host(settings, "box1").secret
    stream = await open_tls(running.port)
    ws = await upgrade(nursery, stream, secret)
    await ws.send_message(hello_frame())
    await receive_json(ws)
    now = time.time()
    for seq in range(1, 11):
        await ws.send_message(sample_frame(seq, cpu=seq * 5, ts=now - 300 + seq * 20))
    await ack_reaching(ws, 10)
    await trio.aclose_forcefully(stream)
    await running.aclose()

    out = tmp_path / "chart.png"
    done = await trio.to_thread.run_sync(lambda: mbot(data_dir, "plot", "box1", "cpu;ram", "1h", "--limit", "80",
                                                      "-o", str(out)))
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1280
    # The refusals in this process (the same main(), no second interpreter start); in a thread, as main() runs trio.
    code, _, err = await trio.to_thread.run_sync(lambda: cli("plot", "box1", "gpu", "1h", "-o", str(out)))
    assert code == 2 and "Metrics of this host: cpu" in err
    assert "usage: python -m mbot plot NAME METRICS SPAN" in err and "/plot" not in err
    code, _, err = await trio.to_thread.run_sync(lambda: cli("plot", "box1", "cpu", "1h", "-o",
                                                             str(tmp_path / "missing" / "x.png")))
    assert (code, err) == (2, f"mbot: -o {tmp_path}/missing/x.png: there is no directory {tmp_path}/missing\n")


async def test_health(tmp_path, nursery, cli, monkeypatch):
    import dataclasses
    import socket

    from mbot import app

    with socket.socket() as s:  # health checks a configured PORT, so the server needs a known one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PORT": str(port), "MBOT_HOST": "127.0.0.1"}
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    code, _, err = cli("health")  # in this process: nothing is listening yet
    assert code == 1 and "unhealthy" in err
    data_dir = tmp_path / "data"  # the `cli` fixture's
    settings = dataclasses.replace(make_settings(data_dir), port=port)
    running = await nursery.start(lambda task_status: app.serve(settings, certificate(settings),
                                                                handle_signals=False, task_status=task_status))
    up = await trio.to_thread.run_sync(lambda: mbot(data_dir, "health", env=env))  # as a container runs it
    assert up.returncode == 0, up.stderr
    await running.aclose()


def test_newkey_owner_respects_the_hosts_cap(cli, monkeypatch):
    monkeypatch.setenv("MBOT_MAX_HOSTS_PER_USER", "1")
    assert cli("newkey", "a", "--owner", "42")[0] == 0
    code, _, err = cli("newkey", "b", "--owner", "42")
    assert code == 1 and "MBOT_MAX_HOSTS_PER_USER=1" in err  # an exception would fail the test: no traceback
    assert cli("newkey", "b", "--owner", "43")[0] == 0  # per owner
    # The operator's own CLI-only hosts (no --owner) are not capped.
    assert [cli("newkey", name)[0] for name in ("c", "d")] == [0, 0]
    monkeypatch.setenv("MBOT_MAX_HOSTS_PER_USER", "zero")
    assert cli("newkey", "x", "--owner", "42")[0] == 2


async def test_invite_from_the_cli_adds_a_user(tmp_path, nursery, cli):
    import dataclasses

    from fakebot import BOT_USER, FakeBot
    from mbot import app
    from mbot.telegram.outbox import Outbox, RateLimiter

    data_dir = tmp_path / "data"  # the `cli` fixture's
    # Before the server ever ran, the bot's username is unknown: the code and the /start form only.
    first = await trio.to_thread.run_sync(lambda: mbot(data_dir, "invite"))  # a real process: stderr is its log
    assert first.returncode == 0, first.stderr
    code = re.search(r"^code: ([\w-]+)$", first.stdout, re.M)[1]
    assert f"/start {code}" in first.stdout and "t.me" not in first.stdout
    assert code not in first.stderr
    assert code.encode() not in b"".join(p.read_bytes() for p in data_dir.glob("mbot.sqlite3*"))

    fake = FakeBot()
    await nursery.start(fake.serve)
    settings = dataclasses.replace(make_settings(data_dir), bot_token=fake.token, telegram_api_url=fake.url)
    # Telegram's real limit (1 message/s per chat) would hold each user's second reply a second for nothing.
    outbox = Outbox(limiter=RateLimiter(per_chat=0.001, per_group=0.001, global_rate=1000))
    running = await nursery.start(lambda task_status: app.serve(settings, certificate(settings), outbox=outbox,
                                                                handle_signals=False, task_status=task_status))
    await fake.wait_for("setMyCommands")  # after getMe: the username is saved for the CLI by now

    async def say(user: int, text: str) -> str:
        since = len(fake.sent)
        fake.push_message(user, text)
        call = await fake.wait_for(lambda c: c.method == "sendMessage" and c.params["chat_id"] == user, since=since)
        return call.params["text"]

    assert await say(7, "/hosts") == "Sorry, this mbot is private."
    # The first user of a server without users becomes its admin, whether by the claim or by an invite.
    assert "you are the admin" in await say(7, f"/start {code}")
    second = (await trio.to_thread.run_sync(lambda: cli("invite")))[1]  # in this process: no interpreter start
    link = re.search(r"^link: (\S+)$", second, re.M)[1]
    other = re.search(r"^code: ([\w-]+)$", second, re.M)[1]
    assert link == f"https://t.me/{BOT_USER['username']}?start={other}"
    assert (await say(8, f"/start {other}")).startswith("Welcome to mbot.")
    assert "no hosts yet" in await say(8, "/hosts")
    assert (await say(9, f"/start {other}")).startswith("Sorry, this invite is not valid")
    await running.aclose()
    assert read_db(settings, "SELECT id, role FROM users ORDER BY id") == [(7, "admin"), (8, "user")]


@pytest.mark.parametrize("env, variable, reason", [
    ({"MBOT_HOST": "127.0.0.1"}, "PORT", "Address already in use"),  # PORT is the one the test holds
    ({"MBOT_HOST": "192.0.2.1", "PORT": "0"}, "MBOT_HOST", "Cannot assign requested address"),  # not this machine
    ({"MBOT_HOST": "no-such-host.invalid", "PORT": "0"}, "MBOT_HOST", ""),
    ({"MBOT_HOST": "127.0.0.1", "PORT": "0", "MBOT_METRICS_PORT": "held"}, "MBOT_METRICS_PORT", "in use"),
])
def test_a_server_that_cannot_listen_says_so_in_one_line(cli, monkeypatch, caplog, env, variable, reason):
    import logging
    import socket

    caplog.set_level(logging.DEBUG)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        env = {"PORT": port, **{k: (port if v == "held" else v) for k, v in env.items()}}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # main() in this process, as `python -m mbot` runs it (an exception out of it would fail the test: no
        # traceback); what it logs is in caplog, where a real process would write it to stderr.
        code, _, err = cli()
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith(f"mbot: {variable}: cannot listen on ") and reason in err, err
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()], caplog.text



# --- in-process runs of main(): the CLI's parts that need no server --------------------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """main(argv) as `python -m mbot` runs it, in this process: (exit status, stdout, stderr)."""
    from mbot import cli as cli_module

    monkeypatch.setenv("MBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MBOT_PUBLIC_HOST", "127.0.0.1")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    for variable in ("MBOT_RETAIN_1H", "MBOT_RETAIN_10M"):
        monkeypatch.delenv(variable, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_module.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def store_cpu(settings, host_id: int, points: list[tuple[float, float]]) -> None:
    """Samples for a host through the server's own writer, as an agent's would arrive."""
    from mbot.writer import Writer

    async def write() -> None:
        writer = Writer(settings.db_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.hello(host_id, protocol.parse_agent_frame(json.dumps(
                {"type": "hello", "v": 1, "agent": "t", "epoch": 1, "interval": 5})))
            for seq, (ts, cpu) in enumerate(points, start=1):
                frame = {"type": "sample", "seq": seq, "ts": ts, "metrics": {"cpu": cpu}}
                await writer.samples(host_id, 1, protocol.parse_agent_frame(json.dumps(frame)), lambda seq: None)
            await writer.call(lambda conn: None)
            writer.close()
    trio.run(write)


@pytest.fixture
def box1(tmp_path, cli):
    """Host box1 with CPU samples from 3 h ago (none in the last hour)."""
    import time

    from helpers import add_host

    settings = make_settings(tmp_path / "data")
    host = add_host(settings, "box1")
    now = time.time()
    store_cpu(settings, host.host_id, [(now - 3 * 3600 + i * 60, 10.0 + i) for i in range(10)])
    return settings


def test_plot_errors_speak_cli(cli, box1, monkeypatch, capsys):
    code, _, err = cli("plot", "box1", "temperaturez", "1h", "-o", "x.png")
    assert code == 2
    first, *rest = err.splitlines()
    assert first.startswith("mbot: Unknown metric 'temperaturez'. Metrics: cpu, load")
    assert err.endswith(f"\n{plotspec.CLI.usage}\n{plotspec.CLI.examples}\n") and "/plot" not in err
    assert "python -m mbot plot box1 cpu 24h -o cpu.png" in err
    code, _, err = cli("plot", "box1", "cpu", "3y", "-o", "x.png")
    assert code == 2 and "SPAN '3y' reaches back further than the history this server keeps (730d)" in err
    # The longest history follows MBOT_RETAIN_*.
    monkeypatch.setenv("MBOT_RETAIN_1H", "1y")
    code, _, err = cli("plot", "box1", "cpu", "2y", "-o", "x.png")
    assert code == 2 and "(365d)" in err
    monkeypatch.setenv("MBOT_RETAIN_10M", "400d")  # a finer tier kept longer than the 1-hour one: it is the limit
    assert "(400d)" in cli("plot", "box1", "cpu", "2y", "-o", "x.png")[2]
    with pytest.raises(SystemExit) as helped:
        cli("plot", "--help")
    out = capsys.readouterr().out
    assert helped.value.code == 0 and out.startswith(plotspec.CLI.usage + "\n") and plotspec.CLI.examples in out

@pytest.mark.parametrize("output, problem", [
    ("{tmp}/missing/x.png", "there is no directory {tmp}/missing"),
    ("{tmp}", "is a directory; name the file, like {tmp}/chart.png"),
    ("{tmp}/x.png/", "is a directory"),
    ("{tmp}/chart.jpg", "the chart is a PNG; give a file name ending in .png"),
    ("{tmp}/chart", "the chart is a PNG"),
    ("", "is a directory"),
    ("/proc/chart.png", "cannot write there"),  # no file can be made there, even by root
    ("{tmp}/" + "a" * 300 + ".png", "cannot write there (File name too long)"),
    ("{tmp}/fifo.png", "exists and is not a regular file"),
    ("{tmp}/../../../../../../../../proc/self/x.png", "cannot write there"),
])
def test_plot_output_is_checked_before_any_drawing(cli, box1, tmp_path, monkeypatch, output, problem):
    from mbot import charts

    os.mkfifo(tmp_path / "fifo.png")
    monkeypatch.setattr(charts, "render", lambda spec: pytest.fail("a chart was drawn"))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = cli("plot", "box1", "cpu", "1y", "-o", output.format(tmp=tmp_path))
    assert (code, out) == (2, "")
    assert err == f"mbot: -o {output.format(tmp=tmp_path)}: {problem.format(tmp=tmp_path)}\n" or (
        err.count("\n") == 1 and problem.format(tmp=tmp_path) in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made, nothing left half-written


def test_plot_replaces_a_file_only_with_a_whole_chart(cli, box1, tmp_path):
    out = tmp_path / "cpu.png"
    out.write_bytes(b"yesterday's chart")
    code, _, err = cli("plot", "box1", "cpu", "1h", "-o", str(out))  # nothing in the last hour
    assert code == 1 and err.startswith("mbot: no data from box1")
    assert out.read_bytes() == b"yesterday's chart"
    code, stdout, _ = cli("plot", "BOX1", "cpus", "2y", "-o", str(out))  # any case, an alias, two years
    assert code == 0 and stdout == f"{out}: box1 · CPU · last 730d\n"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A link planted at the name is replaced, not followed: the file it points to stays as it was.
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "link.png").symlink_to(victim)
    assert cli("plot", "box1", "cpu", "1y", "-o", str(tmp_path / "link.png"))[0] == 0
    assert victim.read_text() == "precious" and not (tmp_path / "link.png").is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_host_names_are_unique_whatever_the_case(cli, tmp_path):
    from mbot import store

    assert cli("newkey", "box1")[0] == 0
    code, _, err = cli("newkey", "BOX1")
    assert (code, err) == (1, "mbot: you already have a host named 'box1'; names that differ only in case are not "
                              "allowed\n")
    assert cli("newkey", "Box1", "--owner", "42")[0] == 0  # another owner's name space
    # BOX1 next to box1, as an older mbot allowed: both keep working, and `hosts` says what to do.
    conn = store.connect(tmp_path / "data" / "mbot.sqlite3")
    with store.transaction(conn):
        store.insert_host(conn, name="BOX1", owner=0, key_id="00ff00ff00ff00ff", secret_hash="x" * 64, created=1.0)
    conn.close()
    code, out, _ = cli("hosts")
    assert code == 0 and out.splitlines() == [
        "BOX1 offline, never seen, 0 samples, same name as box1 but for case",
        "box1 offline, never seen, 0 samples, same name as BOX1 but for case",
        "Box1 (owner 42) offline, never seen, 0 samples",
        "note: BOX1 and box1 differ only in case; type the exact name to pick one, and rename all but one: "
        "python -m mbot rename box1 NEWNAME",
    ]
    code, _, err = cli("plot", "bOX1", "cpu", "1h", "-o", str(tmp_path / "x.png"))
    assert code == 1 and "'bOX1' could be BOX1, box1" in err
    code, _, err = cli("plot", "box1", "cpu", "1h", "-o", str(tmp_path / "x.png"))  # the exact name: box1, no data
    assert code == 2 and err.startswith("mbot: This host has no cpu.")
    assert cli("rename", "box1", "box1", "--owner", "42")[1] == "Box1 is now box1 (its agent needs no change)\n"
    code, out, err = cli("rename", "BOX1", "box1")
    assert code == 1 and "you already have a host named 'box1'" in err
    assert cli("rename", "BOX1", "box2") == (0, "BOX1 is now box2 (its agent needs no change)\n", "")
    code, out, _ = cli("hosts")
    assert "note:" not in out and "but for case" not in out
    # Look-alikes are other names: refused as names, and never found as one of these.
    assert "not a valid name" in cli("newkey", "bоx3")[2]  # a Cyrillic o
    assert "no host named '\u212aox2'" in cli("rename", "\u212aox2", "box3")[2]  # the Kelvin sign lowers to k
