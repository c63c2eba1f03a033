"""`python -m mbot COMMAND`: the admin CLI. The only place in the server that prints."""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import trio

from . import (backup, checks, containers, control, gcpace, install, plotspec, selfwatch, service, stability, store,
               tls, users)
from .checks import CheckError
from .config import ConfigError, Settings, load_settings, prepare_data_dir
from .durations import format_duration
from .plotspec import PlotUsageError
from .service import ServiceError

log = logging.getLogger("mbot")

SERVER_LOCK = ".server.lock"  # held (shared) by a running server, so that new-cert can tell it is running


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mbot", description="mbot: a host monitor you run yourself.")
    parser.add_argument("--version", action="version",
                        version=f"mbot {backup.mbot_version()} (database schema v{store.SCHEMA_VERSION})")
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
    info = commands.add_parser("info", help="what a host is: CPU, memory, disks, network, GPUs, OS (as /info)")
    info.add_argument("name", help="host name (or the first 8+ characters of its key id)")
    info.add_argument("--owner", type=int, help="the owner's Telegram user id, when several users have that name")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    listing = commands.add_parser("containers", help="a host's containers: state, health, restarts, CPU, memory")
    listing.add_argument("name", help="host name (or the first 8+ characters of its key id)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--owner", type=int, help="the owner's Telegram user id, when several users have that name")
    commands.add_parser("fingerprint", help="print the SHA-256 fingerprint of the server certificate")
    commands.add_parser("new-cert", help="replace the server certificate (when its files are lost) and print what "
                                         "every agent then needs; the server must be stopped")
    commands.add_parser("health", help="exit 0 when the database opens and the agent port answers TLS with our "
                                       "certificate (for container HEALTHCHECKs)")
    rename = commands.add_parser("rename", help="rename a host (as /rename does in the chat)")
    rename.add_argument("old", metavar="OLD", help="its name (or the first 8+ characters of its key id)")
    rename.add_argument("new", metavar="NEW", help=service.NAME_RULE)
    rename.add_argument("--owner", type=int, help="the owner's Telegram user id, when several users have that name")
    plot = commands.add_parser("plot", help="draw a chart to a PNG file, as /plot does in the chat",
                               usage=plotspec.CLI.usage.removeprefix("usage: "), epilog=plotspec.CLI.examples,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    plot.add_argument("name", metavar="NAME", help="host name (or the first 8+ characters of its key id)")
    plot.add_argument("metrics", metavar="METRICS", help="e.g. cpu, cpu,gpu, ram, net, temps, disk:/home")
    plot.add_argument("span", metavar="SPAN", nargs="+",
                      help="e.g. 1h, 2d 3h, 1y (at most the longest MBOT_RETAIN_*); then LIMIT and UNIT may follow")
    plot.add_argument("--limit", type=float, help="top of the Y axis (the same as LIMIT)")
    plot.add_argument("--unit", help="b, kb, mb, gb, kib ... for ram/vram; bit, kbit, mbit, gbit for net; %%")
    plot.add_argument("--owner", type=int, help="the owner's Telegram user id, when several users have that name")
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png",
                      help="the PNG file to write (replaced once the chart is drawn)")
    top = commands.add_parser("top", help="a host's top processes by CPU, memory and VRAM, as /top does in the chat")
    top.add_argument("name", help="host name (or the first 8+ characters of its key id)")
    top.add_argument("--owner", type=int, help="the owner's Telegram user id, when several users have that name")
    top.add_argument("--json", action="store_true", help="machine-readable output")
    check = commands.add_parser("check", help="checks from a host: a URL or tcp://HOST:PORT its agent probes "
                                "(as /check and /checks in the chat)")
    check_commands = check.add_subparsers(dest="check_command", metavar="add|list|del", required=True)
    check_add = check_commands.add_parser("add", help="probe TARGET from host NAME every EVERY (default 1m, 10s..1d);"
                                          " alerts when it is down and when its certificate nears its end")
    check_add.add_argument("name", metavar="NAME", help="host name (or the first 8+ characters of its key id)")
    check_add.add_argument("target", metavar="URL|tcp://HOST:PORT")
    check_add.add_argument("every", metavar="EVERY", nargs="?", help="e.g. 30s, 5m, 1h")
    check_list = check_commands.add_parser("list", help="a host's checks and their latest results")
    check_list.add_argument("name", metavar="NAME", help="host name (or the first 8+ characters of its key id)")
    check_list.add_argument("--json", action="store_true", help="machine-readable output")
    check_del = check_commands.add_parser("del", help="remove a check and its alerts")
    check_del.add_argument("name", metavar="NAME", help="host name (or the first 8+ characters of its key id)")
    check_del.add_argument("check", metavar="CHECK", help="the check's name (as `check list` shows it) or target")
    nettest = commands.add_parser(
        "nettest", help="a speed or stability test of a host's link to this server, as /speedtest and /stability in "
                        "the chat (the server must be running: the test runs over its connection to the agent)",
        usage="python -m mbot nettest NAME (--speed | --stability [INTERVAL [DURATION]] [-o FILE.png]) "
              "[--owner ID] [--json]")
    nettest.add_argument("name", metavar="NAME", help="host name (or the first 8+ characters of its key id)")
    kind = nettest.add_mutually_exclusive_group(required=True)
    kind.add_argument("--speed", action="store_true", help="download and upload throughput (about 10 s each way)")
    kind.add_argument("--stability", nargs="*", metavar="INTERVAL [DURATION]",
                      help="a ping every INTERVAL (1ms..1s, default 100ms) for DURATION (up to 10m, default 60s): "
                           "RTT p50, p95, max, jitter and loss")
    nettest.add_argument("-o", "--output", metavar="FILE.png", help="with --stability: write the RTT chart there")
    nettest.add_argument("--json", action="store_true", help="machine-readable output")
    backup_cmd = commands.add_parser("backup", help="write one archive (mode 0600) with a consistent copy of the "
                                     "database, the certificate and its key; works while the server runs")
    backup_cmd.add_argument("file", nargs="?", metavar="FILE",
                            help="where to write it (default: mbot-backup-DATE.tar.gz in MBOT_BACKUP_DIR, else here)")
    restore_cmd = commands.add_parser("restore", help="restore an archive made by backup into the data directory "
                                      "(the server must be stopped; the files it replaces are moved aside)")
    restore_cmd.add_argument("file", metavar="FILE", help="the archive")
    for sub in (check_add, check_list, check_del, nettest):
        sub.add_argument("--owner", type=int, help="the owner's Telegram user id, when several users have that name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("MBOT_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        if settings.data_dir_warning:
            log.warning("%s", settings.data_dir_warning)
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
        if command == "rename":
            return _rename(settings, args.old, args.new, args.owner)
        if command == "fingerprint":
            print(_certificate(settings).fingerprint)
            return 0
        if command == "new-cert":
            return _new_cert(settings)
        if command == "backup":
            return _backup(settings, args.file)
        if command == "restore":
            return _restore(settings, args.file)
        if command == "plot":
            return _plot(settings, args)
        if command == "top":
            return _top(settings, args)
        if command == "info":
            return _info(settings, args)
        if command == "containers":
            return _containers(settings, args)
        if command == "health":
            return _health(settings)
        if command == "check":
            return _check(settings, args)
        if command == "nettest":
            return _nettest(settings, args)
    except (ConfigError, tls.CertificateRefused) as exc:
        print(f"mbot: {exc}", file=sys.stderr)
        return 2
    except (tls.TlsError, store.SchemaTooNew) as exc:
        print(f"mbot: {exc}", file=sys.stderr)
        return 1
    except (PlotUsageError, OutputError, NetTestUsage) as exc:  # a usage error, like argparse's: exit 2
        print(f"mbot: {exc.render(plotspec.CLI) if isinstance(exc, PlotUsageError) else exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"mbot: {exc}", file=sys.stderr)
        return 1
    except CheckError as exc:  # a usage error: exit 2
        print(f"mbot: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def _certificate(settings: Settings) -> tls.Certificate:
    """The server's certificate, made on first use; refused, not replaced, when its files are gone although hosts
    have been given its fingerprint (which is kept in the database for that moment)."""
    conn = store.connect(settings.db_path)
    try:
        known = store.get_kv(conn, tls.FINGERPRINT_KEY)
        pinned = selfwatch.remote_hosts(conn)  # the own agent gets the new fingerprint by itself
        cert = tls.ensure_certificate(settings.data_dir, _certificate_names(settings), pinned_hosts=pinned,
                                      known_fingerprint=known)
        if cert.fingerprint != known:
            if known and pinned:  # not made here (that is refused), so put in place by hand
                log.warning("the certificate in %s is not the one hosts were given (%s, now %s): agents pinned to "
                            "the old one refuse this server until they get the new fingerprint",
                            settings.data_dir, known, cert.fingerprint)
            with store.transaction(conn):
                store.set_kv(conn, tls.FINGERPRINT_KEY, cert.fingerprint)
    finally:
        conn.close()
    return cert


def _certificate_names(settings: Settings) -> list[str]:
    return [settings.public_host, _hostname(), "localhost", "127.0.0.1"]


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _serve(settings: Settings) -> int:
    with _server_lock(settings.data_dir, exclusive=False):  # shared: waits for a new-cert at work, never fails
        cert = _certificate(settings)  # first: a refusal comes at once, not after the imports below
        from . import app  # imported here: the server pulls in matplotlib and httpx, which other commands never need
        gcpace.tune()
        try:
            trio.run(app.serve, settings, cert)
        except* ConfigError as group:  # a port in use, an address not on this machine: one line, like a bad variable
            first: BaseException = group
            while isinstance(first, BaseExceptionGroup):  # nurseries nest their groups
                first = first.exceptions[0]
            raise first from None
    return 0


@contextlib.contextmanager
def _server_lock(data_dir: Path, *, exclusive: bool) -> Iterator[bool]:
    """A running server holds this shared from before it loads its certificate until it exits; new-cert takes it
    exclusively or gives up (False), so it never replaces the files under a server that would go on serving the old
    pair while `fingerprint` and `newkey` named the new one."""
    with open(data_dir / SERVER_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            yield False
        else:
            yield True


def _new_cert(settings: Settings) -> int:
    with _server_lock(settings.data_dir, exclusive=True) as free:
        if not free:
            print(f"mbot: a server is running on {settings.data_dir}: stop it, run new-cert, then start it again "
                  "(a running server keeps the certificate it loaded)", file=sys.stderr)
            return 1
        conn = store.connect(settings.db_path)
        try:
            old = store.get_kv(conn, tls.FINGERPRINT_KEY)
            cert = tls.replace_certificate(settings.data_dir, _certificate_names(settings))
            with store.transaction(conn):
                store.set_kv(conn, tls.FINGERPRINT_KEY, cert.fingerprint)
        finally:
            conn.close()
    was = f"the old one ({old})" if old else "the old one"
    print(f"# a new certificate replaces {was}: start the server again. Agents pinned to the old one refuse it "
          "until they get the new fingerprint; on each host, one of:\n"
          "#  - set AGENT_FINGERPRINT to the value below in the agent's .env, then restart the agent;\n"
          "#  - an agent without AGENT_FINGERPRINT trusted the server on first use: delete the fingerprint file its "
          "log names (~/.bot_fingerprint.json, or .env.fingerprint.json beside its .env), then restart it;\n"
          "#  - re-run the install line from /newkey.\n"
          f"AGENT_FINGERPRINT={cert.fingerprint}")
    return 0


def _backup(settings: Settings, file: str | None) -> int:
    now = time.time()
    target = Path(file) if file else (settings.backup_dir or Path.cwd()) / backup.default_name(now)
    try:
        made = backup.write_backup(settings.data_dir, target, now)
    except backup.BackupError as exc:
        print(f"mbot: {exc}", file=sys.stderr)
        return 1
    print(made.describe())
    return 0


def _restore(settings: Settings, file: str) -> int:
    with _server_lock(settings.data_dir, exclusive=True) as free:
        if not free:
            print(f"mbot: a server is running on {settings.data_dir}: stop it, restore, then start it again",
                  file=sys.stderr)
            return 1
        try:
            restored = backup.restore(Path(file), settings.data_dir, time.time())
        except backup.BackupError as exc:
            print(f"mbot: {exc}", file=sys.stderr)
            return 1
    aside = f"; the files it replaced are in {restored.moved_aside}" if restored.moved_aside else ""
    print(f"restored {file} into {settings.data_dir}: schema v{restored.schema}, {restored.hosts} hosts, certificate "
          f"{restored.fingerprint}{aside}. Start the server: agents reconnect with their old secrets.")
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
    endpoint = install.Endpoint(settings.public_host, settings.port, cert.fingerprint,
                                install.pin_of_pem(cert.cert_path.read_text()), settings.public_host_guessed)
    port = f"AGENT_PORT={settings.port}\n" if settings.port != 8000 else ""
    guess = install.guessed_note(endpoint)
    print(f"# host {key.name} (key {key.key_id}); the secret is shown only this once.\n"
          "# On the host, paste this (it installs the agent in /opt/mbot-agent as a systemd service and says when "
          "it is connected):\n"
          f"{install.one_liner(endpoint, key.secret)}\n"
          + (f"# {guess}\n" if guess else "")
          + "# Or run agent/mbot_agent.py by hand with these settings (in its .env or the environment):\n"
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
    recommended = install.agent_version(install.AGENT_FILE.read_bytes() if install.AGENT_FILE.is_file() else None)
    if as_json:
        print(json.dumps([{**s.__dict__, "agent_outdated": install.older(s.agent_version, recommended)}
                          for s in summaries], indent=2))
        return 0
    if not summaries:
        print("no hosts yet: python -m mbot newkey NAME")
    # Names that differ only in case are refused now; ones made before keep working (the exact spelling picks).
    alike: dict[tuple[int, str], list[str]] = {}
    for s in summaries:
        alike.setdefault((s.owner, s.name.lower()), []).append(s.name)
    for s in summaries:
        state = "online" if s.online else "offline"
        seen = f"last seen {format_duration(now - s.last_seen)} ago" if s.last_seen else "never seen"
        now_part = ", ".join(part for part in (
            f"cpu {s.cpu:.0f}%" if s.cpu is not None else "",
            f"ram {s.ram:.0f}%" if s.ram is not None else "") if part)
        owner = f" (owner {s.owner})" if s.owner else ""
        dropped = f", {s.dropped} dropped during an outage" if s.dropped else ""
        others = [name for name in alike[(s.owner, s.name.lower())] if name != s.name]
        clash = f", same name as {' and '.join(others)} but for case" if others else ""
        outdated = (f", agent {s.agent_version} is older than {recommended}"
                    if install.older(s.agent_version, recommended) else "")
        print(f"{s.name}{owner} {state}, {seen}, {s.samples} samples{dropped}" + (f", {now_part}" if now_part else "")
              + clash + outdated)
    if any(install.older(s.agent_version, recommended) for s in summaries):
        print("note: an older agent updates in place: on its machine, the install line from newkey with "
              "`-- --update` instead of the secret")
    for (owner_id, _), names in alike.items():
        if len(names) > 1:
            flag = f" --owner {owner_id}" if owner_id else ""
            print(f"note: {' and '.join(names)} differ only in case; type the exact name to pick one, and rename all "
                  f"but one: python -m mbot rename {names[-1]} NEWNAME{flag}" + (" (or /rename in the chat)"
                                                                                 if owner_id else ""))
    return 0


def _rename(settings: Settings, old: str, new: str, owner: int | None) -> int:
    conn = store.connect(settings.db_path)
    try:
        with store.transaction(conn):
            host = service.any_owner_host(conn, old, owner)
            service.rename(conn, host.owner, host.name, new)  # the exact name: it picks this host alone
    finally:
        conn.close()
    print(f"{host.name} is now {new} (its agent needs no change)")
    return 0


class OutputError(Exception):
    """`plot -o` names something the chart cannot be written to; said before any drawing."""


def _output_part(name: str) -> Path:
    """Check -o before anything is drawn and return a new empty file beside it: the chart is written there and
    moved over the target only once it is whole, so a failure (no data, a full disk) leaves an existing file as
    it was. Refused: a name not ending in .png, a directory, a missing directory, a target that is not a regular
    file or not writable, a place where no file can be made. A symbolic link at that name is replaced, not followed:
    a link planted in /tmp cannot send a root's chart over another file."""
    target = Path(name)
    try:
        if name.endswith(("/", os.sep)) or target.is_dir():
            raise OutputError(f"-o {name}: is a directory; name the file, like {target / 'chart.png'}")
        if target.suffix.lower() != ".png":
            raise OutputError(f"-o {name}: the chart is a PNG; give a file name ending in .png")
        if not target.parent.is_dir():
            raise OutputError(f"-o {name}: there is no directory {target.parent}")
        try:
            found = target.lstat()
        except FileNotFoundError:
            pass  # a new file; os.lstat still says when the name itself cannot be (too long ...)
        else:
            if stat.S_ISREG(found.st_mode) and not os.access(target, os.W_OK):
                raise OutputError(f"-o {name}: the file is not writable")
            if not (stat.S_ISREG(found.st_mode) or stat.S_ISLNK(found.st_mode)):
                raise OutputError(f"-o {name}: exists and is not a regular file")
        part = target.parent / f".{secrets.token_hex(6)}.png.part"
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputError(f"-o {name}: cannot write there ({exc.strerror or exc})") from None
    except ValueError as exc:  # a NUL in the name
        raise OutputError(f"-o {name!r}: {exc}") from None
    return part


def _plot(settings: Settings, args: argparse.Namespace) -> int:
    part = _output_part(args.output)  # first: a wrong -o is said at once, not after a chart was drawn for nothing
    from . import charts, plotting

    words = [args.name, args.metrics, *args.span]
    if args.limit is not None:
        words.append(f"{args.limit:g}")
    if args.unit:
        words.append(args.unit)
    longest = max(tier.retention for tier in settings.tiers)
    try:
        plotting.use_cache_dir(settings.data_dir)
        conn = store.connect(settings.db_path, readonly=True)
        try:
            request = plotspec.parse_plot(words, max_span=longest)
            host = service.any_owner_host(conn, request.host, args.owner)
            spec = plotting.build_spec(conn, host, request.metrics, request.span, request.limit, request.unit,
                                       settings.tiers, settings.tz, time.time())
        finally:
            conn.close()
        try:
            png = charts.render(spec)
        except charts.NoData:
            print(f"mbot: no data from {host.name} for {spec.title.split(' · ')[-1]}", file=sys.stderr)
            return 1
        try:
            part.write_bytes(png)
            os.replace(part, args.output)
        except OSError as exc:
            print(f"mbot: -o {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    finally:
        part.unlink(missing_ok=True)
    print(f"{args.output}: {spec.title}")
    return 0


def _containers(settings: Settings, args: argparse.Namespace) -> int:
    conn = store.connect(settings.db_path, readonly=True)
    try:
        host = service.any_owner_host(conn, args.name, args.owner)
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


def _top(settings: Settings, args: argparse.Namespace) -> int:
    from . import processes

    conn = store.connect(settings.db_path, readonly=True)
    try:
        host = service.any_owner_host(conn, args.name, args.owner)
        snapshot = store.latest_snapshot(conn, host.id, processes.KIND)
    finally:
        conn.close()
    now = time.time()
    if args.json:
        print(json.dumps(processes.as_json(host, snapshot, now), indent=2, ensure_ascii=False))
    else:
        print(processes.as_text(host, snapshot, now))
    return 0


def _info(settings: Settings, args: argparse.Namespace) -> int:
    from . import inventory

    conn = store.connect(settings.db_path, readonly=True)
    try:
        host = service.any_owner_host(conn, args.name, args.owner)
        services = store.services_items(conn, host.id)
    finally:
        conn.close()
    found = host.facts.get("inventory")
    found = found if isinstance(found, dict) else None
    if args.json:
        print(json.dumps({"name": host.name, "inventory": found, "services": services}, indent=2, sort_keys=True))
        return 0
    now = time.time()
    print(host.name)
    print("\n".join(inventory.lines(found, now, services) if found else
                    inventory.service_lines(services, now) + [inventory.NO_INVENTORY]))
    return 0


def _check(settings: Settings, args: argparse.Namespace) -> int:
    """`check add|list|del`: the running server notices within seconds (mbot/checksync.py) and tells the agent."""
    if args.check_command == "list":
        conn = store.connect(settings.db_path, readonly=True)
        try:
            host = service.any_owner_host(conn, args.name, args.owner)
            specs = store.checks_of_host(conn, host.id)
            snapshot = store.latest_snapshot(conn, host.id, checks.FRAME)
        finally:
            conn.close()
        by_name = {item.get("name"): item for item in snapshot.items} if snapshot is not None else {}
        if args.json:
            print(json.dumps([{**spec.wire(), "result": by_name.get(spec.name)} for spec in specs], indent=2))
        elif not specs:
            print(f"{host.name} has no checks")
        else:
            print("\n".join(checks.result_line(spec, by_name.get(spec.name)) for spec in specs))
        return 0
    if args.check_command == "add":
        target, every = checks.validate_target(args.target), checks.parse_every(args.every)
    conn = store.connect(settings.db_path)
    try:
        with store.transaction(conn):
            host = service.any_owner_host(conn, args.name, args.owner)
            if args.check_command == "add":
                spec = service.add_check(conn, host, target, every)
            else:
                spec = service.delete_check(conn, host, args.check)
    finally:
        conn.close()
    if args.check_command == "add":
        print(f"{host.name} checks {spec.target} every {format_duration(spec.every)} as {spec.name} (alerts: "
              f"check:{spec.name} down, cert:{spec.name} below {checks.DEFAULT_CERT_DAYS:.0f} days); the check runs "
              "with the agent's network access")
    else:
        print(f"removed check {spec.name} ({spec.target}) of {host.name} and its alerts")
    return 0


class NetTestUsage(Exception):
    """nettest's arguments do not make a test; exit 2, like argparse."""


class NoServer(Exception):
    """Nothing listens on the control socket."""


READ_TIMEOUT = 120.0  # the longest the server may be silent: a speed test says nothing for up to 2 x (10 + 15) s


def _nettest(settings: Settings, args: argparse.Namespace) -> int:
    """Asks the running server over its control socket (mbot/control.py): progress on stderr, figures on stdout."""
    test = control.NetTest(args.name, args.owner, "speed")
    if args.stability is not None:
        if len(args.stability) > 2:
            raise NetTestUsage("nettest: --stability takes at most INTERVAL and DURATION")
        try:
            spec = stability.parse_stability([args.name, *args.stability])
        except stability.StabilityUsageError as exc:
            raise NetTestUsage(f"nettest: {str(exc).splitlines()[-1]}") from None
        test = control.NetTest(args.name, args.owner, "stability", spec.interval, spec.duration,
                               chart=args.output is not None)
    elif args.output is not None:
        raise NetTestUsage("nettest: -o is for --stability (a speed test has no chart)")
    part = _output_part(args.output) if args.output is not None else None  # a wrong -o is said before the test
    path = settings.data_dir / control.CONTROL_FILE
    try:
        try:
            result = _ask(path, test, progress=lambda line: print(line, file=sys.stderr, flush=True))
        except NoServer:
            print(f"mbot: no running server on {settings.data_dir}: start it first", file=sys.stderr)
            return 1
        except control.ControlError as exc:
            print(f"mbot: {exc}", file=sys.stderr)
            return 1
        png = result.pop("chart_png", None)
        if part is not None:
            try:
                part.write_bytes(base64.b64decode(png if isinstance(png, str) else "", validate=True))
                os.replace(part, args.output)
            except (OSError, ValueError) as exc:
                print(f"mbot: -o {args.output}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
                return 1
    finally:
        if part is not None:
            part.unlink(missing_ok=True)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else result.get("text", ""))
    if part is not None:
        print(f"{args.output}: the RTT chart", file=sys.stderr)
    return 0


def _ask(path: Path, test: control.NetTest, progress: Callable[[str], None]) -> dict[str, Any]:
    """One request on the control socket; its result, or ControlError with the server's one line."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoServer() from None
        except OSError as exc:
            raise control.ControlError(f"cannot reach the server at {path}: {exc.strerror or exc}") from None
        sock.settimeout(READ_TIMEOUT)
        sock.sendall(control.request_line(test))
        reader = sock.makefile("rb")
        while True:
            line = reader.readline(control.MAX_RESULT_LINE + 1)
            if not line.endswith(b"\n"):
                raise control.ControlError("the server ended the connection without an answer" if len(line) <=
                                           control.MAX_RESULT_LINE else "the server's answer is too long")
            response = control.parse_response(line)
            if response.kind == "progress":
                progress(response.value)
            elif response.kind == "error":
                raise control.ControlError(response.value)
            else:
                return dict(response.value)
    except TimeoutError:
        raise control.ControlError(f"the server said nothing for {READ_TIMEOUT:g} s") from None
    except OSError as exc:
        raise control.ControlError(f"the connection to the server failed: {exc.strerror or exc}") from None
    finally:
        sock.close()


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
