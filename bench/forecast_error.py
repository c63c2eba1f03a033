"""The disk-full forecast's error on a synthetic linear fill (issue 16, item 7).

    .venv/bin/python bench/forecast_error.py

A 1,000 GiB disk, 856 GiB used, filling 2 GiB an hour: full in 72 hours. Two days of hourly averages, each off by
uniform noise of up to 0, 0.1 or 0.5 % of the disk's size, 1,000 seeds each: mbot.forecast.full_in against 72 h.
"""
from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mbot.forecast import full_in  # noqa: E402

H, GIB, NOW = 3600.0, 2.0 ** 30, 1.7e9
TOTAL, USED, RATE, TRUTH = 1000 * GIB, 856 * GIB, 2 * GIB, 72 * H


def main() -> None:
    for noise in (0.0, 0.001, 0.005):
        errors, silent = [], 0
        for seed in range(1000):
            rng = random.Random(seed)
            points = [(NOW - k * H, USED - k * RATE + rng.uniform(-noise, noise) * TOTAL) for k in range(48)][::-1]
            eta = full_in(points, TOTAL, NOW)
            if eta is None:
                silent += 1
            else:
                errors.append(abs(eta - TRUTH) / TRUTH * 100)
        errors.sort()
        print(f"noise up to {noise * 100:.1f} % of the size: error median {statistics.median(errors):.2f} %, "
              f"p95 {errors[int(0.95 * len(errors))]:.2f} %, max {errors[-1]:.2f} %; no forecast {silent}/1000")


if __name__ == "__main__":
    main()
