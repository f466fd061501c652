"""Discrete-event model of the server's event loop(s), driven by SimPy.

SimPy owns time: processes for the load steps (connection ramps, markers), the flush/slice ticker,
the per-second sampler and churn. Inside each slice of length ``dt`` (the batching window, or
{slice_s:g} s without batching), every node's event loop is an exact FIFO single server over all jobs that arrive in the
slice (events, connects, pings, GC pauses, batch flushes, Redis fan-outs), computed with the
vectorized Lindley recursion ``done_n = S_n + max(free, max_{k<=n}(t_k - S_{k-1}))``, so an event
costs a few numpy operations instead of a SimPy process. Random variates come in blocks from
separate streams per purpose (common random numbers across compared scenarios).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from eventlog.schema import KIND_INDEX

from .parameters import CLIENT_PUSHES, Calibration, writes_inline
from .workload import Workload

if TYPE_CHECKING:
    from .replay import Trace

NAMES = [
    "",
    "echo",
    "chat",
    "join",
    "step",
    "step_eps",
    "hold",
    "end",
    "cpu_seconds",
    "rss_bytes",
    "connections",
    "events_in",
    "events_out",
    "packets_out",
    "loop_lag_max_s",
    "dropped: ping timeout",
    "refused: server connection limit reached",
    "refused: company connection limit reached",
    "client close",
    "gc_pause_gen0",
    "connects",
    "gc_collections",
    "too_old",
    "overrun",
    "wakeups",
]
NAME = {n: i for i, n in enumerate(NAMES)}
K = KIND_INDEX
SLICE_S = 0.25  # the slice without batching (with batching: the flush window)
__doc__ = (__doc__ or "").replace("{slice_s:g}", f"{SLICE_S:g}")
Arr = np.ndarray | float | int  # a value or a column of values
Proc = Generator[simpy.Event, Any, None]  # a SimPy process
EV_ECHO, EV_CHAT, JOB_CONNECT, JOB_PING, JOB_GC, JOB_FLUSH, JOB_REMOTE, JOB_WRITE, JOB_TIMER = range(9)
# the server's loop-lag probe wakes the loop this often (server/memory.py LoopLagMonitor): a job of its
# own, whose CPU is in the idle cost, so that the model wakes the loop as often as the server counts
LAG_PROBE_S = 0.05


def lindley(t: np.ndarray, s: np.ndarray, free_at: float) -> np.ndarray:
    """Completion times of a FIFO single server: jobs arriving at sorted ``t`` with service ``s``,
    the server busy until ``free_at``: done_n = S_n + max(free_at, max_{k<=n}(t_k - S_{k-1}))."""
    S = np.cumsum(s)
    return S + np.maximum(np.maximum.accumulate(t - (S - s)), free_at)


def wakes(t: np.ndarray, s: np.ndarray, free_at: float, wake: float) -> tuple[np.ndarray, np.ndarray]:
    """A FIFO single server where a job that finds it idle wakes it and pays ``wake`` more: which jobs
    woke it, and every job's completion. Exact, so a job arriving during a waker's wake-up does not
    wake it again: done_j = max(t_j, done_{j-1}) + s_j + wake [t_j > done_{j-1}]. Without a wake
    cost the vectorized Lindley recursion; with one a loop over the jobs (a slice's worth)."""
    if wake <= 0 or t.size == 0:
        done = lindley(t, s, free_at)
        return t > np.concatenate([[free_at], done[:-1]]), done
    woke = np.zeros(t.size, bool)
    done = np.empty(t.size)
    d = free_at
    for j, (tj, sj) in enumerate(zip(t.tolist(), s.tolist(), strict=True)):
        if tj > d:
            woke[j] = True
            d = tj + wake + sj
        else:
            d += sj
        done[j] = d
    return woke, done


def contention(busy: Sequence[float] | np.ndarray, cores: int) -> float:
    """The chance that ``cores`` or more of independent processes, each running the share ``busy`` of
    the time, hold every core at once (a Poisson-binomial tail): how often a process that wants a CPU
    must wait for one. Measured on this 2-core machine (validation campaign, two nodes and the
    generator): the nodes' loops waited 15.6 / 22.4 % of the time at the two busiest steps where this
    gives 16.2 / 24.9 % from the other node's and the generator's CPU; below 10 % CPU the measured
    waits (2-6 %) are the wake-up latency of an idle machine, which this leaves out."""
    dist = np.zeros(len(busy) + 1)
    dist[0] = 1.0
    for u in np.clip(np.asarray(busy, float), 0.0, 1.0):
        dist[1:] = dist[1:] * (1 - u) + dist[:-1] * u
        dist[0] *= 1 - u
    return float(dist[cores:].sum())


def fifo_with_writes(t: np.ndarray, s: np.ndarray, follow: np.ndarray, free_at: float, t1: float) -> tuple:
    """A FIFO single server (sorted arrivals ``t``, services ``s``) where job ``j`` with
    ``follow[j] >= 0`` (negative: none) hands the loop a write job of that service when it completes: a fan-out that
    enqueues on sockets whose writers run later, so jobs that arrived meanwhile go first.

    A write due before ``t1`` joins the queue at its arrival, behind the jobs that arrived earlier and
    ahead of later ones; one due at or after ``t1`` is left for the next slice. Returns
    ``(t, s, done, parent, writes, deferred)``: the jobs with the writes inserted, their completion
    times, ``parent[p]`` the original index of the job at position ``p`` (``-1 - k`` for the k-th
    inserted write), ``writes[k]`` the original index of that write's parent, and ``deferred`` as
    ``(original index, arrival)`` pairs."""
    t, s, follow = t.copy(), s.copy(), follow.copy()
    parent = np.arange(t.size)
    done = lindley(t, s, free_at)
    writes: list[int] = []
    while True:
        pending = np.flatnonzero(follow >= 0)
        if pending.size == 0:
            break
        j = int(pending[0])
        d = float(done[j])
        if d >= t1:  # FIFO: every later job completes later still, so their writes come next slice too
            break
        p = int(np.searchsorted(t, d, side="right"))
        service = float(follow[j])
        follow[j] = -1.0
        writes.append(int(parent[j]))
        t, s = np.insert(t, p, d), np.insert(s, p, service)
        parent, follow = np.insert(parent, p, -len(writes)), np.insert(follow, p, -1.0)
        done = np.insert(done, p, 0.0)
        done[p:] = lindley(t[p:], s[p:], float(done[p - 1]) if p else free_at)
    deferred = [(int(parent[j]), float(done[j])) for j in np.flatnonzero(follow >= 0)]
    return t, s, done, parent, writes, deferred


LOG_MODES = ("full", "sampled", "histograms")
SAMPLE_EVERY = 10  # log "sampled": the event rows of one connection in 10, each standing for 10 events
HIST_SLICE_S = 0.25  # log "histograms": event rows merged per 0.25 s of send time and latency bucket
AGGREGATED = np.array([K[k] for k in ("send", "ack", "push", "timeout", "recovered")])


def merged_rows(cols: list[np.ndarray]) -> list[np.ndarray]:
    """Log "histograms": the rows of AGGREGATED kinds merged by (kind, name, node, bytes, send time in
    HIST_SLICE_S, latency bucket of ~1.6 %, eventlog.scan.bucket) into one row each, at the mean send
    time and mean latency of what it merged, ``value`` = how many (the projections weigh by it)."""
    t, kind, _conn, node, name, lat, nbytes, _value = cols
    agg = np.isin(kind, AGGREGATED) & ~np.isnan(lat)
    if not agg.any():
        return cols
    import pandas as pd

    from eventlog.scan import bucket

    sent = t[agg] - lat[agg]
    frame = pd.DataFrame(
        {
            "kind": kind[agg],
            "name": name[agg],
            "node": node[agg],
            "nbytes": nbytes[agg],
            "slice": np.floor(sent / HIST_SLICE_S).astype(np.int64),
            "bucket": bucket(lat[agg]),
            "sent": sent,
            "lat": lat[agg],
        }
    )
    g = frame.groupby(["kind", "name", "node", "nbytes", "slice", "bucket"], sort=False)
    out = g.agg(n=("lat", "size"), sent=("sent", "mean"), lat=("lat", "mean")).reset_index()
    keep = ~agg
    m = len(out)
    merged = [
        out["sent"].to_numpy() + out["lat"].to_numpy(),
        out["kind"].to_numpy(),
        np.full(m, -1),
        out["node"].to_numpy(),
        out["name"].to_numpy(),
        out["lat"].to_numpy(),
        out["nbytes"].to_numpy(),
        out["n"].to_numpy(np.float64),
    ]
    return [np.concatenate([c[keep], x.astype(c.dtype)]) for c, x in zip(cols, merged, strict=True)]


CLIENT_IN = np.array([K[k] for k in ("ack", "push", "recovered")])  # messages the client reads
CLIENT_PUSH = np.array([K[k] for k in CLIENT_PUSHES])  # of those, room events (a cost of their own)


def client_queue(cols: list[np.ndarray], service_s: float, free_at: float, push_s: float | None = None) -> float:
    """The measuring client's own loop (issue 11): one FIFO server that sends every ``send`` and reads
    every ack (``service_s`` each) and every push (``push_s``; None: ``service_s``) (a sampled row stands
    for ``value`` messages). A message the client reads while busy waits; that wait is added to its time
    and latency in place (the base latency already holds one message's own reading). Rows are taken in
    time order from ``free_at``, when the loop was last busy until; returns the new one."""
    t, kind, lat, value = cols[0], cols[1], cols[5], cols[7]
    jobs = np.flatnonzero(np.isin(kind, CLIENT_IN) & ~np.isnan(lat) | (kind == K["send"]))
    if jobs.size == 0:
        return free_at
    jobs = jobs[np.argsort(t[jobs], kind="stable")]
    each = service_s if push_s is None else np.where(np.isin(kind[jobs], CLIENT_PUSH), push_s, service_s)
    s = each * np.where(np.isnan(value[jobs]), 1.0, value[jobs])
    done = lindley(t[jobs], s, free_at)
    wait = np.maximum(0.0, done - s - t[jobs])
    read = kind[jobs] != K["send"]
    t[jobs[read]] += wait[read]
    lat[jobs[read]] += wait[read]
    return float(done[-1])


def client_costs(cal: Calibration) -> tuple[float, float | None]:
    """The measuring client's time per send or ack and per push: its fitted CPU, stretched by the share
    of its loop its own upkeep takes (a message waits for the timers and sweeps it runs as well)."""
    stretch = 1.0 / (1.0 - cal.client_upkeep_share)
    push = cal.client_cpu_per_push_s
    return cal.client_cpu_per_message_s * stretch, None if push is None else push * stretch


class Rows:
    """Column chunks, concatenated at the end, or handed to ``sink`` every ``flush_rows`` rows (the
    run's parts are written as it goes, so a long run never holds all its rows). ``log``: every row
    ("full"), the event rows of one connection in SAMPLE_EVERY ("sampled"), or event rows merged
    into weighted histogram rows ("histograms", ``merged_rows``); connects, disconnects, errors
    without a latency and samples are always logged whole."""

    def __init__(
        self,
        sink: Callable[[list[np.ndarray]], None] | None = None,
        log: str = "full",
        client_s: float = 0.0,
        push_s: float | None = None,
    ) -> None:
        if log not in LOG_MODES:
            raise ValueError(f"log {log!r}: one of {', '.join(LOG_MODES)}")
        self.chunks: list[tuple] = []
        self.n = 0
        self.sink, self.log = sink, log
        self.flush_rows = 2_000_000
        self.client_s, self.push_s, self.client_free = client_s, push_s, 0.0
        self.client_on = client_s > 0 or bool(push_s)
        # rows before this time are all written (the simulation sets it at each slice's start): with the
        # client's queue, a flush in the middle of a run queues only those, in time order, and keeps the rest
        self.watermark = -np.inf
        self.held = 0  # rows kept back by the last flush (the next one waits for flush_rows more)

    DTYPES = (np.float64, np.int8, np.int32, np.int16, np.int32, np.float64, np.int32, np.float64)

    def add(
        self,
        kind: int,
        t: Arr,
        conn: Arr = -1,
        node: Arr = -1,
        name: Arr = 0,
        latency: Arr = np.nan,
        nbytes: Arr = 0,
        value: Arr = np.nan,
    ) -> None:
        """Scalars are broadcast to the length of the array arguments (cheaply, at the end)."""
        cols: tuple = (t, kind, conn, node, name, latency, nbytes, value)
        n = 1
        for x in cols:
            if isinstance(x, np.ndarray) and x.ndim:
                n = x.size
                break
        if n and self.log == "sampled" and kind in AGGREGATED:
            keep = np.broadcast_to(np.asarray(conn) % SAMPLE_EVERY == 0, (n,))
            cols = tuple(x[keep] if isinstance(x, np.ndarray) and x.ndim else x for x in cols[:7])
            cols += (float(SAMPLE_EVERY),)
            n = int(keep.sum())
        if n:
            self.chunks.append((n, cols))
            self.n += n
            if self.sink is not None and self.n >= self.flush_rows + self.held:
                self.sink(self.columns(final=False))

    def columns(self, final: bool = True) -> list[np.ndarray]:
        """The rows added since the last call, as columns (merged, with log "histograms"). Not ``final``
        and with the client's queue: only the rows before ``watermark``; the others wait for the next
        call (a later slice adds rows earlier than the ones already here, which the queue must see first)."""
        total = sum(n for n, _ in self.chunks)
        out = [np.empty(total, dtype) for dtype in self.DTYPES]
        pos = 0
        for n, cols in self.chunks:
            for column, value in zip(out, cols, strict=True):
                column[pos : pos + n] = value  # a scalar broadcasts in place
            pos += n
        self.chunks, self.n, self.held = [], 0, 0
        if self.client_on and not final:
            later = out[0] >= self.watermark
            if later.any():
                self.chunks.append((int(later.sum()), tuple(c[later] for c in out)))
                self.n = self.held = int(later.sum())
                out = [c[~later] for c in out]
        if self.client_on:
            self.client_free = client_queue(out, self.client_s, self.client_free, self.push_s)
        return merged_rows(out) if self.log == "histograms" else out


class Times:
    """A growable array of send times (amortized doubling): one company's chats, for replays."""

    def __init__(self) -> None:
        self.buf = np.empty(64)
        self.n = 0

    def extend(self, t: np.ndarray) -> None:
        need = self.n + t.size
        if need > self.buf.size:
            self.buf = np.concatenate([self.buf[: self.n], np.empty(max(need, 2 * self.buf.size) - self.n)])
        self.buf[self.n : need] = t
        self.n = need

    def since(self, k: int) -> np.ndarray:
        return self.buf[k : self.n]


class Attempts:
    """Connection attempts waiting for their time: a heap by time, so a slice takes what is due without
    going over every attempt still ahead (a 100 000-connection ramp re-filtered the whole list in every
    slice); the due ones come back in the order they were added, as the list gave them."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int]] = []
        self.added = 0

    def append(self, attempt: tuple[float, int]) -> None:
        heapq.heappush(self.heap, (attempt[0], self.added, attempt[1]))
        self.added += 1

    def extend(self, attempts: Iterable[tuple[float, int]]) -> None:
        for attempt in attempts:
            self.append(attempt)

    def due(self, t1: float) -> list[tuple[float, int]]:
        """The attempts before ``t1``, removed, in the order they were added."""
        out = []
        while self.heap and self.heap[0][0] < t1:
            out.append(heapq.heappop(self.heap))
        out.sort(key=lambda a: a[1])
        return [(t, c) for t, _, c in out]


@dataclass
class NodeState:
    free_at: float = 0.0
    work: float = 0.0  # service of every job handed to this loop so far
    lag_max: float = 0.0
    pending: dict[int, list[np.ndarray]] = field(default_factory=dict)  # company -> enqueued chat send times
    closed: int = 0
    wakeups: int = 0  # jobs that found the loop idle (the server counts its loop thread's wake-ups)


class Simulation:
    """One replication. ``run()`` returns the event-log columns."""

    def __init__(
        self,
        cal: Calibration,
        wl: Workload,
        seed: int = 1,
        nodes: int = 1,
        sink: Callable[[list[np.ndarray]], None] | None = None,
        log: str = "full",
        trace: Trace | None = None,
    ) -> None:
        """``sink``, ``log``: see :class:`Rows` (``run()`` then returns only the rows not yet sunk)."""
        self.cal, self.wl, self.seed, self.n_nodes = cal, wl, seed, nodes
        ss = np.random.SeedSequence(seed)
        # one stream per purpose; a stream added later comes after the others, so theirs stay the same
        (self.r_arr, self.r_svc, self.r_gc, self.r_mix, self.r_conn, self.r_churn, self.r_ping) = [
            np.random.default_rng(s) for s in ss.spawn(7)
        ]
        self.env = simpy.Environment()
        self.dt = cal.flush_interval_s if cal.batching else SLICE_S
        # trace: a measured run's arrivals (sends, connects, client closes) replayed as they happened
        self.trace = trace
        self.trace_chat = np.empty(0, bool)
        self.trace_lag = self.ev_lag = np.empty(0)
        n = max(wl.max_connections, trace.max_conn + 1 if trace is not None else 0) + 1
        self.live = np.zeros(n, bool)  # change it only through set_live: the counts and caches follow it
        self.company = np.array([wl.company_of(i) for i in range(n)], np.int32)
        self.node_of = np.arange(n) % nodes
        # live connections per (node, company), kept as they come and go, and each node's members by
        # company, rebuilt only after that node's connections changed: a chat's fan-out asked a mask over
        # every connection of every node (most of a 10-node run's time) while the answer rarely changed
        self.counts = np.zeros((nodes, int(self.company.max()) + 1), np.int64)
        self.version = [0] * nodes
        self.by_company: list[tuple[int, np.ndarray, np.ndarray] | None] = [None] * nodes
        self.phase = self.r_arr.random(n)  # for fixed-rate arrivals
        self.nodes = [NodeState() for _ in range(nodes)]
        # Redis fan-outs on their way to each node, as chunks of columns (arrival, service, sent, company)
        self.remote: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(nodes)]
        # fan-out writes left for the next slice: (arrival, service, recipients, sent)
        self.writes: list[list[tuple]] = [[] for _ in range(nodes)]
        # the server's room emit without batching: stock python-socketio awaits one task per recipient
        # inside the handler (its ack waits for the writes); the fast fan-out (also used by recovery)
        # only enqueues, and each socket's writer runs later as a job of its own
        self.fast = bool(cal.toggles.get("fast_fanout") or cal.toggles.get("recovery") or cal.batching)
        # direct_write: each frame written in the handler, as on the stock path but with no task per
        # recipient (no work before the first write). Measured without batching at 500 recipients: first
        # push 1.4 ms after the send, the chat's ack 15 ms
        self.inline = writes_inline(cal.toggles | {"batching": cal.batching})
        self.handler_writes = not self.fast or self.inline
        self.share = 0.0 if self.inline else cal.enqueue_share
        # batch_flush_soon (issue 12): a batch leaves at the end of the loop turn that queued it, so at the
        # rates the model serves each room event goes out at once, a packet per recipient, as without batching
        # (merging while a client is still writing is not modelled); only window batching waits for the tick
        self.batched = cal.batching and not cal.toggles.get("batch_flush_soon")
        self.per_recipient = cal.cpu_per_delivery_s + (0.0 if self.batched else cal.cpu_per_packet_s)
        # with recovery on Redis every room emit is sequenced: its own node delivers it, like the others,
        # only when the channel brings it back (a receive there too), not from the handler
        self.sequenced = nodes > 1 and bool(cal.toggles.get("recovery"))
        # the measuring client's loop: only when the model predicts a measurement (cal.measured_client)
        self.rows = Rows(sink, log, *client_costs(cal)) if cal.measured_client else Rows(sink, log)
        # its send tick too, unless a replay's trace already holds the real send times
        self.tick = cal.client_tick_s if cal.measured_client and trace is None else 0.0
        # one machine's cores shared by the nodes and the generator (predicting a measurement made so, when
        # they outnumber the cores): each node's work takes 1 / (1 - P) of its CPU in wall time, P the chance
        # that the other processes hold every core (contention), from their CPU over the last second
        cores = cal.machine_cores or 0
        self.cores = cores if cal.measured_client and 0 < cores < nodes + 1 else 0
        self.stretch = np.ones(nodes)  # per node, for the coming slice
        self.f = 1.0  # the node being served's (its writes' offsets within a job stretch too)
        self.busy = np.zeros(nodes + 1)  # the nodes' and the generator's CPU share, smoothed over ~1 s
        self.seen = (np.zeros(nodes), 0, 0)  # work, events in and out at the last update
        self.rate = 0.0
        self.connects = Attempts()
        self.events_in = 0
        self.events_out = 0
        self.packets_out = 0
        self.connects_ok = 0
        self.gc_count = 0
        self.done = False
        self.p_chat = self.chat_probability(0)  # per node (a step's chat_node); steps_proc sets each step's
        self.churn_rate = wl.churn_per_s  # the current step's (steps_proc sets it)
        # recovery: a client that reconnects is replayed the chats of its company it missed
        self.recovering = wl.recover and cal.recovery_max_events > 0
        # a replayed delivery goes out as a packet of its own (it is encoded already, when buffered)
        self.replay_s = cal.cpu_per_delivery_s + cal.cpu_per_packet_s
        self.chats = [Times() for _ in range(int(self.company.max()) + 1)] if self.recovering else []
        self.away: dict[int, int] = {}  # churned client -> chats of its company before it left
        self.replays: dict[int, np.ndarray | str] = {}  # reconnecting client -> send times replayed, or why not
        # collector pauses are jobs only when the calibration took their time out of the fitted costs
        self.gc_dist = None
        if cal.gc.collections_per_event > 0 and cal.gc.cpu_excluded and cal.gc.dist != "empirical":
            from scipy import stats

            self.gc_dist = getattr(stats, cal.gc.dist)(*cal.gc.params)
        self.gc_on = cal.gc.collections_per_event > 0 and cal.gc.cpu_excluded

    # -- random variates ---------------------------------------------------------------------
    def service(self, mean: np.ndarray | float, n: int) -> np.ndarray:
        mean = np.broadcast_to(np.asarray(mean, float), (n,))
        cv = self.cal.service_cv
        if cv < 1e-6 or n == 0:  # deterministic (and no overflow in 1 / cv**2)
            return mean.copy()
        shape = 1.0 / (cv * cv)
        return self.r_svc.gamma(shape, 1.0, n) * (mean / shape)

    def pauses(self, n: int) -> np.ndarray:
        if self.gc_dist is None:  # empirical: inverse CDF through the measured quantiles
            q = np.asarray(self.cal.gc.params, float)
            return np.interp(self.r_gc.random(n), np.linspace(0, 1, q.size), q)
        return np.clip(self.gc_dist.rvs(size=n, random_state=self.r_gc), 0, None)

    # -- SimPy processes ---------------------------------------------------------------------
    def steps_proc(self) -> Proc:
        if self.trace is not None:
            yield from self.replay_proc(self.trace)
            return
        env, wl, rows = self.env, self.wl, self.rows
        opened = 0
        for i, (start, hold, target) in enumerate(wl.schedule()):
            yield env.timeout(max(0.0, start - env.now))
            self.rate = wl.step_rate(i)
            self.p_chat = self.chat_probability(i)
            self.churn_rate = wl.step_churn(i)
            rows.add(K["sample"], start, name=NAME["step"], value=target)
            rows.add(K["sample"], start, name=NAME["step_eps"], value=self.rate * target)
            new = np.arange(opened, max(opened, target))
            self.connects.extend(zip(start + np.arange(new.size) / wl.connect_rate, new.tolist(), strict=True))
            opened = max(opened, target)
            yield env.timeout(max(0.0, hold - env.now))
            rows.add(K["sample"], hold, name=NAME["hold"], value=target)
        yield env.timeout(max(0.0, wl.duration_s - env.now))
        rows.add(K["sample"], wl.duration_s, name=NAME["end"], value=0.0)
        self.done = True

    def chat_probability(self, i: int) -> np.ndarray:
        """Per node, the chance that a send of step ``i`` by one of its clients is a chat."""
        mixes = [self.wl.step_mix(i, k, self.n_nodes) for k in range(self.n_nodes)]
        return np.array([m.get("chat", 0.0) / sum(m.values()) for m in mixes])

    def replay_proc(self, trace: Trace) -> Proc:
        """The measured run's step markers at their times, its connection attempts and client closes."""
        env = self.env
        self.connects.extend(zip(trace.connect_t.tolist(), trace.connect_conn.tolist(), strict=True))
        closes = iter(zip(trace.close_t.tolist(), trace.close_conn.tolist(), strict=True))
        nxt = next(closes, None)
        for t, name, value in trace.markers:
            while nxt is not None and nxt[0] <= t:
                yield env.timeout(max(0.0, nxt[0] - env.now))
                if self.live[nxt[1]]:
                    self.set_live(nxt[1], False)
                    self.nodes[self.node_of[nxt[1]]].closed += 1
                    self.rows.add(K["disconnect"], env.now, conn=nxt[1], name=NAME["client close"])
                nxt = next(closes, None)
            yield env.timeout(max(0.0, t - env.now))
            self.rows.add(K["sample"], t, name=NAME[name], value=value)
        self.done = True

    def ticker(self) -> Proc:
        while not self.done:
            t0 = self.env.now
            yield self.env.timeout(self.dt)
            self.slice(t0, self.env.now)

    def sampler(self) -> Proc:
        cal, rows = self.cal, self.rows
        while not self.done:
            yield self.env.timeout(1.0)
            t = self.env.now
            for n, st in enumerate(self.nodes):
                live = int(self.counts[n].sum())
                cpu = cal.cpu_idle_s_per_s * t + st.work - max(0.0, st.free_at - t) / self.stretch[n]
                leak = 0.0 if self.cal.toggles.get("cleanup") else st.closed * cal.memory_leak_per_closed_bytes
                rss = cal.memory_base_bytes + cal.memory_per_connection_bytes * live + leak
                for name, value in (
                    ("cpu_seconds", cpu),
                    ("rss_bytes", rss),
                    ("connections", live),
                    ("events_in", self.events_in / self.n_nodes),
                    ("events_out", self.events_out / self.n_nodes),
                    # as the server counts them: room packets plus one ack per inbound event
                    ("packets_out", (self.packets_out + self.events_in) / self.n_nodes),
                    ("connects", self.connects_ok / self.n_nodes),
                    ("gc_collections", self.gc_count / self.n_nodes),
                    ("loop_lag_max_s", st.lag_max),
                    ("wakeups", st.wakeups),
                ):
                    rows.add(K["sample"], t, node=n, name=NAME[name], value=value)
                st.lag_max = 0.0

    def churn(self) -> Proc:
        while not self.done:
            if self.churn_rate <= 0:  # a step without churn: look again a slice later
                yield self.env.timeout(self.dt)
                continue
            yield self.env.timeout(self.r_churn.exponential(1.0 / self.churn_rate))
            ids = np.flatnonzero(self.live)
            if ids.size:
                cid = int(self.r_churn.choice(ids))
                self.set_live(cid, False)
                self.nodes[self.node_of[cid]].closed += 1
                self.rows.add(K["disconnect"], self.env.now, conn=cid, name=NAME["client close"])
                if self.recovering:
                    self.away[cid] = self.chats[self.company[cid]].n
                self.connects.append((self.env.now + self.wl.churn_away_s, cid))

    # -- one slice of every node's event loop -------------------------------------------------
    def arrivals(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        if self.trace is not None:  # exactly the measured sends, whatever the model made of their clients
            a, b = np.searchsorted(self.trace.send_t, [t0, t1])
            self.trace_chat = self.trace.send_chat[a:b]
            self.trace_lag = self.trace.send_lag[a:b]
            return self.trace.send_t[a:b], self.trace.send_conn[a:b]
        ids = np.flatnonzero(self.live)
        if ids.size == 0 or self.rate <= 0:
            return np.empty(0), np.empty(0, np.int64)
        if self.wl.arrival == "fixed":
            period = 1.0 / self.rate
            ph = self.phase[ids] * period
            k0 = np.ceil((t0 - ph) / period)
            times, conns = [], []
            t = ph + k0 * period
            while True:
                m = t < t1
                if not m.any():
                    break
                times.append(t[m])
                conns.append(ids[m])
                t = t + period
            if not times:
                return np.empty(0), np.empty(0, np.int64)
            t, c = np.concatenate(times), np.concatenate(conns)
            order = np.argsort(t, kind="stable")
            return t[order], c[order]
        n = self.r_arr.poisson(ids.size * self.rate * (t1 - t0))
        return np.sort(self.r_arr.uniform(t0, t1, n)), self.r_conn.choice(ids, n)

    def slice(self, t0: float, t1: float) -> None:
        """Serve every node's jobs arriving in [t0, t1), in FIFO order, and write their rows."""
        due = self.connects.due(t1)  # connection attempts due now
        ev_t, ev_c = self.arrivals(t0, t1)
        # when each send left the generator after it fell due (a replay: as its row records; predicting a
        # measurement: at the end of the generator's tick). The loop meets it then; the client times it,
        # and its ack and pushes, from when it fell due, as the generator does
        self.ev_lag = self.trace_lag if self.trace is not None else np.zeros(ev_t.size)
        if self.tick > 0:
            sent = np.ceil(ev_t / self.tick) * self.tick
            self.ev_lag, ev_t = sent - ev_t, sent
        # every row from here on is at this time or later (a replayed send's row is when it fell due: the
        # earliest of this and every later slice's)
        self.rows.watermark = min(t0, self.trace.due_floor(t0)) if self.trace is not None else t0
        self.events_in += ev_t.size
        is_chat = self.r_mix.random(ev_t.size) < self.p_chat[self.node_of[ev_c]]
        if self.trace is not None:
            is_chat = self.trace_chat
        if self.recovering and is_chat.any():  # before the connects: a client back in this slice missed these
            # by when the server met them (sorted, as the buffer is): a replayed delivery's latency then
            # leaves out its send lag, at most a tick when the model sends in ticks
            chat_t, chat_c = ev_t[is_chat], self.company[ev_c[is_chat]]
            for c in np.unique(chat_c):
                self.chats[c].extend(chat_t[chat_c == c])
        built = [self.build_jobs(n, t0, t1, ev_t, ev_c, is_chat, due) for n in range(self.n_nodes)]
        if self.n_nodes > 1:
            # pass 1: when each origin finishes its room events, to time their fan-out elsewhere
            chat_done = {}
            for n, jobs in enumerate(built):
                t, svc, kind, idx = jobs["t"], jobs["s"], jobs["k"], jobs["i"]
                if t.size:
                    order = np.argsort(t, kind="stable")
                    done = lindley(t[order], svc[order] * self.stretch[n], self.nodes[n].free_at)
                    m = kind[order] == EV_CHAT
                    if m.any():
                        sent = t[order][m] - self.ev_lag[idx[order][m]]  # when it fell due: the client's clock
                        chat_done[n] = np.stack([done[m], sent, self.company[ev_c[idx[order][m]]]])
            self.publish(chat_done)
        for n, jobs in enumerate(built):
            self.serve(n, t0, t1, jobs, ev_c)
        if self.cores:
            self.colocate(t1 - t0)

    def colocate(self, dt: float) -> None:
        """The nodes' stretch for the next slice, from every process's CPU share (the nodes' work, the
        generator's messages at its fitted costs; smoothed over about a second): node n waits while the
        other nodes and the generator hold every core."""
        work = np.array([st.work for st in self.nodes])
        last_work, last_in, last_out = self.seen
        sends, pushes = self.events_in - last_in, self.events_out - last_out
        each, push = client_costs(self.cal)
        gen = (2 * sends * each + pushes * (each if push is None else push)) / dt  # a send and its ack each
        now = np.append((work - last_work) / dt, gen).clip(0.0, 1.0)
        a = min(1.0, dt / 1.0)
        self.busy = a * now + (1 - a) * self.busy
        self.seen = (work, self.events_in, self.events_out)
        for n in range(self.n_nodes):
            waits = contention(np.delete(self.busy, n), self.cores)
            self.stretch[n] = 1.0 / (1.0 - min(waits, 0.9))

    def build_jobs(
        self,
        n: int,
        t0: float,
        t1: float,
        ev_t: np.ndarray,
        ev_c: np.ndarray,
        is_chat: np.ndarray,
        due: list[tuple[float, int]],
    ) -> dict:
        cal = self.cal
        jobs_t, jobs_s, jobs_k, jobs_i = [np.empty(0)], [np.empty(0)], [np.empty(0, int)], [np.empty(0, int)]
        idx = np.flatnonzero(self.node_of[ev_c] == n) if self.n_nodes > 1 else np.arange(ev_t.size)
        local = self.local_members(n)
        recipients = np.where(is_chat[idx] & (not self.sequenced), local[self.company[ev_c[idx]]], 0)
        # enqueueing each recipient's delivery; its socket write too on the stock path (the fast one
        # writes later, a job of its own; with batching the flush writes)
        per = self.per_recipient if self.handler_writes else cal.cpu_per_delivery_s
        mean = cal.cpu_per_event_s + recipients * per
        if self.n_nodes > 1:
            mean = mean + np.where(is_chat[idx], cal.cpu_per_publish_s, 0.0)
        jobs_t.append(ev_t[idx])
        jobs_s.append(self.service(mean, idx.size))
        jobs_k.append(np.where(is_chat[idx], EV_CHAT, EV_ECHO))
        jobs_i.append(idx)
        mine = [(t, c) for t, c in due if self.node_of[c] == n]
        if mine:
            jobs_t.append(np.array([t for t, _ in mine]))
            svc = self.service(cal.cpu_per_connect_s, len(mine))
            if self.recovering:  # a reconnect costs its replay, one delivery each (no extra draw: same streams)
                svc = svc + np.array([self.replay(t, c) for t, c in mine]) * self.replay_s
            jobs_s.append(svc)
            jobs_k.append(np.full(len(mine), JOB_CONNECT))
            jobs_i.append(np.array([c for _, c in mine]))
        live_n = int(self.counts[n].sum())
        n_ping = self.r_arr.poisson(live_n / cal.heartbeat_s * (t1 - t0)) if live_n else 0
        if n_ping:  # heartbeats of live connections
            jobs_t.append(self.r_arr.uniform(t0, t1, n_ping))
            jobs_s.append(np.full(n_ping, cal.cpu_per_connection_s_per_s * cal.heartbeat_s))
            jobs_k.append(np.full(n_ping, JOB_PING))
            jobs_i.append(np.full(n_ping, -1))
        if self.gc_on and idx.size:  # collector pauses, triggered by events
            n_gc = self.r_gc.poisson(cal.gc.collections_per_event * idx.size)
            if n_gc:
                gc_t = self.r_gc.choice(ev_t[idx], n_gc)
                pauses = self.pauses(n_gc)
                self.gc_count += n_gc
                self.rows.add(K["sample"], gc_t, node=n, name=NAME["gc_pause_gen0"], value=pauses)
                jobs_t.append(gc_t)
                jobs_s.append(pauses)
                jobs_k.append(np.full(n_gc, JOB_GC))
                jobs_i.append(np.full(n_gc, -1))
        flush = self.flush_job(n) if self.batched else None
        if flush is not None:  # batch flush at the tick
            jobs_t.append(np.array([t0]))
            jobs_s.append(np.array([flush[0]]))
            jobs_k.append(np.array([JOB_FLUSH]))
            jobs_i.append(np.array([-1]))
        # timers that wake the loop with no work the model costs: the flush tick with nothing to flush,
        # the lag probe (their own CPU is in the idle cost; a wake-up costs what any other does)
        timers = np.arange(np.ceil(t0 / LAG_PROBE_S), np.ceil(t1 / LAG_PROBE_S), dtype=np.float64) * LAG_PROBE_S
        if self.batched and flush is None:
            timers = np.concatenate([[t0], timers])
        if timers.size:
            jobs_t.append(timers)
            jobs_s.append(np.zeros(timers.size))
            jobs_k.append(np.full(timers.size, JOB_TIMER))
            jobs_i.append(np.full(timers.size, -1))
        return {
            "t": np.concatenate(jobs_t),
            "s": np.concatenate(jobs_s),
            "k": np.concatenate(jobs_k),
            "i": np.concatenate(jobs_i),
            "flush": flush,
        }

    def serve(self, n: int, t0: float, t1: float, jobs: dict, ev_c: np.ndarray) -> None:
        st, base, cal = self.nodes[n], self.cal.base_latency_s, self.cal
        remote = self.arrived(n, t1)  # Redis fan-outs that reached this node: columns, in order
        carried, self.writes[n] = self.writes[n], []  # fan-out writes due from the last slice
        t_all, s_all, k_all, i_all = jobs["t"], jobs["s"], jobs["k"], jobs["i"]
        if remote is not None:
            t_all = np.concatenate([t_all, remote[0]])
            s_all = np.concatenate([s_all, remote[1]])
            k_all = np.concatenate([k_all, np.full(remote[0].size, JOB_REMOTE)])
            i_all = np.concatenate([i_all, np.arange(remote[0].size)])
        payload: list[tuple[np.ndarray, float]] = [(w[2], w[3]) for w in carried]  # per write: recipients, sent
        if carried:
            t_all = np.concatenate([t_all, [w[0] for w in carried]])
            s_all = np.concatenate([s_all, [w[1] for w in carried]])
            k_all = np.concatenate([k_all, np.full(len(carried), JOB_WRITE)])
            i_all = np.concatenate([i_all, np.arange(len(carried))])
        st.lag_max = max(st.lag_max, max(0.0, st.free_at - t0))
        if t_all.size == 0:
            return
        self.f = f = float(self.stretch[n])  # 1 unless the nodes share the machine's cores (colocate)
        s_all = s_all * f
        order = np.argsort(t_all, kind="stable")
        t_all, s_all, k_all, i_all = t_all[order], s_all[order], k_all[order], i_all[order]
        # the fast fan-out's writes: one job per room emit, served when the loop reaches it
        follow = np.full(t_all.size, -1.0)  # no writes
        spawn: dict[int, tuple[np.ndarray, float]] = {}
        if not self.handler_writes and not self.batched:
            by_company: dict[int, np.ndarray] = {}
            handled_here = (k_all == EV_CHAT) & (not self.sequenced)
            for j in np.flatnonzero(handled_here | (k_all == JOB_REMOTE)):
                if k_all[j] == EV_CHAT:
                    company = int(self.company[ev_c[i_all[j]]])
                    sent = float(t_all[j] - self.ev_lag[i_all[j]])
                else:
                    assert remote is not None
                    sent, company = remote[2][i_all[j]], int(remote[3][i_all[j]])
                if company not in by_company:
                    by_company[company] = self.members(n, company)
                spawn[int(j)] = (by_company[company], sent)
                follow[j] = by_company[company].size * cal.cpu_per_packet_s * f
        if spawn:
            t_all, s_all, done, parent, writes, deferred = fifo_with_writes(t_all, s_all, follow, st.free_at, t1)
            keep = parent >= 0
            k_new = np.full(t_all.size, JOB_WRITE)
            i_new = np.empty(t_all.size, int)
            k_new[keep], i_new[keep] = k_all[parent[keep]], i_all[parent[keep]]
            i_new[~keep] = len(payload) + (-1 - parent[~keep])
            payload += [spawn[w] for w in writes]
            k_all, i_all = k_new, i_new
            for j, d in deferred:
                members, sent = spawn[j]
                self.writes[n].append((d, members.size * cal.cpu_per_packet_s, members, sent))
        # a job that finds the loop idle wakes it (the kernel, the selector, a cold cache): the share of that
        # cost each event carries falls as load rises and more jobs arrive while the loop is busy. On the
        # final order, writes included (a write follows its parent's completion: it never wakes the loop);
        # where the writes were placed is not revised for the wake-ups
        woke, done = wakes(t_all, s_all, st.free_at, cal.cpu_per_wakeup_s * f)
        st.wakeups += int(woke.sum())
        s_all = s_all + cal.cpu_per_wakeup_s * f * woke
        start = done - s_all
        st.free_at = float(done[-1])
        st.work += float(s_all.sum()) / f  # CPU: the wall time less the waits for a core
        self.emit_events(n, t_all, start, done, k_all, i_all, ev_c, woke)
        self.emit_writes(k_all, i_all, start, payload, base)
        self.emit_connects(n, t_all, done, k_all, i_all, base)
        self.emit_pings(n, t_all, start, k_all)
        if jobs["flush"] is not None:
            self.emit_flush(jobs["flush"], float(start[k_all == JOB_FLUSH][0]), base)
        if remote is not None:
            self.emit_remote(n, remote, start, done, k_all, i_all)

    def arrived(self, n: int, t1: float) -> tuple[np.ndarray, ...] | None:
        """The Redis fan-outs reaching node ``n`` before ``t1``, in the order they were published; the
        rest stay, in order, ahead of later ones."""
        chunks = self.remote[n]
        if not chunks:
            return None
        cols = [np.concatenate(c) for c in zip(*chunks, strict=True)] if len(chunks) > 1 else list(chunks[0])
        now = cols[0] < t1
        later = ~now
        self.remote[n] = [tuple(c[later] for c in cols)] if later.any() else []
        return tuple(c[now] for c in cols) if now.any() else None

    def emit_writes(self, k_all: np.ndarray, i_all: np.ndarray, start: np.ndarray, payload: list, base: float) -> None:
        """Push rows of the fast fan-out's writes, one socket after another from the job's start."""
        for j in np.flatnonzero(k_all == JOB_WRITE):
            members, sent = payload[i_all[j]]
            when = (
                start[j]
                + self.writes_after(members.size, np.arange(members.size) + 1, self.cal.cpu_per_packet_s)
                + base
            )
            self.rows.add(K["push"], when, conn=members, name=NAME["chat"], latency=when - sent)

    def set_live(self, cid: int, up: bool) -> None:
        """A connection comes up or goes down (the one way ``live`` changes)."""
        if bool(self.live[cid]) == up:
            return
        self.live[cid] = up
        n = int(self.node_of[cid])
        self.counts[n, self.company[cid]] += 1 if up else -1
        self.version[n] += 1

    def local_members(self, n: int) -> np.ndarray:
        """Live connections of node ``n`` per company."""
        return self.counts[n].copy()

    def members(self, n: int, company: int) -> np.ndarray:
        """The live connections of ``company`` on node ``n``, in ascending order."""
        ids, start = self.member_table(n)
        return ids[start[company] : start[company + 1]]

    def members_of(self, n: int, companies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The members of each of ``companies`` on node ``n``, one after another, and how many each."""
        ids, start = self.member_table(n)
        lo, sizes = start[companies], start[companies + 1] - start[companies]
        ends = np.cumsum(sizes)
        total = int(ends[-1]) if ends.size else 0
        return ids[np.arange(total) - np.repeat(ends - sizes - lo, sizes)], sizes

    def member_table(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Node ``n``'s live connections sorted by company (ascending within one), and where each
        company's start (``start[c]:start[c + 1]``); rebuilt only after the node's connections changed."""
        cached = self.by_company[n]
        if cached is None or cached[0] != self.version[n]:
            ids = np.flatnonzero(self.live) if self.n_nodes == 1 else np.flatnonzero(self.live & (self.node_of == n))
            comp = self.company[ids]
            ids = ids[np.argsort(comp, kind="stable")]
            start = np.zeros(self.counts.shape[1] + 1, np.int64)
            np.cumsum(np.bincount(comp, minlength=self.counts.shape[1]), out=start[1:])
            cached = self.by_company[n] = (self.version[n], ids, start)
        return cached[1], cached[2]

    def emit_events(
        self,
        n: int,
        t_all: np.ndarray,
        start: np.ndarray,
        done: np.ndarray,
        k_all: np.ndarray,
        i_all: np.ndarray,
        ev_c: np.ndarray,
        woke: np.ndarray,
    ) -> None:
        cal, rows, base, timeout = self.cal, self.rows, self.cal.base_latency_s, self.wl.ack_timeout_s
        ev = (k_all == EV_ECHO) | (k_all == EV_CHAT)
        if not ev.any():
            return
        t, d, s0, k, conn = t_all[ev], done[ev], start[ev], k_all[ev], ev_c[i_all[ev]]
        woke = woke[ev]
        lag = self.ev_lag[i_all[ev]]
        t = t - lag  # when each fell due: the client's clock for its send, ack and pushes
        names = np.where(k == EV_CHAT, NAME["chat"], NAME["echo"])
        rows.add(K["send"], t, conn=conn, name=names, latency=lag, nbytes=self.wl.payload_bytes)
        lat = d + base - t
        ok = lat <= timeout
        rows.add(K["ack"], (d + base)[ok], conn=conn[ok], name=names[ok], latency=lat[ok], nbytes=self.wl.payload_bytes)
        rows.add(K["timeout"], (t + timeout)[~ok], conn=conn[~ok], name=names[~ok], latency=timeout)
        # room deliveries made by the handler itself (no batching): spread over the fan-out
        for j in np.flatnonzero(k == EV_CHAT) if not self.sequenced else ():
            company = self.company[conn[j]]
            members = self.members(n, company)
            self.events_out += members.size
            if self.batched:
                self.nodes[n].pending.setdefault(company, []).append(np.array([t[j], d[j]]))
                continue
            self.packets_out += members.size
            if not self.handler_writes:
                continue  # its writes are a job of their own (emit_writes)
            first = cal.cpu_per_event_s + (cal.cpu_per_publish_s if self.n_nodes > 1 else 0.0)
            first = s0[j] + (first + cal.cpu_per_wakeup_s * woke[j]) * self.f  # the wake-up came before the handler
            when = first + self.stock_writes(np.full(members.size, members.size), np.arange(members.size) + 1) + base
            rows.add(K["push"], when, conn=members, node=-1, name=NAME["chat"], latency=when - t[j])

    def flush_job(self, n: int) -> tuple | None:
        pending = self.nodes[n].pending
        if not pending:
            return None
        self.nodes[n].pending = {}
        groups = []
        for company, entries in pending.items():
            members = self.members(n, company)
            if members.size:
                groups.append((members, np.array([e[0] for e in entries])))
        cost = sum(m.size for m, _ in groups) * self.cal.cpu_per_packet_s
        return cost, groups

    def emit_flush(self, flush: tuple, start: float, base: float) -> None:
        _, groups = flush
        pos = 0
        for members, sent in groups:
            when = start + (pos + np.arange(members.size) + 1) * self.cal.cpu_per_packet_s * self.f + base
            pos += members.size
            self.packets_out += members.size
            w = np.repeat(when, sent.size)
            s = np.tile(sent, members.size)
            self.rows.add(K["push"], w, conn=np.repeat(members, sent.size), name=NAME["chat"], latency=w - s)

    def replay(self, t: float, cid: int) -> int:
        """What a client reconnecting at ``t`` is replayed: the chats of its company it missed, unless
        the server's buffer no longer holds the first of them (older than the window: ``too_old``;
        more than its per-room bound: ``overrun``), when it replays nothing. Returns the count.

        Missed: the chats the model did not deliver to it, from the slice it left in up to ``t``.
        (Chats later in the slice it comes back in are not delivered to it either, a slice
        artifact of the model with or without recovery, and are not replayed: they were not sent
        while it was away.)"""
        mark = self.away.pop(cid, None)
        if mark is None:
            return 0  # a first connect
        cal, missed = self.cal, self.chats[self.company[cid]].since(mark)
        missed = missed[: np.searchsorted(missed, t)]
        if missed.size and missed[0] < t - cal.recovery_window_s:
            self.replays[cid] = "too_old"
        elif missed.size > cal.recovery_max_events:
            self.replays[cid] = "overrun"
        else:
            self.replays[cid] = missed.copy()
            return missed.size
        return 0

    def emit_connects(
        self, n: int, t_all: np.ndarray, done: np.ndarray, k_all: np.ndarray, i_all: np.ndarray, base: float
    ) -> None:
        cal, rows = self.cal, self.rows
        for j in np.flatnonzero(k_all == JOB_CONNECT):
            cid, t = int(i_all[j]), float(t_all[j])
            replay = self.replays.pop(cid, None)
            replayed = replay if isinstance(replay, np.ndarray) else np.empty(0)
            ok = done[j] - replayed.size * self.replay_s + base  # the connect, then its replay
            rows.add(K["connect_start"], t, conn=cid)
            if cal.conn_limits:  # each node enforces its own limits on its own connections
                refused = None
                if int(self.counts[n].sum()) >= cal.max_connections:
                    refused = "refused: server connection limit reached"
                elif int(self.counts[n, self.company[cid]]) >= cal.max_per_company:
                    refused = "refused: company connection limit reached"
                if refused is not None:
                    when = done[j] + base
                    rows.add(K["connect_fail"], when, conn=cid, name=NAME[refused], latency=when - t)
                    continue
            self.set_live(cid, True)
            self.connects_ok += 1
            rows.add(K["connect_ok"], ok, conn=cid, latency=ok - t)
            if isinstance(replay, str):
                rows.add(K["recovery_fail"], ok, conn=cid, name=NAME[replay])
            elif replayed.size:
                when = ok + (np.arange(replayed.size) + 1) * self.replay_s
                rows.add(K["recovered"], when, conn=cid, name=NAME["chat"], latency=when - replayed)

    def emit_pings(self, n: int, t_all: np.ndarray, start: np.ndarray, k_all: np.ndarray) -> None:
        waits = start[k_all == JOB_PING] - t_all[k_all == JOB_PING]
        late = int((waits > self.cal.ping_timeout_s).sum())
        ids = np.flatnonzero(self.live & (self.node_of == n))
        for cid in self.r_ping.choice(ids, min(late, ids.size), replace=False) if late and ids.size else []:
            self.set_live(int(cid), False)
            self.nodes[n].closed += 1
            now = self.env.now
            self.rows.add(K["error"], now, conn=int(cid), name=NAME["dropped: ping timeout"])
            self.rows.add(K["disconnect"], now, conn=int(cid), name=NAME["dropped: ping timeout"])

    def publish(self, chat_done: dict[int, np.ndarray]) -> None:
        """Every chat published on one node is fanned out by every other node (Redis pub/sub); sequenced
        (recovery), by its own node too, when the channel brings it back."""
        if not chat_done:
            return
        cal = self.cal
        per = self.per_recipient if self.handler_writes else cal.cpu_per_delivery_s
        # every origin's chats in one set of columns, origin by origin (the order each node hears them)
        origin = np.concatenate([np.full(v.shape[1], o) for o, v in chat_done.items()])
        done, sent, company = np.concatenate(list(chat_done.values()), axis=1)
        arrival, company = done + cal.redis_rtt_s, company.astype(int)
        for n in range(self.n_nodes):
            heard = origin != n if not self.sequenced else np.ones(origin.size, bool)
            if heard.any():
                c = company[heard]
                svc = cal.cpu_per_receive_s + self.counts[n][c] * per
                self.remote[n].append((arrival[heard], svc, sent[heard], c))

    def emit_remote(
        self,
        n: int,
        remote: tuple[np.ndarray, ...],
        start: np.ndarray,
        done: np.ndarray,
        k_all: np.ndarray,
        i_all: np.ndarray,
    ) -> None:
        """Deliveries of other nodes' room events, timed by when this node's loop served them."""
        cal, base = self.cal, self.cal.base_latency_s
        # the stock path's pushes, one add for all of this slice's remote jobs (a 50-node run has tens of
        # thousands of them a second): per job j, start[j] + receive + k * per recipient + base, k = 1..
        js = np.flatnonzero(k_all == JOB_REMOTE)
        sent, company = remote[2][i_all[js]], remote[3][i_all[js]]
        sizes = self.counts[n][company]  # each job's members (its node's live connections of the company)
        self.events_out += int(sizes.sum())
        if self.batched:
            for j, s, c in zip(js, sent, company, strict=True):
                self.nodes[n].pending.setdefault(int(c), []).append(np.array([s, done[j]]))
            return
        self.packets_out += int(sizes.sum())
        if not self.handler_writes or not sizes.any():
            return  # the fast path's writes are a job of their own (emit_writes)
        conn, sizes = self.members_of(n, company)
        ends = np.cumsum(sizes)
        k = np.arange(int(ends[-1])) - np.repeat(ends - sizes, sizes) + 1
        when = (
            np.repeat(start[js] + cal.cpu_per_receive_s * self.f, sizes)
            + self.stock_writes(np.repeat(sizes, sizes), k)
            + base
        )
        latency = when - np.repeat(sent, sizes)
        self.rows.add(K["push"], when, conn=conn, name=NAME["chat"], latency=latency)

    def stock_writes(self, n: np.ndarray, k: np.ndarray) -> np.ndarray:
        """When the k-th of n recipients' packet is written after a room emit in the handler starts (stock
        python-socketio 5: a task per recipient is created and run, each waking its socket's writer; only
        then do the writers run. direct_write: each frame is written as the loop reaches its recipient)."""
        return self.writes_after(n, k, self.per_recipient)

    def writes_after(self, n: np.ndarray | int, k: np.ndarray, per: float) -> np.ndarray:
        """The k-th of n writes of ``per`` each ends this long after they start: every recipient's
        share of the work that precedes the first write (``enqueue_share``: a stock emit's send tasks,
        the fast path's frame building) first, then one write after another."""
        share = self.share
        return per * self.f * (np.asarray(n) * share + k * (1.0 - share))

    def run(self) -> list[np.ndarray]:
        env = self.env
        env.process(self.steps_proc())
        env.process(self.ticker())
        env.process(self.sampler())
        if self.wl.churns and self.trace is None:
            env.process(self.churn())
        env.run()
        # planned closes at the end, as the load generator does
        ids = np.flatnonzero(self.live)
        self.rows.add(K["disconnect"], self.wl.duration_s + 0.5, conn=ids, name=NAME["client close"])
        return self.rows.columns()
