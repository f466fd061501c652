"""``AsyncClient``: subscribe/emit over python-socketio, with batches, reconnects and recovery."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypedDict

import socketio

from .backoff import Backoff
from .frames import FrameError, decode_batch, split_tag

log = logging.getLogger("client")
Handler = Callable[..., Any]
RESERVED = frozenset({"batch", "recovery", "connect", "disconnect", "connect_error"})


class NotConnectedError(ConnectionError):
    """``emit`` while the client is not connected."""


class RecoveryReport(TypedDict):
    """The server's ``recovery`` event after a connect with ``recover``."""

    recovered: bool
    rooms: dict[str, dict]  # room -> {"ok": True, "replayed": k} | {"ok": False, "reason": ...}
    joined: list[str]
    window_s: float


class AsyncClient:
    """A client of the reference server.

    ``recover=True``: deliveries carry per-room positions; after a reconnect the server replays
    what the client missed, in order and exactly once, or says per room why it cannot
    (``last_recovery``, and ``on_recovery`` if given), so the application can resync.
    ``batch_window_s``: events sent within this window go out as one ``batch`` event (at most
    ``batch_size`` entries; each still pays the server's rate limit and gets its own ack).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        recover: bool = True,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        batch_window_s: float | None = None,
        batch_size: int = 50,
        ack_timeout_s: float = 5.0,
        recovery_timeout_s: float = 2.0,
        on_recovery: Callable[[RecoveryReport], Any] | None = None,
    ) -> None:
        if batch_window_s is not None and batch_window_s <= 0:
            raise ValueError(f"batch_window_s must be positive or None, got {batch_window_s}")
        if not 1 <= batch_size <= 50:
            raise ValueError(f"batch_size must be 1..50 (the server's inbound batch limit), got {batch_size}")
        self.url = url
        self.token = token
        self.recover = recover
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.batch_window_s = batch_window_s
        self.batch_size = batch_size
        self.ack_timeout_s = ack_timeout_s
        self.recovery_timeout_s = recovery_timeout_s
        self.on_recovery = on_recovery
        self.rooms: set[str] = set()  # sub-rooms joined, re-joined after a reconnect
        self.positions: dict[str, list] = {}  # room -> [epoch, n] of the last delivery processed
        self.last_recovery: RecoveryReport | None = None
        self.duplicates = 0  # tagged deliveries dropped because already processed
        self.gaps = 0  # tagged deliveries that skipped numbers (the server lost some: resync)
        self.reconnects = 0
        self._ever_connected = False
        self.delays: list[float] = []  # backoff delays slept, for inspection
        self._handlers: dict[str, list[Handler]] = {}
        self._sio: socketio.AsyncClient | None = None
        self._closing = False
        self._reconnecting: asyncio.Task | None = None
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._dispatcher: asyncio.Task | None = None
        self._report: asyncio.Future | None = None
        self._outbox: list[tuple[str, Any, asyncio.Future | None]] = []
        self._flusher: asyncio.Task | None = None
        self._connected_event = asyncio.Event()

    # -- public API ----------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._sio is not None and self._sio.connected

    def subscribe(self, event: str, handler: Handler) -> None:
        """Call ``handler(*args)`` (plain function or coroutine) for every ``event`` pushed by the server."""
        if event in RESERVED:
            raise ValueError(f"{event!r} is part of the wire protocol; subscribe to the events it carries")
        self._handlers.setdefault(event, []).append(handler)

    def unsubscribe(self, event: str, handler: Handler | None = None) -> None:
        """Remove one handler, or every handler of ``event``."""
        if handler is None:
            self._handlers.pop(event, None)
        elif handler in self._handlers.get(event, []):
            self._handlers[event].remove(handler)

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect (and, with ``recover``, wait for the server's recovery report or ``recovery_timeout_s``)."""
        self._closing = False
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch_loop())
        await asyncio.wait_for(self._connect_once(), timeout_s)

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Wait until connected and, after a reconnect, recovered and back in its sub-rooms."""
        await asyncio.wait_for(self._connected_event.wait(), timeout_s)

    async def disconnect(self) -> None:
        """Disconnect for good: no reconnect; pending batched events are sent first."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self._outbox and self.is_connected:
            await self._flush()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._sio is not None:
            sio, self._sio = self._sio, None
            await sio.disconnect()
        if self._dispatcher is not None:
            self._inbox.put_nowait(None)
            await self._dispatcher
            self._dispatcher = None
        for _, _, fut in self._outbox:
            if fut is not None and not fut.done():
                fut.set_exception(NotConnectedError("client disconnected"))
        self._outbox.clear()
        self._connected_event.clear()

    async def emit(self, event: str, data: Any = None, ack: bool = True) -> Any:
        """Send ``event``; with ``ack`` wait for the server's reply and return it."""
        if not self.is_connected:
            raise NotConnectedError(f"cannot emit {event!r}: not connected")
        if self.batch_window_s is None:
            if ack:
                return await self._sio.call(event, data, timeout=self.ack_timeout_s)
            await self._sio.emit(event, data)
            return None
        fut = asyncio.get_running_loop().create_future() if ack else None
        self._outbox.append((event, data, fut))
        if len(self._outbox) >= self.batch_size:
            await self._flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())
        return await asyncio.wait_for(fut, self.ack_timeout_s + self.batch_window_s) if fut is not None else None

    async def join(self, room: str) -> dict:
        """Join a sub-room (remembered, and re-joined after every reconnect)."""
        reply = await self.emit("join", room)
        if isinstance(reply, dict) and reply.get("ok"):
            self.rooms.add(room)
            self._learn(reply.get("position"))
        return reply

    async def leave(self, room: str) -> dict:
        self.rooms.discard(room)
        for key in [k for k in self.positions if k.endswith(f":r:{room}")]:
            del self.positions[key]
        return await self.emit("leave", room)

    # -- connection ----------------------------------------------------------------------------
    def _auth(self) -> dict:
        auth: dict = {"token": self.token}
        if self.recover:
            auth["recover"] = {"rooms": sorted(self.rooms), "since": {r: list(p) for r, p in self.positions.items()}}
        return auth

    async def _connect_once(self) -> None:
        if self._sio is not None:  # what is left of a dropped connection: close its engine.io session and HTTP client
            old, self._sio = self._sio, None
            with contextlib.suppress(Exception):
                await old.disconnect()
        sio = socketio.AsyncClient(reconnection=False)
        sio.on("batch", self._on_batch)
        sio.on("*", self._on_event)
        sio.on("disconnect", self._on_disconnect)
        loop = asyncio.get_running_loop()
        self._report = loop.create_future() if self.recover else None
        try:
            await sio.connect(self.url, auth=self._auth(), transports=["websocket"], wait_timeout=self.ack_timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                await sio.disconnect()
            raise
        self._sio = sio
        report = None
        if self._report is not None:
            try:
                report = await asyncio.wait_for(asyncio.shield(self._report), self.recovery_timeout_s)
            except TimeoutError:  # a server without recovery: it ignored the request
                log.warning("no recovery report within %g s: joining rooms by events", self.recovery_timeout_s)
        joined = set(report["joined"]) if report else set()
        for room in sorted(self.rooms - joined):
            await self.join(room)
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._connected_event.set()  # wait_connected: connected, recovered and back in its rooms

    def _on_disconnect(self, reason: object = None) -> None:
        self._connected_event.clear()
        if self._closing or not self.reconnect or self._reconnecting is not None:
            return
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect_loop(str(reason)))

    async def _reconnect_loop(self, reason: str) -> None:
        log.info("disconnected (%s): reconnecting", reason)
        attempt = 0
        try:
            while not self._closing and (self.max_attempts is None or attempt < self.max_attempts):
                delay = self.backoff.delay(attempt)
                self.delays.append(delay)
                await asyncio.sleep(delay)
                try:
                    await self._connect_once()
                except (socketio.exceptions.ConnectionError, OSError, TimeoutError) as exc:
                    log.info("reconnect attempt %d failed: %s", attempt + 1, exc)
                    attempt += 1
                    continue
                return
        finally:
            self._reconnecting = None

    # -- inbound -------------------------------------------------------------------------------
    async def _on_batch(self, arg=None, *rest) -> None:
        try:
            entries = decode_batch(arg)
        except FrameError as exc:
            log.warning("dropping a malformed batch: %s", exc)
            return
        for entry in entries:
            self._receive(entry[0], list(entry[1:]))

    async def _on_event(self, event: str, *args) -> None:
        self._receive(event, list(args))

    def _receive(self, event: str, args: list) -> None:
        """Runs in arrival order with no await: positions are checked here, handlers run in order later."""
        if event == "recovery":
            report = args[0] if args else {}
            self.last_recovery = report
            if self._report is not None and not self._report.done():
                self._report.set_result(report)
            if self.on_recovery is not None:
                self._inbox.put_nowait((self.on_recovery, [report]))
            for room, result in report.get("rooms", {}).items():
                if not result.get("ok"):
                    self.positions.pop(room, None)  # resync: count again from the server's position
            self._learn(report.get("positions", {}))
            return
        args, tag = split_tag(args)
        if tag is not None:
            room, epoch, n = tag
            last = self.positions.get(room)
            if last is not None and last[0] == epoch:
                if n <= last[1]:
                    self.duplicates += 1
                    return
                if n > last[1] + 1:
                    self.gaps += 1
            self.positions[room] = [epoch, n]
        for handler in self._handlers.get(event, ()):
            self._inbox.put_nowait((handler, args))

    def _learn(self, positions: object) -> None:
        """Take the server's positions for rooms we have none of (or on another epoch)."""
        if not isinstance(positions, dict):
            return
        for room, pos in positions.items():
            last = self.positions.get(room)
            if last is None or last[0] != pos[0] or last[1] < pos[1]:
                self.positions[room] = list(pos)

    async def _dispatch_loop(self) -> None:
        while (item := await self._inbox.get()) is not None:
            handler, args = item
            try:
                result = handler(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("handler %r failed", handler)

    # -- outbound batching -----------------------------------------------------------------------
    async def _flush_later(self) -> None:
        await asyncio.sleep(self.batch_window_s)
        await self._flush()

    async def _flush(self) -> None:
        pending, self._outbox = self._outbox[: self.batch_size], self._outbox[self.batch_size :]
        if not pending:
            return
        entries = [[e] if d is None else [e, d] for e, d, _ in pending]
        try:
            if all(f is None for _, _, f in pending):
                await self._sio.emit("batch", entries)
                return
            replies = await self._sio.call("batch", entries, timeout=self.ack_timeout_s)
        except Exception as exc:
            for _, _, fut in pending:
                if fut is not None and not fut.done():
                    fut.set_exception(NotConnectedError(f"batch not acknowledged: {exc!r}"))
            return
        if not isinstance(replies, list):  # the whole batch was refused (e.g. rate limited)
            replies = [replies] * len(pending)
        for (_, _, fut), reply in zip(pending, replies, strict=False):
            if fut is not None and not fut.done():
                fut.set_result(reply)
