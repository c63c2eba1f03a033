"""Items that failed alone: the record that shared tasks keep of what they isolated instead of dying on it.

A shared task (the writer, rollup, alerting, /metrics, the bot loop, chart rendering) that meets an item that raises
lets that item fail by itself, logs one line, counts it here, and carries on; /metrics exports the counts as
mbot_isolated_failures_total{task=...}, so a poison item is visible without reading logs.
"""
from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

TASKS = ("writer", "rollup", "retention", "alerting", "metrics", "bot", "charts")
_TRACEBACKS_PER_KIND = 3  # the first few of each kind carry a traceback; after that one line each


class Faults:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._kinds: Counter[tuple[str, str]] = Counter()

    def isolated(self, task: str, what: str, exc: BaseException) -> None:
        """`what` (one item of `task`) raised `exc` and was skipped; the task goes on."""
        self.counts[task] += 1
        kind = (task, type(exc).__name__)
        self._kinds[kind] += 1
        log.error("%s: %s failed and was skipped (%s: %s)", task, what, type(exc).__name__, str(exc)[:200],
                  exc_info=exc if self._kinds[kind] <= _TRACEBACKS_PER_KIND else None)
