"""Calibrate from Prometheus: range queries over the server's exported metrics become a measured run.

The counters are the ones the lab's scraper reads from ``/socket-metrics`` (``loadgen/scrape.py``),
under their Prometheus names (``server/metrics.py``); each instance the selector matches is a node.
The run then goes through the same ``model.calibrate.calibrate`` as any measured run, so a production
node can be calibrated without the lab's scraper.

What Prometheus does not carry: the collector's individual pauses (only their sum and count), and
client-side latencies. So the collector's time stays inside the fitted CPU (no pause jobs), and the
base latency is 0.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from eventlog import EventWriter, create_run, finish_run

# sample name the calibration reads -> (Prometheus metric, extra label matchers)
SERIES: dict[str, tuple[str, str]] = {
    "cpu_seconds": ("process_cpu_seconds_total", ""),
    "wakeups": ("socketio_loop_wakeups_total", ""),
    "runqueue_wait_s": ("socketio_loop_runqueue_wait_seconds_total", ""),
    "rss_bytes": ("process_resident_memory_bytes", ""),
    "connections": ("socketio_connections_active", ""),
    "events_in": ("socketio_events_received_total", ""),
    "events_out": ("socketio_events_delivered_total", ""),
    "packets_out": ("socketio_packets_sent_total", ""),
    "batches": ("socketio_batches_total", ""),
    "connects": ("socketio_connects_total", ""),
    "gc_collections": ("socketio_gc_pause_seconds_count", ""),
    "redis_published": ("socketio_redis_messages_total", 'op="publish"'),
    "redis_received": ("socketio_redis_messages_total", 'op="receive"'),
}
SELECTOR = re.compile(r"^\{?\s*([A-Za-z_][A-Za-z0-9_]*\s*(=|!=|=~|!~)\s*\"[^\"]*\"\s*,?\s*)*\}?$")
MAX_POINTS = 11_000  # Prometheus refuses a range query of more points per series


class PrometheusError(ValueError):
    """A Prometheus answer that cannot become a run (one line: what was asked, what came back)."""


def matchers(selector: str) -> str:
    """The label matchers inside ``{job="x", ...}`` (braces optional); ValueError if it is not one."""
    s = selector.strip()
    if not SELECTOR.match(s):
        raise ValueError(f"--selector {selector!r}: expected label matchers like '{{job=\"socketio\"}}'")
    return s.strip("{}").strip().rstrip(",")


def query_for(metric: str, inner: str, extra: str) -> str:
    labels = ",".join(x for x in (inner, extra) if x)
    return f"sum by (instance) ({metric}{{{labels}}})"


def range_query(url: str, query: str, start: float, end: float, step: float, timeout: float = 30.0) -> list[dict]:
    params = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"})
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query_range?{params}", timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            why = json.load(exc).get("error", exc.reason)
        except ValueError:
            why = exc.reason
        raise PrometheusError(f"{url}: query {query!r} refused: {why}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrometheusError(f"{url}: cannot reach Prometheus: {reason}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{url}: query {query!r}: {body.get('error', body)}")
    return body["data"]["result"]


def fetch_run(
    url: str,
    selector: str,
    runs_root: Path,
    profile: str,
    seconds: float = 600.0,
    end: float | None = None,
    step: float = 1.0,
) -> Path:
    """Range-query the last ``seconds`` (up to ``end``, epoch s; default now) at ``step`` and write one
    measured run, a node per instance. Settings come from ``profile`` (Prometheus does not carry them)."""
    from server.settings import build_settings

    inner = matchers(selector)
    if seconds <= 0 or step <= 0:
        raise ValueError("--seconds and --step must be positive")
    if seconds / step > MAX_POINTS:
        raise ValueError(f"--seconds {seconds:g} at --step {step:g} is over {MAX_POINTS} points; use a larger --step")
    end = time.time() if end is None else end
    start = end - seconds
    series: dict[str, list[dict]] = {}
    for name, (metric, extra) in SERIES.items():
        series[name] = range_query(url, query_for(metric, inner, extra), start, end, step)
    instances = sorted({r["metric"].get("instance", "") for rs in series.values() for r in rs})
    if not series["cpu_seconds"] or not series["events_in"]:
        raise PrometheusError(
            f"{url}: no process_cpu_seconds_total / socketio_events_received_total for {{{inner}}} in the last "
            f"{seconds:g} s: does the selector match the server's scrape job?"
        )
    settings = build_settings(profile, {}, env={})
    run_dir, _ = create_run(
        runs_root,
        "measured",
        "prometheus",
        profile=profile,
        label="prometheus",
        nodes=len(instances),
        prometheus={"url": url, "selector": selector, "start": start, "end": end, "step": step},
        instances=instances,
        server={"set": {}, "toggles": settings.toggles.model_dump(), "settings": settings.public()},
    )
    writer = EventWriter(run_dir, "prometheus", t0=0.0)
    writer.row("sample", 0.0, name="step", value=0.0)
    node_of = {inst: i for i, inst in enumerate(instances)}
    rows = 0
    for name, results in series.items():
        for r in results:
            node = node_of[r["metric"].get("instance", "")]
            for ts, value in r["values"]:
                v = float(value)
                if math.isfinite(v):
                    writer.row("sample", float(ts) - start, node=node, name=name, value=v)
                    rows += 1
    writer.row("sample", end - start, name="end", value=0.0)
    writer.close()
    finish_run(run_dir, "complete", rows=rows)
    return run_dir
