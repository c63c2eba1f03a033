"""`python -m mbot nettest`: the chat's stability and speed tests from the CLI, through the server's control socket
(mbot/control.py, mbot/controlsock.py)."""
from __future__ import annotations

import json
import os
import re
import socket
import stat

import pytest
import trio
import trio.testing

from helpers import add_host, hello_frame, load_agent, open_tls, receive_json, server_certificate, upgrade
from mbot import cli, control
from mbot.control import ControlError, NetTest, parse_request
from mbot.controlsock import ControlServer
from test_bot import png_size


# --- the pure part -----------------------------------------------------------------------------------------------


def test_requests_are_checked_before_anything_runs():
    good = NetTest("box1", None, "stability", 0.01, 2.0, True)
    assert parse_request(control.request_line(good).rstrip(b"\n")) == good
    assert parse_request(b'{"cmd": "nettest", "host": "box1", "owner": 7, "kind": "speed"}') == \
        NetTest("box1", 7, "speed")
    stability = {"cmd": "nettest", "host": "box1", "owner": None, "kind": "stability", "interval": 0.1,
                 "duration": 5}
    for bad, problem in ((b"\xff\xfe", "not a JSON line"), (b"[1]", "not a JSON object"),
                         (b"x" * (control.MAX_LINE + 1), "over 65536 bytes"),
                         ({"cmd": "shutdown"}, "unknown command 'shutdown'"),
                         ({**stability, "host": ""}, "host must be"),
                         ({**stability, "host": "x" * 200}, "host must be"),
                         ({**stability, "owner": "alice"}, "owner must be"), ({**stability, "owner": True}, "owner"),
                         ({**stability, "kind": "ddos"}, "kind must be"),
                         ({**stability, "interval": 0.0001}, "between 1 ms and 1 s"),
                         ({**stability, "interval": "fast"}, "number of seconds"),
                         ({**stability, "duration": 601}, "between 1 s and 10 min"),
                         ({**stability, "duration": 1e400}, "number of seconds"),
                         ({**stability, "chart": "yes"}, "chart must be")):
        line = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        with pytest.raises(ControlError, match=re.escape(problem)):
            parse_request(line)


def test_every_answer_is_one_bounded_line():
    assert control.error_line("two\nlines " + "x" * 5000).count(b"\n") == 1
    assert len(control.progress_line("y" * 100_000)) < control.MAX_LINE
    assert control.parse_response(control.error_line("nope")) == control.Response("error", "nope")
    for bad in (b"{}", b'{"result": 1}', b'{"progress": "a", "error": "b"}', b"\x00"):
        with pytest.raises(ControlError):
            control.parse_response(bad)


# --- the CLI against a real server and a real agent --------------------------------------------------------------


async def _cli(monkeypatch, capsys, settings, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("MBOT_DATA_DIR", str(settings.data_dir))
    code = await trio.to_thread.run_sync(cli.main, ["nettest", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_stability_and_speed_print_the_chats_figures(server, settings, nursery, tmp_path, monkeypatch, capsys):
    path = settings.data_dir / control.CONTROL_FILE
    assert server.control_path == path and stat.S_IMODE(path.stat().st_mode) == 0o600
    server.hub.speed_seconds = 0.3
    agent = load_agent()
    key = add_host(settings, "box1")
    add_host(settings, "box2")
    config = agent.AgentConfig(secret=key.secret, server="127.0.0.1", port=server.port, interval=0.5,
                               fingerprint=server.fingerprint, fingerprint_file=str(tmp_path / "fp.json"))
    nursery.start_soon(agent.run_agent, config)
    await server.hub.wait_until(1, connected=True)

    chart = tmp_path / "rtt.png"
    code, out, err = await _cli(monkeypatch, capsys, settings, "box1", "--stability", "5ms", "1s", "-o", str(chart))
    assert code == 0, err
    assert "Stability test of box1: 200 probes every 5 ms for 1 s..." in err  # progress on stderr
    assert err.splitlines()[-2:] == ["Stability test of box1: done.", f"{chart}: the RTT chart"]
    assert out.startswith("Stability of box1: ") and "not the internet" in out
    p50, p95, worst, jitter = (float(re.search(rf"{n} ([\d.]+) ms", out).group(1))
                               for n in ("p50", "p95", "max", "jitter"))
    assert 0 < p50 <= p95 <= worst <= 2000 and 0 <= jitter <= worst
    assert re.search(r"Loss [\d.]+ % \(\d+ of \d+ not answered within 2 s\)", out)
    assert png_size(chart.read_bytes()) == (1280, 640)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]

    code, out, err = await _cli(monkeypatch, capsys, settings, "box1", "--speed", "--json")
    assert code == 0 and "download then upload" in err, err
    result = json.loads(out)
    assert result["down"]["bytes_per_s"] > 0 and result["up"]["bytes_per_s"] > 0
    assert "Download (server -> host)" in result["text"] and "Upload (host -> server)" in result["text"]

    # A client that hangs up ends its test, and the host's place is free again.
    client = await trio.open_unix_socket(str(path))
    await client.send_all(control.request_line(NetTest("box1", None, "stability", 0.1, 30.0)))
    assert b"Stability test of box1: 300 probes" in await client.receive_some()
    assert server.hub.stability_budget.running(1)
    await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert not server.hub.stability_budget.running(1)

    # The chat's refusals, in one line each, exit 1.
    server.hub.claim_stability(1, 0.1)  # a test of box1 running (from the chat, say)
    try:
        code, out, err = await _cli(monkeypatch, capsys, settings, "box1", "--stability", "10ms", "1s")
    finally:
        server.hub.stability_budget.release(1)
    assert (code, out) == (1, "") and err.strip().endswith("box1: not now: a stability test of this host is already "
                                                           "running; wait until it ends.")
    code, _, err = await _cli(monkeypatch, capsys, settings, "box2", "--speed")
    assert code == 1 and err == "mbot: box2 is offline: a speed test needs its agent connected.\n"
    code, _, err = await _cli(monkeypatch, capsys, settings, "nosuch", "--speed")
    assert code == 1 and "no host named 'nosuch'" in err


async def test_an_old_agent_and_usage_errors(server, settings, nursery, tmp_path, monkeypatch, capsys):
    key = add_host(settings, "old")
    stream = await open_tls(server.port)
    ws = await upgrade(nursery, stream, key.secret)
    await ws.send_message(hello_frame())  # no speedtest capability
    await receive_json(ws)
    code, _, err = await _cli(monkeypatch, capsys, settings, "old", "--speed")
    assert code == 1 and "its agent is too old for a speed test" in err
    await trio.aclose_forcefully(stream)
    for argv, problem in ((["old", "--stability", "0.5ms"], "INTERVAL must be between 1 ms and 1 s"),
                          (["old", "--stability", "1ms", "2s", "3"], "at most INTERVAL and DURATION"),
                          (["old", "--speed", "-o", str(tmp_path / "x.png")], "-o is for --stability"),
                          (["old", "--stability", "-o", str(tmp_path)], "is a directory")):
        code, out, err = await _cli(monkeypatch, capsys, settings, *argv)
        assert (code, out) == (2, "") and problem in err and err.count("\n") == 1, err


async def test_no_running_server_is_one_line(settings, tmp_path, monkeypatch, capsys):
    code, out, err = await _cli(monkeypatch, capsys, settings, "box1", "--speed")
    assert (code, out, err) == (1, "", f"mbot: no running server on {settings.data_dir}: start it first\n")
    # A socket a killed server left behind: nobody listens on it.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(settings.data_dir / control.CONTROL_FILE))
    stale.close()
    code, out, err = await _cli(monkeypatch, capsys, settings, "box1", "--speed")
    assert (code, err) == (1, f"mbot: no running server on {settings.data_dir}: start it first\n")


async def test_a_stale_socket_is_replaced_at_start_and_the_socket_removed_at_stop(settings, nursery):
    from helpers import certificate
    from mbot import app

    path = settings.data_dir / control.CONTROL_FILE
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    server = await nursery.start(lambda task_status: app.serve(settings, server_certificate(settings),
                                                               handle_signals=False, task_status=task_status))
    assert server.control_path == path
    client = await trio.open_unix_socket(str(path))  # a listener now
    await client.aclose()
    await server.aclose()
    assert not path.exists()


# --- hostile clients ---------------------------------------------------------------------------------------------


async def _exchange(path, data: bytes, *, close: bool = False) -> dict:
    client = await trio.open_unix_socket(str(path))
    try:
        if data:
            await client.send_all(data)
        if close:
            await client.send_eof()
        received = b""
        with trio.fail_after(5):
            while not received.endswith(b"\n"):
                chunk = await client.receive_some()
                assert chunk, received
                received += chunk
        try:
            assert await client.receive_some() == b""  # one answer, then the server hangs up
        except trio.BrokenResourceError:
            pass  # ... resetting the connection when it left some of what was sent unread
        return json.loads(received)
    finally:
        await client.aclose()


async def test_hostile_clients_get_one_error_line_and_the_listener_goes_on(server, nursery, tmp_path):
    path = tmp_path / "c.sock"
    listener = ControlServer(path, server.db, server.hub, request_timeout=0.5)
    assert await nursery.start(listener.serve) == path
    assert (await _exchange(path, b"\x00garbage\xff\n"))["error"] == "request is not a JSON line"
    assert "over 65536 bytes" in (await _exchange(path, b"{" * (control.MAX_LINE + 10)))["error"]
    assert "unknown command 'rm'" in (await _exchange(path, b'{"cmd": "rm", "host": "x"}\n'))["error"]
    out_of_range = b'{"cmd": "nettest", "host": "box1", "kind": "stability", "interval": 5, "duration": 1}\n'
    assert "between 1 ms and 1 s" in (await _exchange(path, out_of_range))["error"]
    assert (await _exchange(path, b""))["error"] == "no request within 0.5 s"  # connects and says nothing
    truncated = b'{"cmd": "nettest", "host": "nosuch", "kind": "speed"}'  # no newline, then EOF: still one request
    assert "no host named 'nosuch'" in (await _exchange(path, truncated, close=True))["error"]
    # Many at once, each alone.
    async with trio.open_nursery() as many:
        for _ in range(20):
            many.start_soon(_exchange, path, b"nonsense\n")
    assert "no host named" in (await _exchange(path, b'{"cmd": "nettest", "host": "z", "kind": "speed"}\n'))["error"]
    assert os.path.exists(path)


async def test_a_path_that_cannot_be_a_socket_leaves_the_server_without_one(server, nursery, tmp_path, caplog):
    too_long = tmp_path / ("x" * 120 + ".sock")  # AF_UNIX paths end at 108 bytes
    assert await nursery.start(ControlServer(too_long, server.db, server.hub).serve) is None
    in_the_way = tmp_path / "control.sock"
    in_the_way.write_text("not ours")
    assert await nursery.start(ControlServer(in_the_way, server.db, server.hub).serve) is None
    assert in_the_way.read_text() == "not ours"
    assert sum("cannot reach this server" in r.getMessage() for r in caplog.records) == 2
