"""Connection limits, the per-connection rate limit, flooding and IP bans, against a real server."""

from __future__ import annotations

import asyncio

import pytest

from lab.servers import create_users
from loadgen.connection import ConnectRefused
from tests.sio import Client
from tests.test_server_auth import metrics


async def connect_all(url, tokens, **kw):
    return [await Client.connect(url, t, **kw) for t in tokens]


async def close_all(clients):
    for c in clients:
        await c.close()


async def test_user_limit(start_server):
    server, users = start_server("optimized", companies=1, users=1)
    token = users[0]["token"]
    clients = await connect_all(server.url, [token] * 3)
    with pytest.raises(ConnectRefused, match="user connection limit"):
        await Client.connect(server.url, token)
    await clients[0].close()
    await asyncio.sleep(0.2)
    clients[0] = await Client.connect(server.url, token)  # a freed slot is usable again
    await close_all(clients)
    assert (await metrics(server.url))["counters"]["refusals"] == {"limit_user": 1.0}


async def test_baseline_has_no_limits(start_server):
    server, users = start_server("baseline", companies=1, users=1, sets={"max_connections": 2})
    clients = await connect_all(server.url, [users[0]["token"]] * 5)
    await close_all(clients)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"max_connections": 2}, "server connection limit"),
        ({"max_per_company": 2}, "company connection limit"),
        ({"max_per_ip": 2}, "ip connection limit"),
    ],
)
async def test_scope_limits(start_server, sets, message):
    server, users = start_server("optimized", companies=1, users=4, sets=sets)
    tokens = [u["token"] for u in users]
    clients = await connect_all(server.url, tokens[:2])
    with pytest.raises(ConnectRefused, match=message):
        await Client.connect(server.url, tokens[2])
    if "max_per_ip" in sets:  # another source address is a different IP and is admitted
        clients.append(await Client.connect(server.url, tokens[3], local_addr="127.0.0.2"))
    await close_all(clients)


async def test_company_limit_is_per_company(start_server):
    server, users = start_server("optimized", companies=2, users=3, sets={"max_per_company": 2})
    c1 = [u["token"] for u in users if u["company"] == 1]
    c2 = [u["token"] for u in users if u["company"] == 2]
    clients = await connect_all(server.url, c1[:2] + c2[:2])
    with pytest.raises(ConnectRefused, match="company"):
        await Client.connect(server.url, c1[2])
    await close_all(clients)


async def test_rate_limit_errors_then_flood_disconnect_and_ban(start_server):
    sets = {"event_rate": 5, "event_burst": 5, "flood_strikes": 20, "ban_s": 30}
    server, users = start_server("optimized", companies=1, users=3, sets=sets)
    bystander = await Client.connect(server.url, users[1]["token"])
    flooder = await Client.connect(server.url, users[0]["token"], local_addr="127.0.0.3")
    replies = [await flooder.call("echo", i) for i in range(10)]
    assert replies[:5] == [[i] for i in range(5)]
    assert all(r[0]["error"] == "rate_limited" for r in replies[5:])
    for i in range(40):  # keeps flooding: the server disconnects it
        if flooder.conn.closed:
            break
        await flooder.send("echo", i)
    await asyncio.wait_for(flooder.closed.wait(), 5)
    assert flooder.conn.close_reason == "server disconnect"
    with pytest.raises(ConnectRefused, match="refused for a while"):
        await Client.connect(server.url, users[2]["token"], local_addr="127.0.0.3")
    assert await bystander.call("echo", "still served") == ["still served"]
    counters = (await metrics(server.url))["counters"]
    assert counters["refusals"]["flood_disconnect"] == 1
    assert counters["refusals"]["ip_banned"] == 1
    assert counters["refusals"]["rate_limited"] >= 20
    await flooder.close()
    await bystander.close()


async def test_room_limit(start_server):
    server, users = start_server("optimized", companies=1, users=1, sets={"max_rooms_per_socket": 2})
    c = await Client.connect(server.url, users[0]["token"])
    assert (await c.call("join", "a"))[0]["ok"]
    assert (await c.call("join", "b"))[0]["ok"]
    assert (await c.call("join", "c"))[0]["error"] == "room_limit"
    await c.close()


async def test_expired_token_still_cached_is_refused_after_expiry(start_server):
    """The cache never outlives the token itself."""
    server, _ = start_server("optimized", companies=0)
    short = create_users(server.db, 1, 1, ttl_s=1.0)[0]
    c = await Client.connect(server.url, short["token"])
    await c.close()
    await asyncio.sleep(1.2)
    with pytest.raises(ConnectRefused, match="expired"):
        await Client.connect(server.url, short["token"])


async def test_memory_critical_refuses_new_connections(start_server):
    """A threshold far below the process's RSS: the monitor says critical, new connections are refused."""
    sets = {"memory_threshold": 1_000_000, "metrics_interval_ms": 100}
    server, users = start_server("optimized", companies=1, users=2, sets=sets)
    await asyncio.sleep(0.4)  # a few monitor samples
    with pytest.raises(ConnectRefused, match="memory is critical"):
        await Client.connect(server.url, users[0]["token"])
    health = await metrics(server.url)
    assert health["memory"]["status"] == "critical"
    assert health["counters"]["refusals"]["memory_critical"] == 1


def test_refilled_buckets_are_forgotten_and_drained_ones_kept():
    from server.gate import AcceptGate
    from server.limits import TokenBucket, forget_refilled

    buckets = {"idle": TokenBucket(1.0, 2.0, stamp=0.0), "busy": TokenBucket(1.0, 2.0, stamp=0.0)}
    buckets["idle"].take(0.0)
    for _ in range(2):
        buckets["busy"].take(0.0)
    assert forget_refilled(buckets, 1.0) == 1 and list(buckets) == ["busy"]  # idle: 1 + 1 s x 1/s = burst
    assert forget_refilled(buckets, 1.5) == 0 and forget_refilled(buckets, 2.0) == 1 and not buckets
    gate = AcceptGate(lambda: None, 1.0, 2.0, lambda ip, now: None, lambda reason: None)
    assert gate.refusal("a", now=0.0) is None and gate.refusal("b", now=0.0) is None
    assert gate.refusal("b", now=0.0) is None and gate.refusal("b", now=0.0) == "accept_rate_ip"
    assert gate.sweep(now=1.0) == 1 and list(gate.tcp) == ["b"]  # "a" refilled; "b" is still short
