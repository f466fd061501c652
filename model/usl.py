"""Universal Scalability Law: X(N) = lambda N / (1 + sigma (N - 1) + kappa N (N - 1)), fitted by scipy.

On an open-loop ramp the throughput follows the offered rate until the node saturates, so a fit to
the steps below saturation says little: :func:`informative` decides whether a fit may be shown as
numbers, and says why not otherwise. Every artifact that shows the USL goes through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import optimize

USL_MIN_R2 = 0.9  # a fit explaining less of the throughput's variance than this does not describe the points
USL_MAX_PEAK_BEYOND = 10.0  # a peak further than this factor beyond the highest load tried is not seen in the data
OPEN_LOOP = "typical of an open-loop ramp below saturation: throughput follows the offered rate"


def usl(n: np.ndarray, lam: float, sigma: float, kappa: float) -> np.ndarray:
    n = np.asarray(n, float)
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def fit_usl(load: np.ndarray, throughput: np.ndarray) -> dict:
    """Fit lambda, sigma (contention), kappa (coherency) to measured (load, throughput) points."""
    load, throughput = np.asarray(load, float), np.asarray(throughput, float)
    ok = ~(np.isnan(load) | np.isnan(throughput)) & (load > 0)
    load, throughput = load[ok], throughput[ok]
    if load.size < 3:
        raise ValueError("the USL needs at least three (load, throughput) points")
    lam0 = throughput[np.argmin(load)] / load.min()
    (lam, sigma, kappa), _cov = optimize.curve_fit(
        usl, load, throughput, p0=[lam0, 0.01, 1e-5], bounds=([0, 0, 0], [np.inf, 1, 1]), maxfev=20000
    )
    pred = usl(load, lam, sigma, kappa)
    ss_res = float(((throughput - pred) ** 2).sum())
    ss_tot = float(((throughput - throughput.mean()) ** 2).sum()) or 1e-12
    peak = np.sqrt((1 - sigma) / kappa) if kappa > 0 else np.inf
    return {
        "lambda": float(lam),
        "sigma": float(sigma),
        "kappa": float(kappa),
        "r2": 1 - ss_res / ss_tot,
        "peak_load": float(peak),
        "peak_throughput": float(usl(np.asarray(peak), lam, sigma, kappa)) if np.isfinite(peak) else float("inf"),
        "n_points": int(load.size),
        "load_max": float(load.max()),
    }


def informative(fit: Mapping[str, Any], load_max: float | None = None) -> Mapping[str, Any] | str:
    """The fit itself when its numbers mean something, else the reason it is not informative.

    Not informative: the fit failed (``error``); R2 below ``USL_MIN_R2``; or the peak lies more than
    ``USL_MAX_PEAK_BEYOND`` times beyond the highest load tried (``load_max``, else the fit's own), i.e.
    the points show no contention to extrapolate from (typical of open-loop ramps below saturation).
    """
    if "error" in fit:
        return f"the fit failed: {fit['error']}"
    reasons = []
    r2 = float(fit.get("r2", float("nan")))
    if not r2 >= USL_MIN_R2:
        reasons.append(f"R2 {r2:.2f} < {USL_MIN_R2:g}")
    top = load_max if load_max is not None else fit.get("load_max")
    peak = float(fit.get("peak_load", float("inf")))
    if top and not peak <= USL_MAX_PEAK_BEYOND * float(top):
        if np.isfinite(peak):
            reasons.append(
                f"peak at {peak:.2g}, {peak / float(top):.2g} x the highest load tried ({float(top):g}; "
                f"the rule allows {USL_MAX_PEAK_BEYOND:g} x)"
            )
        else:
            reasons.append("no peak (kappa 0)")
    if reasons:
        return "; ".join(reasons) + f" ({OPEN_LOOP})"
    return fit


def usl_text(fit: Mapping[str, Any], load_max: float | None = None, unit: str = "connections") -> str:
    """'sigma 0.02, kappa 1.1e-05, peak at 300 connections (R2 0.97, 6 points)' or 'not informative: <reason>'."""
    ok = informative(fit, load_max)
    if isinstance(ok, str):
        return f"not informative: {ok}"
    return (
        f"sigma {ok['sigma']:.2g}, kappa {ok['kappa']:.2g}, peak at {ok['peak_load']:.3g} {unit} "
        f"(R2 {ok['r2']:.2f}, {ok['n_points']} points)"
    )
