"""Fit the model's parameters from event logs (the scraped server counters and client latencies).

- CPU: non-negative least squares of the per-interval CPU rate on event, delivery, packet, connect,
  live-connection, loop wake-up and (several nodes) Redis publish/receive rates (samples where the
  loop was below 90 % busy). The wake-ups (the server's count of its loop thread blocking and being
  woken) are why the CPU per event falls with load: at 100 events/s each event woke the loop 2.6
  times, at 2000 events/s 0.4 times; a fit without them puts that fall into its intercept and its
  per-connection cost. Each cost comes with its standard error, and the design with its condition number
  (columns scaled to unit length): above ``ILL_CONDITIONED`` the regressors move together and the
  split of CPU among them is not identified, which the calibration file says (``fit.cpu.warnings``).
  When the server counts its collector's time (``gc_pause_s``), that time is taken out of the CPU
  before the fit and the model adds it back as pause jobs; otherwise it stays inside the fitted
  costs and the model adds no pauses. Never both.
- Memory: RSS against live connections (least squares line).
- GC: collections per inbound event, and a scipy.stats fit of the pause lengths (lognorm, gamma,
  expon), the best by the Kolmogorov-Smirnov statistic; when even the best is rejected (p < 0.05),
  the empirical distribution (its quantiles) instead.
- Base latency: median ack latency of the first step's counted window, less the CPU per event.
- Room emits without window batching: the share of each recipient's write cost spent before the
  first write, from each fan-out's first push against its sender's ack.
- The measuring client: the load generator's CPU per message it sends or reads, from its own CPU
  counter, and its effective send tick, from the bursts its sends went out in; the model queues the
  generator's messages on it, and sends them in ticks, only when it predicts a measured run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import optimize, stats

from eventlog import Run, steps

from .parameters import CLIENT_OWN, CLIENT_PUSHES, Calibration, GcModel, writes_inline

REGRESSORS = ("events_in", "events_out", "packets", "connects", "connections", "wakeups", "published", "received")
# regressor -> the Calibration field its cost goes to
COST_FIELD = {
    "idle": "cpu_idle_s_per_s",
    "events_in": "cpu_per_event_s",
    "events_out": "cpu_per_delivery_s",
    "packets": "cpu_per_packet_s",
    "connects": "cpu_per_connect_s",
    "connections": "cpu_per_connection_s_per_s",
    "wakeups": "cpu_per_wakeup_s",
    "published": "cpu_per_publish_s",
    "received": "cpu_per_receive_s",
}
ILL_CONDITIONED = 30.0  # Belsley, Kuh and Welsch: a scaled condition number above 30 is strong collinearity
CPU_HZ = 100  # the server's CPU counter (os.times) counts clock ticks: SC_CLK_TCK, 100 on Linux
GC_MIN_PAUSES = 5  # fewer measured pauses fit no distribution: the collector stays inside the CPU costs
GC_KS_ALPHA = 0.05  # a parametric pause distribution rejected at this level is replaced by the empirical one

# Server settings that shape the model's behaviour: read from the runs' manifests, never assumed.
SETTINGS_USED = (
    "flush_interval_ms",
    "batch_size",
    "heartbeat_s",
    "ping_timeout_s",
    "max_connections",
    "max_per_company",
)


# Read only from runs whose server had the recovery toggle on (a run without it replays nothing).
RECOVERY_SETTINGS = ("recovery_window_s", "recovery_max_events")


def settings_of(run: Run) -> dict:
    """The :data:`SETTINGS_USED` a run's manifest records; ValueError naming the missing ones."""
    recorded = run.manifest.server.settings if run.manifest.server else {}
    toggles = run.manifest.server.toggles if run.manifest.server else {}
    used = SETTINGS_USED + (RECOVERY_SETTINGS if toggles.get("recovery") else ())
    missing = [k for k in used if recorded.get(k) is None]
    if missing:
        raise ValueError(
            f"run {run.run_id} records no server setting {', '.join(missing)}; "
            "the model takes them from the run, it does not assume them"
        )
    return {k: recorded[k] for k in used}


def node_series(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (node, scrape): the scraped counters side by side."""
    s = df[(df["kind"] == "sample") & (df["node"] >= 0)]
    wide = s.pivot_table(index=["node", "t"], columns="name", values="value", aggfunc="last", observed=True)
    return wide.reset_index().sort_values(["node", "t"])


def rates(wide: pd.DataFrame) -> pd.DataFrame:
    """Per-interval rates of the cumulative counters, per node."""
    out = []
    for _, g in wide.groupby("node"):
        g = g.sort_values("t")
        dt = g["t"].diff()
        r = pd.DataFrame({"t": g["t"], "node": g["node"], "dt": dt})
        for col in (
            "cpu_seconds",
            "events_in",
            "events_out",
            "packets_out",
            "connects",
            "gc_collections",
            "redis_published",
            "redis_received",
        ):
            r[col] = g[col].diff() / dt if col in g else 0.0
        # the loop's wake-ups, when the server counts them (NaN otherwise: not "it never woke")
        r["wakeups"] = g["wakeups"].diff() / dt if "wakeups" in g else np.nan
        # the collector's own time, when the server counts it (cumulative seconds of pauses)
        r["gc_pause_s"] = g["gc_pause_s"].diff() / dt if "gc_pause_s" in g else np.nan
        # room packets written to sockets (batches with batching, deliveries without): the server's
        # packets_out also counts one ack per inbound event, whose cost is the event's
        r["packets"] = (r["packets_out"] - r["events_in"]).clip(lower=0)
        r["published"], r["received"] = r["redis_published"], r["redis_received"]
        r["connections"] = g.get("connections", 0.0)
        r["rss_bytes"] = g.get("rss_bytes", np.nan)
        out.append(r.iloc[1:])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def with_steps(r: pd.DataFrame, events: pd.DataFrame, run_index: int) -> pd.DataFrame:
    """``r`` with ``group``: one number per (run, step, node) for the samples whose interval lies inside
    a step's counted window, -1 for the others (ramps, between steps)."""
    group = np.full(len(r), -1, np.int64)
    if len(r):
        t, t0 = r["t"].to_numpy(float), (r["t"] - r["dt"]).to_numpy(float)
        node = r["node"].to_numpy(np.int64)
        for row in steps(events).itertuples():
            inside = (t0 >= row.window_start) & (t <= row.end)
            group[inside] = (run_index * 10_000 + int(row.step)) * 1_000 + node[inside]
    return r.assign(group=group)


def step_weights(use: pd.DataFrame, y: np.ndarray) -> np.ndarray | None:
    """Weights 1 / variance for a weighted fit, the variance of the CPU rate among the samples of each
    step (``use["group"]``: one load held steady, its seconds repeat one design point), never below the
    counter's own quantization (ticks of 1 / CPU_HZ s). Samples outside the steps (ramps) take the
    median weight. The noise grows with load (an idle second varies by its counter's tick, a loaded one
    by the work it met), and an unweighted fit lets the many loaded seconds pull the idle cost off what
    the quiet steps measured. None when the samples carry no steps."""
    if "group" not in use or not (use["group"] >= 0).any():
        return None
    floor = (1.0 / CPU_HZ) ** 2 / 3  # user + system, each a difference of two counts rounded to a tick
    g = use["group"].to_numpy()
    var = pd.Series(y).groupby(g).transform("var").to_numpy()
    w = 1.0 / np.maximum(np.nan_to_num(var, nan=floor), floor)
    inside = g >= 0
    w[~inside] = float(np.median(w[inside]))
    return w / w.mean()


def fit_cpu(r: pd.DataFrame, exclude_gc: bool = True, weighted: bool = True) -> tuple[dict, dict]:
    """NNLS of the CPU rate (less the collector's time, when counted) on the regressors that moved,
    weighted by each step's own noise (``step_weights``) when the samples carry their steps.

    Returns the costs (``COST_FIELD`` names, 0 for a regressor not fitted) and the fit's quality:
    R2, each cost's standard error (OLS on the costs NNLS kept), the scaled condition number, the
    regressors that duplicated another, and warnings a reader must see."""
    use = r[(r["cpu_seconds"] < 0.9) & (r["dt"] > 0.5)].dropna(subset=["cpu_seconds"])
    gc_excluded = exclude_gc and "gc_pause_s" in use and bool(use["gc_pause_s"].notna().all()) and len(use) > 0
    y = use["cpu_seconds"].to_numpy() - (use["gc_pause_s"].to_numpy() if gc_excluded else 0.0)
    warnings: list[str] = []
    uncounted = [n for n in REGRESSORS if n in use and use[n].isna().any()]  # a counter some runs lack
    for n in uncounted:
        where = "these runs (an older server)" if use[n].isna().all() else "every run"
        warnings.append(f"not fitted, not counted in {where}: {n}; its cost is inside the others")
    # a regressor that never moved fits nothing
    names = [n for n in REGRESSORS if n in use and n not in uncounted and use[n].abs().sum() > 0]
    if "events_in" not in names:  # an idle server's timers wake it too: without events no cost to share
        names = [n for n in names if n != "wakeups"]
    dropped: dict[str, str] = {}
    cols = {n: use[n].to_numpy() for n in names}
    for i, a in enumerate(list(names)):  # an exact duplicate (packets = deliveries without batching) fits nothing
        for b in names[:i]:
            if b in cols and a in cols and np.allclose(cols[a], cols[b], rtol=1e-6, atol=1e-9):
                dropped[a] = b
                del cols[a]
                break
    names = [n for n in names if n in cols]
    if dropped:
        warnings.append(
            "not separable (always equal): "
            + ", ".join(f"{a} = {b} (its cost is inside {b}'s)" for a, b in dropped.items())
        )
    if len(use) < len(names) + 2:
        raise ValueError(f"too few unsaturated samples to fit CPU ({len(use)}); measure longer or at lower load")
    X = np.column_stack([np.ones(len(use))] + [cols[n] for n in names])
    w = step_weights(use, y) if weighted else None
    sw = np.sqrt(w) if w is not None else np.ones(len(y))
    coef, _ = optimize.nnls(X * sw[:, None], y * sw)
    pred = X @ coef
    ss_res = float(((y - pred) ** 2).sum())  # R2 and the residual SD unweighted: what a reader compares
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1e-12
    wss_res = float((((y - pred) * sw) ** 2).sum())
    labels = ["idle", *names]
    # identifiability: the condition number of the design with unit-length columns (units do not matter)
    norms = np.linalg.norm(X, axis=0)
    cond = float(np.linalg.cond(X / np.where(norms > 0, norms, 1.0))) if X.shape[1] > 1 else 1.0
    # standard errors: OLS covariance on the costs NNLS kept (those at the bound have none)
    se = dict.fromkeys(labels, float("nan"))
    active = [i for i, c in enumerate(coef) if c > 0]
    dof = len(y) - len(active)
    if active and dof > 0:
        Xa = X[:, active] * sw[:, None]
        sigma2 = wss_res / dof
        try:
            cov = sigma2 * np.linalg.inv(Xa.T @ Xa)
            for j, i in enumerate(active):
                se[labels[i]] = float(np.sqrt(max(cov[j, j], 0.0)))
        except np.linalg.LinAlgError:
            pass
    if cond > ILL_CONDITIONED:
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant column has no correlation (NaN)
            corr = np.atleast_2d(np.corrcoef(X[:, 1:], rowvar=False)) if len(names) > 1 else np.ones((1, 1))
        pairs = [
            f"{names[i]}~{names[j]} {corr[i, j]:.2f}"
            for i in range(len(names))
            for j in range(i + 1, len(names))
            if np.isfinite(corr[i, j]) and abs(corr[i, j]) > 0.9
        ]
        warnings.append(
            f"ill-conditioned CPU fit: condition number {cond:.0f} > {ILL_CONDITIONED:.0f}"
            + (f" (regressors moving together: {', '.join(pairs)})" if pairs else "")
            + "; how the CPU splits among them is not identified, predictions off these runs' path are unreliable "
            "(calibrate on steps that vary them independently: scenarios/validation.yaml)"
        )
    loose = [
        n for n, c in zip(labels, coef, strict=True) if n != "idle" and c > 0 and np.isfinite(se[n]) and se[n] > 0.5 * c
    ]
    if loose:
        warnings.append(f"costs with standard error over half their value: {', '.join(loose)}")
    at_bound = [n for n, c in zip(labels, coef, strict=True) if n != "idle" and c == 0]
    if at_bound:
        warnings.append(f"costs fitted at 0 (the non-negativity bound): {', '.join(at_bound)}")
    params = {COST_FIELD[n]: 0.0 for n in ("idle", *REGRESSORS)} | {
        COST_FIELD[n]: float(c) for n, c in zip(labels, coef, strict=True)
    }
    quality = {
        "r2": 1 - ss_res / ss_tot,
        "n_samples": len(use),
        "residual_sd": float(np.sqrt(ss_res / len(use))),
        "weighted": w is not None,
        "regressors": names,
        "params": {COST_FIELD[n]: {"value": float(c), "se": se[n]} for n, c in zip(labels, coef, strict=True)},
        "condition_number": cond,
        "ill_conditioned": cond > ILL_CONDITIONED,
        "not_separable": dropped,
        "gc_excluded": gc_excluded,
        "warnings": warnings,
    }
    return params, quality


def fit_memory(r: pd.DataFrame) -> tuple[float, float, dict]:
    m = r.dropna(subset=["rss_bytes"])
    if m["connections"].nunique() < 2:
        return float(m["rss_bytes"].median()), 0.0, {"r2": None, "n_samples": len(m)}
    fit = stats.linregress(m["connections"], m["rss_bytes"])
    return (
        float(max(fit.intercept, 0.0)),
        float(max(fit.slope, 0.0)),
        {"r2": float(fit.rvalue**2), "n_samples": len(m), "slope_stderr": float(fit.stderr)},
    )


def fit_gc(df: pd.DataFrame, r: pd.DataFrame, cpu_excluded: bool = False) -> GcModel:
    pauses = df[(df["kind"] == "sample") & df["name"].astype(str).str.startswith("gc_pause_gen")]["value"].to_numpy()
    events = float((r["events_in"] * r["dt"]).sum())
    collections = float((r["gc_collections"] * r["dt"]).sum()) if "gc_collections" in r else 0.0
    if pauses.size < GC_MIN_PAUSES or events <= 0:
        return GcModel(n_pauses=int(pauses.size))
    pauses = np.clip(pauses, 1e-7, None)
    candidates: dict[str, tuple] = {}
    for name in ("lognorm", "gamma", "expon"):
        dist = getattr(stats, name)
        params = dist.fit(pauses, floc=0)
        ks = stats.kstest(pauses, name, args=params)
        candidates[name] = (params, float(ks.statistic), float(ks.pvalue))
    name = min(candidates, key=lambda k: candidates[k][1])
    params, _, p = candidates[name]
    out_params = [float(x) for x in params]
    if p < GC_KS_ALPHA:  # every parametric shape is rejected: sample the measured pauses themselves
        name, out_params = "empirical", [float(x) for x in np.quantile(pauses, np.linspace(0, 1, 201))]
        p = float(stats.kstest(pauses, empirical_cdf(out_params)).pvalue)
    return GcModel(
        collections_per_event=collections / events,
        dist=name,
        params=out_params,
        ks_pvalue=float(p),
        n_pauses=int(pauses.size),
        mean_pause_s=float(pauses.mean()),
        cpu_excluded=cpu_excluded,
        candidates={k: v[2] for k, v in candidates.items()},
    )


def empirical_cdf(quantiles: list[float]) -> Callable[[np.ndarray], np.ndarray]:
    """The CDF of the distribution whose quantiles at 0, 1/k, ..., 1 are ``quantiles`` (linear between)."""
    q = np.asarray(quantiles, float)
    levels = np.linspace(0, 1, q.size)
    return lambda x: np.interp(x, q, levels)


CLIENT_COLLINEAR = 0.98  # push and send rates correlated past this: one cost for every message


def fit_client(df: pd.DataFrame) -> tuple[float, float, dict]:
    """The measuring generator's CPU per send or ack and per push it reads: least squares (non-negative,
    with an intercept for its own upkeep) of its per-interval CPU rate on sends + acks and on pushes per
    second, over the intervals of its CPU counter (``gen_cpu_seconds:<worker>``, summed over workers).
    A send costs it far more than reading a push (it builds, frames and schedules the message; on the
    validation campaign's baseline pass ~52 us per send or ack, ~9 us per push), so one mean cost
    over all messages over-charges the push bursts of a fan-out. When the push rate never moved apart
    from the send rate (no chats, or a fixed share on a fixed room), one cost is fitted for both.
    With W workers the model's one client loop serves each message in 1/W of that (W loops side by side)."""
    from eventlog.schema import GEN_CPU

    g = df[(df["kind"] == "sample") & df["name"].astype(str).str.startswith(GEN_CPU)]
    series = [x.sort_values("t") for _, x in g.groupby([g["name"].astype(str), "conn"]) if len(x) >= 3]
    if not series:
        return 0.0, 0.0, {"intervals": 0, "why": "no generator CPU samples"}
    t = series[0]["t"].to_numpy(float)  # the workers are sampled together; the first one's clock
    cpu = sum(np.interp(t, x["t"].to_numpy(float), x["value"].to_numpy(float)) for x in series)
    dt = np.diff(t)
    ok = dt > 0

    def per_s(kinds: tuple[str, ...]) -> np.ndarray:
        m = df[df["kind"].isin(kinds)]
        weight = m["value"].fillna(1.0).to_numpy(float) if "value" in m else None
        return (np.histogram(m["t"].to_numpy(float), bins=t, weights=weight)[0] / np.where(ok, dt, 1.0))[ok]

    own, push = per_s(CLIENT_OWN), per_s(CLIENT_PUSHES)
    x, y = own + push, np.diff(cpu)[ok] / dt[ok]
    if x.size < 3 or np.ptp(x) == 0:
        return 0.0, 0.0, {"intervals": int(x.size), "why": "the message rate never moved"}
    separate = np.ptp(push) > 0 and np.ptp(own) > 0 and abs(np.corrcoef(own, push)[0, 1]) < CLIENT_COLLINEAR
    X = np.column_stack([np.ones_like(x), own, push]) if separate else np.column_stack([np.ones_like(x), x])
    coef, _ = optimize.nnls(X, y)
    resid = y - X @ coef
    r2 = 1 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()) if np.ptp(y) else float("nan")
    dof = max(1, x.size - X.shape[1])
    cov = float(resid @ resid) / dof * np.linalg.pinv(X.T @ X)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    per_own, per_push = (coef[1], coef[2]) if separate else (coef[1], coef[1])
    w = len(series)
    return (
        float(per_own) / w,
        float(per_push) / w,
        {
            "intervals": int(x.size),
            "workers": w,
            "idle_cpu_s_per_s": float(coef[0]),
            "per_message_s": float(per_own),
            "per_message_se_s": float(se[1]),
            "per_push_s": float(per_push),
            "per_push_se_s": float(se[2] if separate else se[1]),
            "separate": bool(separate),
            "r2": r2,
        },
    )


BURST_GAP_S = 1e-4  # sends closer than this left the generator in one burst (its CPU per send is ~20 us)
TICK_RANGE_S = (1e-4, 0.05)


def fit_client_tick(runs: list[pd.DataFrame]) -> tuple[float, dict]:
    """The measuring generator's effective send tick: it sends what fell due within a tick together,
    so its sends leave in bursts. A tick T over Poisson sends at rate r gives (1 - exp(-r T)) / T
    bursts per second; T is fitted (least squares in bursts per second) over the counted windows of
    every run's steps, from the sends' real times (intended time plus the send lag the row records)."""
    rate, bursts = [], []
    for df in runs:
        sends = df[df["kind"] == "send"]
        if sends.empty or ("value" in sends and bool((sends["value"].fillna(1.0) > 1).any())):
            continue  # no sends, or a sampled log (a row stands for several sends): no bursts to count
        real = np.sort((sends["t"] + sends["latency_s"].fillna(0.0)).to_numpy(float))
        for row in steps(df).itertuples():
            x = real[(real >= row.window_start) & (real < row.end)]
            span = float(row.end - row.window_start)
            if x.size >= 20 and span > 0:  # a window with sends to count bursts in
                rate.append(x.size / span)
                bursts.append((1 + int((np.diff(x) > BURST_GAP_S).sum())) / span)
    if len(rate) < 2:
        return 0.0, {"windows": len(rate), "why": "fewer than two step windows with sends"}
    r, b = np.asarray(rate), np.asarray(bursts)
    fit = optimize.minimize_scalar(
        lambda tick: float((((1 - np.exp(-r * tick)) / tick - b) ** 2).sum()), bounds=TICK_RANGE_S, method="bounded"
    )
    tick = float(fit.x)
    pred = (1 - np.exp(-r * tick)) / tick
    if tick < 3 * BURST_GAP_S:  # Poisson sends closer than the gap already look like ~2-gap ticks
        return 0.0, {"windows": len(rate), "why": f"sends were not bunched (tick {tick * 1e3:.2f} ms fitted)"}
    return tick, {
        "windows": len(rate),
        "tick_s": tick,
        "max_rel_error": float(np.max(np.abs(pred - b) / b)),
        "sends_per_s": [round(float(v), 1) for v in r],
        "bursts_per_s": [round(float(v), 1) for v in b],
    }


def fit_enqueue_share(df: pd.DataFrame, cpu: dict, stock: bool, nodes: int = 1) -> tuple[float, dict]:
    """The share of each recipient's write cost spent before a room emit's first write (the model's
    ``enqueue_share``), from each fan-out's first push against its sender's ack, so the wait before
    the handler (and the base latency) cancels. A stock emit acks after all n writes of d = delivery
    + packet each: ack - first = (n - 1)(1 - share) d. The fast path acks when the handler has
    enqueued and writes d = packet each after it: first - ack = (n share + 1 - share) d. The median
    over the runs' fan-outs to 2 or more (n: a node's share of the recipients)."""
    dlv, pkt = cpu["cpu_per_delivery_s"], cpu["cpu_per_packet_s"]
    d = dlv + pkt if stock else pkt
    push = df[df["kind"] == "push"]
    acks = df[(df["kind"] == "ack") & (df["name"].astype(str) == "chat")]
    if push.empty or acks.empty or d <= 0:
        return 0.0, {"fan_outs": 0}
    g = push.groupby((push["t"] - push["latency_s"]).round(6))["t"]
    n, first = g.size() / max(1, nodes), g.min()
    ack = pd.Series(acks["t"].to_numpy(), index=(acks["t"] - acks["latency_s"]).round(6).to_numpy())
    ack = ack[~ack.index.duplicated()].reindex(first.index)
    ok = (n >= 2) & ack.notna()
    if not ok.any():
        return 0.0, {"fan_outs": 0}
    n, first, ack = n[ok], first[ok], ack[ok]
    share = 1 - (ack - first) / ((n - 1) * d) if stock else (first - ack - d) / ((n - 1) * d)
    return float(np.clip(share.median(), 0.0, 1.0)), {"fan_outs": int(n.size), "median_recipients": float(n.median())}


def base_latency(df: pd.DataFrame, cpu_per_event: float) -> float:
    """The first step's median ack latency less ``cpu_per_event`` (the caller's: the event's own cost,
    and the wake-up it pays when it finds the loop idle) and less the sends' median lag behind when
    they fell due (the generator times acks from then; the model adds that lag itself when it
    predicts a measured run, and production clients have none)."""
    st = steps(df)
    acks = df[df["kind"] == "ack"]
    if acks.empty:
        return 0.0
    sends = df[df["kind"] == "send"]
    lag = sends["latency_s"]
    sent = acks["t"] - acks["latency_s"]
    for row in st.itertuples():  # the first step with acks (a design may start with an idle step)
        window = acks[(sent >= row.window_start) & (sent < row.end)]
        if len(window):
            acks = window
            lag = sends["latency_s"][(sends["t"] >= row.window_start) & (sends["t"] < row.end)]
            break
    lag_s = float(lag.median()) if lag.notna().any() else 0.0
    return float(max(0.0, acks["latency_s"].median() - cpu_per_event - max(lag_s, 0.0)))


def calibrate(runs: list[Run]) -> Calibration:
    """One calibration from measured runs of the same server profile and settings."""
    if not runs:
        raise ValueError("no runs to calibrate from")
    profiles = {(r.manifest.profile, str(r.manifest.server.toggles if r.manifest.server else None)) for r in runs}
    if len(profiles) > 1:
        raise ValueError(f"runs mix server configurations {sorted(map(str, profiles))}; calibrate each separately")
    m = runs[0].manifest
    settings = settings_of(runs[0])
    toggles = m.server.toggles if m.server else {}
    batching = bool(toggles.get("batching"))
    r = pd.concat([with_steps(rates(node_series(run.events)), run.events, i) for i, run in enumerate(runs)])
    r = r.reset_index(drop=True)
    if r.empty:
        raise ValueError("the runs hold no scraped server samples (was /socket-metrics scraped?)")
    events = pd.concat([run.events for run in runs])
    pauses = (events["kind"] == "sample") & events["name"].astype(str).str.startswith("gc_pause_gen")
    # the collector's time comes out of the CPU only when its pauses can be put back as jobs
    cpu, cpu_q = fit_cpu(r, exclude_gc=int(pauses.sum()) >= GC_MIN_PAUSES)
    mem_base, mem_conn, mem_q = fit_memory(r)
    gc = fit_gc(events, r, cpu_excluded=cpu_q["gc_excluded"])
    own = cpu["cpu_per_event_s"] + cpu["cpu_per_wakeup_s"]  # at the first step's rate an event finds the loop idle
    base = float(np.median([base_latency(run.events, own) for run in runs]))
    client = [fit_client(run.events) for run in runs]
    tick, tick_q = fit_client_tick([run.events for run in runs])
    stock = not (batching or toggles.get("fast_fanout") or toggles.get("recovery"))
    windowed = batching and not toggles.get("batch_flush_soon")  # pushes wait for the tick: no first-write time
    inline = writes_inline(toggles)
    if windowed or inline:
        why = "pushes wait for the flush tick" if windowed else "direct_write: each frame is written in the handler"
        enqueue = [(0.0, {"fan_outs": 0, "why": why})]
    else:
        enqueue = [fit_enqueue_share(run.events, cpu, stock, run.manifest.nodes or 1) for run in runs]
    counted = [(own, push) for own, push, q in client if q["intervals"]]  # runs with its counter
    client_s = float(np.median([own for own, _ in counted] or [0.0]))
    client_push_s = float(np.median([push for _, push in counted] or [0.0]))
    upkeep = [q["idle_cpu_s_per_s"] / q["workers"] for _, _, q in client if "idle_cpu_s_per_s" in q]
    client_upkeep = float(np.clip(np.median(upkeep), 0.0, 0.9)) if upkeep else 0.0
    assumptions = [
        "service times are gamma distributed with coefficient of variation 1 (not fitted)",
        "per-event CPU is one mean over the measured event mix",
        "baseline's per-socket leak is not fitted unless the runs had churn (leak = 0 otherwise)",
    ]
    if "published" not in cpu_q["regressors"]:
        assumptions.append("Redis publish/receive costs not fitted (no multi-node runs with Redis counters): 0")
    if "packets" in cpu_q["not_separable"]:
        assumptions.append(
            "every delivery was its own packet in these runs: the write cost is inside the per-delivery cost, "
            "so a batching prediction from this calibration over-charges batched deliveries"
        )
    if not cpu_q["gc_excluded"]:
        assumptions.append("the collector's time is inside the fitted CPU costs (no pause jobs are simulated)")
    cores = [int(run.manifest.machine["cores"]) for run in runs if run.manifest.machine.get("cores")]
    return Calibration(
        profile=m.profile,
        toggles=toggles,
        **(cpu | {"cpu_per_event_s": max(cpu["cpu_per_event_s"], 1e-7)}),
        base_latency_s=base,
        client_cpu_per_message_s=client_s,
        client_cpu_per_push_s=client_push_s,
        client_upkeep_share=client_upkeep,
        client_tick_s=tick,
        machine_cores=min(cores) if cores else None,
        enqueue_share=float(np.median([e for e, _ in enqueue])),
        memory_base_bytes=mem_base,
        memory_per_connection_bytes=mem_conn,
        gc=gc,
        batching=batching,
        flush_interval_s=settings["flush_interval_ms"] / 1000.0,
        batch_size=settings["batch_size"],
        heartbeat_s=settings["heartbeat_s"],
        ping_timeout_s=settings["ping_timeout_s"],
        conn_limits=bool(toggles.get("conn_limits")),
        max_connections=settings["max_connections"],
        max_per_company=settings["max_per_company"],
        recovery_window_s=settings.get("recovery_window_s", 0.0),
        recovery_max_events=settings.get("recovery_max_events", 0),
        source_runs=[run.run_id for run in runs],
        fit={
            "cpu": cpu_q,
            "memory": mem_q,
            "client": [q for _, _, q in client],
            "client_tick": tick_q,
            "enqueue_share": [q for _, q in enqueue],
            "units": {"cpu": "seconds of loop time", "memory": "bytes"},
        },
        assumptions=assumptions,
    )
