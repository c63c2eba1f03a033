"""History charts: a ChartSpec in, PNG bytes out. Blocking (about 0.1 s): run it in trio.to_thread.run_sync under a
CapacityLimiter.

matplotlib's object-oriented API only (Figure + FigureCanvasAgg, never pyplot): no global figure registry to leak
into, no backend switch, and no rcParams changes (they are process-wide, shared by every thread), so every style
choice is passed to the artist it concerns.

`plot_data` computes exactly what `render` draws (x in epoch seconds, NaN where the line breaks, the intervals
shaded as offline), so tests can assert on gaps without looking at pixels.
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import i18n

if TYPE_CHECKING:
    from matplotlib.artist import Artist

logger = logging.getLogger(__name__)

WIDTH_IN, HEIGHT_IN, DPI = 12.8, 6.4, 100  # 1280 x 640 px: a phone shows it full width, text still readable
GAP_FACTOR = 2.5  # points further apart than 2.5 steps: the host was offline (one lost sample is not a gap)
MAX_AXES = 2
LEGEND_COLUMNS = 6  # a legend row above the plot; more entries (8 GPUs) take more rows, the plot gives way
PERCENT = "%"
# Mid-saturation colours that read on white, and on a dark chat theme around the white card; no black.
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
TEXT = "#333333"
GRID = "#dddddd"
GAP_COLOR = "#9e9e9e"


class NoData(Exception):
    """No line has a single point in the range: the caller says so in words instead of sending an empty chart."""


@dataclass(frozen=True)
class Line:
    label: str
    unit: str  # axis label: "%", "GiB", "MB/s", "°C", "W", "" (load)
    points: Sequence[tuple[float, float, float, float]]  # (ts, avg, min, max); raw data: min == avg == max
    step: float | None = None  # seconds between points when this line's differs from the chart's


@dataclass(frozen=True)
class ChartSpec:
    title: str
    tz: tzinfo  # the time axis is drawn in this zone (MBOT_TZ)
    start: float
    end: float
    lines: Sequence[Line]
    step: float  # expected seconds between points: the tier's width, or the agent's interval for raw samples
    ylimit: float | None = None  # top of the Y axis (the /plot LIMIT)
    ylimit_unit: str | None = None  # the axis ylimit applies to; None: the first (left) one


@dataclass(frozen=True)
class LineData:
    label: str
    unit: str
    axis: int  # 0 left, 1 right
    x: np.ndarray  # epoch seconds, increasing; a NaN point sits in the middle of each gap
    y: np.ndarray  # avg, NaN at the gaps
    lo: np.ndarray  # min, NaN at the gaps
    hi: np.ndarray  # max, NaN at the gaps
    band: bool  # min != max somewhere: rolled-up data, the min-max band is drawn
    gaps: tuple[tuple[float, float], ...]  # where this line has no data, including the chart's edges


@dataclass(frozen=True)
class PlotData:
    lines: tuple[LineData, ...]
    units: tuple[str, ...]  # one per axis, left first
    shaded: tuple[tuple[float, float], ...]  # where no line has data: the host was offline


def _line_data(line: Line, axis: int, spec: ChartSpec) -> LineData:
    step = line.step or spec.step
    threshold = GAP_FACTOR * step
    # Keep the bucket that starts just before the range: it holds data from inside the range.
    pts = sorted(p for p in line.points if spec.start - step < p[0] <= spec.end and math.isfinite(p[1]))
    xs: list[float] = []
    ys: list[float] = []
    los: list[float] = []
    his: list[float] = []
    gaps: list[tuple[float, float]] = []
    if not pts:
        gaps.append((spec.start, spec.end))
    else:
        if pts[0][0] - spec.start > threshold:
            gaps.append((spec.start, pts[0][0]))
        previous = None
        for ts, avg, lo, hi in pts:
            if previous is not None and ts - previous > threshold:
                gaps.append((previous, ts))
                xs.append((previous + ts) / 2)  # NaN breaks the line: never a straight line across the gap
                ys.append(math.nan)
                los.append(math.nan)
                his.append(math.nan)
            xs.append(ts)
            ys.append(avg)
            los.append(min(lo, avg))
            his.append(max(hi, avg))
            previous = ts
        if spec.end - pts[-1][0] > threshold:
            gaps.append((pts[-1][0], spec.end))
    y = np.array(ys, dtype=float)
    lo_arr = np.array(los, dtype=float)
    hi_arr = np.array(his, dtype=float)
    band = bool(np.any((hi_arr - lo_arr)[np.isfinite(y)] > 0))
    return LineData(line.label, line.unit, axis, np.array(xs, dtype=float), y, lo_arr, hi_arr, band, tuple(gaps))


def _intersect(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Intersection of two sorted lists of disjoint intervals."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def plot_data(spec: ChartSpec) -> PlotData:
    """What render() draws. Raises NoData when no line has a point in range, ValueError for more than two units."""
    units = tuple(dict.fromkeys(line.unit for line in spec.lines))
    if len(units) > MAX_AXES:
        raise ValueError(f"a chart has at most {MAX_AXES} units (axes), got {len(units)}: {', '.join(units)}")
    if not spec.step > 0:
        raise ValueError("step must be positive")
    lines = tuple(_line_data(line, units.index(line.unit), spec) for line in spec.lines)
    if not any(np.isfinite(d.y).any() for d in lines):
        raise NoData("no data for this range")
    shaded: list[tuple[float, float]] = list(lines[0].gaps)
    for data in lines[1:]:
        shaded = _intersect(shaded, data.gaps)
    return PlotData(lines, units, tuple(shaded))


def _isolated(y: np.ndarray) -> np.ndarray:
    """Points with no finite neighbour: a line through them would draw nothing, so they get a marker."""
    finite = np.isfinite(y)
    before = np.concatenate(([False], finite[:-1]))
    after = np.concatenate((finite[1:], [False]))
    return finite & ~before & ~after


# The time axis in the chat's language (mbot.i18n; the render runs in a worker thread of the task that asked, so it
# sees that task's language): matplotlib's month names are English, so Russian gets dates in numbers, 02.12.
_DATE_FORMATS = {"ru": {"formats": ["%Y", "%d.%m", "%d", "%H:%M", "%H:%M", "%S.%f"],
                        "zero_formats": ["", "%Y", "%d.%m", "%d.%m", "%H:%M", "%H:%M"],
                        "offset_formats": ["", "%Y", "%m.%Y", "%d.%m.%Y", "%d.%m.%Y", "%d.%m.%Y %H:%M"]}}


def date_formatter(locator: Any, tz: tzinfo) -> Any:
    """The time axis's labels, in the current language."""
    import matplotlib.dates as mdates

    return mdates.ConciseDateFormatter(locator, tz=tz, **_DATE_FORMATS.get(i18n.current(), {}))


def _range_text(spec: ChartSpec) -> str:
    start = datetime.fromtimestamp(spec.start, spec.tz)
    end = datetime.fromtimestamp(spec.end, spec.tz)
    zone = getattr(spec.tz, "key", None) or start.tzname() or str(spec.tz)
    return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M}  ({zone})"


def _y_range(axis_lines: list[LineData], unit: str, limit: float | None) -> tuple[float | None, float | None]:
    """(bottom, top): from 0 for amounts and percentages (to 100 unless the data goes higher), the LIMIT on top."""
    finite = [v for d in axis_lines for v in (d.lo[np.isfinite(d.lo)], d.hi[np.isfinite(d.hi)]) if v.size]
    low = min(float(v.min()) for v in finite) if finite else 0.0
    high = max(float(v.max()) for v in finite) if finite else 0.0
    if unit == "°C" or low < 0:
        bottom, top = None, None  # temperatures: the interesting part is the shape, not the distance from 0
    else:
        bottom = 0.0
        top = max(100.0, high * 1.05) if unit == PERCENT else (high * 1.08 if high > 0 else 1.0)
    if limit is not None:
        top = limit
        if bottom is None and low >= limit:
            bottom = limit - 1.0  # keep bottom < top; everything is clipped above the limit anyway
    return bottom, top


def render(spec: ChartSpec) -> bytes:
    """A PNG of 1280 x 640 px. Raises NoData (nothing to draw) and ValueError (more than two units)."""
    # matplotlib is imported with the first chart, not with the server: it is most of a start's import time (0.7 of
    # 1.4 s here), and a restart is only as quick as the server's start.
    from matplotlib import dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.text import Text

    data = plot_data(spec)
    epoch = mdates.date2num(datetime(1970, 1, 1, tzinfo=timezone.utc))

    # Unix seconds -> matplotlib's date numbers (days), for arrays and for single instants.
    def nums(x: np.ndarray) -> np.ndarray:
        return epoch + np.asarray(x, dtype=float) / 86400.0

    def num(t: float) -> float:
        return float(epoch + t / 86400.0)

    # Fixed margins rather than constrained layout, which costs 40% of the render time; they fit 6-character tick
    # labels, a unit on each side, the title and a legend row above the plot.
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    left = fig.add_subplot()
    axes = [left] if len(data.units) == 1 else [left, left.twinx()]
    two_axes = len(axes) == 2
    entries = len(data.lines) + bool(data.shaded)
    legend_rows = math.ceil(entries / LEGEND_COLUMNS) if entries > 1 else 0
    fig.subplots_adjust(left=0.075, right=0.925 if two_axes else 0.975, bottom=0.11,
                        top=0.9 - 0.045 * legend_rows)
    for ax in axes:
        ax.set_facecolor("white")
        ax.tick_params(labelsize=12, colors=TEXT)
        for side in ax.spines.values():
            side.set_color("#bbbbbb")
    left.grid(True, color=GRID, linewidth=0.8)
    left.set_axisbelow(True)

    handles: list[Artist] = []
    for i, line in enumerate(data.lines):
        ax = axes[line.axis]
        color = COLORS[i % len(COLORS)]
        x = nums(line.x)
        label = f"{line.label} [{line.unit}]" if two_axes and line.unit else line.label
        if line.band:
            ax.fill_between(x, line.lo, line.hi, where=np.isfinite(line.y), color=color, alpha=0.2, linewidth=0)
        (handle,) = ax.plot(x, line.y, color=color, linewidth=1.8, label=label)
        lone = _isolated(line.y)
        if lone.any():
            ax.plot(x[lone], line.y[lone], "o", color=color, markersize=3.5)
        handles.append(handle)

    for t0, t1 in data.shaded:
        left.axvspan(num(t0), num(t1), color=GAP_COLOR, alpha=0.18, linewidth=0, zorder=0)
    if data.shaded:
        handles.append(Patch(color=GAP_COLOR, alpha=0.3, label="no data"))

    limit_axis = data.units.index(spec.ylimit_unit) if spec.ylimit_unit in data.units else 0
    for index, (ax, unit) in enumerate(zip(axes, data.units)):
        on_axis = [d for d in data.lines if d.axis == index]
        bottom, top = _y_range(on_axis, unit, spec.ylimit if index == limit_axis else None)
        ax.set_ylim(bottom=bottom, top=top)
        if unit:
            ax.set_ylabel(unit, fontsize=13, color=TEXT)

    locator = mdates.AutoDateLocator(tz=spec.tz, minticks=4, maxticks=10)
    left.xaxis.set_major_locator(locator)
    left.xaxis.set_major_formatter(date_formatter(locator, spec.tz))
    left.set_xlim(num(spec.start), num(spec.end))
    left.set_xlabel(_range_text(spec), fontsize=11, color="#666666")
    fig.suptitle(spec.title, fontsize=15, color=TEXT, y=0.975)
    if legend_rows:
        left.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=min(entries, LEGEND_COLUMNS),
                    frameon=False, fontsize=12, borderaxespad=0.2)

    buffer = io.BytesIO()
    # zlib level 1: half the encoding time (about 17 ms here) for a file about 20% larger, far below upload limits.
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white", pil_kwargs={"compress_level": 1})
    # The figure is garbage in reference cycles (figure <-> axes <-> artists) that only a full collection frees,
    # and every Text it drew keeps the renderer, a 3 MB pixel buffer: measured, 30-odd figures (50 MB) piled up
    # between collections. Dropping those references frees the buffer now; the rest is ~0.3 MB of objects.
    # (Text._renderer is matplotlib's private cache: if it is renamed, test_charts' memory test says so.)
    canvas.renderer = None
    for text in fig.findobj(Text):
        text._renderer = None  # type: ignore[attr-defined]
    png = buffer.getvalue()
    logger.debug("chart %r: %d lines, %d points, %d bytes", spec.title, len(data.lines),
                 sum(int(np.isfinite(d.y).sum()) for d in data.lines), len(png))
    return png
