"""THE nursery tree: every long-running task of the server is started here and nowhere else.

    serve(settings)
      root nursery
        writer                      single sqlite writer; outlives the services so it can flush them
        services nursery
          agent listener            -> one task per agent connection (AgentHub)
          alerting                  the alert engine's timers; fed by the writer's commits
          history.maintain          rollups (by arrival, bounded steps) and retention
          telegram (with BOT_TOKEN) outbox sender (rate-limited)  +  bot: update poller -> handlers,
                                    and the bot's own nursery for work that outlives an update
          metrics endpoint          (with MBOT_METRICS_PORT) plain HTTP /metrics for Prometheus
          signal watcher            SIGINT/SIGTERM -> stop()
      stop(): agents closed with 1001 -> services cancelled -> writer drains and commits -> return
"""
from __future__ import annotations

import contextlib
import logging
import signal
import time
from functools import partial
from typing import Callable
from dataclasses import dataclass, field

import trio

from . import history, metrics, plotting, protocol, store, tls
from .agents import AgentHub
from .alerting import Alerting
from .config import Settings
from .metrics_http import serve_metrics
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
    plotting.use_cache_dir(settings.data_dir)
    db = await trio.to_thread.run_sync(Database, settings.db_path)
    writer = await trio.to_thread.run_sync(Writer, settings.db_path)
    hub = AgentHub(db, writer)
    if not settings.bot_enabled:
        log.info("BOT_TOKEN is not set: running ingest only, the Telegram bot is off")
    quiet_httpx_logging()
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as root:
        root.start_soon(writer.run)
        try:
            async with trio.open_nursery() as services:
                port = await services.start(hub.listen, settings.host, settings.port, ssl_context)
                server = Server(port=port, fingerprint=cert.fingerprint, hub=hub, writer=writer, db=db)
                alerting = server.alerting = Alerting(db, writer, repeat=settings.alert_repeat, clock=clock)
                await services.start(alerting.run)
                services.start_soon(partial(history.maintain, writer, settings.tiers, clock=clock))
                api: BotApi | None = None
                if settings.bot_enabled:
                    api = await stack.enter_async_context(BotApi(settings.telegram_api_url, settings.bot_token))
                    outbox = outbox or Outbox()
                    services.start_soon(outbox.run)
                    bot = Bot(settings, api, outbox, db, writer, hub, alerting, fingerprint=cert.fingerprint,
                              agent_port=settings.port or port, clock=clock)
                    await services.start(bot.run)
                if settings.metrics_port is not None:
                    render = partial(_render_metrics, db, hub, writer, api, outbox if api else None)
                    server.metrics_port = await services.start(serve_metrics, settings.metrics_host,
                                                               settings.metrics_port, render)
                if handle_signals:
                    services.start_soon(_stop_on_signal, server)
                log.info("mbot is up: agents on port %d, certificate fingerprint %s", port, cert.fingerprint)
                task_status.started(server)
                await server._stop.wait()
                log.info("shutting down: closing %d agent connection(s)", len(hub.connections))
                await hub.close_all(protocol.CLOSE_GOING_AWAY, "server shutting down")
                services.cancel_scope.cancel()
        finally:
            # Whatever ended the services (stop, a crash, cancellation), what was queued still gets committed.
            writer.close()
    log.info("stopped; %d samples committed in this run", writer.committed_samples)
    server._stopped.set()


async def _render_metrics(db: Database, hub: AgentHub, writer: Writer, api: BotApi | None,
                          outbox: Outbox | None) -> str:
    hosts = await db.read(store.list_hosts)
    stats = metrics.ServerStats(
        connected_agents=len(hub.connections), samples_ingested=writer.committed_samples,
        commit_latency=writer.commit_latency, telegram_errors=dict(api.errors) if api else {},
        outbox_depth=outbox.depth if outbox else None)
    return await trio.to_thread.run_sync(metrics.render, hosts, stats, time.time())


async def _stop_on_signal(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("got %s", signal.Signals(signum).name)
            server.stop()
            return
