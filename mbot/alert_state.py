"""The per-series alert state machine, as a table. Pure: no IO, no clock, no engine.

h11's _state.py is the model: the states, what a sample can mean to a series, and the transition for each pair,
readable in one place. The engine (mbot.alerts.AlertEngine) classifies each sample for each watched series with
`reading()`, looks up `TRANSITIONS[phase, reading]` and carries out the action; everything timer-driven (offline,
reminders, mutes) stays in the engine's scheduler.

    state    reading        next     action
    ok       over_now       firing   FIRE_NOW  (over the threshold, and FOR 0: fires on this sample)
    ok       over_start     pending  START     (pending since this sample)
    ok       back           ok       -
    ok       gone(_long)    ok       FORGET    (a member of a family that left: dropped from /alerts)
    pending  over_due       firing   FIRE      (over on every sample for FOR seconds)
    pending  over           pending  -
    pending  over_now       firing   FIRE_NOW  (a gap or a clock jump, FOR 0: fires from this sample)
    pending  over_start     pending  START     (a gap or a clock jump: no evidence across it, start over)
    pending  back           ok       -
    pending  gone(_long)    ok       FORGET
    firing   clear_enough   ok       RESOLVE   (back past the hysteresis margin on `clear_samples` samples)
    firing   clearing       firing   COUNT     (back past the margin, not for long enough yet)
    firing   over / back    firing   HOLD      (not clearly back: the count starts again; announce if not yet)
    firing   gone           firing   -
    firing   gone_long      ok       RESOLVE_GONE  (missing for longer than the offline delay: closed, value
                                                   unknown, then forgotten like any member that left)
"""
from __future__ import annotations

from typing import Final

OK: Final = 0
PENDING: Final = 1
FIRING: Final = 2
NAMES: Final = ("ok", "pending", "firing")

# What one sample says about one series (see reading()).
OVER_NOW, OVER_START, OVER_DUE, OVER, BACK, CLEARING, CLEAR_ENOUGH, GONE, GONE_LONG = (
    "over_now", "over_start", "over_due", "over", "back", "clearing", "clear_enough", "gone", "gone_long")

# Actions the engine carries out.
NOTHING, FIRE, FIRE_NOW, START, FORGET, RESOLVE, RESOLVE_GONE, COUNT, HOLD = (
    "-", "fire", "fire_now", "start", "forget", "resolve", "resolve_gone", "count", "hold")

TRANSITIONS: Final[dict[tuple[int, str], tuple[int, str]]] = {
    (OK, OVER_NOW): (FIRING, FIRE_NOW),
    (OK, OVER_START): (PENDING, START),
    (OK, BACK): (OK, NOTHING),
    (OK, GONE): (OK, FORGET),
    (OK, GONE_LONG): (OK, FORGET),
    (PENDING, OVER_DUE): (FIRING, FIRE),
    (PENDING, OVER): (PENDING, NOTHING),
    (PENDING, OVER_NOW): (FIRING, FIRE_NOW),
    (PENDING, OVER_START): (PENDING, START),
    (PENDING, BACK): (OK, NOTHING),
    (PENDING, GONE): (OK, FORGET),
    (PENDING, GONE_LONG): (OK, FORGET),
    (FIRING, CLEAR_ENOUGH): (OK, RESOLVE),
    (FIRING, CLEARING): (FIRING, COUNT),
    (FIRING, OVER): (FIRING, HOLD),
    (FIRING, BACK): (FIRING, HOLD),
    (FIRING, GONE): (FIRING, NOTHING),
    (FIRING, GONE_LONG): (OK, RESOLVE_GONE),
}


def reading(phase: int, x: float | None, *, lim: float, clr: float, ts: float, since: float, last_ts: float,
            for_s: float, delay: float, clear_n: int, clear_samples: int) -> str:
    """What a sample means to one series in `phase`. `x` is the value signed so that "over" is always `x > lim`
    (None: the series is missing from the sample); `clr` is the level it must get back to (hysteresis)."""
    if x is None:
        return GONE_LONG if ts - last_ts > delay else GONE
    if phase == FIRING:
        if x <= clr:
            return CLEAR_ENOUGH if clear_n + 1 >= clear_samples else CLEARING
        return BACK if x <= lim else OVER
    if x <= lim:
        return BACK
    if phase == OK or ts < last_ts or ts - last_ts > delay:
        return OVER_NOW if for_s <= 0 else OVER_START
    return OVER_DUE if ts - since >= for_s else OVER
