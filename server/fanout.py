"""Client managers whose room emits cost less per recipient than python-socketio's default.

The stock ``AsyncManager.emit`` creates one task per recipient and waits for all of them. Here an
event is encoded once and its packet put straight on each recipient's Engine.IO send queue (or on
its batch). The Redis variant reuses this for the local part of every published emit, and makes a
Redis outage visible instead of silent (see ``LabRedisManager``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from contextvars import ContextVar
from typing import Any

import socketio
from engineio import packet as eio_packet

from .batching import Batcher, encode_entry
from .metrics import Metrics
from .recovery import SEQ_KEY_TTL_S, SEQ_SCRIPT, Recovery

log = logging.getLogger("server.redis")

# why the emit this task made last reached no other node (None: it did, or there are no others)
_LOCAL_ONLY: ContextVar[str | None] = ContextVar("caplab_local_only", default=None)
# [epoch, n] of the sequenced emit being delivered from the Redis channel (recovery)
_SEQ: ContextVar[list | None] = ContextVar("caplab_seq", default=None)


def redis_options(retries: int = 1, **extra) -> dict:
    """Client options that fail within about a second instead of redis-py's 10 retries with backoff.

    One immediate retry replaces a pooled connection that went stale while Redis restarted.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return {"retry": Retry(NoBackoff(), retries), "socket_connect_timeout": 1.0, "socket_timeout": 1.0, **extra}


class LabManager(socketio.AsyncManager):
    """``AsyncManager`` that counts deliveries, with optional encode-once fan-out and batching.

    With ``fast_fanout`` off and no batcher it is the stock manager plus a counter (baseline).
    """

    batcher: Batcher | None = None
    fast_fanout: bool = False
    metrics: Metrics | None = None
    recovery: Recovery | None = None
    # batchers of namespaces other than "/" (the dashboard's /admin), each with its own flush tick
    namespace_batchers: dict[str, Batcher] | None = None

    # room_index: namespace -> sid -> the rooms it is in (None: off, python-socketio's own scans)
    room_index: dict[str, dict[str, list]] | None = None

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self.room_index is not None:
            mine = self.room_index.setdefault(namespace, {}).setdefault(sid, [])
            if room not in mine:
                mine.append(room)

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        mine = self.room_index.get(namespace, {}).get(sid) if self.room_index is not None else None
        if mine is not None and room in mine:
            mine.remove(room)

    def basic_disconnect(self, sid, namespace, **kwargs):
        """python-socketio's disconnect looks for the sid in every room of the namespace (a copy of the
        table and a membership test per room: 1.8 ms a disconnect at 10 000 sockets in 20 000 rooms);
        with the index it runs on a table of this socket's rooms only, then the emptied ones go."""
        indexes = self.room_index
        index = indexes.get(namespace) if indexes is not None else None
        table = self.rooms.get(namespace)
        if indexes is None or index is None or table is None:
            return super().basic_disconnect(sid, namespace, **kwargs)
        joined = index.pop(sid, [])
        mine = {room: table[room] for room in joined if room in table}
        self.rooms[namespace] = mine  # the stock code leaves each (the same bidicts), then its own clean-up
        try:
            super().basic_disconnect(sid, namespace, **kwargs)
        finally:
            for room in joined:
                if room in table and room not in mine:  # it emptied the room: gone from the whole table too
                    del table[room]
            if table:
                self.rooms[namespace] = table
            else:
                self.rooms.pop(namespace, None)
                indexes.pop(namespace, None)

    def initialize_now(self) -> None:
        """Initialize at server start-up rather than at the first connection (python-socketio's way),
        so a Redis node subscribes, and reports its link, before any client arrives."""
        if not self.server.manager_initialized:
            self.server.manager_initialized = True
            self.initialize()

    def delivery_ack(self) -> dict:
        """The ack for a room emit this task has just made; one node always delivers it all."""
        return {"ok": True}

    def link_state(self) -> dict | None:
        """The Redis pub/sub link (None without Redis)."""
        return None

    def deliver(self, eio_sid: str, packets: list[eio_packet.Packet]) -> bool:
        """Queue packets on one client's transport without a task; False if it is gone.

        The same packets go to every recipient of a fan-out. engine.io caches a packet's first encoding
        whatever transport asked: a binary packet (a compressed batch) encoded for a websocket as bytes
        broke a long-polling recipient's payload, which needs it as base64 text (TypeError in
        ``Payload.encode``). A polling client gets its own copy of a binary packet."""
        sock = self.server.eio.sockets.get(eio_sid)
        if sock is None or sock.closed:
            return False
        polling = not sock.upgraded
        for p in packets:
            sock.queue.put_nowait(eio_packet.Packet(p.packet_type, p.data) if polling and p.binary else p)
        return True

    def send_entry(self, recipients, entry: str) -> None:
        """Send one pre-encoded batch entry (``[event, ...args]``) to each recipient."""
        if self.batcher is not None:
            self.batcher.push(recipients, entry)
            return
        packets = [eio_packet.Packet(eio_packet.MESSAGE, "2" + entry)]
        for eio_sid in recipients:
            self.deliver(eio_sid, packets)

    async def emit(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        namespace = namespace or "/"
        room = to or room
        if self.metrics is not None and isinstance(room, str):
            n = len(self.rooms.get(namespace, {}).get(room, ()))
            self.metrics.events_out.inc(n)
            if self.batcher is None:
                self.metrics.packets_out.inc(n)
        if namespace != "/" and callback is None and self.namespace_batchers and namespace in self.namespace_batchers:
            skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
            recipients = [eio for sid, eio in self.get_participants(namespace, room) if sid not in skip]
            args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
            self.namespace_batchers[namespace].push(recipients, encode_entry(event, args))
            return
        use_fast = self.batcher is not None or self.fast_fanout or self.recovery is not None
        if callback is not None or namespace != "/" or not use_fast:
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs)
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        recipients = [eio for sid, eio in self.get_participants(namespace, room) if sid not in skip]
        entry = None
        if self.recovery is not None and isinstance(room, str):
            recipients, entry = self.recovery.route(room, event, args, recipients, self.send_entry, _SEQ.get())
        if self.batcher is not None:
            self.batcher.push(recipients, entry or encode_entry(event, args))
            return
        text = socketio.packet.Packet(socketio.packet.EVENT, data=[event, *args]).encode()
        parts = text if isinstance(text, list) else [text]
        packets = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in parts]
        for eio_sid in recipients:
            self.deliver(eio_sid, packets)


def _sequenced(room: object) -> bool:
    """Room emits that recovery numbers: application rooms (company, user, sub-rooms), not a sid."""
    return isinstance(room, str) and room[1:2] == ":"


class LabRedisManager(socketio.AsyncRedisManager, LabManager):
    """Redis pub/sub between nodes; local delivery through ``LabManager.emit``.

    MRO: AsyncRedisManager -> AsyncPubSubManager -> LabManager -> AsyncManager, so the
    pub/sub manager's local ``super().emit`` lands in ``LabManager.emit``.

    What python-socketio's manager does in an outage, and what this one does instead:

    - its publish retries, logs and returns as if sent; here a failed publish is counted
      (``redis_errors{op="publish"}``) and the sender's ack says ``local_only``; after a failure,
      publishes fail fast for ``PUBLISH_PAUSE_S`` (a hung Redis must not stall every chat);
    - its listener retries after 1, 2, 4 ... 60 s whatever Redis does, while publishes succeed
      again as soon as Redis is back: every message published before the listeners resubscribe
      reaches nobody (after a 5 s outage, the next 2 s). Here the listener retries every
      ``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``, pings an idle link, reports its state
      (``link_state``, gauge ``socketio_redis_up``), and a publish heard by no other node, while
      other nodes were subscribed before (within ``PEER_MEMORY_S``), is reported ``local_only`` too.
    """

    RETRY_MIN_S = 0.05
    RETRY_MAX_S = 0.5
    PUBLISH_PAUSE_S = 0.2
    LIVENESS_S = 2.0  # an idle link is pinged after this; no reply within it again means down
    PEER_MEMORY_S = 10.0  # other nodes unheard this long (our link up) have left: stop reporting it

    def __init__(self, url: str, channel: str, **kwargs) -> None:
        super().__init__(url, channel=channel, **kwargs)
        self.link_up: bool | None = None  # None until the first subscribe attempt ends
        self.link_since = time.monotonic()
        self.link_error: str | None = None
        self._subscribing = False  # SUBSCRIBE sent, confirmation not read yet
        self._expect_peers = False  # other nodes heard our publishes (reset once they are gone)
        self._unheard_since: float | None = None  # first publish no other node heard, since they did
        self._publish_paused_until = 0.0
        self._publish_error: str | None = None
        self._script: Any = None  # the recovery script, registered on the current Redis client

    def initialize(self) -> None:
        if self.metrics is not None:
            self.metrics.registry.register(self.metrics.redis_up)
            self.metrics.redis_up.set(0)
        super().initialize()

    def _redis_connect(self) -> None:
        self.redis = self._get_redis_module().Redis.from_url(self.redis_url, **redis_options(**self.redis_options))
        self.connected = True

    def _count_error(self, op: str) -> None:
        if self.metrics is not None:
            self.metrics.redis_errors.labels(op=op).inc()

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        _LOCAL_ONLY.set(None)
        room = to or room
        data = list(data) if isinstance(data, tuple) else [data]
        if (
            self.recovery is not None
            and self.link_up
            and callback is None
            and not kwargs.get("ignore_queue")
            and _sequenced(room)
            and not socketio.packet.Packet.data_is_binary(data)
        ):
            return await self._emit_sequenced(event, data, namespace or "/", room, skip_sid)
        data = data[0] if len(data) == 1 else tuple(data)
        return await super().emit(
            event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
        )

    async def _emit_sequenced(self, event, data: list, namespace: str, room: str, skip_sid) -> None:
        """Recovery: Redis numbers the emit as it publishes it; every node, this one included,
        delivers it when the channel brings it back, so all nodes deliver a room in one order."""
        message = {"method": "emit", "event": event, "data": data, "binary": False, "namespace": namespace,
                   "room": room, "skip_sid": skip_sid, "callback": None, "host_id": self._seq_host_id}  # fmt: skip
        if not await self._publish(message):  # not published (or no listener, ours included): deliver here only
            await self._handle_emit({**message, "host_id": self.host_id})

    async def _handle_emit(self, message):
        if self.metrics is not None and message.get("host_id") != self.host_id:  # heard from Redis
            self.metrics.redis_messages.labels(op="receive").inc()
        token = _SEQ.set(message.get("seq"))
        try:
            return await super()._handle_emit(message)
        finally:
            _SEQ.reset(token)

    @property
    def _seq_host_id(self) -> str:
        return self.host_id + ":seq"  # never this node's own host id: the listener does not skip it

    def delivery_ack(self) -> dict:
        detail = _LOCAL_ONLY.get()
        if detail is None:
            return {"ok": True}
        return {"ok": True, "local_only": True, "detail": f"delivered on this node only: {detail}"}

    def link_state(self) -> dict:
        return {
            "up": self.link_up,
            "for_s": round(time.monotonic() - self.link_since, 3),
            "error": self.link_error,
        }

    def _local_only(self, data: dict, detail: str) -> None:
        if data.get("method") != "emit":
            return
        _LOCAL_ONLY.set(detail)
        if self.metrics is not None:
            self.metrics.redis_local_only.inc()
            self.metrics.errors.labels(kind="redis_unavailable").inc()

    async def _publish(self, data: dict) -> int | None:
        payload = self.json.dumps(data)
        now = time.monotonic()
        if now < self._publish_paused_until:
            self._local_only(data, f"Redis unreachable ({self._publish_error})")
            return None
        try:
            if self.redis is None:
                self._redis_connect()
            if data.get("host_id") == self._seq_host_id:  # recovery: INCR + PUBLISH in one step
                _, _, heard = await self._seq_script(payload, data["room"])
            else:
                heard = await self.redis.publish(self.channel, payload)
        except Exception as exc:  # connection, timeout or protocol: the message did not leave this node
            self._count_error("publish")
            self._publish_paused_until = time.monotonic() + self.PUBLISH_PAUSE_S
            if self._publish_error is None:
                log.warning("Redis publish failed, delivering on this node only: %s: %s", type(exc).__name__, exc)
            self._publish_error = type(exc).__name__
            self._local_only(data, f"Redis publish failed ({self._publish_error})")
            return None
        if self.metrics is not None and data.get("method") == "emit":
            self.metrics.redis_messages.labels(op="publish").inc()
        if self._publish_error is not None:
            log.warning("Redis publish works again")
            self._publish_error = None
        others = heard - (1 if self.link_up or self._subscribing else 0)
        if others > 0:
            self._expect_peers, self._unheard_since = True, None
        elif self._expect_peers:
            self._unheard_since = self._unheard_since or now
            if self.link_up and now - self._unheard_since >= self.PEER_MEMORY_S:
                self._expect_peers = False  # the other nodes left rather than lost their link
            else:
                self._local_only(data, "no other node is subscribed to the Redis channel")
        return heard

    async def _seq_script(self, payload: str, room: str) -> list:
        if self._script is None or self._script.registered_client is not self.redis:
            self._script = self.redis.register_script(SEQ_SCRIPT)
        keys = [f"{self.channel}:seq:{room}", f"{self.channel}:epoch:{room}"]
        return await self._script(keys=keys, args=[self.channel, secrets.token_hex(4), SEQ_KEY_TTL_S, payload[:-1]])

    def _set_link(self, up: bool, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        if up != self.link_up:
            if up:
                after = f" after {now - self.link_since:.1f} s down" if self.link_up is False else ""
                log.warning("Redis pub/sub link up on channel %s%s", self.channel, after)
            else:
                log.warning(
                    "Redis pub/sub link down (%s: %s), retrying within %g s", type(exc).__name__, exc, self.RETRY_MAX_S
                )
            self.link_up, self.link_since = up, now
        self.link_error = None if up else type(exc).__name__
        if self.metrics is not None:
            self.metrics.redis_up.set(1 if up else 0)

    async def _listen(self):
        """Yield messages of our channel for ever: subscribe, watch the link, resubscribe when it drops."""
        channel = self.channel.encode()
        delay = self.RETRY_MIN_S
        while True:
            options = redis_options(retries=0, **{**self.redis_options, "socket_timeout": None})
            client = self._get_redis_module().Redis.from_url(self.redis_url, socket_keepalive=True, **options)
            pubsub = client.pubsub()
            try:
                self._subscribing = True
                await pubsub.subscribe(self.channel)
                pinged = False
                while True:
                    msg = await pubsub.get_message(timeout=self.LIVENESS_S)
                    if msg is None:
                        if pinged:
                            raise TimeoutError(f"no reply from Redis within {self.LIVENESS_S:g} s")
                        await pubsub.ping()
                        pinged = True
                        continue
                    pinged = False
                    if msg["type"] == "subscribe":
                        self._subscribing = False
                        self._publish_paused_until = 0.0  # Redis answers: publishing may resume too
                        self._set_link(True)
                        delay = self.RETRY_MIN_S
                    elif msg["type"] == "message" and msg["channel"] == channel:
                        yield msg["data"]
            except Exception as exc:
                self._subscribing = False
                self._count_error("listen")
                self._set_link(False, exc)
            finally:
                self._subscribing = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.RETRY_MAX_S)
