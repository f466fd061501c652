"""Run a load spec into a new run folder, in one process or several worker processes."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

from eventlog import create_run, finish_run

from .spec import LoadSpec
from .worker import Worker


def read_tokens(path: Path | str) -> list[str]:
    """Tokens from the JSON lines of ``python -m server users`` (or bare tokens, one per line)."""
    tokens = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                tokens.append(json.loads(line)["token"])
            except (json.JSONDecodeError, KeyError):
                raise ValueError(f"{path}:{n}: expected a JSON object with a 'token' field") from None
        else:
            tokens.append(line)
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return tokens


class ProgressLine:
    """Prints one line a second or so: connections, rates, p95, errors, generator CPU."""

    def __init__(self, workers: int, stream=sys.stderr, every_s: float = 2.0) -> None:
        self.latest: dict[int, dict] = {}
        self.workers = workers
        self.stream = stream
        self.every_s = every_s
        self.last_print = 0.0
        self.cpu0: dict[int, tuple[float, float]] = {}

    def __call__(self, p: dict) -> None:
        wid = p["worker"]
        prev = self.latest.get(wid)
        p["cpu_pct"] = 100 * (p["cpu_s"] - prev["cpu_s"]) / max(p["t"] - prev["t"], 1e-9) if prev else math.nan
        self.latest[wid] = p
        if time.monotonic() - self.last_print < self.every_s or len(self.latest) < self.workers:
            return
        self.last_print = time.monotonic()
        ps = list(self.latest.values())
        p95 = max((x["p95_ms"] for x in ps if not math.isnan(x["p95_ms"])), default=math.nan)
        print(
            f"[{max(x['t'] for x in ps):7.1f}s] conns {sum(x['connections'] for x in ps)}/"
            f"{sum(x['target'] for x in ps)}  sent {sum(x['send_per_s'] for x in ps):.0f}/s  "
            f"acked {sum(x['ack_per_s'] for x in ps):.0f}/s  pushed {sum(x['push_per_s'] for x in ps):.0f}/s  "
            f"p95 {p95:.1f} ms  errors {sum(x['errors'] for x in ps)}  "
            f"gen-cpu {sum(x['cpu_pct'] for x in ps if not math.isnan(x['cpu_pct'])):.0f}%",
            file=self.stream,
            flush=True,
        )


def run_fast(coro):
    """Run the generator on uvloop with the collector tuned: its pauses would show up as send lag.

    Objects alive at start-up are frozen out of the collector's scans and gen-0 runs 70x less
    often; the generator allocates few reference cycles, so this costs little memory.
    """
    import gc

    import uvloop

    gc.collect()
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def _worker_entry(spec_json: str, run_dir: str, t0: float, wid: int, tokens: list[str], queue) -> None:
    spec = LoadSpec.model_validate_json(spec_json)
    worker = Worker(spec, run_dir, t0, wid, tokens, progress=queue.put)
    queue.put({"done": wid, "summary": run_fast(worker.run())})


def run_workers(spec: LoadSpec, run_dir: Path, t0: float, tokens: list[str], quiet: bool = False) -> list[dict]:
    """Run every worker to the end; returns their summaries."""
    progress = ProgressLine(spec.workers) if not quiet else (lambda p: None)
    if spec.workers == 1:
        return [run_fast(Worker(spec, run_dir, t0, 0, tokens, progress=progress).run())]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_entry, args=(spec.model_dump_json(), str(run_dir), t0, w, tokens, queue))
        for w in range(spec.workers)
    ]
    for p in procs:
        p.start()
    summaries: list[dict] = []
    deadline = time.monotonic() + spec.duration_s + spec.ack_timeout_s + 60
    while len(summaries) < len(procs) and time.monotonic() < deadline:
        try:
            msg = queue.get(timeout=1.0)
        except Exception:  # queue.Empty
            if all(not p.is_alive() for p in procs):
                break
            continue
        if "done" in msg:
            summaries.append(msg["summary"])
        else:
            progress(msg)
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    if len(summaries) < len(procs):
        raise RuntimeError(f"{len(procs) - len(summaries)} load worker(s) died; the log so far is kept")
    return summaries


def run_load(
    spec: LoadSpec,
    out: Path | str,
    tokens: list[str],
    name: str = "load",
    manifest_fields: dict | None = None,
    quiet: bool = False,
    scenario: dict | None = None,
) -> Path:
    """Create a run folder, run the load into it, and finish its manifest (complete or aborted)."""
    run_dir, manifest = create_run(
        out, "measured", name, scenario=scenario or {}, load=spec.model_dump(), **(manifest_fields or {})
    )
    t0 = manifest["clock"]["monotonic_t0"]
    try:
        summaries = run_workers(spec, run_dir, t0, tokens, quiet=quiet)
    except BaseException as exc:
        finish_run(run_dir, "aborted", error=f"{type(exc).__name__}: {exc}")
        raise
    finish_run(run_dir, "complete", generator={"workers": summaries})
    return run_dir
