"""One load-generator worker: opens its share of connections and sends on an open-loop schedule.

Open loop: every connection has its own schedule of intended send times (Poisson or fixed rate),
kept in one heap; a send that goes out late keeps its intended time, and every latency counts from
it, so a stalled server cannot hide behind a slowed-down client (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import heapq
import os
import random
import resource
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
import numpy as np

from eventlog import EventWriter
from eventlog.sched import thread_runqueue_wait_s
from eventlog.schema import gen_cpu_name, gen_wait_name

from .connection import Connection, ConnectRefused
from .scrape import Scraper
from .spec import LoadSpec

Progress = Callable[[dict], None]

# The shortest sleep the generator takes. uvloop (libuv) timers count whole milliseconds: a shorter
# sleep becomes a 0 ms timer, so a loop waiting 100 us for its next send spins through the event
# loop instead of sleeping, and at 10 000 events/s that spinning took most of a core. Sends that
# fall due inside a tick go out together at its end; their lag is recorded against intended times.
TICK_S = 0.001


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _mix_table(mix: Mapping[str, float]) -> list[tuple[float, str]]:
    """Cumulative (edge, name) pairs of a mix, for one uniform draw per send."""
    total = sum(mix.values())
    acc, table = 0.0, []
    for name, w in mix.items():
        if w > 0:
            acc += w / total
            table.append((acc, name))
    return table


class VConn:
    """A virtual client: its id, token, live connection and acks in flight."""

    __slots__ = (
        "addr",
        "conn",
        "epoch",
        "id",
        "pending",
        "planned_close",
        "positions",
        "replaying",
        "room",
        "token",
        "up",
    )

    def __init__(self, cid: int, token: str, addr: int) -> None:
        self.id = cid
        self.token = token
        self.addr = addr
        self.conn: Connection | None = None
        self.pending: dict[int, tuple[float, str]] = {}
        self.up = False
        self.planned_close = False
        self.room: str | None = None
        self.epoch = 0  # bumped on every (re)connect: heap entries of an older connection are dropped
        # recovery (``recover``): the last position seen per room, kept across reconnects, and per
        # room how many of the deliveries that follow the server's ``recovery`` report are replays
        self.positions: dict[str, tuple[str, int]] = {}
        self.replaying: dict[str, int] = {}


class Worker:
    def __init__(
        self,
        spec: LoadSpec,
        run_dir: Path | str,
        t0: float,
        worker_id: int,
        tokens: list[str],
        progress: Progress | None = None,
    ) -> None:
        if not tokens:
            raise ValueError("no tokens: pass the JSON lines of `python -m server users`")
        self.spec = spec
        self.wid = worker_id
        self.writer = EventWriter(run_dir, f"gen{worker_id}", t0, background=True)
        self.rng = random.Random(spec.seed * 7919 + worker_id)
        self.vconns = {
            cid: VConn(cid, tokens[cid % len(tokens)], cid % len(spec.source_addrs))
            for cid in range(worker_id, spec.max_connections, spec.workers)
        }
        self.heap: list[tuple[float, int, int]] = []  # (intended time, connection id, its epoch)
        self.rate = spec.base_rate
        # each step's mix, by its start: a send takes the mix of the step its intended time is in,
        # not the one current when the sender gets to it (a late send at a step edge would cross it)
        self.step_starts = [start for start, _hold, _target in spec.schedule()]
        n_nodes = max(len(spec.nodes), 1)  # per node: a step's chat_node gives one node's clients its chats
        self.mixes = [
            [_mix_table(spec.step_mix(i, k, n_nodes)) for i in range(len(spec.steps))] for k in range(n_nodes)
        ]
        self.churn_rate = spec.step_churn(0)
        self.pad = "x" * spec.payload_bytes
        self.recover = spec.recover  # read per delivery: a plain attribute
        self.sending = False
        self.progress = progress
        self.connecting: set[asyncio.Task] = set()
        self.window_lat: list[float] = []
        self.counts = {"send": 0, "ack": 0, "push": 0, "err": 0, "recovered": 0, "recovery_fail": 0, "duplicate": 0}
        self.sessions: list[aiohttp.ClientSession] = []
        self.bugs = 0
        self.abort_reason: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.main: asyncio.Task | None = None

    def request_abort(self, reason: str) -> None:
        """Stop now, from a signal handler or another thread: no drain, no close handshakes; the
        rows so far are flushed and the summary says ``aborted``. Safe to call more than once."""
        self.abort_reason = self.abort_reason or reason
        loop, main = self.loop, self.main
        if loop is not None and main is not None and not loop.is_closed():
            loop.call_soon_threadsafe(main.cancel)

    # -- schedule ---------------------------------------------------------------------------
    def gap(self) -> float:
        if self.rate <= 0:
            return float("inf")
        return self.rng.expovariate(self.rate) if self.spec.arrival == "poisson" else 1.0 / self.rate

    def first_send(self, after: float) -> float:
        if self.spec.arrival == "fixed" and self.rate > 0:
            return after + self.rng.random() / self.rate
        return after + self.gap()

    def reschedule(self, now: float) -> None:
        """A new rate takes effect at once: every pending next send is drawn again from ``now``
        (exact for Poisson arrivals, which are memoryless; a fresh phase for fixed rates)."""
        self.heap[:] = [(self.first_send(now), cid, ep) for _, cid, ep in self.heap]  # in place: sender holds it
        heapq.heapify(self.heap)

    def pick(self, t_int: float, node: int = 0) -> str:
        """The event name of a send intended at ``t_int`` by a client of ``node``, drawn from its step's mix."""
        mix = self.mixes[node][max(bisect.bisect_right(self.step_starts, t_int) - 1, 0)]
        r = self.rng.random()
        for edge, name in mix:
            if r < edge:
                return name
        return mix[-1][1]

    # -- connections --------------------------------------------------------------------------
    async def open(self, vc: VConn, t_int: float) -> None:
        w = self.writer
        await self.sleep_until(t_int)  # a churned client away for ``churn_away_s``
        w.row("connect_start", t_int, conn=vc.id)
        vc.planned_close = False
        rooms = [f"room{(vc.id + r) % 8}" for r in range(self.spec.rooms_per_connection)]
        auth: dict = {"token": vc.token}
        if self.spec.recover:  # the rooms are joined by the connect too, so that a reconnect can resume them
            auth["recover"] = {"rooms": rooms, "since": {r: list(p) for r, p in vc.positions.items()}}
            vc.replaying = {}
        try:
            conn = await Connection.open(
                self.sessions[vc.addr],
                self.url_of(vc),
                auth,
                timeout=self.spec.connect_timeout_s,
                on_event=lambda name, args: self.on_event(vc, name, args),
                on_ack=lambda ack_id, args: self.on_ack(vc, ack_id, args),
                on_close=lambda reason: self.on_close(vc, reason),
            )
        except ConnectRefused as exc:
            self.connect_failed(vc, t_int, f"refused: {exc}")
            return
        except aiohttp.WSServerHandshakeError as exc:  # the server answered the upgrade with an HTTP error
            self.connect_failed(vc, t_int, f"{'refused: ' if 400 <= exc.status < 500 else ''}HTTP {exc.status}")
            return
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            self.connect_failed(vc, t_int, type(exc).__name__)
            return
        except Exception as exc:  # a generator bug must show in the log, not vanish in a task
            self.connect_failed(vc, t_int, f"generator_bug: {exc!r}")
            self.bugs += 1
            return
        now = w.now()
        w.row("connect_ok", now, conn=vc.id, latency_s=now - t_int)
        vc.conn, vc.up = conn, True
        for room in rooms:  # joined by events as well: a server without recovery ignores the request
            vc.room = room
            await self.send(vc, "join", room, now)
        # one schedule per virtual client: a reconnect starts a new one and retires the old entry,
        # which would otherwise stay in the heap and double this client's rate after every churn
        vc.epoch += 1
        heapq.heappush(self.heap, (self.first_send(now), vc.id, vc.epoch))

    def connect_failed(self, vc: VConn, t_int: float, reason: str) -> None:
        now = self.writer.now()  # the row's age places the error at its attempt (see projections)
        self.writer.row("connect_fail", now, conn=vc.id, name=reason[:120], latency_s=now - t_int)
        self.counts["err"] += 1

    def url_of(self, vc: VConn) -> str:
        nodes = self.spec.nodes
        return nodes[vc.id % len(nodes)] if nodes else self.spec.url

    def on_close(self, vc: VConn, reason: str) -> None:
        vc.up = False
        t = self.writer.now()
        if not vc.planned_close:
            self.writer.row("error", t, conn=vc.id, name=f"dropped: {reason}"[:120])
            self.counts["err"] += 1
        self.writer.row("disconnect", t, conn=vc.id, name=reason[:120])

    def on_ack(self, vc: VConn, ack_id: int, args: list) -> None:
        entry = vc.pending.pop(ack_id, None)
        if entry is None:
            return  # already counted as a timeout
        t_int, name = entry
        now = self.writer.now()
        lat = now - t_int
        if args and isinstance(args[0], dict) and "error" in args[0]:
            self.writer.row("reject", now, conn=vc.id, name=f"{name}:{args[0]['error']}", latency_s=lat)
            self.counts["err"] += 1
        else:
            self.writer.row("ack", now, conn=vc.id, name=name, latency_s=lat)
            self.counts["ack"] += 1
            self.window_lat.append(lat)

    def on_event(self, vc: VConn, name: str, args: list) -> None:
        kind = "push"
        if self.recover:
            if name == "recovery":
                self.on_recovery(vc, args)
                return
            seq = args[-1].get("_seq") if args and isinstance(args[-1], dict) else None
            if isinstance(seq, list) and len(seq) == 3:
                room, epoch, n = seq
                replay = vc.replaying.get(room, 0) > 0  # the report said how many replays come first
                if replay:
                    vc.replaying[room] -= 1
                last = vc.positions.get(room)
                if last is not None and last[0] == epoch and n <= last[1]:
                    self.counts["duplicate"] += 1  # seen already (live or replayed): never counted twice
                    return
                vc.positions[room] = (epoch, n)
                if replay:
                    kind = "recovered"
        if name != "chat" or not args or not isinstance(args[0], dict):
            return
        data = args[0].get("data")
        if isinstance(data, dict) and isinstance(data.get("t"), float):
            now = self.writer.now()
            lat = now - data["t"]  # a replay too: from the original send time
            self.writer.row(kind, now, conn=vc.id, name="chat", latency_s=lat)
            self.counts[kind] += 1
            if kind == "push":
                self.window_lat.append(lat)

    def on_recovery(self, vc: VConn, args: list) -> None:
        """The server's report after a connect with ``recover``: how many replays follow per room,
        a ``recovery_fail`` row (reason) per room it could not replay, and positions to resume from."""
        report = args[0] if args and isinstance(args[0], dict) else {}
        rooms = report.get("rooms")
        for room, result in (rooms if isinstance(rooms, dict) else {}).items():
            if isinstance(result, dict) and result.get("ok") is True:
                vc.replaying[room] = int(result.get("replayed", 0))
                continue
            vc.positions.pop(room, None)
            reason = result.get("reason") if isinstance(result, dict) else None
            self.writer.row("recovery_fail", self.writer.now(), conn=vc.id, name=str(reason or "unknown")[:120])
            self.counts["recovery_fail"] += 1
        positions = report.get("positions")
        for room, pos in (positions if isinstance(positions, dict) else {}).items():
            if isinstance(pos, list) and len(pos) == 2:
                vc.positions[room] = (pos[0], pos[1])

    # -- sending ------------------------------------------------------------------------------
    async def send(self, vc: VConn, name: str, arg: object, t_int: float) -> None:
        if vc.conn is None:
            return
        ack_id, sending = vc.conn.emit(name, [arg])
        if sending is None or ack_id is None:
            return
        vc.pending[ack_id] = (t_int, name)
        if vc.conn.congested():
            # the server stopped reading this socket: waiting for its drain here would stall every
            # other connection's schedule; a real client only blocks itself
            task = asyncio.get_running_loop().create_task(self.finish_send(vc, ack_id, name, sending))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)
        elif not await self.finish_send(vc, ack_id, name, sending):
            return
        self.writer.row(
            "send", t_int, conn=vc.id, name=name, latency_s=self.writer.now() - t_int, nbytes=self.spec.payload_bytes
        )
        self.counts["send"] += 1

    async def finish_send(self, vc: VConn, ack_id: int, name: str, sending: Awaitable[None]) -> bool:
        try:
            await sending
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            vc.pending.pop(ack_id, None)
            self.writer.row("error", self.writer.now(), conn=vc.id, name=f"send_failed:{name}")
            self.counts["err"] += 1
            return False
        return True

    async def sender(self) -> None:
        heap, now_fn, vconns = self.heap, self.writer.now, self.vconns
        while self.sending:
            if not heap:
                await asyncio.sleep(0.005)
                continue
            wait = heap[0][0] - now_fn()
            if wait > 0:
                await asyncio.sleep(min(max(wait, TICK_S), 0.05))
                continue
            for _ in range(500):  # then yield, so that readers are not starved
                if not heap or heap[0][0] > now_fn():
                    break
                t_int, cid, epoch = heapq.heappop(heap)
                vc = vconns[cid]
                if not vc.up or epoch != vc.epoch:
                    continue  # dropped, or an older connection's schedule; a reconnect schedules anew
                name = self.pick(t_int, cid % len(self.mixes))
                payload = {"t": t_int, "p": self.pad}
                if name == "chat" and self.spec.chat_to == "room":
                    payload["room"] = vc.room
                await self.send(vc, name, payload, t_int)
                heapq.heappush(heap, (t_int + self.gap(), cid, epoch))
            await asyncio.sleep(0)

    async def sweeper(self) -> None:
        timeout = self.spec.ack_timeout_s
        while True:
            await asyncio.sleep(0.25)
            now = self.writer.now()
            for vc in self.vconns.values():
                if not vc.pending:
                    continue
                late = [(a, e) for a, e in vc.pending.items() if now - e[0] > timeout]
                for ack_id, (t_int, name) in late:
                    del vc.pending[ack_id]
                    self.writer.row("timeout", now, conn=vc.id, name=name, latency_s=now - t_int)
                    self.counts["err"] += 1
            self.writer.maybe_flush()

    async def sampler(self) -> None:
        last = {**self.counts}
        last_t = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now, mono = self.writer.now(), time.monotonic()
            cpu = os.times()
            self.writer.row("sample", now, name=gen_cpu_name(self.wid), value=cpu.user + cpu.system)
            self.writer.row("sample", now, name=gen_wait_name(self.wid), value=thread_runqueue_wait_s())
            if self.progress is not None:
                span = mono - last_t
                lat = np.asarray(self.window_lat)
                self.progress(
                    {
                        "worker": self.wid,
                        "t": now,
                        "connections": sum(v.up for v in self.vconns.values()),
                        "target": len(self.vconns),
                        **{f"{k}_per_s": (self.counts[k] - last[k]) / span for k in ("send", "ack", "push")},
                        "errors": self.counts["err"],
                        "p95_ms": float(np.percentile(lat, 95)) * 1000 if lat.size else float("nan"),
                        "cpu_s": cpu.user + cpu.system,
                    }
                )
                last, last_t = {**self.counts}, mono
                self.window_lat = []

    async def churn(self) -> None:
        while self.spec.churns and self.sending:
            rate = self.churn_rate / self.spec.workers  # the step's: steps may churn at other rates
            if rate <= 0:
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(self.rng.expovariate(rate))
            up = [v for v in self.vconns.values() if v.up]
            if not up:
                continue
            vc = self.rng.choice(up)
            vc.planned_close = True
            if vc.conn is not None:
                await vc.conn.close()
            self.spawn_open(vc, self.writer.now() + self.spec.churn_away_s)

    def spawn_open(self, vc: VConn, t_int: float) -> None:
        task = asyncio.get_running_loop().create_task(self.open(vc, t_int))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    # -- the run -----------------------------------------------------------------------------
    async def drive(self) -> None:
        spec, w = self.spec, self.writer
        order = sorted(self.vconns)
        opened = 0
        per_worker_rate = spec.connect_rate / spec.workers
        for i, (start, hold, target) in enumerate(spec.schedule()):
            await self.sleep_until(start)
            self.churn_rate = spec.step_churn(i)
            rate = spec.step_rate(i)
            if rate != self.rate:
                self.rate = rate
                self.reschedule(start)
            if self.wid == 0:
                w.row("sample", start, name="step", value=float(target))
                w.row("sample", start, name="step_eps", value=self.rate * target)
            mine = [c for c in order if c < target][opened:]
            for i, cid in enumerate(mine):  # sleep_until returns at once for connects already due
                t_int = start + i / per_worker_rate
                await self.sleep_until(t_int)
                self.spawn_open(self.vconns[cid], t_int)
            opened += len(mine)
            await self.sleep_until(hold)
            if self.wid == 0:
                w.row("sample", hold, name="hold", value=float(target))
        await self.sleep_until(spec.duration_s)

    async def sleep_until(self, t: float) -> None:
        wait = t - self.writer.now()
        if wait > 0:
            await asyncio.sleep(max(wait, TICK_S))

    async def run(self) -> dict:
        raise_fd_limit()
        spec, w = self.spec, self.writer
        self.sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(addr, 0)))
            for addr in spec.source_addrs
        ]
        stop_scrape = asyncio.Event()
        helpers = [asyncio.create_task(c) for c in (self.sweeper(), self.sampler(), self.churn())]
        scraper = None
        if self.wid == 0 and spec.scrape:
            scraper = Scraper(spec.scrape, w, spec.scrape_interval_s)
            scrape_task = asyncio.create_task(scraper.run(stop_scrape))
        self.sending = True
        sender = asyncio.create_task(self.sender())
        self.loop = asyncio.get_running_loop()
        self.main = asyncio.create_task(asyncio.wait_for(self.drive(), spec.max_duration_s))
        if self.abort_reason:
            self.main.cancel()
        try:
            await self.main
        except asyncio.CancelledError:
            if not self.abort_reason:
                raise
        finally:
            self.sending = False
            await sender
            if self.wid == 0 and not self.abort_reason:
                w.row("sample", spec.duration_s, name="end", value=0.0)
            deadline = w.now() + spec.ack_timeout_s + 0.5
            while any(v.pending for v in self.vconns.values()) and w.now() < deadline and not self.abort_reason:
                await asyncio.sleep(0.1)
            if not self.abort_reason:
                await asyncio.sleep(spec.drain_s)
            for task in list(self.connecting):
                task.cancel()
            await asyncio.gather(*self.connecting, return_exceptions=True)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            closing = []
            for vc in self.vconns.values():
                if vc.conn is not None and vc.up:
                    vc.planned_close = True
                    if self.abort_reason:
                        vc.conn.abort()  # drop at once: an abort must not wait for close handshakes
                    else:
                        closing.append(vc.conn.close())
            # at once, each bounded: an overloaded server answers close handshakes late or never
            await asyncio.gather(*closing, return_exceptions=True)
            if scraper is not None and self.abort_reason:
                scrape_task.cancel()  # no last look: the server may be what hangs
                await asyncio.gather(scrape_task, return_exceptions=True)
            elif scraper is not None:
                stop_scrape.set()
                await scrape_task
            for s in self.sessions:
                await s.close()
            # connections the server dropped (it was killed) sit in reference cycles: collect them while
            # the loop still runs, or their finalizers meet a closed loop ("Event loop is closed")
            gc.collect()
            await asyncio.sleep(0)
            cpu = os.times()
            w.row("sample", w.now(), name=gen_cpu_name(self.wid), value=cpu.user + cpu.system)
            w.row("sample", w.now(), name=gen_wait_name(self.wid), value=thread_runqueue_wait_s())
            w.close()
        return {
            "worker": self.wid,
            "rows": w.rows,
            "generator_bugs": self.bugs,
            "aborted": self.abort_reason,
            **self.counts,
        }
