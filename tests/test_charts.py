"""mbot.charts: valid PNGs of the right size; gaps, axes and bands asserted on the plotted data, not on pixels."""
from __future__ import annotations

import gc
import math
import struct
import zlib
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import psutil
import pytest

from mbot.charts import ChartSpec, Line, NoData, plot_data, render

NOW = 1_764_019_200.0
UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def raw(start: float, n: int, step: float, skip: range = range(0), value=lambda i: 50.0):
    """Raw samples (min == avg == max) every `step` seconds, leaving out the indices in `skip`."""
    return [(start + i * step, value(i), value(i), value(i)) for i in range(n) if i not in skip]


def spec(*lines: Line, start: float = NOW - 3600, end: float = NOW, step: float = 5.0, **kw) -> ChartSpec:
    return ChartSpec("box1 · CPU · last 1h", UTC, start, end, lines, step, **kw)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind, width, height = struct.unpack(">I4sII", png[8:24])
    assert kind == b"IHDR" and length == 13
    assert zlib.crc32(png[12:29]) == struct.unpack(">I", png[29:33])[0]
    assert png[-8:-4] == b"IEND"
    return width, height


def test_render_is_a_png_of_1280_by_640():
    png = render(spec(Line("CPU", "%", raw(NOW - 3600, 720, 5.0, value=lambda i: i % 100))))
    assert png_size(png) == (1280, 640)


@pytest.mark.parametrize("span, step", [(600, 5), (86400, 60), (7 * 86400, 600), (365 * 86400, 6 * 3600)])
def test_every_range_renders(span, step):
    n = int(span // step)
    points = [(NOW - span + i * step, 40.0, 30.0, 55.0) for i in range(n)]
    png = render(ChartSpec("box1 · RAM · range", PARIS, NOW - span, NOW, [Line("RAM", "GiB", points)], step))
    assert png_size(png) == (1280, 640)


def test_a_gap_is_a_nan_and_a_shaded_interval():
    points = raw(NOW - 3600, 720, 5.0, skip=range(100, 200))  # offline for 500 s
    data = plot_data(spec(Line("CPU", "%", points)))
    (line,) = data.lines
    gap_at = np.flatnonzero(np.isnan(line.y))
    assert len(gap_at) == 1
    i = gap_at[0]
    before, after = NOW - 3600 + 99 * 5, NOW - 3600 + 200 * 5
    assert line.x[i - 1] == before and line.x[i + 1] == after and before < line.x[i] < after
    assert np.isnan(line.lo[i]) and np.isnan(line.hi[i])
    assert data.shaded == ((before, after),)
    assert np.isfinite(line.y).sum() == len(points)  # nothing else was added or dropped
    assert png_size(render(spec(Line("CPU", "%", points)))) == (1280, 640)


def test_a_late_or_lost_sample_is_not_a_gap():
    points = raw(NOW - 3600, 720, 5.0, skip=range(300, 301))  # one lost sample: 10 s < 2.5 steps
    data = plot_data(spec(Line("CPU", "%", points)))
    assert not np.isnan(data.lines[0].y).any() and data.shaded == ()


def test_offline_at_the_edges_is_shaded():
    points = raw(NOW - 3000, 300, 5.0)  # starts 10 min late, stops 25 min before the end
    data = plot_data(spec(Line("CPU", "%", points)))
    assert data.shaded == ((NOW - 3600, NOW - 3000), (NOW - 3000 + 299 * 5, NOW))


def test_shaded_only_where_no_line_has_data():
    cpu = Line("CPU", "%", raw(NOW - 3600, 720, 5.0, skip=range(100, 300)))
    gpu = Line("GPU 0", "%", raw(NOW - 3600, 720, 5.0, skip=range(200, 400)))
    data = plot_data(spec(cpu, gpu))
    assert data.shaded == ((NOW - 3600 + 199 * 5, NOW - 3600 + 300 * 5),)
    assert [np.isnan(d.y).sum() for d in data.lines] == [1, 1]


def test_rolled_up_data_gets_a_band_and_raw_data_does_not():
    rolled = Line("CPU", "%", [(NOW - 3600 + i * 60, 50.0, 10.0, 95.0) for i in range(60)])
    plain = Line("GPU 0", "%", raw(NOW - 3600, 60, 60.0))
    data = plot_data(spec(rolled, plain, step=60.0))
    assert [d.band for d in data.lines] == [True, False]
    assert data.lines[0].lo.min() == 10.0 and data.lines[0].hi.max() == 95.0


def test_two_units_make_two_axes_and_three_are_refused():
    cpu = Line("CPU", "%", raw(NOW - 3600, 720, 5.0))
    temp = Line("temp cpu", "°C", raw(NOW - 3600, 720, 5.0, value=lambda i: 60.0))
    gpu = Line("GPU 0", "%", raw(NOW - 3600, 720, 5.0))
    data = plot_data(spec(cpu, temp, gpu))
    assert data.units == ("%", "°C") and [d.axis for d in data.lines] == [0, 1, 0]
    assert png_size(render(spec(cpu, temp, gpu, ylimit=70.0, ylimit_unit="°C"))) == (1280, 640)
    with pytest.raises(ValueError, match="at most 2"):
        plot_data(spec(cpu, temp, Line("power", "W", raw(NOW - 3600, 10, 5.0))))


def test_no_data_in_range():
    with pytest.raises(NoData):
        render(spec())
    with pytest.raises(NoData):
        render(spec(Line("CPU", "%", []), Line("GPU 0", "%", [])))
    with pytest.raises(NoData):  # all points before the range
        render(spec(Line("CPU", "%", raw(NOW - 7200, 100, 5.0))))


def test_points_are_sorted_clipped_to_the_range_and_non_finite_dropped():
    points = [(NOW - 10, 3.0, 3.0, 3.0), (NOW - 20, 2.0, 2.0, 2.0), (NOW + 100, 9.0, 9.0, 9.0),
              (NOW - 15, math.nan, math.nan, math.nan), (NOW - 3600 - 2, 1.0, 1.0, 1.0)]
    data = plot_data(spec(Line("CPU", "%", points), start=NOW - 3600))
    line = data.lines[0]
    # The point 2 s before the start belongs to a bucket (a sample) reaching into the range: kept.
    assert list(line.x[np.isfinite(line.y)]) == [NOW - 3600 - 2, NOW - 20, NOW - 10]


def test_a_line_without_data_and_lone_points_still_render():
    lone = [(NOW - 1800, 5.0, 5.0, 5.0)]
    png = render(spec(Line("CPU", "%", lone), Line("GPU 0", "%", [])))
    assert png_size(png) == (1280, 640)


def test_per_line_step_overrides_the_charts():
    hourly = [(NOW - 86400 + i * 3600, 1.0, 1.0, 1.0) for i in range(24)]
    assert plot_data(spec(Line("a", "W", hourly, step=3600.0), start=NOW - 86400)).shaded == ()
    assert np.isnan(plot_data(spec(Line("a", "W", hourly), start=NOW - 86400)).lines[0].y).sum() == 23


def test_memory_does_not_grow_over_many_charts(monkeypatch):
    import weakref

    from matplotlib.backends import backend_agg
    from matplotlib.figure import Figure

    chart = spec(Line("CPU", "%", raw(NOW - 3600, 120, 30.0, skip=range(50, 60), value=lambda i: i % 90)),
                 Line("GPU 0", "%", [(NOW - 3600 + i * 30, 50.0, 45.0, 60.0) for i in range(120)]), step=30.0)
    for _ in range(5):  # warm: font and text caches fill up once
        render(chart)
    gc.collect()
    figures_before = sum(isinstance(o, Figure) for o in gc.get_objects())
    # Each chart's renderer holds its 3 MB pixel buffer; the figure is garbage in reference cycles that only a full
    # collection frees, so between collections the buffers would pile up (measured: 50 MB) unless render() lets go
    # of them itself. Checked directly, with the collector off: every renderer is gone when render() returns.
    renderers: list[weakref.ref] = []
    made = backend_agg.RendererAgg.__init__

    def tracked(self, *args, **kwargs):
        made(self, *args, **kwargs)
        renderers.append(weakref.ref(self))

    monkeypatch.setattr(backend_agg.RendererAgg, "__init__", tracked)
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    gc.disable()
    try:
        for i in range(20):
            render(chart)
            assert renderers and not [r for r in renderers if r() is not None], "a chart's pixel buffer outlived it"
            peak = max(peak, process.memory_info().rss)
            if i % 10 == 9:
                gc.collect()  # as the collector would now and then: the rest of each figure goes
    finally:
        gc.enable()
    gc.collect()
    grown = process.memory_info().rss - before
    # Nothing keeps a figure (a pyplot-style registry would keep every one: 0.6 MB a chart).
    assert sum(isinstance(o, Figure) for o in gc.get_objects()) == figures_before
    assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 20 charts"
    assert peak - before < 25 * 2**20, f"RSS peaked {(peak - before) / 2**20:.1f} MiB above the start"


def test_the_time_axis_speaks_the_chat_language():
    import matplotlib.dates as mdates

    from mbot import i18n
    from mbot.charts import date_formatter

    ticks = [mdates.date2num(datetime.fromtimestamp(NOW - day * 86400, UTC)) for day in (40, 30, 20, 10, 0)]

    def labels() -> list[str]:
        locator = mdates.AutoDateLocator(tz=UTC)
        formatter = date_formatter(locator, UTC)
        return formatter.format_ticks(ticks) + [formatter.get_offset()]

    english = labels()
    with i18n.speaking("ru"):
        russian = labels()
    assert any(month in " ".join(english) for month in ("Oct", "Nov"))  # matplotlib's English month names
    assert not any(c.isalpha() for label in russian for c in label), russian  # dates in numbers: 25.11
