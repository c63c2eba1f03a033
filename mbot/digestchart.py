"""The daily digest's picture (mbot.digest): a row per host, its name, CPU, RAM and disk sparklines over the last 24 h
and its uptime and alert count. Blocking (matplotlib, OO API, Agg, like mbot/charts.py): run it in
trio.to_thread.run_sync under the charts' CapacityLimiter."""
from __future__ import annotations

import io
from typing import Sequence

from .charts import COLORS, DPI, GRID, TEXT, WIDTH_IN
from .digest import HostDay, row_text
from .i18n import _

ROWS = 30  # hosts drawn at most; the caption names the rest
ROW_IN = 0.55  # inches per host row


def render(days: Sequence[HostDay], start: float, end: float, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = list(days[:ROWS])
    rows = max(1, len(shown))
    height = 0.9 + ROW_IN * rows
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    top = 1 - 0.55 / height
    bottom = 0.1 / height
    fig.text(0.01, 1 - 0.3 / height, title, fontsize=13, color=TEXT, va="center")
    columns = ((_("CPU, 24 h"), "cpu", COLORS[0]), (_("RAM, 24 h"), "ram", COLORS[2]),
               (_("fullest disk, 24 h"), "disk", COLORS[3]))
    left, name_w, spark_w, gap = 0.01, 0.16, 0.19, 0.012
    for c, (label, _field, _color) in enumerate(columns):
        fig.text(left + name_w + c * (spark_w + gap) + spark_w / 2, top + 0.1 / height, label, fontsize=10,
                 color=TEXT, ha="center", va="bottom")
    row_h = (top - bottom) / rows
    for r, day in enumerate(shown):
        y0 = top - (r + 1) * row_h
        fig.text(left, y0 + row_h / 2, day.name[:22], fontsize=11, color=TEXT, va="center")
        for c, (_label, field, color) in enumerate(columns):
            ax = fig.add_axes((left + name_w + c * (spark_w + gap), y0 + row_h * 0.12, spark_w, row_h * 0.76))
            points = getattr(day, field)
            if points:
                ax.fill_between([t for t, _v in points], [v for _t, v in points], color=color, alpha=0.25,
                                linewidth=0)
                ax.plot([t for t, _v in points], [v for _t, v in points], color=color, linewidth=1.0)
                ax.text(0.98, 0.9, f"{points[-1][1]:.0f} %", transform=ax.transAxes, fontsize=8, color=TEXT,
                        ha="right", va="top")
            ax.set_xlim(start, end)
            ax.set_ylim(0, 100)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("#fafafa")
            for spine in ax.spines.values():
                spine.set_color(GRID)
        text = "\n".join([row_text(day), *day.forecasts[:2]])  # the disks filling up (mbot.forecast), if any
        fig.text(left + name_w + 3 * (spark_w + gap), y0 + row_h / 2, text, fontsize=10 if len(day.forecasts) == 0
                 else 8, color=TEXT, va="center")
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()
