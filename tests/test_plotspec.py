"""The /plot grammar: every example of the issue, every error, and metric words resolved against a host's series."""
from __future__ import annotations

import pytest

from mbot.plotspec import (CHAT, CLI, PlotRequest, PlotUsageError, SeriesChoice, chart_title, host_metrics, limit_unit,
                           parse_plot, resolve_metrics)

H, D = 3600.0, 86400.0
GIB = 1024.0 ** 3

# What protocol.flatten makes of a host with two disks, one interface, a temperature and two GPUs.
SERIES = [
    "cpu", "cpu:0", "cpu:1", "load1", "load5", "load15", "ram", "ram_used", "ram_total", "swap", "swap_used",
    "swap_total", "disk:/", "disk_used:/", "disk_total:/", "disk:/home", "disk_used:/home", "disk_total:/home",
    "disk_read", "disk_write", "net_rx", "net_tx", "net_rx:eth0", "net_tx:eth0", "temp:cpu", "temp:nvme", "uptime",
    "procs", "gpu0", "vram0", "vram_used0", "vram_total0", "gputemp0", "power0", "gpu1", "vram1", "vram_used1",
    "vram_total1", "gputemp1", "power1",
]
SMALL = ["cpu", "load1", "load5", "load15", "ram", "ram_used", "ram_total", "disk:/", "disk_used:/", "net_rx", "net_tx"]


def plot(line: str, available=SERIES, max_span: float = 730 * D) -> tuple[PlotRequest, list[SeriesChoice]]:
    request = parse_plot(line.split(), max_span, available=available)
    return request, resolve_metrics(request.metrics, available, request.unit)


def error(line: str, available=SERIES, max_span: float = 730 * D) -> PlotUsageError:
    with pytest.raises(PlotUsageError) as caught:
        plot(line, available, max_span)
    return caught.value


# --- the examples that must work -----------------------------------------------------------------------------------


def test_cpu_and_gpu_over_two_days_three_hours_with_limit():
    request, choices = plot("box1 cpu;gpu 2d 3h 80")
    assert request == PlotRequest("box1", ("cpu", "gpu"), 2 * D + 3 * H, 80.0, None)
    assert [(c.series, c.label, c.unit) for c in choices] == [
        ("cpu", "CPU", "%"), ("gpu0", "GPU 0", "%"), ("gpu1", "GPU 1", "%")]
    assert limit_unit(choices, request.unit) == "%"
    assert chart_title("box1", choices, request.span) == "box1 · CPU, GPU 0, GPU 1 · last 2d 3h"


def test_ram_in_gib():
    request, choices = plot("box1 ram 1h GiB")
    assert request == PlotRequest("box1", ("ram",), H, None, "gib")
    assert choices == [SeriesChoice("ram_used", "RAM", "GiB", 1 / GIB)]


def test_net_in_megabits_with_limit():
    request, choices = plot("box1 net 30m 100 mbit")
    assert (request.span, request.limit, request.unit) == (1800.0, 100.0, "mbit")
    assert [(c.series, c.label, c.unit) for c in choices] == [
        ("net_rx", "net ↓", "Mbit/s"), ("net_tx", "net ↑", "Mbit/s")]
    assert choices[0].scale * 12_500_000 == pytest.approx(100.0)  # 12.5 MB/s is 100 Mbit/s
    assert limit_unit(choices, request.unit) == "Mbit/s"


# --- grammar -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, metrics", [
    ("box1 cpu,gpu 1h", ("cpu", "gpu")),
    ("box1 cpu; gpu 1h", ("cpu", "gpu")),
    ("box1 cpu ;gpu 1h", ("cpu", "gpu")),
    ("box1 CPU;Disk:/home 1h", ("cpu", "disk:/home")),
    ("box1 cpu;cpu;gpu; 1h", ("cpu", "gpu")),
    ("box1 gpu1;vram0;gputemp1;power0;load5;temp:nvme;net:eth0;cpu:1 1h",
     ("gpu1", "vram0", "gputemp1", "power0", "load5", "temp:nvme", "net:eth0", "cpu:1")),
])
def test_metric_lists(line, metrics):
    assert parse_plot(line.split()).metrics == metrics


@pytest.mark.parametrize("typed, word", [
    ("temperatures", "temp"), ("Temperatures", "temp"), ("TEMPS", "temp"), ("temperature", "temp"), ("gpus", "gpu"),
    ("disks", "disk"), ("network", "net"), ("nets", "net"), ("download", "net_down"), ("upload", "net_up"),
    ("memory", "ram"), ("mem", "ram"), ("cpus", "cpu"), ("processes", "procs"), ("gputemps", "gputemp"),
    ("vrams", "vram"), ("temps:nvme", "temp:nvme"), ("disks:/home", "disk:/home"), ("network:eth0", "net:eth0"),
])
def test_what_people_type_for_the_catalogues_words(typed, word):
    assert parse_plot(["box1", typed, "1h"]).metrics == (word,)
    _, choices = plot(f"box1 {typed} 1h")
    assert choices == resolve_metrics([word], SERIES)


@pytest.mark.parametrize("typed", ["temperaturez", "gpuss", "ﬁle", "ｃｐｕ", "cpu\u200b", "temps:", "network:"])
def test_near_misses_stay_unknown(typed):
    with pytest.raises(PlotUsageError, match="Unknown metric"):
        parse_plot(["box1", typed, "1h"])


@pytest.mark.parametrize("spans, seconds", [
    ("45s", 45), ("30m", 1800), ("2d 3h", 2 * D + 3 * H), ("1w 1d", 8 * D), ("2d3h", 2 * D + 3 * H),
    ("1h 1h 1h", 3 * H), ("730d", 730 * D), ("1.5h", 1.5 * H), ("1y", 365 * D), ("2y", 730 * D),
    ("1Y", 365 * D), ("1y 6w", 407 * D), ("0.5y", 182.5 * D),
])
def test_spans_add_up(spans, seconds):
    assert parse_plot(["box1", "cpu", *spans.split()]).span == seconds


@pytest.mark.parametrize("tail, limit, unit", [
    ("", None, None), ("80", 80.0, None), ("80 %", 80.0, "%"), ("80%", 80.0, "%"), ("%", None, "%"),
    ("GIB", None, "gib"), ("12.5 gib", 12.5, "gib"), ("gib 12.5", 12.5, "gib"), ("100mbit", 100.0, "mbit"),
    ("KiB", None, "kib"), ("b", None, "b"), ("gbit", None, "gbit"),
])
def test_limit_and_unit(tail, limit, unit):
    request = parse_plot(f"box1 ram;net 1h {tail}".split())
    assert (request.limit, request.unit) == (limit, unit)


def test_units_are_exact_about_powers_of_ten_and_two():
    (_, [gb]), (_, [gib]) = plot("box1 ram 1h gb"), plot("box1 ram 1h gib")
    assert (gb.unit, gb.scale, gib.unit, gib.scale) == ("GB", 1e-9, "GiB", 1 / GIB)
    _, [rx, tx] = plot("box1 net 1h kib")
    assert (rx.unit, rx.scale) == ("KiB/s", 1 / 1024)


# --- resolution ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metrics, unit, expected", [
    ("disk", None, [("disk:/", "disk /", "%"), ("disk:/home", "disk /home", "%")]),
    ("disk:/home", "gib", [("disk_used:/home", "disk /home", "GiB")]),
    ("net_up", None, [("net_tx", "net ↑", "MB/s")]),
    ("net_down", "kbit", [("net_rx", "net ↓", "kbit/s")]),
    ("net:eth0", None, [("net_rx:eth0", "eth0 ↓", "MB/s"), ("net_tx:eth0", "eth0 ↑", "MB/s")]),
    ("load", None, [("load1", "load", "")]),
    ("load15", None, [("load15", "load 15m", "")]),
    ("temp", None, [("temp:cpu", "temp cpu", "°C"), ("temp:nvme", "temp nvme", "°C")]),
    ("gputemp", None, [("gputemp0", "GPU 0 temp", "°C"), ("gputemp1", "GPU 1 temp", "°C")]),
    ("power", None, [("power0", "GPU 0 power", "W"), ("power1", "GPU 1 power", "W")]),
    ("vram", None, [("vram0", "VRAM 0", "%"), ("vram1", "VRAM 1", "%")]),
    ("vram", "gib", [("vram_used0", "VRAM 0", "GiB"), ("vram_used1", "VRAM 1", "GiB")]),
    ("swap", "%", [("swap", "swap", "%")]),
    ("io", None, [("disk_read", "disk read", "MB/s"), ("disk_write", "disk write", "MB/s")]),
    ("cpu:1", None, [("cpu:1", "CPU core 1", "%")]),
    ("net;net_up", None, [("net_rx", "net ↓", "MB/s"), ("net_tx", "net ↑", "MB/s")]),  # each series once
    ("cpu;ram", "gib", [("cpu", "CPU", "%"), ("ram_used", "RAM", "GiB")]),  # the unit goes where it fits
])
def test_resolve(metrics, unit, expected):
    choices = resolve_metrics(metrics.split(";"), SERIES, unit)
    assert [(c.series, c.label, c.unit) for c in choices] == expected


def test_two_units_make_two_axes_not_an_error():
    _, choices = plot("box1 ram;net 1h gib")
    assert [c.unit for c in choices] == ["GiB", "GiB/s", "GiB/s"]


def test_limit_applies_to_the_axis_the_unit_selected():
    request, choices = plot("box1 cpu;ram 1h 64 gib")
    assert limit_unit(choices, request.unit) == "GiB"
    assert limit_unit(choices, None) == "%"
    assert limit_unit([], None) is None


def test_host_metrics_in_plot_words():
    assert host_metrics(SERIES) == ["cpu", "load", "ram", "swap", "disk:/", "disk:/home", "io", "net", "temp", "uptime", "procs", "gpu",
                                    "vram", "gputemp", "power"]
    assert host_metrics(SMALL) == ["cpu", "load", "ram", "disk:/", "net"]
    assert host_metrics([]) == []
    # A disk whose label holds a blank cannot be typed as one /plot word: not offered (its chart stays on the card).
    assert host_metrics(SMALL + ["disk:0 ", "disk:/mnt/My Disk"]) == ["cpu", "load", "ram", "disk:/", "net"]


# --- every error: the usage line, what was wrong, and this host's metrics ------------------------------------------


@pytest.mark.parametrize("line, problem", [
    ("", "Missing NAME"),
    ("box1", "Missing METRICS"),
    ("box1 ;", "Missing METRICS"),
    ("box1 cpu", "Missing SPAN"),
    ("box1 cpu 80", "'80' is not a SPAN"),
    ("box1 cpu 1x", "'1x' is not a SPAN"),
    ("box1 cpu 0h", "'0h' is not a SPAN"),
    ("box1 cpu -1h", "'-1h' is not a SPAN"),
    ("box1 cpu 800d", "SPAN '800d' reaches back further than the history this server keeps (730d)"),
    ("box1 cpu 700d 31d", "SPAN '700d 31d' reaches back further"),
    ("box1 cpu 2y 1s", "reaches back further"),
    ("box1 cpu 99999999999999y", "SPAN '99999999999999y' reaches back further"),
    ("box1 cpu " + "9" * 300 + "y " + "9" * 300 + "y", "reaches back further"),  # the sum is inf
    ("box1 cpu " + "9" * 400 + "d", "'" + "9" * 32 + "…' is not a SPAN"),  # not even a float: quoted, cut short
    ("box1 temperatures;" + "x" * 4000 + " 1h", "Unknown metric '" + "x" * 32 + "…'"),
    ("box1 bogus 1h", "Unknown metric 'bogus'"),
    ("box1 cpu;nope 1h", "Unknown metric 'nope'"),
    ("box1 disk: 1h", "Unknown metric 'disk:'"),
    ("box1 cpu:x 1h", "Unknown metric 'cpu:x'"),
    ("box1 cpu 1h 80 90", "Unexpected '90'"),
    ("box1 cpu 1h gib mib", "Unexpected 'mib'"),
    ("box1 cpu 1h 0", "LIMIT 0 must be a number above 0"),
    ("box1 cpu 1h parsecs", "Unexpected 'parsecs'"),
    ("box1 cpu 1h gib", "Unit 'gib' does not fit cpu"),
    ("box1 ram 1h mbit", "Unit 'mbit' does not fit ram"),
    ("box1 net 1h %", "Unit '%' does not fit net"),
    ("box1 temp 1h gib", "Unit 'gib' does not fit temp"),
    ("box1 cpu;temp;power 1h", "3 different units (%, °C, W)"),
    ("box1 cpu;load;temp 1h", "3 different units (%, load, °C)"),
    ("box1 ram;net;cpu 1h gib", "3 different units (GiB, GiB/s, %)"),
])
def test_errors(line, problem):
    caught = error(line)
    lines = caught.message.splitlines()
    assert lines[0] == CHAT.usage and lines[-1] == CHAT.examples
    assert problem in caught.message
    assert "Metrics of this host: cpu, load, ram, swap, disk:/, disk:/home, io, net, temp, uptime, procs, gpu" in caught.message
    assert len(caught.message) < 1000  # whatever was typed: a reply Telegram takes (4096 at most)
    # The same error in the terminal: the problem first, then the CLI's usage and examples; no chat syntax at all.
    terminal = caught.render(CLI)
    assert terminal.startswith(caught.problem + "\n") and terminal.endswith(f"\n{CLI.usage}\n{CLI.examples}")
    assert "/plot" not in caught.render(CLI) and "python -m mbot plot" not in caught.message


@pytest.mark.parametrize("line, problem", [
    ("box1 gpu 1h", "This host has no gpu"),
    ("box1 gpu0 1h", "This host has no gpu0"),
    ("box1 disk:/data 1h", "This host has no disk:/data"),
    ("box1 temp 1h", "This host has no temp"),
    ("box1 swap 1h", "This host has no swap"),
    ("box1 vram 1h gib", "This host has no vram"),
    ("box1 net:wlan0 1h", "This host has no net:wlan0"),
])
def test_metric_this_host_does_not_have(line, problem):
    caught = error(line, SMALL)
    assert caught.message.startswith(CHAT.usage)
    assert problem in caught.message
    assert "Metrics of this host: cpu, load, ram, disk:/, net" in caught.message


def test_errors_without_the_hosts_series_still_explain_and_can_be_completed_later():
    with pytest.raises(PlotUsageError) as caught:
        parse_plot(["box1", "nope", "1h"])
    assert caught.value.message.startswith(CHAT.usage) and "Unknown metric 'nope'" in caught.value.message
    assert "Metrics of this host" not in caught.value.message
    # Without the host's metrics, the reply lists every word /plot knows instead.
    assert ("Metrics: cpu, load, load1, load5, load15, ram, swap, disk, io, net, net_down, net_up, temp, uptime, "
            "procs, gpu, vram, gputemp, power, link, rtt, jitter, loss, speed, checks; one of several: cpu:N, disk:/MOUNT, "
            "net:IFACE, temp:LABEL, gpuN"
            in caught.value.message)
    assert "Metrics of this host: cpu, load, ram, disk:/, net" in caught.value.with_metrics(SMALL).message
    assert str(caught.value) == caught.value.message


def test_resolve_rejects_bad_input_directly():
    with pytest.raises(PlotUsageError, match="Unknown unit"):
        resolve_metrics(["ram"], SERIES, "furlongs")
    with pytest.raises(PlotUsageError, match="Unknown metric"):
        resolve_metrics(["ramm"], SERIES, None)
    with pytest.raises(PlotUsageError, match="does not fit"):
        resolve_metrics(["cpu"], SERIES, "GiB")


def test_max_span_is_the_callers():
    assert parse_plot("box1 cpu 2d".split(), max_span=2 * D).span == 2 * D
    with pytest.raises(PlotUsageError, match=r"further than the history this server keeps \(2d\)"):
        parse_plot("box1 cpu 2d 1s".split(), max_span=2 * D)
    # MBOT_RETAIN_1H=1y: a year is the limit, and the message names it.
    assert parse_plot("box1 cpu 1y".split(), max_span=365 * D).span == 365 * D
    with pytest.raises(PlotUsageError, match=r"SPAN '2y' reaches back further than the history this server keeps "
                                             r"\(365d\)"):
        parse_plot("box1 cpu 2y".split(), max_span=365 * D)
