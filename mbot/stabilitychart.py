"""The stability test's chart: RTT over the test, lost probes marked. Blocking (matplotlib, OO API, Agg, like
mbot/charts.py): run it in trio.to_thread.run_sync under the charts' CapacityLimiter.

Up to BUCKETS points are drawn as they are; more (a 1 ms test runs to 600,000) are drawn per time bucket, as the
min-max band and the median line, and lost probes as one mark per bucket that lost any: the same picture in a
fraction of a second instead of many."""
from __future__ import annotations

import io
import math

import numpy as np

from .charts import COLORS, DPI, GRID, HEIGHT_IN, TEXT, WIDTH_IN
from .i18n import _
from .stability import StabilityRun, ms_text

LOST = "#d62728"
BUCKETS = 2000


def _buckets(x: np.ndarray, y: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bucket middles, min, median, max) of y per bucket of x."""
    keys = np.floor(x / width).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, y = keys[order], y[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    groups = np.split(y, starts[1:])
    mids = (keys[starts] + 0.5) * width
    return (mids, np.array([g.min() for g in groups]), np.array([np.median(g) for g in groups]),
            np.array([g.max() for g in groups]))


def render(run: StabilityRun, title: str) -> bytes:
    figures = run.figures()
    answered = run.answered_points()
    lost = np.array(run.lost_offsets())
    last = run.offset(len(run.rtts) - 1) if len(run.rtts) else 0.0
    span = max(run.spec.duration, last)
    # Imported with the first chart, not with the server (as in charts.py): most of a start's import time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if answered:
        x, y = np.array([p[0] for p in answered]), np.array([p[1] for p in answered])
        if len(answered) <= BUCKETS:
            ax.plot(x, y, color=COLORS[0], linewidth=1.0, marker=".", markersize=3, label="RTT")
        else:
            mids, low, median, high = _buckets(x, y, span / BUCKETS)
            ax.fill_between(mids, low, high, color=COLORS[0], alpha=0.25, linewidth=0, label=_("RTT min-max"))
            ax.plot(mids, median, color=COLORS[0], linewidth=0.8, label=_("RTT median"))
    top = figures.max if answered and math.isfinite(figures.max) else 1.0
    if len(lost):
        marks = np.unique(np.floor(lost / (span / BUCKETS))) * (span / BUCKETS) if len(lost) > BUCKETS else lost
        ax.plot(marks, np.full(len(marks), top * 1.05), linestyle="none", marker="|", markersize=10, color=LOST,
                label=_("lost ({n})", n=len(lost)))
    if answered:
        ax.axhline(figures.p50, color=COLORS[2], linewidth=0.8, linestyle="--", label=f"p50 {ms_text(figures.p50)}")
        ax.axhline(figures.p95, color=COLORS[3], linewidth=0.8, linestyle="--", label=f"p95 {ms_text(figures.p95)}")
    ax.set_ylim(0, top * 1.12)
    ax.set_xlim(0, span)
    ax.set_xlabel(_("seconds since the start"), color=TEXT)
    ax.set_ylabel(_("RTT (ms)"), color=TEXT)
    fig.suptitle(title, color=TEXT, fontsize=12)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.tick_params(colors=TEXT)
    if answered or len(lost):
        # Above the plot, where it hides neither the line nor the lost marks at the top.
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=9, ncols=5, frameon=False)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
