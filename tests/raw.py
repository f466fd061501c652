"""A raw Engine.IO/Socket.IO peer for abuse tests: sends any frame, keeps every frame it receives.

Unlike ``tests.sio.Client`` it checks what the server sends with *strict* JSON (as browsers do):
a frame holding ``NaN`` or ``Infinity`` is recorded in ``invalid``.
"""

from __future__ import annotations

import asyncio
import json
import zlib

import aiohttp


def strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def ws_url(url: str) -> str:
    return url.rstrip("/").replace("http://", "ws://", 1) + "/socket.io/?EIO=4&transport=websocket"


class RawPeer:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws
        self.frames: list[str | bytes] = []
        self.invalid: list[str] = []
        self.events: list[tuple[str, list]] = []
        self.acks: dict[int, list] = {}
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.reader: asyncio.Task | None = None
        self._binary_head: str | None = None

    @classmethod
    async def open(
        cls, url: str, token: str | None = None, local_addr: str | None = None, connect: bool = True
    ) -> RawPeer:
        connector = aiohttp.TCPConnector(local_addr=(local_addr, 0) if local_addr else None, force_close=True)
        session = aiohttp.ClientSession(connector=connector)
        try:
            ws = await session.ws_connect(ws_url(url), autoping=False, autoclose=False, max_msg_size=0)
        except BaseException:
            await session.close()
            raise
        peer = cls(session, ws)
        peer.reader = asyncio.get_running_loop().create_task(peer._read())
        try:
            await peer.wait_for(lambda: any(isinstance(f, str) and f.startswith("0") for f in peer.frames))
            if connect:
                await peer.send("40" + json.dumps({"token": token}))
                await peer.wait_for(lambda: any(isinstance(f, str) and f[:2] in ("40", "44") for f in peer.frames))
                refusal = next((f for f in peer.frames if isinstance(f, str) and f[:2] == "44"), None)
                if refusal is not None:
                    raise ConnectionRefusedError(refusal)
        except BaseException:
            await peer.close()
            raise
        return peer

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.frames.append(msg.data)
                    if self._binary_head is not None:
                        head, self._binary_head = self._binary_head, None
                        self._batch(json.loads(zlib.decompress(msg.data)))
                        del head
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    break
                self.changed.set()
        finally:
            self.closed.set()
            self.changed.set()

    def _text(self, data: str) -> None:
        self.frames.append(data)
        if data == "2":
            asyncio.get_running_loop().create_task(self.send("3"))
            return
        if not data.startswith("4"):
            return
        body = data[1:]
        try:
            head, payload = _split(body)
            value = strict_loads(payload) if payload else None
        except ValueError:
            self.invalid.append(data)
            return
        if head.startswith("51-"):  # a compressed batch: its attachment follows
            self._binary_head = head
        elif head == "2" and isinstance(value, list) and value:
            if value[0] == "batch":
                self._batch(value[1])
            else:
                self.events.append((value[0], value[1:]))
        elif head.startswith("3"):
            self.acks[int(head[1:])] = value

    def _batch(self, entries: list) -> None:
        for entry in entries:
            self.events.append((entry[0], entry[1:]))

    async def send(self, frame: str | bytes) -> None:
        if self.ws.closed:
            return
        try:
            if isinstance(frame, bytes):
                await self.ws.send_bytes(frame)
            else:
                await self.ws.send_str(frame)
        except (ConnectionError, aiohttp.ClientError):
            pass  # the server closed it (what the caller checks with ``closed``)

    async def call(self, ack_id: int, frame: str, timeout: float = 5.0):
        """Send ``frame`` (which must carry ``ack_id``) and return the ack's arguments."""
        await self.send(frame)
        await self.wait_for(lambda: ack_id in self.acks, timeout)
        return self.acks[ack_id]

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:
        async def until():
            while not predicate():
                if self.closed.is_set():
                    raise ConnectionError(f"closed; last frames {self.frames[-3:]!r}")
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout)

    def of(self, name: str) -> list[list]:
        return [args for n, args in self.events if n == name]

    async def close(self) -> None:
        if not self.ws.closed:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        await self.session.close()


def _split(body: str) -> tuple[str, str]:
    """Socket.IO packet text -> (type + attachments + id, JSON payload)."""
    i = 0
    while i < len(body) and body[i] not in '[{"':
        i += 1
    return body[:i], body[i:]


def ws_frame(text: str) -> bytes:
    """One masked client text frame (RFC 6455), for a hand-driven socket."""
    import os
    import struct

    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    head = b"\x81" + (bytes([0x80 | n]) if n < 126 else struct.pack("!BH", 0x80 | 126, n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class StalledPeer:
    """A client that connects, authenticates, then never reads again (its receive window stays full)."""

    def __init__(self, url: str, token: str) -> None:
        import base64
        import os
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(5)
        self.sock.connect((parts.hostname, parts.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        seen = b""
        while b'"sid"' not in seen.partition(b"\r\n\r\n")[2]:  # the OPEN frame after the 101 headers
            seen += self.sock.recv(4096)
        self.sock.sendall(ws_frame("40" + json.dumps({"token": token})))
        while b'40{"sid"' not in seen:
            seen += self.sock.recv(4096)

    def close(self) -> None:
        self.sock.close()
