"""The pinned one-liner: the agent port's two GETs over real TLS with real curl, the pin, the line newkey prints, the
agent's --check-connection, and the public address guessed without MBOT_PUBLIC_HOST.

The script itself, run as root on a fresh Debian, is deploy/install-test.sh (make install-test), a CI step of its own.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess

import pytest
import trio
import trio_websocket

from helpers import ROOT, add_host, certificate, hello_frame, load_agent, open_tls, receive_json, rejection_status
from mbot import app, cli, install
from mbot.agents import AgentHub
from mbot.config import ConfigError, guess_public_host, load_settings
from mbot.store import Database
from mbot.writer import Writer

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")


def openssl_pin(cert_path) -> str:
    """The pin as curl's documentation computes it, with the openssl CLI."""
    public = subprocess.run(["openssl", "x509", "-in", str(cert_path), "-pubkey", "-noout"], capture_output=True,
                            check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=public, capture_output=True,
                         check=True).stdout
    import base64
    import hashlib
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(["curl", "-sS", "--max-time", "10", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)


async def raw_request(port: int, request: bytes) -> bytes:
    """Send `request` over TLS and read until the server closes."""
    stream = await open_tls(port)
    try:
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(10):
            try:
                while chunk := await stream.receive_some():
                    answer += chunk
            except trio.BrokenResourceError:
                pass
        return answer
    finally:
        await trio.aclose_forcefully(stream)


def test_the_pin_is_the_one_openssl_computes(settings):
    cert = certificate(settings)
    assert install.pin_of_pem(cert.cert_path.read_text()) == openssl_pin(cert.cert_path)
    with pytest.raises(ValueError):
        install.spki_pin(b"\x30\x82\xff\xff" + b"\x00" * 10)  # truncated


@needs_curl
async def test_curl_with_the_pin_gets_the_script_and_the_agent(server, settings):
    pin = openssl_pin(certificate(settings).cert_path)
    base = f"https://127.0.0.1:{server.port}"
    got = await curl("-fk", "--pinnedpubkey", f"sha256//{pin}", f"{base}/install")
    assert got.returncode == 0, got.stderr
    script = got.stdout.decode()
    assert script.startswith("#!/bin/sh\n")
    # The server's own parameters, and never a secret.
    for line in ("SERVER='127.0.0.1'", f"PORT='{server.port}'", f"FINGERPRINT='{server.fingerprint}'",
                 f"PIN='{pin}'"):
        assert f"\n{line}\n" in script
    assert not re.search(r"@[A-Z_]+@", script)  # no placeholder left
    assert subprocess.run(["sh", "-n"], input=got.stdout).returncode == 0  # it parses
    got = await curl("-fk", "--pinnedpubkey", f"sha256//{pin}", f"{base}/agent.py")
    assert got.returncode == 0 and got.stdout == (ROOT / "agent" / "mbot_agent.py").read_bytes()
    head = await curl("-fkI", "--pinnedpubkey", f"sha256//{pin}", f"{base}/agent.py")
    assert head.returncode == 0 and b"content-length: %d" % len(got.stdout) in head.stdout.lower()
    assert b"connection: close" in head.stdout.lower()


@needs_curl
async def test_a_wrong_pin_makes_curl_stop_before_sending_anything(server, caplog):
    caplog.set_level(logging.INFO, logger="mbot.agents")
    got = await curl("-fk", "--pinnedpubkey", "sha256//" + "A" * 43 + "=", f"https://127.0.0.1:{server.port}/install")
    assert got.returncode == 90 and b"pinned public key" in got.stderr and got.stdout == b""
    with trio.fail_after(5):
        while "before sending a request" not in caplog.text:
            await trio.sleep(0.01)
    assert "GET" not in caplog.text


@needs_curl
async def test_the_script_names_the_address_the_client_used(server, settings):
    """Host header: an address corrected by hand in the pasted line reaches the agent's settings."""
    pin = openssl_pin(certificate(settings).cert_path)
    got = await curl("-fk", "--pinnedpubkey", f"sha256//{pin}", "--connect-to", f"::127.0.0.1:{server.port}",
                     "https://monitor.example.org:9443/install")
    assert "\nSERVER='monitor.example.org'\n" in got.stdout.decode()
    assert "\nPORT='9443'\n" in got.stdout.decode()


async def test_websocket_agents_are_unaffected(server, settings, connect):
    key = add_host(settings, "box1")
    ws = await connect(key.secret)
    await ws.send_message(hello_frame())
    assert (await receive_json(ws))["type"] == "ack"
    # An upgrade to the installer's path is a WebSocket request like any other: 404, not the script.
    stream = await open_tls(server.port)
    status = None
    try:
        async with trio.open_nursery() as nursery:
            await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", "/install",
                                                    extra_headers=[(b"Authorization", f"Bearer {key.secret}".encode())])
    except* trio_websocket.ConnectionRejected as group:
        status = group.exceptions[0].status_code
    finally:
        await trio.aclose_forcefully(stream)
    assert status == 404


async def test_only_the_two_resources_are_served(server):
    for head in (b"POST /install HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                 b"GET /install/../agent.py HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /agent.py/../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET //agent.py HTTP/1.1\r\nHost: x\r\n\r\n"):
        answer = await raw_request(server.port, head)
        assert not answer.startswith(b"HTTP/1.1 200"), (head, answer[:200])


async def test_hostile_heads_are_bounded(server):
    big = b"GET /install HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    answer = await raw_request(server.port, big)
    assert answer.startswith(b"HTTP/1.1 431 ")
    # A Host header with shell in it: the script keeps the server's own address.
    answer = await raw_request(server.port, b"GET /install HTTP/1.1\r\nHost: x';reboot;'\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b"\nSERVER='127.0.0.1'\n" in answer
    assert b"reboot" not in answer


async def test_a_slow_request_head_is_dropped_at_the_handshake_deadline(settings, nursery):
    db = Database(settings.db_path)
    writer = Writer(settings.db_path)
    nursery.start_soon(writer.run)
    hub = AgentHub(db, writer, handshake_timeout=0.5)
    port = await nursery.start(hub.listen, "127.0.0.1", 0, app.tls.server_context(certificate(settings)))
    stream = await open_tls(port)
    started = trio.current_time()

    async def dribble() -> None:  # one byte every 0.1 s, never finishing the head
        try:
            for byte in b"GET /install HTTP/1.1\r\nHost: x\r\n" * 10:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    answer = b""
    async with trio.open_nursery() as inner:
        inner.start_soon(dribble)
        with trio.fail_after(5):
            try:
                answer = await stream.receive_some()
            except trio.BrokenResourceError:
                pass
        inner.cancel_scope.cancel()
    assert answer == b"" and trio.current_time() - started < 2
    await trio.aclose_forcefully(stream)
    writer.close()


@pytest.mark.parametrize("header, expected", [
    (b"mon.example.org:9443", ("mon.example.org", 9443)),
    (b"mon.example.org", ("mon.example.org", 443)),
    (b"[2001:db8::7]:8000", ("2001:db8::7", 8000)),
    (b"192.0.2.9:8000", ("192.0.2.9", 8000)),
    (b"[not-v6]:8000", None), (b"a b:1", None), (b"x:99999", None), (b"x:0", None), (b"$(id):1", None),
    (b"\xff", None), (b"", None), (None, None),
])
def test_host_header(header, expected):
    default = install.Endpoint("127.0.0.1", 8000, "ab" * 32, "A" * 43 + "=")
    got = install.host_header(header, default)
    assert (got.host, got.port) == (expected or ("127.0.0.1", 8000))


def test_the_script_takes_only_safe_values():
    template = (ROOT / "mbot" / "agent_install.sh").read_text()
    good = install.Endpoint("2001:db8::7", 8000, "ab" * 32, "A" * 43 + "=")
    script = install.render_script(template, good)
    assert "\nURL_HOST='[2001:db8::7]'\n" in script and "\nSERVER='2001:db8::7'\n" in script
    for bad in (dict(host="x';reboot;'"), dict(port=0), dict(fingerprint="zz"), dict(pin="a'b")):
        with pytest.raises(ValueError):
            install.render_script(template, dataclasses.replace(good, **bad))


def test_the_script_refuses_what_is_not_a_secret(tmp_path):
    template = (ROOT / "mbot" / "agent_install.sh").read_text()
    script = install.render_script(template, install.Endpoint("127.0.0.1", 8000, "ab" * 32, "A" * 43 + "="))
    for args, message in ((["bad!secret-with-more-than-20"], "not an agent secret"), (["short"], "too short"),
                          ([], "usage"), (["a", "b"], "usage")):
        done = subprocess.run(["sh", "-s", "--", *args], input=script, capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    if os.geteuid() == 0 and shutil.which("runuser"):
        done = subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-s", "--", "a" * 43], input=script,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert done.stderr == "mbot-install: error: run it as root: ... | sudo sh -s -- SECRET\n"


# --- the line newkey prints --------------------------------------------------------------------------------------


@needs_curl
async def test_the_line_newkey_prints_fetches_the_script(server, settings, monkeypatch, capsys):
    monkeypatch.setenv("MBOT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MBOT_PUBLIC_HOST", "127.0.0.1")
    monkeypatch.setenv("PORT", str(server.port))
    assert cli.main(["newkey", "box1"]) == 0
    out = capsys.readouterr().out
    secret = re.search(r"^AGENT_SECRET=(\S+)$", out, re.M).group(1)
    line = next(line for line in out.splitlines() if line.startswith("curl "))
    pin = openssl_pin(settings.data_dir / "cert.pem")
    assert line == (f"curl -fsSk --pinnedpubkey 'sha256//{pin}' https://127.0.0.1:{server.port}/install "
                    f"| sudo sh -s -- {secret}")
    assert "guess" not in out  # MBOT_PUBLIC_HOST was set
    fetch = line.split(" | ")[0]
    got = await trio.run_process(["sh", "-c", f"exec {fetch}"], capture_stdout=True, capture_stderr=True)
    assert got.stdout.startswith(b"#!/bin/sh\n") and secret.encode() not in got.stdout


def test_newkey_says_when_the_address_was_guessed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MBOT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MBOT_PUBLIC_HOST", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert cli.main(["newkey", "box1"]) == 0
    out = capsys.readouterr().out
    guess = guess_public_host()
    assert f"https://{install.url_host(guess)}:8000/install" in out
    assert f"# {guess} is a guess (MBOT_PUBLIC_HOST is not set" in out
    assert f"AGENT_SERVER_IP={guess}\n" in out


# --- the agent's --check-connection --------------------------------------------------------------------------------


async def test_check_connection_says_whether_the_settings_work(server, settings, capsys):
    agent = load_agent()
    key = add_host(settings, "box1")
    config = agent.AgentConfig(secret=key.secret, server="127.0.0.1", port=server.port, fingerprint=server.fingerprint)
    assert await agent._check_connection(config) == 0
    assert f"connected to 127.0.0.1:{server.port}" in capsys.readouterr().out
    assert await agent._check_connection(dataclasses.replace(config, secret="wrong" * 9)) == 1
    assert "secret rejected" in capsys.readouterr().err
    assert await agent._check_connection(dataclasses.replace(config, fingerprint="00" * 32)) == 1
    err = capsys.readouterr().err
    assert "certificate changed" in err and err.count("\n") == 1


# --- the public address ----------------------------------------------------------------------------------------


def test_without_mbot_public_host_the_default_route_address_is_guessed():
    settings = load_settings({})
    assert settings.public_host_guessed
    address = ipaddress.ip_address(settings.public_host)  # an address, not a name others cannot resolve
    assert not address.is_loopback
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((settings.public_host, 0))  # one of this machine's own addresses
    configured = load_settings({"MBOT_PUBLIC_HOST": "mon.example.org"})
    assert (configured.public_host, configured.public_host_guessed) == ("mon.example.org", False)


def test_without_a_default_route_the_hostname_is_the_guess(monkeypatch):
    def unreachable(self, address):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    assert guess_public_host() == socket.gethostname()


@pytest.mark.parametrize("value", ["https://mon.example.org", "mon.example.org:8000", "mon example", "x;reboot",
                                   "-x", "[::1]"])
def test_a_public_host_that_is_not_a_host_is_refused(value):
    with pytest.raises(ConfigError) as error:
        load_settings({"MBOT_PUBLIC_HOST": value})
    assert error.value.variable == "MBOT_PUBLIC_HOST"


async def test_the_guess_is_logged_at_start(settings, nursery, caplog):
    caplog.set_level(logging.INFO, logger="mbot.app")
    guessed = dataclasses.replace(settings, public_host="192.0.2.10", public_host_guessed=True)
    running = await nursery.start(lambda task_status: app.serve(guessed, certificate(settings), handle_signals=False,
                                                                 task_status=task_status))
    assert "MBOT_PUBLIC_HOST is not set: new keys tell agents to reach this server at 192.0.2.10" in caplog.text
    await running.aclose()
