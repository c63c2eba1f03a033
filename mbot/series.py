"""The metric catalogue: every series mbot knows, in one table. Pure: no IO.

Each row says where a series comes from in a sample's `metrics` object, its name pattern as history stores it, its
kind and unit, what people call it (messages and chart legends), the /plot words and the /setalert selector that
reach it, its Prometheus family, and whether the status card shows it. protocol (flatten, and validation of plain
numbers), alerts, plotspec, the card and /metrics all read this table: adding a metric is one row here plus the
agent code that collects it.

Name patterns have at most one placeholder: `{i}` (a position: a core, a GPU) or `{label}` (a mount, an interface,
a sensor). A `{label}` is text the agent chose, already cleaned at the edge (limits.clean_label).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, Mapping, Sequence

from . import limits
from .i18n import _

# Kinds
GAUGE, RATE, COUNTER = "gauge", "rate", "counter"
# Units: decide the sane range at the edge, the formatting, the axis and which /plot UNITs fit.
PERCENT, BYTES, BYTE_RATE, CELSIUS, WATTS, SECONDS, COUNT, LOAD, MILLISECONDS, DAYS = (
    "percent", "bytes", "bytes/s", "celsius", "watts", "seconds", "count", "load", "ms", "days")
STATE = "state"  # a code, not a quantity: 0 is fine, anything above is a kind of trouble (a container's `down`)
RANGES: Mapping[str, tuple[float, float]] = {
    PERCENT: limits.PERCENT, BYTES: limits.BYTES, BYTE_RATE: limits.BYTE_RATE, CELSIUS: limits.CELSIUS,
    WATTS: limits.WATTS, SECONDS: limits.SECONDS, COUNT: limits.COUNT, LOAD: limits.LOAD,
    MILLISECONDS: limits.MILLISECONDS, DAYS: limits.DAYS, STATE: limits.STATE,
}

Labels = dict[str, str]
Extract = Callable[[Mapping[str, Any]], Iterator[tuple[Labels, float]]]


# --- where a value comes from ----------------------------------------------------------------------------------


# flatten's direct path: (metrics, series out, the row's name as prefix/placeholder/suffix) -> values written. The
# generator above stays the reference (labelled_values, rows of other shapes); a fill must write what it yields.
Fill = Callable[[Mapping[str, Any], dict[str, float], tuple[str, str | None, str]], None]


def _reads(key: str, extract: Extract, fill: Fill | None = None, yields: tuple[str, ...] = ()) -> Extract:
    """Mark the one top-level key of `metrics` an extractor reads (flatten skips it when the key is absent), and
    its fill with the labels it yields, for flatten to write values without a generator and a labels dict each."""
    extract.source = key  # type: ignore[attr-defined]
    extract.fill = fill  # type: ignore[attr-defined]
    extract.yields = yields  # type: ignore[attr-defined]
    return extract


def scalar(key: str) -> Extract:
    def extract(m: Mapping[str, Any]) -> Iterator[tuple[Labels, float]]:
        if key in m:
            yield {}, m[key]

    def fill(m: Mapping[str, Any], out: dict[str, float], name: tuple[str, str | None, str]) -> None:
        if key in m:
            out[name[0]] = float(m[key])
    extract.scalar_key = key  # type: ignore[attr-defined]  # plain numbers are validated from the catalogue
    return _reads(key, extract, fill)


def item(key: str, index: int) -> Extract:
    def extract(m: Mapping[str, Any]) -> Iterator[tuple[Labels, float]]:
        if key in m:
            yield {}, m[key][index]

    def fill(m: Mapping[str, Any], out: dict[str, float], name: tuple[str, str | None, str]) -> None:
        if key in m:
            out[name[0]] = float(m[key][index])
    return _reads(key, extract, fill)


def each(key: str) -> Extract:
    """metrics[key] is a list of numbers: one series per position."""
    def extract(m: Mapping[str, Any]) -> Iterator[tuple[Labels, float]]:
        for i, value in enumerate(m.get(key, ())):
            yield {"i": str(i)}, value

    def fill(m: Mapping[str, Any], out: dict[str, float], name: tuple[str, str | None, str]) -> None:
        prefix, placeholder, suffix = name
        for i, value in enumerate(m.get(key, ())):
            out[prefix if placeholder is None else f"{prefix}{i}{suffix}"] = float(value)
    return _reads(key, extract, fill, ("i",))


def part(key: str, what: str) -> Extract:
    """metrics[key] is {"used", "total"}: one of them, or "percent" (used of total)."""
    def extract(m: Mapping[str, Any]) -> Iterator[tuple[Labels, float]]:
        if key in m:
            yield {}, _part(m[key], what)

    def fill(m: Mapping[str, Any], out: dict[str, float], name: tuple[str, str | None, str]) -> None:
        if key in m:
            out[name[0]] = float(_part(m[key], what))
    return _reads(key, extract, fill)


def labelled(key: str, what: str | None = None) -> Extract:
    """metrics[key] maps labels to numbers, or (with `what`) to {"used", "total"} / {"rx", "tx"} objects."""
    def extract(m: Mapping[str, Any]) -> Iterator[tuple[Labels, float]]:
        for label, value in m.get(key, {}).items():
            if what is None:
                yield {"label": label}, value
            elif what in ("used", "total", "percent"):
                yield {"label": label}, _part(value, what)
            elif what in value:
                yield {"label": label}, value[what]

    def fill(m: Mapping[str, Any], out: dict[str, float], name: tuple[str, str | None, str]) -> None:
        prefix, placeholder, suffix = name
        for label, value in m.get(key, {}).items():
            if what is None:
                number = value
            elif what in ("used", "total", "percent"):
                number = _part(value, what)
            elif what in value:
                number = value[what]
            else:
                continue
            out[prefix if placeholder is None else prefix + str(label) + suffix] = float(number)
    return _reads(key, extract, fill, ("label",))


def total(key: str, what: str) -> Extract:
    """The sum of `what` over every label of metrics[key] (all interfaces)."""
    def extract(m: Mapping[str, Any]) -> Iterator[tuple[Labels, float]]:
        values = [v[what] for v in m.get(key, {}).values() if what in v]
        if values:
            yield {}, sum(values)

    def fill(m: Mapping[str, Any], out: dict[str, float], name: tuple[str, str | None, str]) -> None:
        values = [v[what] for v in m.get(key, {}).values() if what in v]
        if values:
            out[name[0]] = float(sum(values))
    return _reads(key, extract, fill)


def gpus(what: str) -> Extract:
    """One series per GPU: a field of metrics["gpus"][i], or "vram" (VRAM used of total, percent)."""
    def extract(m: Mapping[str, Any]) -> Iterator[tuple[Labels, float]]:
        for i, gpu in enumerate(m.get("gpus", ())):
            labels = {"i": str(i), "name": str(gpu.get("name", ""))}
            if what == "vram":
                if "vram_total" in gpu:
                    yield labels, _part({"used": gpu["vram_used"], "total": gpu["vram_total"]}, "percent")
            elif what in gpu:
                yield labels, gpu[what]
    return _reads("gpus", extract)


def measured(key: str, what: str) -> Extract:
    """metrics[key][what]: a figure the server measured itself (the link: mbot/linkquality.py; a speed test:
    mbot/speedtest.py) and added to the sample after validation. An agent cannot send one: validation keeps known
    keys only, and these are none of them."""
    def extract(m: Mapping[str, Any]) -> Iterator[tuple[Labels, float]]:
        if what in m.get(key, {}):
            yield {}, m[key][what]

    def fill(m: Mapping[str, Any], out: dict[str, float], name: tuple[str, str | None, str]) -> None:
        if what in m.get(key, {}):
            out[name[0]] = float(m[key][what])
    return _reads(key, extract, fill)


def link(what: str) -> Extract:
    return measured("link", what)


def _part(value: Mapping[str, float], what: str) -> float:
    if what == "percent":
        return 100.0 * value["used"] / value["total"] if value["total"] else 0.0
    return value[what]


# --- the rows --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prom:
    name: str  # family name (Prometheus conventions: base units, _total on counters)
    help: str
    per: float = 1.0  # stored value / per = exported value (percent -> ratio: 100)
    labels: Mapping[str, str] = field(default_factory=dict)  # placeholder -> Prometheus label ("label": "disk")


@dataclass(frozen=True)
class Metric:
    name: str  # name pattern as history stores it: "cpu", "cpu:{i}", "disk:{label}", "gpu{i}"
    extract: Extract
    unit: str
    label: str  # in messages: "CPU", "disk {label}", "GPU {i} temperature"
    legend: str = ""  # in chart legends, when it differs from `label`
    kind: str = GAUGE
    plot: tuple[str, ...] = ()  # /plot words that draw it (with every other row that has the word)
    plot_one: str | None = None  # the /plot form for one member: "disk:" (disk:/home), "gpu" (gpu0), "net:"
    size_of: str | None = None  # for a bytes series: the percent series it stands for when /plot asks for a size
    alert: str | None = None  # the /setalert selector that watches it
    prom: Prom | None = None
    card: bool = False  # shown on the status card (rows without a line of their own go in a generic line)
    button: str | None = None  # the card's chart button for this row's /plot word ("📈 CPU")
    list_each: bool = False  # a host's metric list names each member (disk:/, disk:/home), not the family word
    # /plot one-member forms with fields (`container:web cpu`): the field word that picks this row, and whether
    # the bare form (`container:web`) draws it too.
    plot_field: str | None = None
    plot_bare: bool = True
    listed: bool = True  # in a host's metric list at all (load5 and load15 go with load)
    named: str = ""  # label and legend when the GPU's model is known: {gpu} is "RTX 4090 #0" (gpu_label)

    @property
    def pattern(self) -> re.Pattern[str]:
        return _pattern(self.name)

    def series(self, labels: Labels) -> str:
        parts = self._name_parts
        if parts is None:
            return self.name.format(**labels)
        prefix, placeholder, suffix = parts
        return prefix if placeholder is None else prefix + str(labels[placeholder]) + suffix

    @cached_property
    def _name_parts(self) -> tuple[str, str | None, str] | None:
        """The name as (prefix, placeholder, suffix) when it has at most one placeholder (every row so far): a
        series name per value is then a concatenation, not a str.format. None: str.format it is."""
        if "{" not in self.name and "}" not in self.name:
            return self.name, None, ""
        match = re.fullmatch(r"([^{}]*)\{(\w+)\}([^{}]*)", self.name)
        return (match[1], match[2], match[3]) if match else None

    @cached_property
    def fill(self) -> Fill | None:
        """The extractor's fill when the row's name can take what it yields (else flatten uses the generator)."""
        fill: Fill | None = getattr(self.extract, "fill", None)
        parts = self._name_parts
        if fill is None or parts is None or (parts[1] is not None
                                            and parts[1] not in getattr(self.extract, "yields", ())):
            return None
        return fill

    @cached_property
    def source(self) -> str | None:
        """The top-level key of `metrics` the row reads, when its extractor says (None: it may read any)."""
        return getattr(self.extract, "source", None)

    def labels_of(self, series: str) -> Labels | None:
        match = self.pattern.fullmatch(series)
        return match.groupdict() if match else None

    def text(self, series: str, legend: bool = False, gpus: Sequence[str] = ()) -> str:
        """The label (or legend); `gpus`: the host's GPU models by index (its hello), which name a GPU row."""
        labels = self.labels_of(series) or {}
        index = labels.get("i", "")
        if self.named and index.isdigit() and int(index) < len(gpus) and gpus[int(index)]:
            return _(self.named).format(gpu=gpu_label(gpus[int(index)], int(index)))
        # Labels and legends are message ids (mbot.i18n): the chat says them in the user's language.
        template = _(self.legend if legend and self.legend else self.label)
        return template.format(**{"i": "", "label": "", **labels})


_GPU_VENDOR_WORDS = frozenset({"NVIDIA", "AMD", "GeForce", "Radeon", "Intel(R)", "Intel"})


def gpu_model(name: str) -> str:
    """What people call a GPU: "NVIDIA GeForce RTX 4090" -> "RTX 4090", "AMD Instinct MI300X" -> "Instinct MI300X"
    (the vendor's leading words go, unless nothing would be left)."""
    words = name.split()
    while len(words) > 1 and words[0] in _GPU_VENDOR_WORDS:
        words.pop(0)
    return " ".join(words) or "GPU"


def gpu_label(name: str, index: int) -> str:
    """"RTX 4090 #0": the model and the GPU's index, so two of the same model stay apart."""
    return f"{gpu_model(name)} #{index}"


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(name: str) -> re.Pattern[str]:
    if name not in _PATTERNS:
        regex = re.escape(name).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{label\}", r"(?P<label>.+)")
        _PATTERNS[name] = re.compile(regex, re.DOTALL)
    return _PATTERNS[name]


_HOST = "host"
CATALOGUE: list[Metric] = [
    Metric("cpu", scalar("cpu"), PERCENT, "CPU", plot=("cpu",), alert="cpu", card=True, button="CPU",
           prom=Prom("mbot_host_cpu_usage_ratio", "CPU busy, all cores, 0-1.", 100)),
    Metric("cpu:{i}", each("cpu_cores"), PERCENT, "CPU core {i}", plot_one="cpu:"),
    Metric("load1", item("load", 0), LOAD, "load", plot=("load", "load1"), alert="load", card=True,
           prom=Prom("mbot_host_load1", "Load average over 1 minute(s).")),
    Metric("load5", item("load", 1), LOAD, "load 5m", plot=("load5",), card=True, listed=False,
           prom=Prom("mbot_host_load5", "Load average over 5 minute(s).")),
    Metric("load15", item("load", 2), LOAD, "load 15m", plot=("load15",), card=True, listed=False,
           prom=Prom("mbot_host_load15", "Load average over 15 minute(s).")),
    Metric("ram", part("ram", "percent"), PERCENT, "RAM", plot=("ram",), alert="ram", card=True, button="RAM"),
    Metric("ram_used", part("ram", "used"), BYTES, "RAM", size_of="ram", card=True,
           prom=Prom("mbot_host_memory_used_bytes", "Memory in use.")),
    Metric("ram_total", part("ram", "total"), BYTES, "RAM size", card=True,
           prom=Prom("mbot_host_memory_total_bytes", "Memory size.")),
    Metric("swap", part("swap", "percent"), PERCENT, "swap", plot=("swap",), alert="swap", card=True),
    Metric("swap_used", part("swap", "used"), BYTES, "swap", size_of="swap", card=True,
           prom=Prom("mbot_host_swap_used_bytes", "Swap in use.")),
    Metric("swap_total", part("swap", "total"), BYTES, "swap size", card=True,
           prom=Prom("mbot_host_swap_total_bytes", "Swap size.")),
    Metric("disk:{label}", labelled("disks", "percent"), PERCENT, "disk {label}", plot=("disk",),
           plot_one="disk:", alert="disk", card=True, list_each=True, button="Disk"),
    Metric("disk_used:{label}", labelled("disks", "used"), BYTES, "disk {label}", size_of="disk:{label}",
           card=True, prom=Prom("mbot_host_disk_used_bytes", "Filesystem space in use.", labels={"label": "disk"})),
    Metric("disk_total:{label}", labelled("disks", "total"), BYTES, "disk {label} size", card=True,
           prom=Prom("mbot_host_disk_total_bytes", "Filesystem size.", labels={"label": "disk"})),
    Metric("disk_read", lambda m: iter([({}, m["disk_io"]["read"])] if "read" in m.get("disk_io", {}) else []),
           BYTE_RATE, "disk read", plot=("io",), kind=RATE, card=True,
           prom=Prom("mbot_host_disk_read_bytes_per_second", "Bytes read per second, all disks.")),
    Metric("disk_write", lambda m: iter([({}, m["disk_io"]["write"])] if "write" in m.get("disk_io", {}) else []),
           BYTE_RATE, "disk write", plot=("io",), kind=RATE, card=True,
           prom=Prom("mbot_host_disk_written_bytes_per_second", "Bytes written per second, all disks.")),
    Metric("net_rx", total("net", "rx"), BYTE_RATE, "download", legend="net ↓", plot=("net", "net_down"),
           alert="net_down", kind=RATE, card=True, button="Net"),
    Metric("net_tx", total("net", "tx"), BYTE_RATE, "upload", legend="net ↑", plot=("net", "net_up"),
           alert="net_up", kind=RATE, card=True),
    Metric("net_rx:{label}", labelled("net", "rx"), BYTE_RATE, "download {label}", legend="{label} ↓",
           plot_one="net:", kind=RATE,
           prom=Prom("mbot_host_network_receive_bytes_per_second", "Network bytes per second (receive).",
                     labels={"label": "iface"})),
    Metric("net_tx:{label}", labelled("net", "tx"), BYTE_RATE, "upload {label}", legend="{label} ↑",
           plot_one="net:", kind=RATE,
           prom=Prom("mbot_host_network_transmit_bytes_per_second", "Network bytes per second (transmit).",
                     labels={"label": "iface"})),
    Metric("temp:{label}", labelled("temps"), CELSIUS, "temperature {label}", legend="temp {label}",
           plot=("temp",), plot_one="temp:", alert="temp", card=True,
           prom=Prom("mbot_host_temperature_celsius", "Temperature sensors.", labels={"label": "sensor"})),
    Metric("uptime", scalar("uptime"), SECONDS, "uptime", plot=("uptime",), card=True,
           prom=Prom("mbot_host_uptime_seconds", "Seconds since the host booted.")),
    Metric("procs", scalar("procs"), COUNT, "processes", plot=("procs",), card=True,
           prom=Prom("mbot_host_processes", "Processes running.")),
    Metric("gpu{i}", gpus("util"), PERCENT, "GPU {i}", plot=("gpu",), plot_one="gpu", alert="gpu", card=True, button="GPU",
           prom=Prom("mbot_gpu_utilization_ratio", "GPU busy, 0-1.", 100, labels={"i": "gpu", "name": "name"}),
           named="{gpu}"),
    Metric("vram{i}", gpus("vram"), PERCENT, "VRAM {i}", plot=("vram",), plot_one="vram", alert="vram", card=True, button="VRAM",
           named="{gpu} VRAM"),
    Metric("vram_used{i}", gpus("vram_used"), BYTES, "VRAM {i}", size_of="vram{i}", card=True,
           prom=Prom("mbot_gpu_memory_used_bytes", "GPU memory in use.", labels={"i": "gpu", "name": "name"}),
           named="{gpu} VRAM"),
    Metric("vram_total{i}", gpus("vram_total"), BYTES, "VRAM {i} size", card=True,
           prom=Prom("mbot_gpu_memory_total_bytes", "GPU memory size.", labels={"i": "gpu", "name": "name"}),
           named="{gpu} VRAM size"),
    Metric("gputemp{i}", gpus("temp"), CELSIUS, "GPU {i} temperature", legend="GPU {i} temp", plot=("gputemp",),
           plot_one="gputemp", alert="gputemp", card=True,
           prom=Prom("mbot_gpu_temperature_celsius", "GPU temperature.", labels={"i": "gpu", "name": "name"}),
           named="{gpu} temp"),
    Metric("power{i}", gpus("power"), WATTS, "GPU {i} power", plot=("power",), plot_one="power", card=True,
           prom=Prom("mbot_gpu_power_watts", "GPU power draw.", labels={"i": "gpu", "name": "name"}),
           named="{gpu} power"),
    # The link to the server, measured by the server (mbot/linkquality.py): the last ~minute of probes.
    Metric("rtt", link("rtt"), MILLISECONDS, "round trip to the server", legend="RTT", plot=("link", "rtt"),
           alert="rtt", card=True, button="Link",
           prom=Prom("mbot_host_link_rtt_seconds", "Round trip from the server to the agent over its WebSocket "
                     "(mean of the last probes).", 1000)),
    Metric("jitter", link("jitter"), MILLISECONDS, "jitter of the round trip", legend="jitter",
           plot=("link", "jitter"), alert="jitter", card=True,
           prom=Prom("mbot_host_link_jitter_seconds", "Mean change of the round trip between consecutive probes.",
                     1000)),
    Metric("loss", link("loss"), PERCENT, "probe loss", legend="loss", plot=("link", "loss"), alert="loss",
           card=True, prom=Prom("mbot_host_link_loss_ratio", "Share of the last probes not answered within the "
                                "probe timeout, 0-1.", 100)),
    # Speed tests' results (mbot/speedtest.py): one point per test, on the sample that followed it (so not on
    # /metrics, which shows the latest sample's values).
    Metric("speed_down", measured("speed", "down"), BYTE_RATE, "speed test download", legend="speed ↓",
           plot=("speed",), kind=RATE),
    Metric("speed_up", measured("speed", "up"), BYTE_RATE, "speed test upload", legend="speed ↑",
           plot=("speed",), kind=RATE),
    # Checks from the host (mbot/checks.py): the agent's latest result of each check, on every sample (an alert
    # on a series that comes and goes would resolve while it is missing). The label is the check's name, from a
    # set the server bounds (limits.MAX_CHECKS per host).
    Metric("check_up:{label}", labelled("checks", "up"), PERCENT, "check {label} up", plot_one="up:",
           prom=Prom("mbot_check_up", "1 when the check's last probe succeeded.", 100,
                     labels={"label": "check"})),
    Metric("check_ms:{label}", labelled("checks", "ms"), MILLISECONDS, "check {label} latency",
           legend="{label}", plot=("checks",), plot_one="check:",
           prom=Prom("mbot_check_latency_seconds", "Time the check's last probe took (to its answer, or to its "
                     "failure).", 1000, labels={"label": "check"})),
    Metric("check_cert:{label}", labelled("checks", "cert"), DAYS, "certificate of {label}",
           legend="cert {label}", plot_one="cert:", alert="cert",
           prom=Prom("mbot_check_cert_days", "Days until the check's TLS certificate expires.",
                     labels={"label": "check"})),
    # Containers: a bounded set (the mbot agent sends CPU and memory for at most 50, `down` for 200); their full
    # list is the `containers` snapshot. `container:web` draws CPU and memory, `container:web cpu` one of them.
    Metric("container_cpu:{label}", labelled("containers", "cpu"), PERCENT, "container {label} CPU",
           legend="{label} CPU", plot_one="container:", plot_field="cpu",
           prom=Prom("mbot_container_cpu_usage_ratio", "Container CPU busy, share of the whole host, 0-1.", 100,
                     labels={"label": "container"})),
    Metric("container_mem:{label}", labelled("containers", "mem"), BYTES, "container {label} memory",
           legend="{label} mem", plot_one="container:", plot_field="mem",
           prom=Prom("mbot_container_memory_bytes", "Container memory in use, less inactive page cache.",
                     labels={"label": "container"})),
    Metric("container_down:{label}", labelled("containers", "down"), STATE, "container {label}",
           legend="{label} down", plot_one="container:", plot_field="down", plot_bare=False, alert="containers",
           list_each=True,
           prom=Prom("mbot_container_down", "0 up, 1 not running, 2 unhealthy, 3 restarting over and over.",
                     labels={"label": "container"})),
]


# Other words people type for the catalogue's words: plurals, long forms, the card's own names. /plot, the CLI's
# plot and /setalert read them through canonical(); a word that is no selector stays unknown to /setalert (net:
# it has net_up and net_down).
ALIASES = {"temps": "temp", "temperature": "temp", "temperatures": "temp", "mem": "ram", "memory": "ram",
           "disks": "disk", "gpus": "gpu", "vrams": "vram", "gputemps": "gputemp", "gpu_temp": "gputemp",
           "cpus": "cpu", "network": "net", "nets": "net", "download": "net_down", "upload": "net_up",
           "processes": "procs", "latency": "rtt", "ping": "rtt"}


# --- what consumers ask ----------------------------------------------------------------------------------------


def canonical(word: str) -> str:
    """A metric word (any case) as the catalogue spells it: lower case, an alias replaced by its word."""
    word = word.lower()
    return ALIASES.get(word, word)


def flatten(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Validated metrics -> named series, row by row (docs/protocol.md, "Server-side series")."""
    series: dict[str, float] = {}
    for row in CATALOGUE:
        source = row.source
        if source is not None and source not in metrics:
            continue  # most rows' keys are absent from most samples (GPUs, checks, containers)
        fill = row.fill
        if fill is not None:
            fill(metrics, series, row._name_parts)  # type: ignore[arg-type]  # not None when fill is not
        else:
            for labels, value in row.extract(metrics):
                series[row.series(labels)] = float(value)
    return series


def labelled_values(metrics: Mapping[str, Any]) -> Iterator[tuple[Metric, Labels, float]]:
    """Every value of a sample with its row and labels (the GPU's name included): what /metrics exports."""
    for row in CATALOGUE:
        for labels, value in row.extract(metrics):
            yield row, labels, float(value)


_scalar_keys: tuple[list[Metric], int, dict[str, Metric]] | None = None


def scalar_keys() -> dict[str, Metric]:
    """Top-level keys of `metrics` that are plain numbers, by key: the edge validates these from the row's unit.
    Asked for every sample, so kept while the catalogue is the same list of the same length (a test may replace
    it or add a row). The dict is shared: read it, never change it."""
    global _scalar_keys
    cached = _scalar_keys
    if cached is None or cached[0] is not CATALOGUE or cached[1] != len(CATALOGUE):
        keys = {key: row for row in CATALOGUE if (key := getattr(row.extract, "scalar_key", None)) is not None}
        cached = _scalar_keys = (CATALOGUE, len(CATALOGUE), keys)
    return cached[2]


def row_of(series: str) -> Metric | None:
    """The row a stored series name belongs to (exact names first, then patterns)."""
    for row in CATALOGUE:
        if row.name == series:
            return row
    for row in CATALOGUE:
        if "{" in row.name and row.pattern.fullmatch(series):
            return row
    return None


def label(series: str) -> str:
    """What a series is called in messages: "CPU", "disk /home", "GPU 0 temperature"."""
    row = row_of(series)
    return row.text(series) if row is not None else series


def selectors() -> dict[str, Metric]:
    """/setalert METRIC words -> the row they watch (a row with a placeholder watches all its members)."""
    return {row.alert: row for row in CATALOGUE if row.alert is not None}


def plot_words() -> dict[str, list[Metric]]:
    """/plot family words (and aliases) -> the rows they draw."""
    words: dict[str, list[Metric]] = {}
    for row in CATALOGUE:
        for word in row.plot:
            words.setdefault(word, []).append(row)
    return words


def one_forms() -> dict[str, list[Metric]]:
    """/plot forms for one member ("disk:" for disk:/home, "gpu" for gpu0) -> the rows they pick from."""
    forms: dict[str, list[Metric]] = {}
    for row in CATALOGUE:
        if row.plot_one is not None:
            forms.setdefault(row.plot_one, []).append(row)
    return forms


def one_fields(form: str) -> dict[str, list[Metric]]:
    """For a one-member form with fields ("container:"): field word -> the rows it picks; empty for the others."""
    fields: dict[str, list[Metric]] = {}
    for row in one_forms().get(form, ()):
        if row.plot_field is not None:
            fields.setdefault(row.plot_field, []).append(row)
    return fields


def size_rows() -> dict[str, Metric]:
    """Percent series pattern -> its bytes counterpart (what /plot draws for ram, disk, vram with a size UNIT)."""
    return {row.size_of: row for row in CATALOGUE if row.size_of is not None}


def members(rows: Sequence[Metric], available: Sequence[str] | set[str]) -> list[tuple[Metric, str]]:
    """(row, series) for each available series of these rows, in the catalogue's order and, within a row, by
    position or label."""
    out: list[tuple[Metric, str]] = []
    for row in rows:
        found = [name for name in available if row.pattern.fullmatch(name)]
        found.sort(key=lambda name: _order(row, name))
        out.extend((row, name) for name in found)
    return out


def _order(row: Metric, series: str) -> tuple[int, str]:
    labels = row.labels_of(series) or {}
    return (int(labels["i"]), "") if "i" in labels else (0, labels.get("label", ""))
