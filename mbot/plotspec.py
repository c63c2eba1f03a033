"""The /plot grammar and the mapping of a user's metric words to a host's series. Pure: no IO, no clock.

    /plot NAME METRICS SPAN... [LIMIT] [UNIT]

METRICS: words separated by `;` or `,` (cpu, ram, swap, gpu, vram, net, net_up, net_down, load, temp, gputemp,
power, io, disk, and the specific forms disk:/MOUNT, temp:LABEL, net:IFACE, cpu:N, gpuN, vramN, gputempN, powerN,
load1/load5/load15, container:NAME [cpu|mem|down]; aliases such as temps, gpus, disks, network:
series.ALIASES). SPAN: one or more `<n>s|m|h|d|w|y` tokens that add up (`2d 3h`), at most the longest history kept.
LIMIT: a number, the top of the Y axis, in the unit shown. UNIT (any case): `%`; b, kb, kib, mb, mib, gb, gib, tb,
tib for sizes (ram, swap, vram, disk: the used amount instead of the percentage) and for rates (net, io); bit, kbit,
mbit, gbit for net.
kb/mb/gb are powers of 1000 and kib/mib/gib powers of 1024, and the axis says which.

Any mistake is a PlotUsageError that says what was wrong and, when the caller passed the host's series, lists the
host's metrics in the words /plot accepts: never silence. The grammar is this module's, whoever asks; each front end
(the chat's /plot, the CLI's `python -m mbot plot`) renders the error with its own usage line and examples (Syntax).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from mbot import series as catalogue
from mbot.durations import format_duration, parse_duration
from mbot.i18n import N_, _



@dataclass(frozen=True)
class Syntax:
    """How one front end spells the grammar: its usage line and examples, and where the usage line goes."""

    usage: str
    examples: str
    usage_first: bool  # the chat leads with the usage line, as its other commands do; a terminal with the problem


# The chat's lines are message ids (mbot.i18n), said in the user's language; the CLI's have no translation.
CHAT = Syntax(N_("Usage: /plot NAME METRICS SPAN... [LIMIT] [UNIT]"),
              N_("Examples: /plot box1 cpu;gpu 2d 3h 80 · /plot box1 ram 1h GiB · /plot box1 net 30m 100 mbit"),
              usage_first=True)
# `;` separates shell commands, so the CLI's examples use the other separator, `,`.
CLI = Syntax("usage: python -m mbot plot NAME METRICS SPAN... [LIMIT] [UNIT] -o FILE.png",
             "examples:\n  python -m mbot plot box1 cpu 24h -o cpu.png\n  python -m mbot plot box1 cpu,gpu 2d 3h 80 -o "
             "gpu.png\n  python -m mbot plot box1 ram 1y GiB -o ram.png",
             usage_first=False)
DEFAULT_MAX_SPAN = 730 * 86400.0
MAX_LISTED = 60  # metrics named in an error message at most (a host with 50 containers stays readable)
_SHOWN = 32  # characters of a user's token quoted back: a reply stays short whatever was typed
MAX_AXES = 2

PERCENT = "%"
# key -> (bytes per unit, axis label for a size; a rate adds "/s")
BYTE_UNITS = {
    "b": (1.0, "B"), "kb": (1e3, "kB"), "kib": (1024.0, "KiB"), "mb": (1e6, "MB"), "mib": (1024.0 ** 2, "MiB"),
    "gb": (1e9, "GB"), "gib": (1024.0 ** 3, "GiB"), "tb": (1e12, "TB"), "tib": (1024.0 ** 4, "TiB"),
}
BIT_UNITS = {"bit": (1.0, "bit/s"), "kbit": (1e3, "kbit/s"), "mbit": (1e6, "Mbit/s"), "gbit": (1e9, "Gbit/s")}
DEFAULT_RATE = "mb"  # net and io without a unit: MB/s

_INDEXED = re.compile(r"([a-z_]+?)(\d+)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_GLUED = re.compile(r"(\d+(?:\.\d+)?)([a-z%]+)")


class PlotUsageError(ValueError):
    """A chart that cannot be drawn as asked: the problem and, when known, the host's metrics. str() and `message`
    are the chat's reply; render(CLI) is the terminal's."""

    def __init__(self, problem: str, metrics: Iterable[str] = ()) -> None:
        self.problem = problem
        self.metrics = tuple(metrics)  # this host's metrics in /plot's words, when known
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.render(CHAT)

    def render(self, syntax: Syntax) -> str:
        lines = [self.problem]
        if self.metrics:
            lines.append(_("Metrics of this host: {metrics}", metrics=", ".join(self.metrics)))
        usage, examples = _(syntax.usage), _(syntax.examples)
        return "\n".join([usage, *lines, examples] if syntax.usage_first else [*lines, usage, examples])

    def with_metrics(self, available: Iterable[str]) -> PlotUsageError:
        """The same error listing the metrics of a host whose series are `available`."""
        return PlotUsageError(self.problem, host_metrics(available))


@dataclass(frozen=True)
class PlotRequest:
    host: str
    metrics: tuple[str, ...]  # the user's words, normalised (lower case except a mount, label or interface)
    span: float  # seconds
    limit: float | None  # top of the Y axis, in the unit shown
    unit: str | None  # a key of BYTE_UNITS or BIT_UNITS, or "%"


@dataclass(frozen=True)
class SeriesChoice:
    series: str  # the stored series name (docs/protocol.md, "Server-side series")
    label: str  # legend label
    unit: str  # axis label: "%", "GiB", "MB/s", "Mbit/s", "°C", "W", "" for load
    scale: float  # stored value * scale = value drawn


# --- grammar ---------------------------------------------------------------------------------------------------


def _cut(text: str) -> str:
    return text[:_SHOWN] + "…" if len(text) > _SHOWN else text


def _quote(text: str) -> str:
    return repr(_cut(text))


def known_words() -> str:
    """Every metric word /plot knows, for the reply to an unknown one: the family words, then the member forms."""
    hints = {"disk:": "/MOUNT", "net:": "IFACE"}
    forms = [f"{form}{hints.get(form, 'N' if '{i}' in rows[0].name else 'LABEL')}"
             for form, rows in catalogue.one_forms().items()]
    return _("{words}; one of several: {forms}", words=", ".join(catalogue.plot_words()), forms=", ".join(forms))


def _normalise_word(word: str) -> str | None:
    """A metric word in canonical form, or None if /plot does not know it: a family word of the catalogue (cpu,
    disk, net_up ...), an alias of one (temps), or one member (disk:/home, net:eth0, cpu:3, gpu0)."""
    word = word.strip()
    head, colon, arg = word.partition(":")
    head = catalogue.canonical(head)
    if colon:
        rows = catalogue.one_forms().get(head + ":")
        if not rows or not arg or ("{i}" in rows[0].name and not arg.isdigit()):
            return None
        member, space, field = arg.rpartition(" ")  # `container:web cpu` (_split_metrics joined the field)
        if space:
            field = field.lower()
            if not member or field not in catalogue.one_fields(head + ":"):
                return None
            return f"{head}:{member} {field}"
        return f"{head}:{arg}"
    if head in catalogue.plot_words():
        return head
    indexed = _INDEXED.fullmatch(head)
    if indexed and indexed.group(1) in catalogue.one_forms():
        return head
    return None


def _rows(word: str) -> tuple[list[catalogue.Metric], dict[str, str] | None]:
    """The catalogue rows a canonical word draws, and for a one-member form the member's placeholder value."""
    head, colon, arg = word.partition(":")
    if colon:
        rows = catalogue.one_forms()[head + ":"]
        member, space, field = arg.rpartition(" ")
        if space:
            return catalogue.one_fields(head + ":")[field], {"label": member, "i": member}
        return [row for row in rows if row.plot_bare], {"label": arg, "i": arg}
    families = catalogue.plot_words()
    if word in families:
        return families[word], None
    indexed = _INDEXED.fullmatch(word)
    assert indexed is not None
    return catalogue.one_forms()[indexed.group(1)], {"i": indexed.group(2), "label": indexed.group(2)}


def _unit_key(token: str) -> str | None:
    key = token.lower()
    if key == PERCENT or key in BYTE_UNITS or key in BIT_UNITS:
        return key
    return None


def _accepts(word: str, unit: str | None) -> bool:
    if unit is None:
        return True
    units = {row.unit for row in _rows(word)[0]}
    if unit == PERCENT:
        return catalogue.PERCENT in units
    if unit in BIT_UNITS:
        return catalogue.BYTE_RATE in units
    sizes = catalogue.size_rows()
    return bool(units & {catalogue.BYTES, catalogue.BYTE_RATE}) or any(row.name in sizes for row in _rows(word)[0])


def _split_metrics(tokens: list[str]) -> tuple[str, int]:
    """The METRICS text from the start of `tokens`, and how many tokens it used: `cpu; gpu` and `cpu ;gpu` (a
    space after or before a separator) still make one METRICS."""
    text, used = tokens[0], 1
    while used < len(tokens):
        if _field_of(text, tokens[used]):
            text += " " + tokens[used]  # `container:web cpu`: the field goes with its member
        elif text[-1] in ";," or tokens[used][0] in ";,":
            if tokens[used][0] not in ";," and _is_span(tokens[used]):
                break  # `cpu; 1h`: a trailing separator, then the SPAN (no metric word looks like a span)
            text += tokens[used]
        else:
            break
        used += 1
    return text, used


def _field_of(text: str, token: str) -> bool:
    """Whether `token` is a field word (cpu, mem ...) of the one-member form that ends `text` (container:web)."""
    last = re.split(r"[;,]", text)[-1].strip()
    head, colon, arg = last.partition(":")
    return bool(colon and arg and " " not in arg and token.lower() in catalogue.one_fields(head.lower() + ":"))


def _is_span(token: str) -> bool:
    try:
        parse_duration(token)
    except ValueError:
        return False
    return True


def parse_plot(args: Sequence[str], max_span: float = DEFAULT_MAX_SPAN,
               available: Iterable[str] | None = None) -> PlotRequest:
    """The words after /plot -> a PlotRequest. `max_span`: the longest retention (no chart reaches further back;
    the caller passes the longest of its Settings.tiers). `available`: the host's series names, when the caller
    has them, so an error can list the host's metrics."""
    known = host_metrics(available) if available is not None else ()

    def fail(problem: str) -> PlotUsageError:
        return PlotUsageError(problem, known)

    tokens = [t for t in args if t.strip()]
    if not tokens:
        raise fail(_("Missing NAME, METRICS and SPAN."))
    host, rest = tokens[0], tokens[1:]
    if not rest:
        raise fail(_("Missing METRICS and SPAN."))
    text, used = _split_metrics(rest)
    rest = rest[used:]
    words = [w for w in re.split(r"[;,]", text) if w.strip()]
    if not words:
        raise fail(_("Missing METRICS: name at least one, like cpu or ram;gpu."))
    metrics: list[str] = []
    for word in words:
        canonical = _normalise_word(word)
        if canonical is None:
            raise fail(_("Unknown metric {word}.", word=_quote(word.strip()))
                       + ("" if known else " " + _("Metrics: {words}.", words=known_words())))
        if canonical not in metrics:
            metrics.append(canonical)

    span, typed = 0.0, []
    while rest:
        try:
            span += parse_duration(rest[0])
        except ValueError:
            break
        typed.append(rest[0])
        rest = rest[1:]
    if span == 0:
        problem = _("{word} is not a SPAN", word=_quote(rest[0])) if rest else _("Missing SPAN")
        raise fail(_("{problem}: use one or more of <n>s, m, h, d, w, y, like 30m, 2d 3h or 1y.", problem=problem))
    if span > max_span:  # also a sum too large for a float (inf)
        raise fail(_("SPAN {span} reaches back further than the history this server keeps ({longest}): ask for at "
                     "most that.", span=_quote(' '.join(typed)), longest=format_duration(max_span, compact=True)))

    limit: float | None = None
    unit: str | None = None
    for token in rest:
        glued = _GLUED.fullmatch(token.lower())
        parts = [glued.group(1), glued.group(2)] if glued and _unit_key(glued.group(2)) else [token]
        for part in parts:
            if _NUMBER.fullmatch(part) and limit is None:
                limit = float(part)
                if not (math.isfinite(limit) and limit > 0):
                    raise fail(_("LIMIT {limit} must be a number above 0.", limit=_cut(part)))
            elif _unit_key(part) is not None and unit is None:
                unit = _unit_key(part)
            else:
                raise fail(_("Unexpected {token}: after SPAN come an optional LIMIT (a number) and UNIT "
                             "(%, b, kib, mb, gib, bit, mbit ...).", token=_quote(token)))
    if unit is not None and not any(_accepts(m, unit) for m in metrics):
        raise fail(_("Unit {unit!r} does not fit {metrics}: sizes (gib ...) go with ram, swap, vram and disk; bits "
                     "(mbit ...) with net; % with cpu, gpu, ram, swap, vram and disk.", unit=unit,
                     metrics=", ".join(metrics)))
    return PlotRequest(host, tuple(metrics), span, limit, unit)


# --- resolution against a host's series ------------------------------------------------------------------------


def _rate_unit(unit: str | None) -> tuple[float, str]:
    """Scale and axis label for a bytes-per-second series shown in `unit`."""
    if unit in BIT_UNITS:
        per, label = BIT_UNITS[unit]
        return 8.0 / per, label
    per, label = BYTE_UNITS[unit if unit in BYTE_UNITS else DEFAULT_RATE]
    return 1.0 / per, label + "/s"


_AXES = {catalogue.PERCENT: PERCENT, catalogue.CELSIUS: "°C", catalogue.WATTS: "W", catalogue.LOAD: "",
          catalogue.SECONDS: "s", catalogue.COUNT: "", catalogue.BYTES: "B", catalogue.MILLISECONDS: "ms",
          catalogue.STATE: ""}
DEFAULT_SIZE = "mib"  # a bytes series drawn without a UNIT (container memory): MiB


def _choices(word: str, available: set[str], unit: str | None, gpus: Sequence[str] = ()) -> list[SeriesChoice]:
    """The series a canonical word stands for on this host (empty when it has none); `unit` already fits."""
    rows, member = _rows(word)
    size = BYTE_UNITS.get(unit or "")
    sizes = catalogue.size_rows()
    if member is not None:
        found = [(row, row.series(member)) for row in rows]
        found = [(row, name) for row, name in found if name in available]
    else:
        found = catalogue.members(rows, available)
    out: list[SeriesChoice] = []
    for row, name in found:
        legend = row.text(name, legend=True, gpus=gpus)
        if row.unit == catalogue.PERCENT and size and row.name in sizes:
            used = sizes[row.name].series(row.labels_of(name) or {})
            if used in available:
                out.append(SeriesChoice(used, legend, size[1], 1.0 / size[0]))
        elif row.unit == catalogue.BYTE_RATE:
            scale, label = _rate_unit(unit)
            out.append(SeriesChoice(name, legend, label, scale))
        elif row.unit == catalogue.BYTES:
            per, axis = size or BYTE_UNITS[DEFAULT_SIZE]
            out.append(SeriesChoice(name, legend, axis, 1.0 / per))
        else:
            out.append(SeriesChoice(name, legend, _AXES[row.unit], 1.0))
    return out


def resolve_metrics(metrics: Iterable[str], available: Iterable[str], unit: str | None = None,
                    gpus: Sequence[str] = ()) -> list[SeriesChoice]:
    """The user's metric words -> this host's series to draw, in order, each once.

    `unit` applies to every metric it fits (`cpu;ram 1h gib`: RAM in GiB, CPU in %). Raises PlotUsageError, listing
    the host's metrics, for an unknown word, a metric the host does not have, a unit that fits none of the metrics,
    or metrics that need more than two axes.
    """
    names = set(available)
    known = host_metrics(names)
    key = _unit_key(unit) if unit is not None else None
    if unit is not None and key is None:
        raise PlotUsageError(_("Unknown unit {unit}.", unit=_quote(unit)), known)
    words = []
    for metric in metrics:
        word = _normalise_word(metric)
        if word is None:
            raise PlotUsageError(_("Unknown metric {word}.", word=_quote(metric)), known)
        words.append(word)
    if key is not None and not any(_accepts(w, key) for w in words):
        raise PlotUsageError(_("Unit {unit!r} does not fit {metrics}.", unit=unit, metrics=", ".join(words)), known)
    chosen: list[SeriesChoice] = []
    for word in words:
        found = _choices(word, names, key if _accepts(word, key) else None, gpus)
        if not found:
            raise PlotUsageError(_("This host has no {word}.", word=word), known)
        chosen.extend(c for c in found if c.series not in {d.series for d in chosen})
    units = list(dict.fromkeys(c.unit for c in chosen))
    if len(units) > MAX_AXES:
        shown = ", ".join(u or "load" for u in units)
        raise PlotUsageError(_("These metrics need {n} different units ({units}); one chart has at most {most} axes: "
                               "split them over two charts.", n=len(units), units=shown, most=MAX_AXES), known)
    return chosen


def limit_unit(choices: Sequence[SeriesChoice], unit: str | None) -> str | None:
    """The axis (unit label) LIMIT applies to: the one the user's UNIT selected, else the first series' axis."""
    if not choices:
        return None
    if unit is not None:
        key = unit.lower()
        labels = {BYTE_UNITS[key][1], BYTE_UNITS[key][1] + "/s"} if key in BYTE_UNITS else (
            {BIT_UNITS[key][1]} if key in BIT_UNITS else {PERCENT})
        for choice in choices:
            if choice.unit in labels:
                return choice.unit
    return choices[0].unit


def host_metrics(available: Iterable[str]) -> list[str]:
    """A host's series names -> its metrics in /plot's words (cpu, load, ram, swap, disk:/, net, gpu ...)."""
    names = set(available)
    out: list[str] = []
    for row in catalogue.CATALOGUE:
        if not row.listed or not (row.plot or (row.list_each and row.plot_one)):
            continue
        present = catalogue.members([row], names)
        if not present:
            continue
        if row.list_each and row.plot_one:
            words = [f"{row.plot_one}{(row.labels_of(name) or {}).get('label', '')}" for _, name in present]
        else:
            words = [row.plot[0]]
        # A label with a blank in it (a mount point "/mnt/My Disk", or an agent's odd "0 ") cannot be typed back
        # as one /plot word: listing it would offer a word that fails; its charts stay on the card's buttons.
        out.extend(w for w in words if w not in out and not any(ch.isspace() for ch in w))
    del out[MAX_LISTED:]
    return out


def chart_title(host: str, choices: Sequence[SeriesChoice], span: float) -> str:
    """'box1 · CPU, GPU 0 · last 2d 3h'."""
    labels = ", ".join(dict.fromkeys(c.label for c in choices))
    return f"{host} · {labels} · " + _("last {span}", span=format_duration(span, compact=True))
