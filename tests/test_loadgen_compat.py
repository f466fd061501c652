"""The library internals loadgen/compat.py relies on, checked against a real connection."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from lab.servers import ServerProcess, create_users
from loadgen import Connection
from loadgen.compat import send_buffered, ws_transport


@pytest.fixture
def node(tmp_path):
    users = create_users(tmp_path / "lab.db", 1, 1)
    with ServerProcess("optimized", tmp_path / "lab.db", log_path=tmp_path / "server.log") as srv:
        yield srv.url, users[0]["token"]


async def test_an_aiohttp_websocket_exposes_its_transport_where_compat_reads_it(node):
    url, token = node
    async with aiohttp.ClientSession() as session:
        conn = await Connection.open(session, url, {"token": token})
        try:
            transport = ws_transport(conn.ws)
            assert isinstance(transport, asyncio.WriteTransport) and not transport.is_closing()
            assert send_buffered(conn.ws) == 0  # an idle connection to a reading server is flowing
            assert not conn.congested()
        finally:
            await conn.close()
