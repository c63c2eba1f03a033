"""Layering you can check: each pure core imports, in a fresh interpreter, without loading any IO library.

docs/architecture.md: a core takes values and returns values; it never opens a socket, a file or a thread. Here that
means importing it loads none of IO_MODULES (nor the edge modules that own them). Each module is imported in its own
process, so what one test imported cannot hide what another needs; a failure names the chain of mbot modules
through which the forbidden one came in. The processes are forked from one fresh interpreter that has imported
nothing but what the probe itself needs (an interpreter start per module was most of this file's time).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The pure cores. Add a new core here when it is written.
CORES = [
    "mbot.access",
    "mbot.admission",
    "mbot.statuspage",
    "mbot.telegram.groups",
    "mbot.alert_state",
    "mbot.alerts",
    "mbot.checks",
    "mbot.containers",
    "mbot.control",
    "mbot.digest",
    "mbot.durations",
    "mbot.forecast",
    "mbot.i18n",
    "mbot.inventory",
    "mbot.install",
    "mbot.limits",
    "mbot.members",
    "mbot.linkquality",
    "mbot.metrics",
    "mbot.model",
    "mbot.plotspec",
    "mbot.processes",
    "mbot.protocol",
    "mbot.quiet",
    "mbot.rollup",
    "mbot.series",
    "mbot.session",
    "mbot.snapshots",
    "mbot.speedtest",
    "mbot.stability",
    "mbot.telegram.alert_commands",
    "mbot.telegram.alert_flap",
    "mbot.telegram.alert_fold",
    "mbot.telegram.alert_text",
    "mbot.telegram.commands",
    "mbot.telegram.views",
]

# Cores that still break the rule, each with the import to switch (issue 12 part 5). strict: once fixed, the test
# passes and xfail(strict) fails, which says to take the entry out.
KNOWN: dict[str, str] = {}  # core module -> why it still loads IO, until it is fixed

# Modules allowed to hold SQL (mbot.store's docstring), and those that still do against the rule, with what to do.
SQL_MODULES = {"mbot/store.py", "mbot/writer.py", "mbot/users.py"}
KNOWN_SQL: dict[str, str] = {}  # module -> why it still holds SQL, until it is moved behind store
_SQL_CALL = re.compile(r"\.(execute|executemany|executescript)\(")

IO_MODULES = ("trio", "sqlite3", "httpx", "matplotlib")
EDGE_MODULES = ("mbot.store", "mbot.service", "mbot.agents", "mbot.writer", "mbot.app")

_PROBE = """
import importlib, json, sys, traceback

watched = set(sys.argv[2:])
chains = {}


class Spy:
    # Records, the first time a watched module is imported, which mbot modules were importing at that moment.
    def find_spec(self, name, path=None, target=None):
        if name in watched and name not in chains:
            chains[name] = [frame.filename for frame in traceback.extract_stack()[:-1]
                            if "/mbot/" in frame.filename and "<frozen" not in frame.filename]
        return None


sys.meta_path.insert(0, Spy())
importlib.import_module(sys.argv[1])
print(json.dumps({name: chains.get(name, []) for name in sorted(watched) if name in sys.modules}))
"""


# One fresh interpreter, started once, that forks a child per module: the child runs _PROBE as `python -c _PROBE
# module ...` would (its output and exit status are a fresh run's), its parent having imported nothing that _PROBE
# does not import itself. Requests on stdin, one JSON line each; the child's exit status comes back on stdout.
_FORKER = """
import importlib, json, os, signal, sys, traceback

probe = sys.argv[1]
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            signal.alarm(60)
            for fd, path in ((1, request["out"]), (2, request["err"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            sys.argv = ["-c", *request["argv"]]
            exec(compile(probe, "<string>", "exec"), {"__name__": "__main__"})
            code = 0
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Probe:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.forker = subprocess.Popen([sys.executable, "-c", _FORKER, _PROBE], cwd=ROOT, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        out, err = self.folder / "out", self.folder / "err"
        assert self.forker.stdin is not None and self.forker.stdout is not None
        self.forker.stdin.write(json.dumps({"argv": argv, "out": str(out), "err": str(err)}) + "\n")
        self.forker.stdin.flush()
        code = int(self.forker.stdout.readline())
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())

    def close(self) -> None:
        assert self.forker.stdin is not None and self.forker.stdout is not None
        self.forker.stdin.close()
        self.forker.wait(timeout=60)
        self.forker.stdout.close()


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    running = Probe(tmp_path_factory.mktemp("probe"))
    yield running
    running.close()


def _chain(files: list[str]) -> str:
    modules = []
    for name in files:
        module = Path(name).resolve().relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        if module not in modules:
            modules.append(module)
    return " -> ".join(modules)


@pytest.mark.parametrize("module", [
    pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN[name], strict=True)) if name in KNOWN else name
    for name in CORES
])
def test_core_loads_no_io(module: str, probe: Probe) -> None:
    done = probe.run(module, *IO_MODULES, *EDGE_MODULES)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert not loaded, "\n".join(f"{module} loads {name} via {_chain(files)}" for name, files in loaded.items())


def test_the_server_starts_without_matplotlib(probe: Probe) -> None:
    """matplotlib is imported with the first chart (charts.py, stabilitychart.py), not with the server: it was half of
    a start's import time, and a restart is only as quick as the start."""
    done = probe.run("mbot.app", "matplotlib", "mbot.telegram.bot", "mbot.stabilitychart")
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert "mbot.stabilitychart" in loaded and "mbot.telegram.bot" in loaded  # the probe sees what the app imports
    assert "matplotlib" not in loaded, f"mbot.app loads matplotlib via {_chain(loaded['matplotlib'])}"


def test_every_core_in_the_architecture_doc_is_listed() -> None:
    """docs/architecture.md marks the cores "(core)": each of them is checked here."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    marked = {"mbot." + path.replace("/", ".") for path in re.findall(r"^\s+([\w/]+)\.py\s+\(core\)", doc, re.M)}
    assert marked, "no (core) module found in docs/architecture.md: did its layout change?"
    assert marked <= set(CORES), f"add to CORES: {sorted(marked - set(CORES))}"


def test_sql_lives_behind_store() -> None:
    with_sql = {path.relative_to(ROOT).as_posix() for path in (ROOT / "mbot").rglob("*.py")
                if _SQL_CALL.search(path.read_text(encoding="utf-8"))}
    assert with_sql - SQL_MODULES - set(KNOWN_SQL) == set(), "SQL outside mbot.store: add a store function"
    assert set(KNOWN_SQL) <= with_sql, f"fixed, take out of KNOWN_SQL: {sorted(set(KNOWN_SQL) - with_sql)}"
