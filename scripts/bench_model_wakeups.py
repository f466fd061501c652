#!/usr/bin/env python
"""What the exact loop wake-up recursion costs the model (issue 11, round 4): the same simulation with
and without the per-wake-up cost, best of 3 each, in one process, so the ratio holds on a noisy machine.

    .venv/bin/python scripts/bench_model_wakeups.py [CALIBRATION]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from model import Calibration, Workload
from model.sim import Simulation

DEFAULT = Path(__file__).resolve().parent.parent / "notebooks/data/reference/calibration-optimized-designed.json"


def main() -> int:
    cal = Calibration.load(sys.argv[1] if len(sys.argv) > 1 else DEFAULT)
    wl = Workload(
        steps=[{"connections": 2000, "hold_s": 120}],
        events_per_second=2000.0,
        mix={"echo": 0.99, "chat": 0.01},
        companies=4,
        connect_rate=2000,
    )
    best = {}
    for name, c in (("without", cal.model_copy(update={"cpu_per_wakeup_s": 0.0})), ("with", cal)):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            Simulation(c, wl, seed=1).run()
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
        print(f"BENCH model 2000 connections x 2000 events/s x 120 s, {name} the wake-up cost: {best[name]:.2f} s")
    print(f"BENCH ratio with/without: {best['with'] / best['without']:.2f}x (cost {cal.cpu_per_wakeup_s * 1e6:.1f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
