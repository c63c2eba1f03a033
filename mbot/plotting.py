"""A chart for a host: request -> tier -> data -> ChartSpec -> PNG. Shared by the bot and `python -m mbot plot`.

`build_spec` reads sqlite (run it through Database.read, or directly in the CLI); charts.render is matplotlib,
which the server runs in a worker thread under a CapacityLimiter so charts never stall ingest or the bot.
"""
from __future__ import annotations

import os
import sqlite3
from datetime import tzinfo
from pathlib import Path
from typing import Sequence

from . import charts, history, plotspec, protocol, rollup
from .charts import NoData
from .model import Host
from .plotspec import PlotUsageError
from .rollup import Tier

__all__ = ["NoData", "PlotUsageError", "available_series", "build_spec", "use_cache_dir"]

def use_cache_dir(data_dir: Path) -> None:
    """matplotlib rebuilds its font cache on every start unless it has a writable home (0.3 s each time)."""
    if "MPLCONFIGDIR" not in os.environ:
        path = data_dir / "mpl-cache"
        path.mkdir(mode=0o700, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(path)


def available_series(host: Host) -> list[str]:
    """The series the host reports now (its latest sample), named as history stores them."""
    return list(protocol.flatten(host.last_metrics)) if host.last_metrics else []


def build_spec(conn: sqlite3.Connection, host: Host, words: Sequence[str], span: float, limit: float | None,
               unit: str | None, tiers: Sequence[Tier], tz: tzinfo, now: float) -> charts.ChartSpec:
    """Raises PlotUsageError (the message lists the host's metrics) for metrics the host does not have."""
    gpus = [name if isinstance(name, str) else "" for name in host.facts.get("gpus") or ()]
    choices = plotspec.resolve_metrics(words, available_series(host), unit, gpus)
    start, end = now - span, now
    tier = rollup.choose_tier(start, end, tiers, now, interval=host.interval)
    step = tier.step(host.interval)
    data = history.load(conn, host.id, [c.series for c in choices], start, end, tier)
    lines = []
    for choice in choices:
        aggs, line_step = rollup.downsample(data[choice.series], rollup.MAX_POINTS, step)
        points = [(a.start, a.avg * choice.scale, a.min * choice.scale, a.max * choice.scale) for a in aggs]
        lines.append(charts.Line(choice.label, choice.unit, points, step=line_step if line_step != step else None))
    return charts.ChartSpec(
        title=plotspec.chart_title(host.name, choices, span), tz=tz, start=start, end=end, lines=lines, step=step,
        ylimit=limit, ylimit_unit=plotspec.limit_unit(choices, unit) if limit is not None else None)

