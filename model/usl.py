"""Universal Scalability Law: X(N) = lambda N / (1 + sigma (N - 1) + kappa N (N - 1)), fitted by scipy."""

from __future__ import annotations

import numpy as np
from scipy import optimize


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
    }
