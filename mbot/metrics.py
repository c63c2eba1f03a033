"""Prometheus text exposition of what mbot knows: every host's latest values, and the server's own health.

Pure: `render()` turns values into the text format (version 0.0.4); the HTTP edge is mbot/metrics_http.py. Names
follow Prometheus conventions: snake_case, base units (bytes, seconds, ratios 0-1 instead of percent), `_total` on
counters, HELP and TYPE once per family.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from . import series as catalogue
from .faults import TASKS, Faults
from .model import Host

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """A cumulative histogram with fixed buckets (seconds), cheap enough to observe every commit."""

    def __init__(self, buckets: Iterable[float] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                                   2.5, 5.0, 10.0)) -> None:
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


@dataclass
class ServerStats:
    connected_agents: int
    samples_ingested: int
    commit_latency: Histogram
    telegram_errors: Mapping[str, int] = field(default_factory=dict)
    outbox_depth: int | None = None
    samples_rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> samples acked, not stored
    limits_exceeded: Mapping[str, int] = field(default_factory=dict)  # limit -> connections closed for it
    preauth_waiting: int = 0
    preauth_refused: int = 0
    preauth_evicted: int = 0
    backups: BackupStats | None = None  # with MBOT_BACKUP_DIR


@dataclass
class BackupStats:
    """The server's own backups (MBOT_BACKUP_DIR): kept by the backup task, read by /metrics."""

    made: int = 0
    failures: int = 0
    last_success: float | None = None  # when the last one was written (wall clock)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Families:
    """Collects samples per family so each HELP/TYPE is written once, whatever order hosts come in."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        family = self._families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{_labels(labels or {})} {_number(value)}")

    def add_lines(self, name: str, kind: str, help_text: str, lines: list[str]) -> None:
        self._families.setdefault(name, (kind, help_text, []))[2].extend(lines)

    def merge(self, other: _Families) -> None:
        for name, (kind, help_text, lines) in other._families.items():
            self.add_lines(name, kind, help_text, lines)

    def text(self) -> str:
        out: list[str] = []
        for name, (kind, help_text, lines) in self._families.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


def _host_families(f: _Families, host: Host, now: float) -> None:
    # Names are unique per owner only: the public key id keeps two users' "box1" apart.
    hk = {"host": host.name, "key": host.key_id}
    online = host.is_online(now)
    f.add("mbot_host_up", "gauge", "1 when the host's agent was seen within three intervals.", 1 if online else 0, hk)
    if host.last_seen is not None:
        f.add("mbot_host_last_seen_timestamp_seconds", "gauge", "When the host's agent was last heard from.",
              host.last_seen, hk)
    f.add("mbot_host_samples_dropped_total", "counter", "Samples the agent dropped from a full spool.",
          host.dropped, hk)
    f.add("mbot_host_samples_rejected_total", "counter",
          "Samples acked but not stored: their timestamp was outside the window the server accepts.",
          host.rejected, hk)
    if not online:
        return  # its last values are stale: a gauge Prometheus keeps seeing would pass them off as current
    for row, labels, value in catalogue.labelled_values(host.last_metrics):
        prom = row.prom
        if prom is not None:
            extra = {prom.labels[k]: v for k, v in labels.items() if k in prom.labels}
            f.add(prom.name, "counter" if row.kind == catalogue.COUNTER else "gauge", prom.help, value / prom.per,
                  {**hk, **extra})


def render(hosts: Iterable[Host], stats: ServerStats, now: float, isolated: Faults | None = None) -> str:
    """The exposition text. `isolated` is the server's record of items that failed alone: exported, and told about
    any host this render has to leave out."""
    isolated = isolated or Faults()
    f = _Families()
    for host in hosts:
        # A host whose stored values are damaged is left out of this scrape; the others are exported. Its lines
        # are built apart first, so a failure halfway leaves no partial family behind.
        part = _Families()
        try:
            _host_families(part, host, now)
        except Exception as exc:
            isolated.isolated("metrics", f"host {host.name!r}", exc)
            continue
        f.merge(part)
    f.add("mbot_connected_agents", "gauge", "Agents connected right now.", stats.connected_agents)
    f.add("mbot_samples_ingested_total", "counter", "Samples committed since the server started.",
          stats.samples_ingested)
    hist = stats.commit_latency
    name = "mbot_ingest_commit_seconds"
    lines, running = [], 0
    for bound, count in zip([*hist.bounds, math.inf], hist.counts):
        running += count
        lines.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
    lines += [f"{name}_sum {_number(hist.sum)}", f"{name}_count {hist.count}"]
    f.add_lines(name, "histogram", "Seconds from a sample reaching the server to its commit.", lines)
    for kind in ("429", "5xx", "network", "timeout", "rejected"):
        f.add("mbot_telegram_api_errors_total", "counter", "Failed Telegram API attempts by kind.",
              stats.telegram_errors.get(kind, 0), {"kind": kind})
    if stats.outbox_depth is not None:
        f.add("mbot_telegram_outbox_depth", "gauge", "Messages queued for Telegram.", stats.outbox_depth)
    failures = isolated.counts
    for task in sorted(set(failures) | set(TASKS)):
        f.add("mbot_isolated_failures_total", "counter",
              "Items (a frame, a row, an update, a host's values) that raised and were skipped while the task went on.",
              failures.get(task, 0), {"task": task})
    for reason, count in sorted(stats.samples_rejected.items()):
        f.add("mbot_samples_rejected_total", "counter",
              "Samples acked but not stored: their timestamp was outside the window the server accepts.",
              count, {"reason": reason})
    for limit, count in sorted(stats.limits_exceeded.items()):
        f.add("mbot_limit_exceeded_total", "counter", "Agent connections closed for going over a limit.",
              count, {"limit": limit})
    f.add("mbot_preauth_connections", "gauge", "Connections waiting to authenticate.", stats.preauth_waiting)
    f.add("mbot_preauth_refused_total", "counter", "Connections refused before authentication: too many from "
          "one address.", stats.preauth_refused)
    f.add("mbot_preauth_evicted_total", "counter", "Waiting connections closed to make room for new ones.",
          stats.preauth_evicted)
    if stats.backups is not None:
        f.add("mbot_backups_total", "counter", "Backups the server made in MBOT_BACKUP_DIR.", stats.backups.made)
        f.add("mbot_backup_failures_total", "counter", "Backups the server failed to make (each also logged).",
              stats.backups.failures)
        if stats.backups.last_success is not None:
            f.add("mbot_backup_last_success_timestamp_seconds", "gauge", "When the last backup was written.",
                  stats.backups.last_success)
    return f.text()
