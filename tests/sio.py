"""Test-side helpers around ``loadgen.connection.Connection``: awaitable acks, collected events."""

from __future__ import annotations

import asyncio

import aiohttp

from loadgen.connection import Connection


class Client:
    """A real Socket.IO client over loopback that records what it receives."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.events: list[tuple[str, list]] = []
        self.pending: dict[int, asyncio.Future] = {}
        self.got_event = asyncio.Event()
        self.closed = asyncio.Event()
        conn.on_event = self._event
        conn.on_ack = self._ack
        conn.on_close = lambda reason: self.closed.set()

    @classmethod
    async def connect(cls, url: str, token: str | None, local_addr: str | None = None, **kw) -> Client:
        connector = aiohttp.TCPConnector(local_addr=(local_addr, 0) if local_addr else None, force_close=True)
        session = aiohttp.ClientSession(connector=connector)
        try:
            conn = await Connection.open(session, url, {"token": token} if token is not None else None, **kw)
        except BaseException:
            await session.close()
            raise
        client = cls(conn)
        client.session = session
        return client

    def _event(self, name: str, args: list) -> None:
        self.events.append((name, args))
        self.got_event.set()

    def _ack(self, ack_id: int, args: list) -> None:
        fut = self.pending.pop(ack_id, None)
        if fut is not None and not fut.done():
            fut.set_result(args)

    async def call(self, name: str, *args, timeout: float = 5.0) -> list:
        ack_id, sending = self.conn.emit(name, list(args))
        if sending is None:
            raise ConnectionError("closed")
        fut = self.pending[ack_id] = asyncio.get_running_loop().create_future()
        await sending
        return await asyncio.wait_for(fut, timeout)

    async def send(self, name: str, *args) -> None:
        _, sending = self.conn.emit(name, list(args), ack=False)
        await sending

    async def wait_events(self, n: int, timeout: float = 5.0, name: str | None = None) -> list:
        async def enough():
            while len(self.of(name)) < n:
                self.got_event.clear()
                await self.got_event.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.of(name)

    def of(self, name: str | None) -> list:
        return [e for e in self.events if name is None or e[0] == name]

    async def close(self) -> None:
        await self.conn.close()
        await self.session.close()
