"""Assembly of one server node: Socket.IO on aiohttp, profile toggles, periodic tasks."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import time

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from socketio import packet as sio_packet

from . import http
from .alerts import SlackAlerts, readings
from .auth import Authenticator
from .batching import Batcher
from .codec import PACKET_HOOKS
from .compat import namespace_rooms, pending_binary
from .db import Database
from .events import Handlers, SocketState
from .fanout import LabManager, LabRedisManager
from .guard import EVENT_TYPES, PacketRejected, StrictPacket, event_name
from .leanmetrics import LeanMetrics
from .limits import BanList, ConnectionLimiter, ConnectRate, LimitExceeded, PendingSessions
from .memory import GcMonitor, LoopLagMonitor, MemoryMonitor, tune_gc
from .metrics import Metrics
from .recovery import Recovery
from .settings import Settings
from .transport import GuardedSocket, LeanSocket, writing

RECEIVED: contextvars.ContextVar[float] = contextvars.ContextVar("received")
log = logging.getLogger("server")


class SioServer(socketio.AsyncServer):
    """``AsyncServer`` that checks every packet before python-socketio acts on it, and times events.

    Strict JSON (no NaN/Infinity), no reserved event names from the wire, capped binary
    attachments, and one token-bucket charge per inbound packet (``rate_limit``). A refused packet
    gets an error ack when it asked for one, or closes that client only when it cannot be parsed.
    """

    lab: LabServer

    async def _handle_eio_message(self, eio_sid, data):
        token = RECEIVED.set(time.perf_counter())
        try:
            await self._dispatch(eio_sid, data)
        except PacketRejected as exc:
            await self.lab.reject(eio_sid, exc)
        except Exception as exc:  # a failure inside a handler: counted as such, the client keeps its connection
            self.lab.metrics.errors.labels(kind="handler_error").inc()
            log.warning("handler error for %s: %s: %s", eio_sid, type(exc).__name__, str(exc)[:200])
        finally:
            RECEIVED.reset(token)

    async def _dispatch(self, eio_sid, data):
        lab = self.lab
        if eio_sid not in self.environ:
            return  # read before its session closed, handled after (a task per message): nobody to answer
        state = lab.state_of(eio_sid)
        if state is not None and state.bucket is not None and not state.bucket.take(time.monotonic()):
            return await self._rate_limited(eio_sid, state, data)
        binary = pending_binary(self).get(eio_sid)
        if binary is not None:
            return await self._attachment(eio_sid, binary, data)
        if not isinstance(data, str):
            raise PacketRejected("malformed_packet", "binary frame with no packet announcing it", close=True)
        pkt = self.packet_class()
        try:
            pkt.attachment_count = pkt.decode(data) or 0
        except PacketRejected as exc:
            exc.packet = pkt
            raise
        kind = pkt.packet_type
        if kind in EVENT_TYPES:
            try:
                event_name(pkt)
            except PacketRejected as exc:
                exc.packet = pkt
                raise
        if kind == sio_packet.CONNECT:
            return await self._connect(eio_sid, pkt)
        if kind not in (sio_packet.DISCONNECT, sio_packet.CONNECT_ERROR) and kind <= sio_packet.BINARY_ACK:
            sid = self.manager.sid_from_eio_sid(eio_sid, pkt.namespace or "/")
            if sid is None or not self.manager.is_connected(sid, pkt.namespace or "/"):
                # as Node's socket.io: a packet for a namespace the client is not connected to closes it
                raise PacketRejected("not_connected", "packet for a namespace this client is not connected to", True)
        if kind == sio_packet.DISCONNECT:
            await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
            sock = self.eio.sockets.get(eio_sid)
            if lab.pending is not None and sock is not None and not sock.closed and eio_sid not in lab.pending.ip:
                lab.pending.add(eio_sid, client_ip(self.environ.get(eio_sid, {})))  # no namespace left: pending again
        elif kind == sio_packet.EVENT:
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        elif kind == sio_packet.ACK:
            await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)
        elif kind in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
            if not pkt.attachment_count:  # nothing to wait for: python-socketio would hold it forever
                raise PacketRejected("malformed_packet", "binary packet announcing no attachment", close=True)
            pkt.pending_bytes = 0
            pending_binary(self)[eio_sid] = pkt
        else:
            raise PacketRejected("malformed_packet", f"packet type {kind!r} is not sent by clients", close=True)

    async def _attachment(self, eio_sid, pkt, data):
        if not isinstance(data, bytes):
            raise PacketRejected("malformed_packet", "text frame where a binary attachment was due", close=True)
        pkt.pending_bytes += len(data)
        if pkt.pending_bytes > self.max_attachment_bytes:
            raise PacketRejected(
                "attachment_bytes", f"attachments over {self.max_attachment_bytes} bytes in one packet", close=True
            )
        if pkt.add_attachment(data):
            del pending_binary(self)[eio_sid]
            if pkt.packet_type == sio_packet.BINARY_EVENT:
                await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
            else:
                await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)

    async def _connect(self, eio_sid, pkt):
        lab = self.lab
        if lab.pending is None:
            return await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
        pending = lab.pending
        waiting = pending.take(eio_sid)  # out of the pending count while its own CONNECT is checked
        if waiting is not None and waiting[2]:  # a retry costs another auth lookup: it pays like a new session
            try:
                lab.connect_rate.admit(waiting[1])
            except LimitExceeded as exc:
                lab.metrics.refusals.labels(reason=exc.code).inc()
                raise PacketRejected(exc.code, exc.reason, close=True) from None
        try:
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
        finally:
            connected = self.manager.sid_from_eio_sid(eio_sid, "/") in lab.sockets or (
                pkt.namespace not in (None, "/") and self.manager.sid_from_eio_sid(eio_sid, pkt.namespace) is not None
            )  # a dashboard on /admin only is connected too
            if waiting is not None and not connected and eio_sid in self.eio.sockets:
                pending.restore(eio_sid, *waiting)  # refused: still pending, its deadline still runs

    async def _rate_limited(self, eio_sid, state, data):
        """Every inbound packet pays the bucket; a refused event that asked for an ack gets one."""
        reply = await self.lab.handlers.rate_limited(state)
        if isinstance(data, str) and data[:1] == "2":
            pkt = self.packet_class()
            try:
                pkt.decode(data)
            except PacketRejected:
                return
            if pkt.id is not None:
                await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, [reply], pkt.namespace, pkt.id))
        elif pending_binary(self).pop(eio_sid, None) is not None:
            pass  # the rest of that binary packet is dropped with it

    async def _handle_connect(self, eio_sid, namespace, data):
        try:
            return await super()._handle_connect(eio_sid, namespace, data)
        finally:  # recovery: what the connect handler held (report, replay) goes out after the CONNECT packet
            if self.lab.recovery is not None:
                connected = self.manager.sid_from_eio_sid(eio_sid, "/") in self.lab.sockets
                self.lab.recovery.release(eio_sid, connected, self.manager.send_entry)

    async def _handle_eio_connect(self, eio_sid, environ):
        lab = self.lab
        sock = self.eio.sockets.get(eio_sid)
        if type(sock) is AsyncSocket:  # created by engine.io just now; its transport starts after this
            (LeanSocket if lab.settings.toggles.lean_transport else GuardedSocket).adopt(sock, lab)
        if lab.pending is not None:
            ip = client_ip(environ)
            try:
                lab.admit_session(ip)
            except LimitExceeded as exc:
                lab.metrics.refusals.labels(reason=exc.code).inc()
                return {"message": exc.reason, "code": exc.code}  # engine.io answers HTTP 401 with it
            lab.pending.add(eio_sid, ip)
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid, reason):
        if self.lab.pending is not None:
            self.lab.pending.done(eio_sid)
        return await super()._handle_eio_disconnect(eio_sid, reason)

    async def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):
        await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        lab = self.lab
        metrics = lab.metrics
        if id is not None:
            lab.acks_out.inc()
        metrics.observe_latency(time.perf_counter() - RECEIVED.get(time.perf_counter()))


def client_ip(environ: dict) -> str:
    request = environ.get("aiohttp.request")
    return (request.remote if request is not None else None) or environ.get("REMOTE_ADDR", "?")


class LabServer:
    """One node of the reference server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        t = s.toggles
        self.metrics = Metrics()
        self.metrics.set_limits(s)
        self.lean = LeanMetrics(self.metrics) if t.lean_metrics else None
        self.acks_out = self.lean.packets_out if self.lean is not None else self.metrics.packets_out
        self.db = Database(s.db)
        self.auth = Authenticator.from_settings(s, self.db, self.metrics)
        self.redis = self.auth.redis
        self.limiter = ConnectionLimiter(s.max_connections, s.max_per_company, s.max_per_user, s.max_per_ip)
        self.bans = BanList()
        # Engine.IO sessions awaiting their Socket.IO CONNECT, and the accept rate (None: not limited)
        self.pending = PendingSessions(s.connect_timeout_s) if t.conn_limits else None
        self.limiter.pending = self.pending
        self.connect_rate = ConnectRate(s.connect_rate_per_ip, s.connect_burst_per_ip, s.accept_rate)
        self.sockets: dict[str, SocketState] = {}
        self.disconnect_reasons: dict[str, str] = {}
        self.memory = MemoryMonitor(s.memory_threshold, s.degraded_ratio, s.critical_ratio, self.metrics)
        self.memory_status = "healthy"
        self.gc_monitor = GcMonitor(self.metrics)
        self.loop_lag = LoopLagMonitor(self.metrics)
        self.lag_max_window = 0.0
        self.gc_tuning: dict | None = None
        self.started = time.time()
        self.tasks: set[asyncio.Task] = set()
        self.after_sample: list = []  # called after each metrics tick (the dashboard's push)
        self.alerts = SlackAlerts(
            s.slack_webhook_url, self.metrics.registry, s.alert_cooldown_s, s.alert_timeout_s, s.alert_retries
        )

        manager: LabManager
        if s.redis_url:
            assert s.redis_channel is not None  # Settings derives it from the URL
            manager = LabRedisManager(s.redis_url, channel=s.redis_channel)
        else:
            manager = LabManager()
        manager.metrics = self.metrics
        manager.fast_fanout = t.fast_fanout
        manager.room_index = {} if t.room_index else None
        # a packet class of this node's own: the attachment cap is a setting (rate_limit; else engine.io's)
        packet_class = type(
            "NodePacket",
            (StrictPacket,),
            {"max_attachments": s.max_attachments if t.rate_limit else 10**10, **(PACKET_HOOKS if t.fast_json else {})},
        )
        self.sio = SioServer(
            client_manager=manager,
            serializer=packet_class,
            async_mode="aiohttp",
            async_handlers=not t.inline_handlers,
            ping_interval=s.heartbeat_s,
            ping_timeout=s.ping_timeout_s,
            max_http_buffer_size=s.max_payload_bytes,
            cors_allowed_origins="*",
            logger=s.debug,
            engineio_logger=s.debug,
        )
        self.sio.lab = self
        self.sio.max_attachment_bytes = s.max_payload_bytes if t.rate_limit else float("inf")
        if t.inline_handlers:
            self.sio.eio.async_handlers = False
        self.batcher: Batcher | None
        if t.batching:
            manager.batcher = self.batcher = Batcher(
                manager.deliver,
                s.batch_size,
                s.batch_max_bytes,
                s.flush_interval_ms / 1000.0,
                s.compression_threshold,
                self.metrics,
            )
            if t.batch_flush_soon:
                self.batcher.busy = lambda eio_sid: writing(self, eio_sid)
        else:
            self.batcher = None
        self.recovery = manager.recovery = (
            Recovery(s.recovery_window_s, s.recovery_max_events, s.recovery_max_bytes, self.metrics, bool(s.redis_url))
            if t.recovery
            else None
        )
        self.handlers = Handlers(self)
        self.handlers.register(self.sio)
        # new sessions over the connect rate are refused before engine.io sees them: a storm costs little
        self.app = web.Application(middlewares=[self._admission] if t.conn_limits else [])
        self.sio.attach(self.app)
        if s.monitoring:
            http.add_routes(self.app, self)
        self.app.on_startup.append(self._start)
        self.app.on_shutdown.append(self._stop)

    # -- lifecycle ------------------------------------------------------------------------------
    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def state_of(self, eio_sid: str) -> SocketState | None:
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, "/")
        return self.sockets.get(sid) if sid is not None else None

    def drop(self, sid: str, reason: str) -> None:
        """Disconnect a client now, its disconnect counted under ``reason``."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            self.drop_eio(eio_sid, reason)

    def drop_eio(self, eio_sid: str, reason: str) -> None:
        """Close an Engine.IO session without waiting on its peer (it may not be reading)."""
        sock = self.sio.eio.sockets.get(eio_sid)
        if sock is None or sock.closed or sock.closing:
            return
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is not None:
            self.disconnect_reasons[sid] = reason
            if reason != "slow_client":  # a Socket.IO DISCONNECT first: clients do not auto-reconnect after it
                sock.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, str(sio_packet.DISCONNECT)))
        else:
            self.metrics.disconnects.labels(reason=reason).inc()  # no Socket.IO session: counted here
        self.spawn(sock.close(wait=False, abort=reason == "slow_client"))

    def admit_session(self, ip: str) -> None:
        """A new Engine.IO session from ``ip`` (its connect rate paid already): pending + live against the limits."""
        s = self.settings
        # refused here only when sessions still pending fill the limit: a client over it with none
        # pending reaches its CONNECT and is told why there, as every Socket.IO client understands
        pending = self.pending
        assert pending is not None  # called only with conn_limits, which keeps pending sessions
        if pending.by_ip[ip] and self.limiter.by_ip[ip] + pending.by_ip[ip] >= s.max_per_ip:
            raise LimitExceeded("limit_ip", "ip connection limit reached (sessions awaiting CONNECT)")
        if pending.deadline and self.limiter.total + len(pending.deadline) >= s.max_connections:
            raise LimitExceeded("limit_total", "server connection limit reached (sessions awaiting CONNECT)")

    @web.middleware
    async def _admission(self, request: web.Request, handler):
        """HTTP 429 for a new Engine.IO session over its IP's connect rate or the node's accept budget."""
        if request.path.startswith("/socket.io") and "sid" not in request.query:
            try:
                self.connect_rate.admit(request.remote or "?")
            except LimitExceeded as exc:
                self.metrics.refusals.labels(reason=exc.code).inc()
                return web.json_response(
                    {"message": exc.reason, "code": exc.code}, status=429, headers={"Retry-After": "1"}
                )
        return await handler(request)

    async def reject(self, eio_sid: str, exc: PacketRejected) -> None:
        """Count a refused packet by its cause; answer it, or close that client only."""
        self.metrics.errors.labels(kind=exc.kind).inc()
        log.warning("refused packet from %s: %s: %s", eio_sid, exc.kind, exc.detail)
        pkt = getattr(exc, "packet", None)
        if exc.close:
            pending_binary(self.sio).pop(eio_sid, None)
            self.drop_eio(eio_sid, "protocol_error")
        elif pkt is not None and pkt.id is not None and pkt.packet_type in EVENT_TYPES:
            reply = {"error": exc.kind, "detail": exc.detail}
            await self.sio._send_packet(eio_sid, self.sio.packet_class(sio_packet.ACK, [reply], pkt.namespace, pkt.id))

    async def _pending_loop(self) -> None:
        """Close Engine.IO sessions that never completed a Socket.IO CONNECT in time."""
        period = min(1.0, self.settings.connect_timeout_s / 2)
        pending = self.pending
        assert pending is not None  # started only with conn_limits
        while True:
            await asyncio.sleep(period)
            for eio_sid in pending.expired():
                pending.done(eio_sid)
                self.metrics.refusals.labels(reason="connect_timeout").inc()
                self.drop_eio(eio_sid, "connect_timeout")

    async def _start(self, app: web.Application) -> None:
        self.sio.manager.initialize_now()  # a Redis node subscribes (and reports its link) before any client
        self.gc_monitor.install()
        self.memory.sample()
        self.metrics.tick()
        self.spawn(self.loop_lag.run())
        self.spawn(self._metrics_loop())
        if self.settings.slack_webhook_url:
            self.spawn(self.alerts.run())
        if self.batcher is not None:
            self.spawn(self.batcher.run())
        if self.pending is not None:
            self.spawn(self._pending_loop())
        if self.settings.toggles.cleanup:
            self.spawn(self._cleanup_loop())
        if self.settings.toggles.gc_tuning:
            self.gc_tuning = tune_gc()

    async def _stop(self, app: web.Application) -> None:
        await self.sio.shutdown()  # engine.io's ping service task
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.batcher is not None:
            self.batcher.flush()
        self.gc_monitor.uninstall()
        if self.redis is not None:
            await self.redis.aclose()
        self.db.close()

    async def _metrics_loop(self) -> None:
        period = self.settings.metrics_interval_ms / 1000.0
        while True:
            await asyncio.sleep(period)
            self.sample()

    def sample(self) -> None:
        rss = self.memory.sample()
        self.memory_status = self.memory.status(rss)
        self.metrics.tick()
        s = self.settings
        self.alerts.evaluate(
            readings(
                self.memory_status,
                100.0 * rss / s.memory_threshold,
                self.limiter.total,
                s.max_connections,
                self.sio.manager.link_state(),
            )
        )
        self.lag_max_window = self.loop_lag.take_max()
        self.metrics.rooms.set(self.room_count())
        if self.recovery is not None:
            self.recovery.evict()  # the window runs on in a quiet room too
        if self.memory_status == "critical" and self.settings.toggles.cleanup:
            self.cleanup(collect=True)
        for hook in self.after_sample:
            hook()

    def room_count(self) -> int:
        """Application rooms (company, user, sub-rooms), not python-socketio's per-sid rooms."""
        return sum(1 for name in namespace_rooms(self.sio.manager) if isinstance(name, str) and name[1:2] == ":")

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cleanup_interval_s)
            self.cleanup(collect=False)

    def cleanup(self, collect: bool) -> dict:
        """Drop stale per-socket state, expired cache entries and bans, empty rooms; maybe collect."""
        rss_before = self.memory.rss()
        stale = [sid for sid, st in self.sockets.items() if not st.connected]
        for sid in stale:
            del self.sockets[sid]
        rooms = namespace_rooms(self.sio.manager)
        empty = [name for name, members in rooms.items() if not members]
        for name in empty:
            del rooms[name]
        freed = {
            "socket_states": len(stale),
            "empty_rooms": len(empty),
            "token_cache": self.auth.sweep(),
            "bans": self.bans.sweep(),
            "gc_objects": gc.collect() if collect else 0,
        }
        if self.recovery is not None:
            freed["recovery_rooms"] = self.recovery.sweep(rooms)
        for kind, n in freed.items():
            if n:
                self.metrics.cleanups.labels(kind=kind).inc(n)
        freed["rss_freed_bytes"] = rss_before - self.memory.sample()
        return freed
