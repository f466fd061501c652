"""One Socket.IO client connection over a raw websocket, with callbacks instead of tasks per event.

Cheap by design: one reader task per connection, no per-event task, no per-event future.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp

from . import protocol as p
from .compat import send_buffered, ws_transport


class ConnectRefused(Exception):
    """The server answered the namespace connect with CONNECT_ERROR."""


OnEvent = Callable[[str, list], None]
OnAck = Callable[[int, list], None]
OnClose = Callable[[str], None]


class Connection:
    """A connected Socket.IO client. Use ``await Connection.open(...)``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.sid: str | None = None
        self.handshake: dict = {}
        self.on_event: OnEvent = lambda name, args: None
        self.on_ack: OnAck = lambda ack_id, args: None
        self.on_close: OnClose = lambda reason: None
        self.next_ack = 0
        self.closed = False
        self.close_reason = ""
        self.reason_override = ""
        self.reader: asyncio.Task | None = None
        self._binary: p.SioPacket | None = None
        self._connected = asyncio.get_running_loop().create_future()
        self._closing: asyncio.Task | None = None  # the close a server DISCONNECT started

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        auth: dict | None,
        timeout: float = 10.0,
        on_event: OnEvent | None = None,
        on_ack: OnAck | None = None,
        on_close: OnClose | None = None,
    ) -> Connection:
        """Websocket, Engine.IO handshake, namespace connect with ``auth``; raises on refusal.

        Pass the callbacks here: the server may push room events before its CONNECT reply.
        """
        ws_url = url.rstrip("/").replace("http://", "ws://", 1) + "/socket.io/?EIO=4&transport=websocket"
        ws = await session.ws_connect(
            ws_url, autoping=False, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout)
        )
        conn = cls(ws)
        conn.on_event = on_event or conn.on_event
        conn.on_ack = on_ack or conn.on_ack
        try:
            first = await asyncio.wait_for(ws.receive(), timeout)
            if first.type != aiohttp.WSMsgType.TEXT or not first.data.startswith(p.EIO_OPEN):
                raise p.ProtocolError(f"expected Engine.IO OPEN, got {first.type} {str(first.data)[:40]!r}")
            conn.handshake = json.loads(first.data[1:])
            conn.reader = asyncio.get_running_loop().create_task(conn._read())
            await ws.send_str(p.encode_connect(auth))
            conn.sid = await asyncio.wait_for(asyncio.shield(conn._connected), timeout)
        except BaseException:
            await conn.close()
            raise
        conn.on_close = on_close or conn.on_close
        return conn

    def emit(self, name: str, args: list, ack: bool = True) -> tuple[int | None, Awaitable[None] | None]:
        """Start sending an event; returns its ack id and the send's awaitable (or None if closed)."""
        if self.closed:
            return None, None
        ack_id = None
        if ack:
            ack_id = self.next_ack
            self.next_ack += 1
        return ack_id, self.ws.send_str(p.encode_event(name, args, ack_id))

    def congested(self) -> bool:
        """True when the kernel's send buffer is full and asyncio is buffering (the peer is not reading)."""
        return not self.closed and send_buffered(self.ws) > 0

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def close(self, timeout: float = 5.0) -> None:
        """Close handshake, then wait for the reader; a peer that does not answer in ``timeout``
        seconds is aborted. Cancelling the caller still cancels it (never swallowed)."""
        try:
            async with asyncio.timeout(timeout):
                if not self.ws.closed:
                    await self.ws.close()
                if self.reader is not None and self.reader is not asyncio.current_task():
                    await asyncio.shield(self.reader)
        except TimeoutError:
            self.abort()
        self._finish("client close")

    def abort(self) -> None:
        """Drop the TCP connection at once (an unresponsive server)."""
        transport = ws_transport(self.ws)
        if transport is not None:
            transport.abort()
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if not self._connected.done():
            self._connected.set_exception(ConnectRefused(f"connection closed: {reason}"))
            self._connected.exception()  # retrieved: nobody else may be waiting
        self.on_close(reason)

    async def _read(self) -> None:
        ws, reason = self.ws, "transport closed"
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    data = msg.data
                    kind = data[:1]
                    if kind == p.EIO_MESSAGE:
                        self._packet(data[1:])
                    elif kind == p.EIO_PING:
                        await ws.send_str(p.EIO_PONG)
                    elif kind == p.EIO_CLOSE:
                        reason = "server close"
                        break
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._attachment(msg.data)
                else:
                    break
        except (aiohttp.ClientError, ConnectionError, p.ProtocolError) as exc:
            reason = f"error: {exc}"
        finally:
            if self.reason_override:
                reason = self.reason_override
            self._finish(reason)
            if not ws.closed:
                await ws.close()

    def _packet(self, text: str) -> None:
        pkt = p.decode(text)
        t = pkt.type
        if t == p.EVENT:
            self._deliver(pkt)
        elif t == p.ACK and pkt.id is not None:
            self.on_ack(pkt.id, pkt.data if isinstance(pkt.data, list) else [])
        elif t in (p.BINARY_EVENT, p.BINARY_ACK):
            self._binary = pkt
        elif t == p.CONNECT:
            if not self._connected.done():
                self._connected.set_result(pkt.data.get("sid") if isinstance(pkt.data, dict) else None)
        elif t == p.CONNECT_ERROR:
            message = (pkt.data or {}).get("message", "refused") if isinstance(pkt.data, dict) else str(pkt.data)
            if not self._connected.done():
                self._connected.set_exception(ConnectRefused(message))
        elif t == p.DISCONNECT:
            # one namespace per transport here: a namespace disconnect ends the transport
            self.reason_override = "server disconnect"
            self._closing = asyncio.get_running_loop().create_task(self.ws.close())

    def _attachment(self, data: bytes) -> None:
        pkt = self._binary
        if pkt is None:
            raise p.ProtocolError("binary frame without a binary packet")
        pkt.buffers.append(data)
        if len(pkt.buffers) == pkt.attachments:
            self._binary = None
            pkt.data = p.fill_placeholders(pkt.data, pkt.buffers)
            if pkt.type == p.BINARY_EVENT:
                self._deliver(pkt)
            elif pkt.id is not None:
                self.on_ack(pkt.id, pkt.data if isinstance(pkt.data, list) else [])

    def _deliver(self, pkt: p.SioPacket) -> None:
        data = pkt.data
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise p.ProtocolError("event packet without a name")
        if data[0] == "batch" and len(data) == 2:
            for entry in p.expand_batch(data[1]):
                self.on_event(entry[0], entry[1:])
        else:
            self.on_event(data[0], data[1:])
