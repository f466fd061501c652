"""The load-step schedule: one definition shared by the load generator and the model.

Both must agree on when each step starts and when its hold begins, or measured and simulated
runs would be cut into different windows by the same projections.
"""

from __future__ import annotations

from collections.abc import Iterable


def step_schedule(steps: Iterable[tuple[int, float]], connect_rate: float) -> list[tuple[float, float, int]]:
    """``[(connections, hold_s), ...]`` -> ``[(step start, hold start, target), ...]`` in run seconds.

    A step first ramps up to its connections at ``connect_rate`` per second, then holds.
    """
    out, t, live = [], 0.0, 0
    for connections, hold_s in steps:
        ramp = max(0, connections - live) / connect_rate
        out.append((t, t + ramp, connections))
        t += ramp + hold_s
        live = connections
    return out


def schedule_end(steps: list[tuple[int, float]], connect_rate: float) -> float:
    """When the last step's hold ends."""
    _start, hold, _ = step_schedule(steps, connect_rate)[-1]
    return hold + steps[-1][1]
