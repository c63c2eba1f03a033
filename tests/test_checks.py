"""Checks from the host (mbot/checks.py, the agent's CheckRunner and probe): the real agent probes a local HTTPS
server (a self-signed certificate 3 days from its end) and a TCP port, and the alerts reach the fake Bot API; the
probe stays bounded against targets that never answer, never stop, or redirect for ever."""
from __future__ import annotations

import http.server
import json
import socket
import ssl
import subprocess
import threading
import time

import pytest
import trio

from helpers import add_host, hello_frame, load_agent, open_raw_ws, read_db, receive_json, wait_for_samples
from mbot import checks, checksync, cli, protocol, service, store
from mbot.protocol import ProtocolError
from test_agent_e2e import agent_config
from test_bot import ALICE, fake, say, start_server  # noqa: F401  (fake is a fixture)

agent = load_agent()


# --- a local HTTPS server with a certificate that ends in 3 days --------------------------------------------------


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return cert, key


class Handler(http.server.BaseHTTPRequestHandler):
    seen: list = []  # the request headers each probe sent

    def do_GET(self):  # noqa: N802 (http.server's spelling)
        Handler.seen.append(dict(self.headers))
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", f"/loop{len(Handler.seen)}")
            self.end_headers()
            return
        if self.path == "/endless":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100_000):  # 6 GB if nobody stops reading
                    self.wfile.write(b"x" * 65536)
            except OSError:
                pass
            return
        body = b"ok"
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web(cert_files):
    """(https port, http port) of local servers run in threads."""
    servers = []
    for tls in (True, False):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*cert_files)
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
    Handler.seen = []
    yield tuple(s.server_address[1] for s in servers)
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


# --- what a user types -----------------------------------------------------------------------------------------


def test_targets_names_and_usage():
    assert checks.validate_target("HTTPS://Example.com/x?y=1") == "https://Example.com/x?y=1"
    assert checks.validate_target("tcp://10.0.0.5:5432") == "tcp://10.0.0.5:5432"  # private: the host's network
    for bad, why in (("ftp://x/", "http://, https:// or tcp"), ("tcp://db", "needs a port"),
                     ("https://user:pw@x/", "credentials"), ("https:///path", "names no host"),
                     ("http://x:99999/", "not a valid URL"), ("tcp://db:5432/x", "nothing after"),
                     ("http://a b/", "no spaces"), ("h" * 3000, "1 to 2048")):
        with pytest.raises(checks.CheckError, match=why):
            checks.validate_target(bad)
    assert checks.default_name("https://www.example.com/", []) == "example.com"
    assert checks.default_name("https://example.com:8443/", ["example.com:8443"]) == "example.com:8443-2"
    assert checks.default_name("tcp://DB.local:5432", []) == "db.local:5432"
    assert checks.default_name("https://[::1]:8443/", []) == "1:8443"  # a name alerts can use (check:1:8443)
    assert checks.NAME.fullmatch(checks.default_name("http://" + "a" * 60 + ".example/", ["x"]))
    assert checks.parse_every(None) == 60 and checks.parse_every("5m") == 300
    for bad in ("1s", "2d", "soon"):
        with pytest.raises(checks.CheckError, match="EVERY"):
            checks.parse_every(bad)
    with pytest.raises(checks.CheckError, match="Usage: /check NAME URL"):
        checks.parse_command(["box1"])
    assert checks.parse_command(["box1", "del", "web"]) == checks.DelCheck("box1", "web")


def test_service_bounds_and_rules(settings):
    key = add_host(settings, "box1", owner=ALICE)
    conn = store.connect(settings.db_path)
    with store.transaction(conn):
        host = store.host_by_id(conn, key.host_id)
        spec = service.add_check(conn, host, "https://example.com/", 60.0, max_per_host=2)
        service.add_check(conn, host, "tcp://db:5432", 60.0, max_per_host=2)
        with pytest.raises(service.ServiceError, match="already checks"):
            service.add_check(conn, host, "https://example.com/", 60.0)
        with pytest.raises(service.ServiceError, match="2 checks, the most a host may have"):
            service.add_check(conn, host, "https://other.example/", 60.0, max_per_host=2)
        with pytest.raises(service.ServiceError, match="the most a user may have"):
            service.add_check(conn, host, "https://other.example/", 60.0, max_per_user=2)
    rules = {json.loads(spec)["metric"] for spec in store.alert_rule_specs(conn)}
    assert rules == {"check:example.com", "cert:example.com", "check:db:5432", "cert:db:5432"}
    with store.transaction(conn):
        service.delete_check(conn, host, spec.name)
        with pytest.raises(service.ServiceError, match="no check 'nope'"):
            service.delete_check(conn, host, "nope")
    assert {json.loads(spec)["metric"] for spec in store.alert_rule_specs(conn)} == {"check:db:5432", "cert:db:5432"}
    assert store.checks_version(conn) == 3
    conn.close()


def test_cli_add_list_del(settings, monkeypatch, capsys):
    monkeypatch.setenv("MBOT_DATA_DIR", str(settings.data_dir))
    add_host(settings, "box1")
    assert cli.main(["check", "add", "box1", "tcp://127.0.0.1:1", "30s"]) == 0
    assert "box1 checks tcp://127.0.0.1:1 every 30 s as 127.0.0.1:1" in capsys.readouterr().out
    assert cli.main(["check", "list", "box1"]) == 0
    assert "127.0.0.1:1: not run yet" in capsys.readouterr().out
    assert cli.main(["check", "add", "box1", "gopher://x"]) == 2
    assert "http://, https:// or tcp" in capsys.readouterr().err
    assert cli.main(["check", "del", "box1", "127.0.0.1:1"]) == 0
    assert cli.main(["check", "list", "box1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == []


# --- what the agent takes from the server, and sends back ----------------------------------------------------------


def test_agent_bounds_the_server_list():
    frame = {"checks": [{"name": "web", "target": "https://x/", "every": 0.001},
                        {"name": "file", "target": "file:///etc/passwd"},
                        {"name": "web", "target": "https://y/"},
                        {"name": "bad name!", "target": "https://z/"},
                        *({"name": f"c{i}", "target": f"tcp://h:{i + 1}"} for i in range(30))]}
    found = agent.checks_request(frame)
    assert found.checks[0] == agent.CheckSpec("web", "https://x/", agent.CHECK_MIN_EVERY, 3)
    assert len(found.checks) == agent.CHECKS_MAX
    assert any("only http, https and tcp" in why for why in found.skipped)
    assert any("repeated" in why for why in found.skipped) and any("more than 20" in why for why in found.skipped)


async def test_agent_states_down_after_n_failures_and_keeps_the_certificate():
    runner = agent.CheckRunner()
    assert runner.report() == (None, None)  # no list from the server (an older one): nothing to report
    web = agent.CheckSpec("web", "https://x/", 60.0, 2)
    runner.set_checks([web])
    assert runner.report() == (None, [])  # a list, nothing probed yet

    def after(outcome):
        runner._record(web, outcome)
        figures, items = runner.report()
        return figures["web"], items[0]

    assert after({"ok": True, "ms": 12.5, "status": 200, "cert_days": 3.5}) == (
        {"up": 100.0, "ms": 12.5, "cert": 3.5},
        {"name": "web", "state": "up", "fails": 0, "status": 200, "ms": 12.5, "cert_days": 3.5})
    assert after({"ok": False, "ms": 10_000.0, "error": "timed out"})[1]["state"] == "failing"
    figures, item = after({"ok": False, "ms": 0.5, "error": "connection refused"})
    assert item["state"] == "down" and item["fails"] == 2 and item["error"] == "connection refused"
    assert figures == {"up": 0.0, "ms": 0.5, "cert": 3.5}  # the certificate has not changed: the site is down
    assert after({"ok": True, "ms": 1e9})[0] == {"up": 100.0, "ms": 60_000.0, "cert": 3.5}  # within the bounds
    runner.set_checks([])
    assert runner.report() == (None, [])  # an empty snapshot tells the server they are gone


async def test_a_server_changing_the_list_all_the_time_gets_a_bounded_probe_rate(nursery):
    probes = []
    runner = agent.CheckRunner(run_probe=lambda target, timeout: probes.append(target) or {"ok": True, "ms": 1.0})
    nursery.start_soon(runner.run)
    started = trio.current_time()
    for i in range(40):  # 20 new checks every 10 ms: each list would be due at once
        runner.set_checks([agent.CheckSpec(f"c{i}-{j}", f"tcp://h:{j + 1}", 60.0, 3) for j in range(20)])
        await trio.sleep(0.01)
    elapsed = trio.current_time() - started
    assert len(probes) <= elapsed * agent.CHECK_MAX_RATE + 2


def test_server_bounds_what_the_agent_reports():
    sample = {"type": "sample", "seq": 1, "ts": time.time(), "metrics": {"checks": {
        f"c{i}": {"up": 100} for i in range(21)}}}
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_agent_frame(json.dumps(sample))
    assert refused.value.close_code == protocol.CLOSE_POLICY
    sample["metrics"]["checks"] = {"web": {"up": 100, "ms": 12.5, "cert": -2}}
    (parsed,) = protocol.parse_agent_frame(json.dumps(sample)).items
    assert parsed.series == {"check_up:web": 100.0, "check_ms:web": 12.5, "check_cert:web": -2.0}
    snapshot = {"type": "snapshot", "kind": "checks", "v": 1, "ts": time.time(),
                "items": [{"name": "web", "state": "down", "status": 503, "error": "x" * 500 + "\n"}]}
    (item,) = protocol.parse_agent_frame(json.dumps(snapshot)).items
    assert item["status"] == 503 and len(item["error"]) <= 200 and "\n" not in item["error"]
    snapshot["items"][0]["status"] = 10_000
    with pytest.raises(ProtocolError):
        protocol.parse_agent_frame(json.dumps(snapshot))


def test_certificate_end_read_from_der(cert_files):
    der = ssl.PEM_cert_to_DER_cert(cert_files[0].read_text())
    expected = ssl.cert_time_to_seconds(ssl._ssl._test_decode_cert(str(cert_files[0]))["notAfter"])
    assert agent.cert_not_after(der) == expected
    assert agent.cert_not_after(der[:40]) is None and agent.cert_not_after(b"") is None


# --- hostile and slow targets ------------------------------------------------------------------------------------


def test_probe_results(web):
    https, plain = web
    up = agent.probe(f"https://127.0.0.1:{https}/", timeout=5)
    assert up["ok"] and up["status"] == 200 and 0 < up["ms"] < 5000 and 2.9 < up["cert_days"] <= 3.0
    missing = agent.probe(f"http://127.0.0.1:{plain}/missing", timeout=5)
    assert missing.pop("ms") < 5000 and missing == {"ok": False, "status": 404, "error": "HTTP 404"}
    # No mbot header, no secret: what the check sends is the same for every target.
    assert {k.lower() for k in Handler.seen[0]} == {"host", "user-agent", "accept", "connection", "accept-encoding"}
    assert not any("bearer" in v.lower() or "mbot-" in k.lower() for h in Handler.seen for k, v in h.items())


def test_hostile_targets_are_bounded(web):
    https, plain = web
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts (the kernel does), never answers
    started = time.monotonic()
    hung = agent.probe(f"https://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.25)
    assert 250 <= hung.pop("ms") < 2000  # how long it took to fail: always there (a stable set of series)
    assert hung == {"ok": False, "error": "no answer within 0.25 s"} and time.monotonic() - started < 2
    silent.close()

    trickle = socket.socket()
    trickle.bind(("127.0.0.1", 0))
    trickle.listen()

    def drip():  # an answer one byte at a time, each well inside a socket timeout: only the deadline ends it
        conn, _ = trickle.accept()
        try:
            for byte in b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 100:
                conn.send(bytes([byte]))
                time.sleep(0.02)
        except OSError:
            pass
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    trickled = agent.probe(f"http://127.0.0.1:{trickle.getsockname()[1]}/", timeout=0.25)
    assert trickled["error"] == "no answer within 0.25 s" and not trickled["ok"]
    assert time.monotonic() - started < 2  # the whole answer would take 12 s
    trickle.close()

    started = time.monotonic()
    endless = agent.probe(f"http://127.0.0.1:{plain}/endless", timeout=5)
    assert endless["ok"] and time.monotonic() - started < 4  # read 64 KiB of it, then hung up (not timed out)

    Handler.seen = []
    looped = agent.probe(f"http://127.0.0.1:{plain}/loop", timeout=5)
    assert looped.pop("ms") < 5000 and looped == {"ok": False, "status": 302, "error": "more than 5 redirects"}
    assert len(Handler.seen) == 6  # the first request and 5 redirects

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    refused = agent.probe(f"tcp://127.0.0.1:{closed.getsockname()[1]}", timeout=1)
    assert refused["error"] == "connection refused" and not refused["ok"] and refused["ms"] < 1000
    closed.close()


# --- end to end: the real agent, the real server, the fake Bot API ----------------------------------------------


class Lists:
    """Each list of checks the agent takes from the server wakes whoever waits for one."""

    def __init__(self, runner):
        self.changed = trio.Event()
        self.runner = runner
        take = runner.set_checks

        def set_checks(specs):
            take(specs)
            self.changed.set()
            self.changed = trio.Event()

        runner.set_checks = set_checks

    async def until(self, wanted):
        with trio.fail_after(5):
            while not wanted(set(self.runner.specs)):
                await self.changed.wait()


async def test_checks_from_the_chat_to_the_alerts(nursery, settings, fake, tmp_path, web, monkeypatch):
    monkeypatch.setattr(checks, "MIN_EVERY", 0.1)
    monkeypatch.setattr(agent, "CHECK_MIN_EVERY", 0.1)
    monkeypatch.setattr(checksync, "POLL", 0.2)
    https, _ = web
    server = await start_server(nursery, settings, fake)
    key = add_host(settings, "box1", owner=ALICE)
    runner = agent.Agent(agent_config(server, key.secret, tmp_path, check_timeout=1.0), agent.Collector(gpu=False))
    await runner.refresh_facts()
    scope = trio.CancelScope()

    async def run():
        with scope:
            await runner.run()

    lists = Lists(runner.checks)
    nursery.start_soon(run)
    await wait_for_samples(server, settings, "box1", 1)

    def message(words):
        return lambda c: c.method == "sendMessage" and all(w in c.params.get("text", "") for w in words)

    since = len(fake.sent)
    reply = await say(fake, ALICE, f"/check box1 https://localhost:{https}/ 0.2s")
    assert f"checks https://localhost:{https}/ every" in reply["text"] and "<b>localhost:" in reply["text"]
    expiring = await fake.wait_for(message(["certificate of localhost:", "days"]), since=since)
    assert "box1: certificate of localhost" in expiring.params["text"] and "below 14 days" in expiring.params["text"]

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    since = len(fake.sent)
    await say(fake, ALICE, f"/check box1 tcp://127.0.0.1:{port} 0.2s")
    down = await fake.wait_for(message([f"check 127.0.0.1:{port}"]), since=since)
    assert f"box1: check 127.0.0.1:{port} is down" in down.params["text"]
    listing = (await say(fake, ALICE, "/checks box1"))["text"]
    assert f"127.0.0.1:{port}: down, connection refused" in listing
    assert "localhost:" in listing and ": up, HTTP 200, " in listing and "cert 3 d" in listing
    card = (await say(fake, ALICE, "/status box1"))["text"]
    assert f"Checks 1/2 up · ❌ 127.0.0.1:{port}" in card

    since = len(fake.sent)
    closed.listen()  # the port opens
    back = await fake.wait_for(message([f"check 127.0.0.1:{port}", "back to normal (up)"]), since=since)
    assert back.params["chat_id"] == ALICE
    names = " ".join(row[0] for row in read_db(settings, "SELECT names FROM layouts"))
    assert "check_ms:localhost:" in names and f"check_up:127.0.0.1:{port}" in names  # history: /plot box1 check:...

    assert "Removed check" in (await say(fake, ALICE, f"/check box1 del 127.0.0.1:{port}"))["text"]
    await lists.until(lambda names: f"127.0.0.1:{port}" not in names)
    assert "http://, https:// or tcp" in (await say(fake, ALICE, "/check box1 ftp://x"))["text"]

    # The CLI is another process: the server sees its change through the store within a poll, and tells the agent.
    monkeypatch.setenv("MBOT_DATA_DIR", str(settings.data_dir))
    assert await trio.to_thread.run_sync(cli.main, ["check", "add", "box1", f"http://127.0.0.1:{web[1]}/", "1m"]) == 0
    await lists.until(lambda names: f"127.0.0.1:{web[1]}" in names)
    assert f"check:127.0.0.1:{web[1]}" in {r.metric for r in server.alerting.engine.rules(key.host_id)}
    closed.close()
    scope.cancel()
    runner.collector.close()
    await server.aclose()


async def test_an_old_agent_is_told_to_update(nursery, settings, fake):
    server = await start_server(nursery, settings, fake)
    key = add_host(settings, "box1", owner=ALICE)
    ws = await open_raw_ws(nursery, server.port, key.secret)
    await ws.send_message(hello_frame())  # no `checks` capability
    assert (await receive_json(ws))["type"] == "ack"
    reply = await say(fake, ALICE, "/check box1 tcp://127.0.0.1:1")
    assert "too old to run checks: update it" in reply["text"]
    assert "does not run checks: update it" in (await say(fake, ALICE, "/checks box1"))["text"]
    assert "Usage: /check NAME URL|tcp://HOST:PORT [EVERY]" in (await say(fake, ALICE, "/check box1"))["text"]
    assert "No such host" in (await say(fake, ALICE, "/check box9 https://example.com"))["text"]
    assert "EVERY is 10 s to 1 d" in (await say(fake, ALICE, "/check box1 https://example.com 1s"))["text"]
    await ws.aclose()
    await server.aclose()
