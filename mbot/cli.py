"""`python -m mbot COMMAND`: the admin CLI. The only place in the server that prints."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sqlite3
import sys
import time
from typing import Sequence

import trio

from . import containers, plotspec, service, store, tls, users
from .config import ConfigError, Settings, load_settings, prepare_data_dir
from .durations import format_duration
from .model import Host
from .plotspec import PlotUsageError
from .service import ServiceError

log = logging.getLogger("mbot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mbot", description="mbot: a host monitor you run yourself.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the server (the default)")
    newkey = commands.add_parser("newkey", help="register a host and print its agent secret")
    newkey.add_argument("name", help=service.NAME_RULE)
    newkey.add_argument("--owner", type=int, default=0, metavar="TELEGRAM_USER_ID",
                        help="the Telegram user who will own the host (default: none, CLI only); "
                             "MBOT_MAX_HOSTS_PER_USER applies to owners, not to CLI-only hosts")
    commands.add_parser("invite", help="print a one-time link that lets one more Telegram user use the bot "
                                       "(expires in 24 h; on a server without users, that user becomes the admin)")
    hosts = commands.add_parser("hosts", help="list hosts: online, last seen, samples, CPU/RAM now")
    hosts.add_argument("--json", action="store_true", help="machine-readable output")
    listing = commands.add_parser("containers", help="a host's containers: state, health, restarts, CPU, memory")
    listing.add_argument("name", help="host name (or the first 8+ characters of its key id)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--owner", type=int, help="the owner's Telegram user id, when several users have that name")
    commands.add_parser("fingerprint", help="print the SHA-256 fingerprint of the server certificate")
    commands.add_parser("health", help="exit 0 when the database opens and the agent port answers TLS with our "
                                       "certificate (for container HEALTHCHECKs)")
    plot = commands.add_parser("plot", help="draw a chart to a PNG file, as /plot does in the chat")
    plot.add_argument("name", help="host name (or the first 8+ characters of its key id)")
    plot.add_argument("metrics", help="e.g. cpu, 'cpu;gpu', ram, net, disk:/home")
    plot.add_argument("span", nargs="+", help="e.g. 1h, or 2d 3h")
    plot.add_argument("--limit", type=float, help="top of the Y axis")
    plot.add_argument("--unit", help="b, kb, mb, gb, kib ... for ram/vram; bit, kbit, mbit, gbit for net; %%")
    plot.add_argument("--owner", type=int, help="the owner's Telegram user id, when several users have that name")
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("MBOT_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        prepare_data_dir(settings)
        command = args.command or "serve"
        if command == "serve":
            return _serve(settings)
        if command == "newkey":
            return _newkey(settings, args.name, args.owner)
        if command == "invite":
            return _invite(settings)
        if command == "hosts":
            return _hosts(settings, as_json=args.json)
        if command == "fingerprint":
            print(_certificate(settings).fingerprint)
            return 0
        if command == "plot":
            return _plot(settings, args)
        if command == "containers":
            return _containers(settings, args)
        if command == "health":
            return _health(settings)
    except ConfigError as exc:
        print(f"mbot: {exc}", file=sys.stderr)
        return 2
    except (tls.TlsError, store.SchemaTooNew) as exc:
        print(f"mbot: {exc}", file=sys.stderr)
        return 1
    except (ServiceError, PlotUsageError) as exc:
        print(f"mbot: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.command)


def _certificate(settings: Settings) -> tls.Certificate:
    return tls.ensure_certificate(settings.data_dir, [settings.public_host, _hostname(), "localhost", "127.0.0.1"])


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _serve(settings: Settings) -> int:
    from . import app  # imported here: the server pulls in matplotlib and httpx, which other commands never need

    cert = _certificate(settings)
    try:
        trio.run(app.serve, settings, cert)
    except* ConfigError as group:  # a port in use, an address not on this machine: one line, like a bad variable
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):  # nurseries nest their groups
            first = first.exceptions[0]
        raise first from None
    return 0


def _newkey(settings: Settings, name: str, owner: int) -> int:
    cert = _certificate(settings)
    conn = store.connect(settings.db_path)
    try:
        with store.transaction(conn):
            # The operator's own CLI-only hosts (owner 0) are not capped; a user's hosts are, wherever they are made.
            key = service.new_key(conn, name, owner, max_hosts=settings.max_hosts_per_user if owner else None)
    finally:
        conn.close()
    port = f"AGENT_PORT={settings.port}\n" if settings.port != 8000 else ""
    print(f"# host {key.name} (key {key.key_id}); the secret is shown only this once\n"
          f"AGENT_SERVER_IP={settings.public_host}\n{port}"
          f"AGENT_SECRET={key.secret}\nAGENT_FINGERPRINT={cert.fingerprint}")
    return 0


def _invite(settings: Settings) -> int:
    """A one-time invite, made here (a separate process) in the same database the running server reads."""
    code = users.new_code()
    conn = store.connect(settings.db_path)
    try:
        with store.transaction(conn):
            users.add_invite(conn, users.code_hash(code), time.time(), 0)
            username = store.get_kv(conn, users.USERNAME_KEY)  # saved by the server after getMe; None before
    finally:
        conn.close()
    link = users.invite_link(username, code)
    print(f"# a one-time invite, valid {users.INVITE_TTL / 3600:.0f} h: the first person to use it can use the bot "
          "(as its admin while it has no users and no ALLOWED_USERS)")
    if link:
        print(f"link: {link}")
    print(f"or, in a chat with the bot: /start {code}")
    print(f"code: {code}")
    return 0


def _hosts(settings: Settings, *, as_json: bool) -> int:
    conn = store.connect(settings.db_path)
    try:
        summaries = service.host_summaries(conn)
    finally:
        conn.close()
    now = time.time()
    if as_json:
        print(json.dumps([s.__dict__ for s in summaries], indent=2))
        return 0
    if not summaries:
        print("no hosts yet: python -m mbot newkey NAME")
    for s in summaries:
        state = "online" if s.online else "offline"
        seen = f"last seen {format_duration(now - s.last_seen)} ago" if s.last_seen else "never seen"
        now_part = ", ".join(part for part in (
            f"cpu {s.cpu:.0f}%" if s.cpu is not None else "",
            f"ram {s.ram:.0f}%" if s.ram is not None else "") if part)
        owner = f" (owner {s.owner})" if s.owner else ""
        dropped = f", {s.dropped} dropped during an outage" if s.dropped else ""
        print(f"{s.name}{owner} {state}, {seen}, {s.samples} samples{dropped}" + (f", {now_part}" if now_part else ""))
    return 0


def _plot(settings: Settings, args: argparse.Namespace) -> int:
    from . import charts, plotting

    words = [args.name, args.metrics, *args.span]
    if args.limit is not None:
        words.append(f"{args.limit:g}")
    if args.unit:
        words.append(args.unit)
    longest = max(tier.retention for tier in settings.tiers)
    plotting.use_cache_dir(settings.data_dir)
    conn = store.connect(settings.db_path, readonly=True)
    try:
        request = plotspec.parse_plot(words, max_span=longest)
        host = _cli_host(conn, request.host, args.owner)
        spec = plotting.build_spec(conn, host, request.metrics, request.span, request.limit, request.unit,
                                   settings.tiers, settings.tz, time.time())
    finally:
        conn.close()
    try:
        png = charts.render(spec)
    except charts.NoData:
        print(f"mbot: no data from {host.name} for {spec.title.split(' · ')[-1]}", file=sys.stderr)
        return 1
    with open(args.output, "wb") as out:
        out.write(png)
    print(f"{args.output}: {spec.title}")
    return 0


def _containers(settings: Settings, args: argparse.Namespace) -> int:
    conn = store.connect(settings.db_path, readonly=True)
    try:
        host = _cli_host(conn, args.name, args.owner)
        snapshot = store.latest_snapshot(conn, host.id, containers.KIND)
    finally:
        conn.close()
    listed = containers.rows(snapshot.items) if snapshot is not None else []
    if args.json:
        print(json.dumps({"host": host.name, "received": None if snapshot is None else snapshot.received,
                          "containers": [c.as_dict() for c in listed]}, indent=2))
        return 0
    if snapshot is None:
        print(f"{host.name}: no containers reported (the agent reports them when it can open a Docker or Podman "
              "socket; its log says why not)")
        return 0
    print(f"{host.name}: {containers.tally(listed)}, {format_duration(time.time() - snapshot.received)} ago")
    for c in listed:
        figures = [f"cpu {c.cpu:.1f}%" if c.cpu is not None else "", f"mem {c.mem / 2**20:.0f} MiB"
                   if c.mem is not None else "", f"{c.restarts} restarts" if c.restarts else ""]
        state = c.state + (f" ({c.health})" if c.health else "")
        # Names and images were cleaned at the edge (no control or format characters reach a terminal).
        print(f"  {c.name:<24} {state:<22} {c.image}  " + " ".join(f for f in figures if f))
    return 0


def _cli_host(conn: sqlite3.Connection, ref: str, owner: int | None) -> Host:
    """The CLI sees every owner's hosts: a name two users share needs --owner."""
    if owner is not None:
        return service.resolve_host(conn, owner, ref)
    matches = [h for h in store.list_hosts(conn) if h.name == ref or (len(ref) >= 8 and h.key_id.startswith(ref))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ServiceError(f"no host named {ref!r}; `python -m mbot hosts` lists them")
    owners = ", ".join(str(h.owner) for h in matches)
    raise ServiceError(f"several users have a host named {ref!r} (owners {owners}): add --owner")


def _health(settings: Settings) -> int:
    import socket
    import ssl

    try:
        conn = store.connect(settings.db_path, readonly=True, busy_timeout=2.0)
        try:
            store.count_hosts(conn)
        finally:
            conn.close()
    except Exception as exc:  # any failure is "unhealthy", said in one line
        print(f"unhealthy: database: {exc}", file=sys.stderr)
        return 1
    try:
        # Read only: a health check during the first start must not race the server making the certificate.
        expected = tls.load_certificate(settings.data_dir).fingerprint
    except tls.TlsError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, settings.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls_socket:
                der = tls_socket.getpeercert(binary_form=True)
    except OSError as exc:
        print(f"unhealthy: port {settings.port}: {exc}", file=sys.stderr)
        return 1
    if der is None:
        print(f"unhealthy: port {settings.port} answers TLS without a certificate", file=sys.stderr)
        return 1
    seen = hashlib.sha256(der).hexdigest()
    if seen != expected:
        print(f"unhealthy: port {settings.port} answers with another certificate ({seen})", file=sys.stderr)
        return 1
    print(f"healthy: database ok, port {settings.port} answers TLS")
    return 0
