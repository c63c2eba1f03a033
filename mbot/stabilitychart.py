"""The stability test's chart: RTT over the test, lost probes marked. Blocking (matplotlib, OO API, Agg, like
mbot/charts.py): run it in trio.to_thread.run_sync under the charts' CapacityLimiter."""
from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .charts import COLORS, DPI, GRID, HEIGHT_IN, TEXT, WIDTH_IN
from .stability import StabilityRun, ms_text

LOST = "#d62728"


def render(run: StabilityRun, title: str) -> bytes:
    figures = run.figures()
    answered = run.answered_points()
    lost = run.lost_offsets()
    last = run.offset(len(run.rtts) - 1) if len(run.rtts) else 0.0
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    many = len(answered) > 2000
    if answered:
        ax.plot([x for x, _ in answered], [r for _, r in answered], color=COLORS[0], linewidth=0.6 if many else 1.0,
                marker=None if many else ".", markersize=3, label="RTT")
    top = figures.max if answered and math.isfinite(figures.max) else 1.0
    if lost:
        ax.plot(lost, [top * 1.05] * len(lost), linestyle="none", marker="|", markersize=10, color=LOST,
                label=f"lost ({len(lost)})")
    if answered:
        ax.axhline(figures.p50, color=COLORS[2], linewidth=0.8, linestyle="--", label=f"p50 {ms_text(figures.p50)}")
        ax.axhline(figures.p95, color=COLORS[3], linewidth=0.8, linestyle="--", label=f"p95 {ms_text(figures.p95)}")
    ax.set_ylim(0, top * 1.12)
    ax.set_xlim(0, max(run.spec.duration, last))
    ax.set_xlabel("seconds since the start", color=TEXT)
    ax.set_ylabel("RTT (ms)", color=TEXT)
    ax.set_title(title, color=TEXT, fontsize=12)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.tick_params(colors=TEXT)
    if answered or lost:
        ax.legend(loc="upper right", fontsize=9, ncols=4)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
