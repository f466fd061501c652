"""Repeated passes and cross-configuration prediction (issue 11).

A scenario lists each pass as a server of its own, labelled ``NAME.K`` (``scenarios/validation.yaml``
interleaves them, so slow drifts of the machine spread over every configuration). The passes of
``NAME`` are one configuration: ``lab.modelling.calibrate_measured`` fits one calibration on the
design half of all of them and judges every step against the passes' mean with their spread.

A configuration that differs from another of the same profile only in what the model represents
(the ``batching`` toggle, the node count) is also predicted from that other configuration's
calibration, never having been fitted on: the cross-configuration check.
"""

from __future__ import annotations

from eventlog import Run
from model import Calibration

MODELLED_TOGGLES = ("batching",)  # toggles the model switches on a calibration fitted without them


def group_of(label: str) -> str:
    """``optimized.2`` -> ``optimized``; a label without a pass number is its own group."""
    head, _, tail = label.rpartition(".")
    return head if head and tail.isdigit() else label


def pass_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by configuration, in the order they first appear."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_of(run.manifest.label or run.run_id), []).append(run)
    return groups


def _config(run: Run) -> tuple[str, dict[str, bool], int, bool]:
    server = run.manifest.server
    changed = bool(server.set) if server else False  # the scenario changed the profile's settings
    return run.manifest.profile, dict(server.toggles) if server else {}, run.manifest.nodes, changed


def cross_references(groups: dict[str, list[Run]]) -> dict[str, str]:
    """Configuration -> the configuration of the same profile it can be predicted from: one node, the
    profile as it ships (no ``set``), differing only in ``MODELLED_TOGGLES`` and the node count, and in
    at least one of them."""
    refs: dict[str, str] = {}
    for name, runs in groups.items():
        profile, toggles, nodes, _ = _config(runs[0])
        best: tuple[int, str] | None = None
        for other, oruns in groups.items():
            oprofile, otoggles, onodes, ochanged = _config(oruns[0])
            if other == name or oprofile != profile or onodes != 1 or ochanged:
                continue
            keys = set(toggles) | set(otoggles)
            differ = {k for k in keys if bool(toggles.get(k)) != bool(otoggles.get(k))}
            usable = differ <= set(MODELLED_TOGGLES) and (differ or nodes != onodes)
            if usable and (best is None or len(differ) < best[0]):  # the closest: fewest toggles to switch
                best = (len(differ), other)
        if best is not None:
            refs[name] = best[1]
    return refs


def adapted(cal: Calibration, run: Run) -> Calibration:
    """``cal`` with ``run``'s server toggles (the model reads ``batching`` and the fan-out toggles) and
    the settings the model uses (flush window, batch size, heartbeat, limits); the node count comes
    from the run's manifest when it is simulated."""
    from model.calibrate import settings_of

    toggles = dict(run.manifest.server.toggles) if run.manifest.server else dict(cal.toggles)
    update: dict = {"toggles": toggles, "batching": bool(toggles.get("batching"))}
    try:
        st = settings_of(run)
    except ValueError:  # a run without recorded settings keeps the reference's
        return cal.model_copy(update=update)
    update |= {
        "flush_interval_s": st["flush_interval_ms"] / 1000.0,
        "batch_size": st["batch_size"],
        "heartbeat_s": st["heartbeat_s"],
        "ping_timeout_s": st["ping_timeout_s"],
        "max_connections": st["max_connections"],
        "max_per_company": st["max_per_company"],
        "conn_limits": bool(toggles.get("conn_limits")),
    }
    return cal.model_copy(update=update)
