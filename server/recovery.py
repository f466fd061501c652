"""Missed-message recovery: per-room sequences and a bounded, time-limited replay buffer.

Wire additions (toggle ``recovery``; only for clients that ask, so other clients see no change):

- A client opts in with ``"recover"`` in its CONNECT auth payload:
  ``{"token": "...", "recover": {"rooms": ["ops"], "since": {"c:1": ["<epoch>", 41]}}}``.
  ``rooms`` are sub-rooms to join as part of the connect (as ``join`` would); ``since`` maps rooms
  to the last position the client processed. Both are optional (``{}`` on a first connect).
- Every room delivery to such a client carries one extra, last argument ``{"_seq": [room, epoch, n]}``:
  ``n`` counts the room's deliveries from 1 within ``epoch`` (a token that changes when the sequence
  restarts: a single node's restart, a Redis that lost its keys).
- Right after the CONNECT, before any other event, the client receives ``recovery``
  ``{"recovered": bool, "rooms": {room: {"ok": true, "replayed": k} | {"ok": false, "reason": r}},
  "joined": [...], "positions": {room: [epoch, n]}, "window_s": w}`` then the missed deliveries of
  every recovered room, in order, each with its tag; live deliveries follow. ``reason`` is
  ``too_old`` (older than the window), ``overrun`` (evicted by the buffer's bounds), ``epoch``
  (sequence restarted), ``gap`` (this node missed part of the room, e.g. during a Redis outage),
  ``unknown`` (this node has no history of the room) or ``not_member`` (not one of the rooms this
  connection is in). Not recovered: resync. ``positions`` gives the current position of every
  other room the connection is in (not asked for, or not recovered), so a client that drops before
  its first delivery in a room still has a position to resume from; a ``join`` reply carries
  ``"position": {room: [epoch, n]}`` for the same reason.

Sequences across nodes (Redis): one Lua script does INCR on the room's counter and PUBLISH in one
atomic step, in place of the plain PUBLISH an emit costs anyway (no extra round trip). Redis runs
scripts one at a time, so the channel carries each room's messages in sequence order, and every
node, the sender included, delivers a sequenced emit when it hears it back from the channel: every
node sees and buffers the same order. Per-origin-node sequences would need no Redis state but
give each client one stream per node to track, and a node's pooled connections can reorder its
own publishes. While a node's Redis link is down its emits go out untagged (as before) and its
buffers mark the gap, so a recovery across it fails honestly instead of skipping messages. Each
node buffers what it heard itself: a node started after a message was sent cannot replay it
(``gap``/``unknown``), and on Redis a node that has carried nothing of a room since it started
cannot give that room's position (its epoch lives in Redis), so a client that drops before its
first delivery there is told ``unknown``. When in doubt the answer is "not recovered", never a
replay with holes.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .batching import encode_entry
from .metrics import Metrics

TAG = "_seq"
ENTRY_OVERHEAD = 120  # bytes per buffered entry beyond its text: tuple, deque slot, index entry (approximate)

SEQ_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
local e = redis.call('GET', KEYS[2])
if n == 1 or not e then
  e = ARGV[2]
  redis.call('SET', KEYS[2], e)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local heard = redis.call('PUBLISH', ARGV[1], ARGV[4] .. ',"seq":["' .. e .. '",' .. n .. ']}')
return {n, e, heard}
"""
SEQ_KEY_TTL_S = 86_400  # a room silent for a day starts a new epoch


class BadRecoverRequest(ValueError):
    """A ``recover`` auth payload of the wrong shape."""


@dataclass(slots=True)
class RoomLog:
    """What one node holds of one room: the sequence head and the entries still replayable."""

    epoch: str
    head: int = 0  # last sequence number delivered here
    first: int = 1  # first sequence number still in ``entries`` (head + 1 when empty)
    floor_reason: str = "unknown"  # why sequence numbers below ``first`` are gone
    last_t: float = 0.0
    entries: deque[tuple[int, float, str]] = field(default_factory=deque)  # (seq, monotonic t, tagged entry)


class Recovery:
    """Sequences room deliveries, buffers them, replays them to reconnecting clients."""

    def __init__(self, window_s: float, max_events: int, max_bytes: int, metrics: Metrics, redis: bool = False) -> None:
        self.window_s = window_s
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.redis = redis  # sequence numbers come from Redis (``seq`` argument of ``route``)
        self.epoch = secrets.token_hex(4)  # single node: a restart starts a new epoch
        self.rooms: dict[str, RoomLog] = {}
        self.order: deque[tuple[RoomLog, int, int]] = deque()  # (room log, seq, bytes), oldest first
        self.bytes = 0
        self.events = 0
        self.sequenced: set[str] = set()  # eio sids of clients that asked for tagged deliveries
        self.holding: dict[str, list[str]] = {}  # eio sid -> entries held until its CONNECT has gone out
        self.forgotten = 0  # room logs dropped by ``sweep``: a room without a log may have had deliveries
        metrics.recovery_bytes.set_function(lambda: self.bytes)  # read at scrape time: nothing per emit
        metrics.recovery_events.set_function(lambda: self.events)

    # -- live deliveries ---------------------------------------------------------------------
    def route(
        self,
        room: str,
        event: str,
        args: list,
        recipients: list[str],
        send: Callable[[Iterable[str], str], None],
        seq: list | None = None,
    ) -> tuple[list[str], str | None]:
        """Sequence one room emit and send its tagged entry to opted-in recipients (or their hold).

        Returns the recipients that get the plain entry, and that entry when it was encoded here
        (None: not encoded). ``seq`` is ``[epoch, n]`` from Redis.
        """
        if room[1:2] != ":":  # application rooms only (company, user, sub-rooms), not a sid's own room
            return recipients, None
        try:
            entry = encode_entry(event, args)
        except (TypeError, ValueError):  # binary payloads cannot be buffered as JSON: untagged, and a hole
            self.record(room, None, seq)
            return recipients, None
        tagged = self.record(room, entry, seq)
        if tagged is None or not self.sequenced:
            return recipients, entry
        plain, tagged_to = [], []
        for eio_sid in recipients:
            if eio_sid not in self.sequenced:
                plain.append(eio_sid)
            elif (held := self.holding.get(eio_sid)) is not None:
                held.append(tagged)
            else:
                tagged_to.append(eio_sid)
        if tagged_to:
            send(tagged_to, tagged)
        return plain, entry

    def record(self, room: str, entry: str | None, seq: list | None = None) -> str | None:
        """Append one delivery (its batch entry text) to the room's buffer; return the tagged entry.

        None: not tagged (``entry`` None: a payload that cannot be buffered; or Redis out of reach),
        and the room's history has a hole there.
        """
        now = time.monotonic()
        log = self.rooms.get(room)
        if self.redis:
            if seq is None:  # sent while Redis was out of reach: unnumbered, so no position before it resumes
                if log is not None:
                    self._reset(log, log.epoch, log.head + 2, "gap", head=log.head)
                return None
            epoch, n = seq
            if log is None:
                log = self.rooms[room] = RoomLog(epoch, n - 1, n)
            elif epoch != log.epoch or n != log.head + 1:
                if n <= log.head and epoch == log.epoch:
                    return None  # heard twice: never deliver a number again
                self._reset(log, epoch, n, "gap" if epoch == log.epoch else "epoch")
        else:
            if log is None:
                log = self.rooms[room] = RoomLog(self.epoch)
            n = log.head + 1
        if entry is None:
            self._reset(log, log.epoch, n + 1, "gap")
            return None
        # one more, last argument; room names ([A-Za-z0-9_.:-]) and epochs (hex) need no JSON escaping
        tagged = f'{entry[:-1]},{{"{TAG}":["{room}","{log.epoch}",{n}]}}]'
        log.head, log.last_t = n, now
        size = sys.getsizeof(tagged) + ENTRY_OVERHEAD
        log.entries.append((n, now, tagged))
        self.order.append((log, n, size))
        self.bytes += size
        self.events += 1
        if len(log.entries) > self.max_events:
            self._drop_first(log, "overrun")
        self.evict(now)
        return tagged

    def _reset(self, log: RoomLog, epoch: str, first: int, reason: str, head: int | None = None) -> None:
        """Empty the room's buffer: positions below ``first - 1`` cannot resume (``reason``)."""
        while log.entries:
            self._drop_first(log, reason)
        log.epoch, log.first, log.floor_reason = epoch, first, reason
        log.head = first - 1 if head is None else head

    def _drop_first(self, log: RoomLog, reason: str) -> None:
        n, _, tagged = log.entries.popleft()
        self.bytes -= sys.getsizeof(tagged) + ENTRY_OVERHEAD
        self.events -= 1
        log.first, log.floor_reason = max(log.first, n + 1), reason

    def evict(self, now: float | None = None) -> None:
        """Drop entries older than the window, then the oldest until the node's bytes fit."""
        now = time.monotonic() if now is None else now
        order, cutoff = self.order, now - self.window_s
        while order:
            log, n, _ = order[0]
            if not log.entries or log.entries[0][0] != n:  # dropped already (room bound or reset)
                order.popleft()
                continue
            if log.entries[0][1] < cutoff:
                reason = "too_old"
            elif self.bytes > self.max_bytes:
                reason = "overrun"
            else:
                break
            order.popleft()
            self._drop_first(log, reason)

    def sweep(self, live_rooms: Iterable[str]) -> int:
        """Forget rooms with no members and nothing buffered, idle for longer than the window."""
        self.evict()
        live, cutoff = set(live_rooms), time.monotonic() - self.window_s
        idle = [r for r, log in self.rooms.items() if r not in live and not log.entries and log.last_t < cutoff]
        for r in idle:
            del self.rooms[r]
        self.forgotten += len(idle)
        return len(idle)

    def position(self, room: str) -> list | None:
        """[epoch, n] of the room's last delivery here (n = 0: none yet); None when this node cannot tell."""
        log = self.rooms.get(room)
        if log is not None:
            return [log.epoch, log.head]
        if self.redis or self.forgotten:  # Redis: the room's epoch lives there; swept: its head is gone
            return None
        return [self.epoch, 0]

    # -- reconnects ----------------------------------------------------------------------------
    def hold(self, eio_sid: str) -> list[str]:
        """Tag this client's deliveries and hold them until ``release`` (after its CONNECT)."""
        self.sequenced.add(eio_sid)
        return self.holding.setdefault(eio_sid, [])

    def release(self, eio_sid: str, connected: bool, send: Callable[[Iterable[str], str], None]) -> None:
        held = self.holding.pop(eio_sid, None)
        if not connected:
            self.sequenced.discard(eio_sid)
            return
        for entry in held or ():
            send((eio_sid,), entry)

    def forget(self, eio_sid: str | None) -> None:
        if eio_sid is None:
            return
        self.sequenced.discard(eio_sid)
        self.holding.pop(eio_sid, None)

    def replay(self, room: str, since: Sequence[Any]) -> tuple[dict, list[str]]:
        """What a client that processed ``since`` ([epoch, n]) of ``room`` missed, or why not."""
        self.evict()
        log = self.rooms.get(room)
        epoch, n = since
        if log is None:
            if [epoch, n] == self.position(room):  # nothing delivered in it yet, on this node's epoch
                return {"ok": True, "replayed": 0}, []
            return {"ok": False, "reason": "epoch" if not self.redis and epoch != self.epoch else "unknown"}, []
        if epoch != log.epoch:
            return {"ok": False, "reason": "epoch"}, []
        if n + 1 < log.first:
            return {"ok": False, "reason": log.floor_reason}, []
        missed = [tagged for seq, _, tagged in log.entries if seq > n]
        return {"ok": True, "replayed": len(missed)}, missed

    def resume(self, eio_sid: str, member_of: set[str], since: dict, joined: list[str]) -> None:
        """Queue the ``recovery`` report and every recovered room's missed entries on the hold."""
        held = self.hold(eio_sid)
        report, replays, positions = {}, [], {}
        for room in member_of - since.keys():
            if (pos := self.position(room)) is not None:
                positions[room] = pos
        for room, position in since.items():
            missed: list[str]
            if room not in member_of:
                result, missed = {"ok": False, "reason": "not_member"}, []
            else:
                result, missed = self.replay(room, position)
            report[room] = result
            replays.extend(missed)
            if not result["ok"] and room in member_of and (pos := self.position(room)) is not None:
                positions[room] = pos
            self.metrics.recoveries.labels(result="recovered" if result["ok"] else result["reason"]).inc()
        self.metrics.recovery_replayed.inc(len(replays))
        body = {
            "recovered": all(r["ok"] for r in report.values()),
            "rooms": report,
            "joined": joined,
            "positions": positions,
            "window_s": self.window_s,
        }
        held[:0] = [encode_entry("recovery", [body]), *replays]


def parse_request(value: object, max_rooms: int) -> tuple[list[str], dict[str, list]]:
    """Check a ``recover`` auth payload; return (sub-rooms to join, {room: [epoch, n]})."""
    if not isinstance(value, dict):
        raise BadRecoverRequest('recover must be an object {"rooms": [...], "since": {room: [epoch, n]}}')
    rooms, since = value.get("rooms", []), value.get("since", {})
    if not isinstance(rooms, list) or len(rooms) > max_rooms:
        raise BadRecoverRequest(f"recover.rooms must be a list of at most {max_rooms} sub-room names")
    if not isinstance(since, dict) or len(since) > max_rooms + 2:
        raise BadRecoverRequest(f"recover.since must map at most {max_rooms + 2} rooms to [epoch, n]")
    for room, pos in since.items():
        ok = isinstance(pos, list) and len(pos) == 2 and isinstance(pos[0], str) and type(pos[1]) is int
        if not ok or pos[1] < 0:
            raise BadRecoverRequest(f"recover.since[{room[:64]!r}] must be [epoch, n] with n >= 0")
    return rooms, since
