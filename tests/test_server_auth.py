"""Authentication against a real server: accepted, refused, cached, and python-socketio's own client."""

from __future__ import annotations

import aiohttp
import pytest
import socketio

from lab.servers import create_users
from loadgen.connection import ConnectRefused
from tests.sio import Client


async def metrics(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url + "/socket-metrics") as r:
        return await r.json()


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_valid_token_connects_and_echoes(start_server, profile):
    server, users = start_server(profile)
    c = await Client.connect(server.url, users[0]["token"])
    assert await c.call("echo", {"x": [1, 2]}) == [{"x": [1, 2]}]
    assert await c.call("echo", 1, "two") == [1, "two"]
    await c.close()


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "missing token"),
        ({"token": "nope"}, "invalid token"),
        ({"tok": 1}, "missing token"),
    ],
)
async def test_bad_auth_is_refused_with_reason(start_server, auth, reason):
    server, _ = start_server("optimized")
    session = aiohttp.ClientSession()
    from loadgen.connection import Connection

    with pytest.raises(ConnectRefused, match=reason):
        await Connection.open(session, server.url, auth)
    await session.close()
    assert (await metrics(server.url))["counters"]["refusals"]


async def test_expired_token_is_refused(start_server, tmp_path):
    server, _ = start_server("baseline")
    expired = create_users(server.db, 1, 1, ttl_s=-1)[0]
    with pytest.raises(ConnectRefused, match="token expired"):
        await Client.connect(server.url, expired["token"])


async def test_token_cache_cuts_database_queries(start_server):
    counts = {}
    for profile in ("baseline", "optimized"):
        server, users = start_server(profile, companies=1, users=2)
        for _ in range(5):
            c = await Client.connect(server.url, users[0]["token"])
            await c.close()
        counts[profile] = (await metrics(server.url))["counters"]["db_queries"]
    assert counts == {"baseline": 5, "optimized": 1}


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_python_socketio_client_is_served(start_server, profile):
    """The stock python-socketio client (polling, then websocket upgrade) works against both profiles."""
    server, users = start_server(profile, companies=1, users=2)
    received = []
    client = socketio.AsyncClient()
    client.on("batch", lambda entries: received.extend(entries))
    client.on("chat", lambda msg: received.append(["chat", msg]))
    await client.connect(server.url, auth={"token": users[0]["token"]}, wait_timeout=5)
    assert await client.call("echo", "hi", timeout=5) == "hi"
    assert await client.call("chat", {"text": "hello"}, timeout=5) == {"ok": True}
    for _ in range(50):
        if received:
            break
        await client.sleep(0.05)
    await client.disconnect()
    assert received and received[0][0] == "chat"
    assert received[0][1]["data"] == {"text": "hello"}
