"""THE nursery tree: every long-running task of the server is started here and nowhere else.

    serve(settings)
      root nursery
        writer                      single sqlite writer; outlives the services so it can flush them
        services nursery
          agent listener            -> one task per agent connection (AgentHub)
          listener processes        (with MBOT_LISTENERS > 1) N - 1 more processes serving agents on the same
                                    sockets, their frames committed here (mbot/listenerpool.py)
          control socket            DATA_DIR/control.sock (0600): `nettest` from the CLI, one task per
                                    connection (mbot/controlsock.py)
          alerting                  the alert engine's timers; fed by the writer's commits
          check sync                checks from the host: the agents' lists and their alert rules (checksync.py)
          history.maintain          rollups (by arrival, bounded steps) and retention
          telegram (with BOT_TOKEN) outbox sender (rate-limited)  +  bot: update poller -> handlers,
                                    and the bot's own nursery for work that outlives an update
          metrics endpoint          (with MBOT_METRICS_PORT) plain HTTP /metrics for Prometheus
          backups                   (with MBOT_BACKUP_DIR) one every MBOT_BACKUP_EVERY, the newest kept
          own agent                 (unless MBOT_WATCH_SELF=0) the real agent as a child process, watching this
                                    machine over loopback TLS (mbot/selfwatch.py)
          signal watcher            SIGINT/SIGTERM -> stop()
      stop(): agents closed with 1012 -> services cancelled -> writer drains and commits -> return
"""
from __future__ import annotations

import contextlib
import html
import logging
import signal
import time
from functools import partial
from pathlib import Path
from typing import Callable
from dataclasses import dataclass, field

import trio

from . import backup, control, history, install, metrics, plotting, protocol, selfwatch, store, tls
from .agents import AgentHub, load_downloads
from .alerting import Alerting
from .checksync import CheckSync
from .controlsock import ControlServer
from .config import Settings, mbot_command
from .faults import Faults
from .i18n import _
from .limits import PreAuthGate, preauth_total
from .listenerpool import ListenerPool
from .listening import raise_nofile_limit
from .metrics import BackupStats
from .metrics_http import serve_metrics
from .model import Host
from .session import GatherPolicy
from .store import Database
from .telegram.api import BotApi, quiet_httpx_logging
from .telegram.bot import Bot
from .telegram.outbox import Outbox
from .writer import Writer

log = logging.getLogger(__name__)


@dataclass
class Server:
    """Handed to whoever started serve(): what is running, and how to stop it."""

    port: int
    fingerprint: str
    hub: AgentHub
    writer: Writer
    db: Database
    metrics_port: int | None = None
    alerting: Alerting | None = None
    selfwatch: selfwatch.SelfWatch | None = None
    backups: BackupStats | None = None  # with MBOT_BACKUP_DIR
    control_path: Path | None = None  # the control socket (None: it could not be made)
    bot: Bot | None = None  # with BOT_TOKEN
    listeners: ListenerPool | None = None  # with MBOT_LISTENERS > 1
    _stop: trio.Event = field(default_factory=trio.Event)
    _stopped: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def aclose(self) -> None:
        """Stop and wait until everything is committed and closed."""
        self.stop()
        await self._stopped.wait()


async def serve(settings: Settings, cert: tls.Certificate, *, handle_signals: bool = True,
                outbox: Outbox | None = None, clock: Callable[[], float] = time.time,
                task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the server until stop() or a signal; returns after everything pending is committed.

    `outbox` lets tests pass one with a faster rate limit than Telegram's (the default); `clock` (wall time for
    alerts and the bot) lets them move time forward instead of waiting for it."""
    ssl_context = tls.server_context(cert)
    log.info("data directory: %s", settings.data_dir)
    plotting.use_cache_dir(settings.data_dir)
    nofile = raise_nofile_limit()
    log.info("open-files limit: %d (room for about %d agents; at most %d connections may wait to authenticate)",
             nofile, max(0, nofile - 64), preauth_total(nofile))
    faults = Faults()
    db = await trio.to_thread.run_sync(Database, settings.db_path)
    writer = await trio.to_thread.run_sync(partial(Writer, settings.db_path, faults=faults))
    hub = AgentHub(db, writer, gate=PreAuthGate(total=preauth_total(nofile)))
    hub.gather_policy = GatherPolicy.for_processes(settings.listeners)  # each process takes its share of frames
    pin = install.pin_of_pem(await trio.to_thread.run_sync(cert.cert_path.read_text))
    if not settings.bot_enabled:
        log.info("BOT_TOKEN is not set: running ingest only, the Telegram bot is off")
    quiet_httpx_logging()
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as root:
        root.start_soon(writer.run)
        try:
            async with trio.open_nursery() as services:
                port = await services.start(partial(hub.listen, settings.host, settings.port, ssl_context,
                                                    shared=settings.listeners > 1))
                server = Server(port=port, fingerprint=cert.fingerprint, hub=hub, writer=writer, db=db)
                endpoint = install.Endpoint(settings.public_host, settings.port or port, cert.fingerprint, pin,
                                            settings.public_host_guessed)
                hub.downloads = await trio.to_thread.run_sync(load_downloads, endpoint)
                if settings.listeners > 1:
                    server.listeners = ListenerPool(hub, writer, settings.db_path, cert, settings.listeners - 1)
                    await services.start(server.listeners.run)
                server.control_path = await services.start(
                    ControlServer(settings.data_dir / control.CONTROL_FILE, db, hub).serve)
                alerting = server.alerting = Alerting(db, writer, repeat=settings.alert_repeat, clock=clock,
                                                      reboot_grace=settings.reboot_grace, tz=settings.tz,
                                                      disk_forecast=settings.disk_forecast, tiers=settings.tiers)
                await services.start(alerting.run)
                await services.start(CheckSync(db, hub, alerting).run)
                services.start_soon(partial(history.maintain, writer, settings.tiers, clock=clock))
                api: BotApi | None = None
                if settings.bot_token is not None:  # bot_enabled, spelled so that the type checker sees a str
                    api = await stack.enter_async_context(BotApi(settings.telegram_api_url, settings.bot_token))
                    outbox = outbox or Outbox()
                    services.start_soon(outbox.run)
                    bot = Bot(settings, api, outbox, db, writer, hub, alerting, endpoint=endpoint, clock=clock)
                    hub.on_limit = partial(_tell_limit, bot)
                    server.bot = bot
                    await services.start(bot.run)
                if settings.metrics_port is not None:
                    render = partial(_render_metrics, server, api, outbox if api else None)
                    server.metrics_port = await services.start(partial(
                        serve_metrics, settings.metrics_host, settings.metrics_port, render, faults=faults))
                if handle_signals:
                    services.start_soon(_stop_on_signal, server)
                if settings.backup_dir is not None:
                    server.backups = BackupStats()
                    services.start_soon(partial(backup.keep_backups, settings.data_dir, settings.backup_dir,
                                                settings.backup_every, settings.backup_keep, server.backups,
                                                clock=clock))
                own = selfwatch.plan_for(settings)
                log.info("%s", own.why)
                if own.watch:
                    server.selfwatch = selfwatch.SelfWatch(settings, port, cert.fingerprint, writer.call,
                                                           clock=clock)
                    services.start_soon(server.selfwatch.run, own)
                log.info("mbot is up: agents on port %d, certificate fingerprint %s", port, cert.fingerprint)
                if settings.public_host_guessed:
                    log.info("MBOT_PUBLIC_HOST is not set: new keys tell agents to reach this server at %s (the "
                             "address of this machine's default route); if other machines reach it by another name "
                             "or address, set MBOT_PUBLIC_HOST to that", settings.public_host)
                for line in next_steps(settings, remote_hosts=await db.read(selfwatch.remote_hosts)):
                    log.info("next: %s", line)
                task_status.started(server)
                await server._stop.wait()
                log.info("shutting down: closing %d agent connection(s)", len(hub.connections))
                if server.listeners is not None:
                    await server.listeners.closing(protocol.CLOSE_RESTART, "server restarting or stopping; "
                                                   "reconnect in a few seconds")
                await hub.close_all(protocol.CLOSE_RESTART, "server restarting or stopping; reconnect in a few seconds")
                services.cancel_scope.cancel()
        finally:
            # Whatever ended the services (stop, a crash, cancellation), what was queued still gets committed.
            writer.close()
    log.info("stopped; %d samples committed in this run", writer.committed_samples)
    server._stopped.set()


def next_steps(settings: Settings, *, remote_hosts: int) -> list[str]:
    """What a newcomer does next, said once at start: the chat, then the first host. Quiet once there are hosts."""
    steps = []
    if not settings.bot_enabled:
        steps.append("the Telegram bot is off: make a bot with @BotFather and start mbot with BOT_TOKEN=<its token>")
    if not remote_hosts:
        steps.append(f"add a host: run `{mbot_command()} newkey NAME` (or send /newkey NAME to the bot) and paste "
                     "the line it prints on that machine")
    return steps


def _tell_limit(bot: Bot, host: Host, limit: str, detail: str) -> None:
    # Said in the owner's language (made by tell_owner inside it); `detail` comes from the limits in English.
    bot.tell_owner(host.owner, lambda: _("<b>{name}</b> went over its limit of {limit}: {detail}. Its agent was "
                                         "disconnected and will retry; the server keeps everything it had stored.",
                                         name=html.escape(host.name), limit=html.escape(limit),
                                         detail=html.escape(detail)))


async def _render_metrics(server: Server, api: BotApi | None, outbox: Outbox | None) -> str:
    db, hub, writer = server.db, server.hub, server.writer
    hosts = await db.read(store.list_hosts)
    stats = metrics.ServerStats(
        connected_agents=len(hub.connections), samples_ingested=writer.committed_samples,
        commit_latency=writer.commit_latency, telegram_errors=dict(api.errors) if api else {},
        outbox_depth=outbox.depth if outbox else None, samples_rejected=dict(writer.rejected_samples),
        limits_exceeded=dict(hub.limits_exceeded), preauth_waiting=len(hub.gate),
        preauth_refused=hub.gate.refused, preauth_evicted=hub.gate.evicted, backups=server.backups)
    return await trio.to_thread.run_sync(metrics.render, hosts, stats, time.time(), writer.faults)


async def _stop_on_signal(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("got %s", signal.Signals(signum).name)
            server.stop()
            return
