"""Per-client event batching.

Wire format (any Socket.IO client can read it): every server-pushed event bound for a client
inside one flush window arrives as ONE Socket.IO event named ``batch`` whose single argument is

- a JSON array of entries ``[event_name, arg1, ...]`` in send order, or
- when that array's JSON text is longer than the compression threshold: a binary attachment
  holding the zlib-compressed (RFC 1950) UTF-8 JSON text of the same array.

A batch never holds more than ``batch_size`` entries nor, past its first entry, more than
``batch_max_bytes`` of entry text; a full batch is sent at once, so one batch never outgrows a
client's send queue (``max_outbound_bytes``) however long the window. Acks are never batched: they
go out as soon as the handler returns.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Callable, Iterable

from engineio import packet as eio_packet

from .compat import observe_many
from .guard import dumps
from .metrics import Metrics

Deliver = Callable[[str, list[eio_packet.Packet]], bool]


def encode_entry(event: str, args: list) -> str:
    """One batch entry as JSON text, encoded once however many recipients get it."""
    return dumps([event, *args])  # strict: never NaN/Infinity, which no JSON client can parse


def batch_packets(entries: list[str], compression_threshold: int, namespace: str = "/") -> list[eio_packet.Packet]:
    """Engine.IO packets for one batch: a text event, or a binary event plus its attachment."""
    body = "[" + ",".join(entries) + "]"
    nsp = "" if namespace == "/" else namespace + ","
    if compression_threshold and len(body) > compression_threshold:
        head = "51-" + nsp + '["batch",{"_placeholder":true,"num":0}]'
        return [
            eio_packet.Packet(eio_packet.MESSAGE, head),
            eio_packet.Packet(eio_packet.MESSAGE, zlib.compress(body.encode(), 6)),
        ]
    return [eio_packet.Packet(eio_packet.MESSAGE, "2" + nsp + '["batch",' + body + "]")]


class Batcher:
    """Queues pre-encoded entries per recipient and flushes them every window or when full.

    With ``busy`` set (the ``batch_flush_soon`` toggle), pending batches also go out at the end of the
    loop iteration that queued them, except to clients ``busy`` says are still writing: an event to an
    idle client waits for no window, and entries merge only when they arrive together (one loop
    iteration) or while the client's previous write is pending (then the window bounds the wait).
    """

    busy: Callable[[str], bool] | None = None
    _soon = False

    def __init__(
        self,
        deliver: Deliver,
        batch_size: int,
        batch_max_bytes: int,
        flush_interval_s: float,
        compression_threshold: int,
        metrics: Metrics,
        namespace: str = "/",
    ) -> None:
        self.deliver = deliver
        self.namespace = namespace  # one batcher per namespace: a batch is a packet of one namespace
        self.batch_size = batch_size
        self.batch_max_bytes = batch_max_bytes
        self.flush_interval_s = flush_interval_s
        self.compression_threshold = compression_threshold
        self.metrics = metrics
        self.pending: dict[str, list[str]] = {}
        self.oldest: dict[str, float] = {}
        self.size: dict[str, int] = {}  # characters of entry text pending per recipient

    def push(self, recipients: Iterable[str], entry: str) -> int:
        """Queue one entry for each recipient; return how many got it."""
        pending, oldest, size, now, n = self.pending, self.oldest, self.size, time.perf_counter(), 0
        length, max_bytes = len(entry), self.batch_max_bytes
        for sid in recipients:
            n += 1
            queue = pending.get(sid)
            if queue is None:
                pending[sid] = [entry]
                oldest[sid] = now
                size[sid] = length
            else:
                if size[sid] + length > max_bytes:  # this entry would overfill it: send what is there first
                    del size[sid]
                    self._send({sid: pending.pop(sid)}, {sid: oldest.pop(sid)}, now)
                    pending[sid], oldest[sid], size[sid] = [entry], now, length
                    continue
                queue.append(entry)
                size[sid] += length
                if len(queue) >= self.batch_size:
                    del size[sid]
                    self._send({sid: pending.pop(sid)}, {sid: oldest.pop(sid)}, now)
        if self.busy is not None and pending and not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.flush_idle)
        return n

    def flush_idle(self) -> int:
        """Send the pending batches of clients that are not busy writing; return how many were sent."""
        self._soon = False
        busy, pending, oldest = self.busy, self.pending, self.oldest
        assert busy is not None  # scheduled only with it
        idle = [sid for sid in pending if not busy(sid)]
        if not idle:
            return 0
        for sid in idle:
            del self.size[sid]
        return self._send({s: pending.pop(s) for s in idle}, {s: oldest.pop(s) for s in idle}, time.perf_counter())

    def flush(self) -> int:
        """Send every pending batch now; return the number of batches sent."""
        if not self.pending:
            return 0
        pending, oldest = self.pending, self.oldest
        self.pending, self.oldest, self.size = {}, {}, {}
        return self._send(pending, oldest, time.perf_counter())

    def _send(self, pending: dict[str, list[str]], oldest: dict[str, float], now: float) -> int:
        # Recipients of the same room usually hold the very same entries: build each batch once.
        # Their oldest entries were queued together too: one delay per batch, recorded per distinct delay.
        built: dict[tuple[int, ...], list[eio_packet.Packet]] = {}
        delays: dict[float, int] = {}
        sent = compressed = 0
        deliver = self.deliver
        for sid, entries in pending.items():
            key = tuple(map(id, entries))
            packets = built.get(key)
            if packets is None:
                packets = built[key] = batch_packets(entries, self.compression_threshold, self.namespace)
                self.metrics.batch_events.observe(len(entries))
            if deliver(sid, packets):
                sent += 1
                compressed += len(packets) > 1
                delay = now - oldest[sid]
                delays[delay] = delays.get(delay, 0) + 1
        for delay, count in delays.items():
            observe_many(self.metrics.batch_delay, delay, count)
        self.metrics.batches.inc(sent)
        self.metrics.packets_out.inc(sent)
        if compressed:
            self.metrics.batches_compressed.inc(compressed)
        return sent

    async def run(self) -> None:
        """Flush on a fixed-rate tick, the k-th at start + k windows, so an event waits between 0 and
        one window (half on average) whatever the flushes cost. (Sleeping a whole window after each
        flush made the period a window plus the flush plus the loop's lag: up to 14 % fewer flushes
        than windows under load.)"""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.flush_interval_s
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.flush()
            due = next_due(due, loop.time(), self.flush_interval_s)


def next_due(due: float, now: float, interval: float) -> float:
    """The tick after ``due`` on the grid ``due + k * interval`` that is still ahead of ``now``: a loop
    busy for more than a window skips the ticks it missed instead of flushing them back to back."""
    due += interval
    if due <= now:
        due += (math.floor((now - due) / interval) + 1) * interval
    return due
