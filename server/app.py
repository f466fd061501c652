"""Assembly of one server node: Socket.IO on aiohttp, profile toggles, periodic tasks."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import time

import socketio
from aiohttp import web
from engineio.async_socket import AsyncSocket

from . import http
from .auth import Authenticator
from .batching import Batcher
from .db import Database
from .events import Handlers, SocketState
from .fanout import LabManager, LabRedisManager
from .limits import BanList, ConnectionLimiter
from .memory import GcMonitor, LoopLagMonitor, MemoryMonitor, tune_gc
from .metrics import Metrics
from .settings import Settings
from .transport import LeanSocket

RECEIVED: contextvars.ContextVar[float] = contextvars.ContextVar("received")
log = logging.getLogger("server")


class SioServer(socketio.AsyncServer):
    """``AsyncServer`` that times each event from receipt and survives malformed packets."""

    lab: LabServer

    async def _handle_eio_message(self, eio_sid, data):
        token = RECEIVED.set(time.perf_counter())
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:  # a packet python-socketio cannot decode: close that client only
            kind = "malformed_packet"
            self.lab.metrics.errors.labels(kind=kind).inc()
            log.info("closing %s after %s: %r", eio_sid, kind, exc)
            self._binary_packet.pop(eio_sid, None)
            await self.eio.disconnect(eio_sid)
        finally:
            RECEIVED.reset(token)

    async def _handle_eio_connect(self, eio_sid, environ):
        if self.lab.settings.toggles.lean_transport:
            sock = self.eio.sockets.get(eio_sid)
            if type(sock) is AsyncSocket:  # created by engine.io just now; its transport starts after this
                sock.__class__ = LeanSocket
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):
        await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        metrics = self.lab.metrics
        if id is not None:
            metrics.packets_out.inc()
        metrics.observe_latency(time.perf_counter() - RECEIVED.get(time.perf_counter()))


class LabServer:
    """One node of the reference server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        t = s.toggles
        self.metrics = Metrics()
        self.db = Database(s.db)
        self.redis = None
        if s.redis_url and t.token_cache:
            import redis.asyncio as aioredis

            self.redis = aioredis.from_url(s.redis_url)
        self.auth = Authenticator(self.db, s.token_cache_ttl_s if t.token_cache else None, self.redis)
        self.limiter = ConnectionLimiter(s.max_connections, s.max_per_company, s.max_per_user, s.max_per_ip)
        self.bans = BanList()
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

        manager = LabRedisManager(s.redis_url, channel=s.redis_channel) if s.redis_url else LabManager()
        manager.metrics = self.metrics
        manager.fast_fanout = t.fast_fanout
        self.sio = SioServer(
            client_manager=manager,
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
        if t.inline_handlers:
            self.sio.eio.async_handlers = False
        if t.batching:
            manager.batcher = self.batcher = Batcher(
                manager.deliver, s.batch_size, s.flush_interval_ms / 1000.0, s.compression_threshold, self.metrics
            )
        else:
            self.batcher = None
        Handlers(self).register(self.sio)
        self.app = web.Application()
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

    async def kick(self, sid: str) -> None:
        """Disconnect a client and close its transport (a namespace disconnect alone leaves it open)."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        await self.sio.disconnect(sid)
        if eio_sid is not None:
            await self.sio.eio.disconnect(eio_sid)

    async def _start(self, app: web.Application) -> None:
        self.gc_monitor.install()
        self.memory.sample()
        self.metrics.tick()
        self.spawn(self.loop_lag.run())
        self.spawn(self._metrics_loop())
        if self.batcher is not None:
            self.spawn(self.batcher.run())
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
        self.lag_max_window = self.loop_lag.take_max()
        self.metrics.rooms.set(self.room_count())
        if self.memory_status == "critical" and self.settings.toggles.cleanup:
            self.cleanup(collect=True)

    def room_count(self) -> int:
        """Application rooms (company, user, sub-rooms), not python-socketio's per-sid rooms."""
        return sum(1 for name in self.sio.manager.rooms.get("/", {}) if isinstance(name, str) and name[1:2] == ":")

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
        rooms = self.sio.manager.rooms.get("/", {})
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
        for kind, n in freed.items():
            if n:
                self.metrics.cleanups.labels(kind=kind).inc(n)
        freed["rss_freed_bytes"] = rss_before - self.memory.sample()
        return freed
