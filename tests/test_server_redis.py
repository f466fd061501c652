"""Scale-out: two nodes on one real Redis deliver a chat across nodes; the token cache is shared.

Deployments sharing one Redis stay apart (issue 13, finding 8): the default channel and key
prefix come from the Redis URL's db number (pub/sub ignores it), or from ``SOCKET_DEPLOYMENT``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from urllib.parse import urlparse, urlunparse

import aiohttp
import pytest
import redis

from loadgen.connection import ConnectRefused
from server.settings import build_settings
from tests.sio import Client
from tests.test_server_auth import metrics

pytestmark = pytest.mark.redis


def with_db(url: str, db: int) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{db}", query=""))


async def wait_linked(*urls: str, timeout: float = 5.0) -> None:
    """Poll /socket-health until every node's pub/sub listener is subscribed."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        for url in urls:
            while True:
                async with s.get(url + "/socket-health") as r:
                    if (await r.json()).get("redis", {}).get("up"):
                        break
                assert time.monotonic() < deadline, f"{url}: Redis link not up"
                await asyncio.sleep(0.05)


def nonces(client: Client) -> set:
    return {a[0]["data"].get("nonce") for _, a in client.of("chat") if isinstance(a[0].get("data"), dict)}


async def wait_nonce(client: Client, nonce: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while nonce not in nonces(client):
        assert time.monotonic() < deadline, f"chat {nonce} never arrived"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_chat_crosses_nodes(start_server, redis_url, tmp_path, profile):
    env = {"REDIS_URL": redis_url}
    sets = {"redis_channel": f"caplab-test-{uuid.uuid4().hex}", "flush_interval_ms": 50}
    a, users = start_server(profile, companies=2, users=2, env=env, sets=sets, node=0)
    b, _ = start_server(profile, companies=0, env=env, sets=sets, db=a.db, node=1)
    c1 = [u for u in users if u["company"] == 1]
    c2 = [u for u in users if u["company"] == 2]
    on_a = await Client.connect(a.url, c1[0]["token"])
    on_b = await Client.connect(b.url, c1[1]["token"])
    other = await Client.connect(b.url, c2[0]["token"])
    await wait_linked(a.url, b.url)
    assert await on_a.call("chat", {"hello": "from a"}) == [{"ok": True}]
    got = await on_b.wait_events(1, timeout=5)
    assert got[0][1][0] == {"from": {"company": 1, "user": c1[0]["user"]}, "data": {"hello": "from a"}}
    await asyncio.sleep(0.3)
    assert other.events == [], "company 2's client on node b received company 1's chat"
    for c in (on_a, on_b, other):
        await c.close()
    # what the model's Redis costs are fitted on: one publish on a, the room event heard on b (and, sequenced
    # by recovery in the optimized profile, on a too: a delivers it when the channel brings it back)
    ca, cb = (await metrics(a.url))["counters"], (await metrics(b.url))["counters"]
    heard_on_a = 1 if profile == "optimized" else 0
    assert (ca["redis_published"], ca["redis_received"], cb["redis_published"], cb["redis_received"]) == (
        1,
        heard_on_a,
        0,
        1,
    )
    if profile == "optimized":  # the token cache lives in Redis: node b never queried for a's user
        queries = (await metrics(a.url))["counters"]["db_queries"] + (await metrics(b.url))["counters"]["db_queries"]
        assert queries == 3


def test_default_channel_follows_the_redis_db():
    def channel(**env):
        return build_settings("optimized", env=env).redis_channel

    assert channel() == channel(REDIS_URL="redis://127.0.0.1:6379") == "caplab:db0"
    assert channel(REDIS_URL="redis://127.0.0.1:6379/2") == "caplab:db2"
    assert channel(REDIS_URL="redis://h:1/1?db=3") == "caplab:db3"  # redis-py: the query wins
    assert channel(REDIS_URL="unix:///run/redis.sock?db=4") == "caplab:db4"
    assert channel(REDIS_URL="redis://h/2", SOCKET_DEPLOYMENT="blue") == "caplab:blue"
    assert build_settings("baseline", {"redis_channel": "mine"}, env={"SOCKET_DEPLOYMENT": "x"}).redis_channel == "mine"


async def test_deployments_on_two_dbs_do_not_hear_each_other(start_server, redis_url):
    """REDIS_URL only, db 1 and db 2 of one Redis: the chats stay in their deployment."""
    env1, env2 = {"REDIS_URL": with_db(redis_url, 1)}, {"REDIS_URL": with_db(redis_url, 2)}
    sets = {"flush_interval_ms": 20}
    a, users = start_server("optimized", companies=1, users=3, env=env1, sets=sets, node=0)
    b, _ = start_server("optimized", companies=0, env=env1, sets=sets, db=a.db, node=1)
    c, _ = start_server("optimized", companies=0, env=env2, sets=sets, db=a.db, node=0)
    await wait_linked(a.url, b.url, c.url)
    sender = await Client.connect(a.url, users[0]["token"])
    same = await Client.connect(b.url, users[1]["token"])
    elsewhere = await Client.connect(c.url, users[2]["token"])
    sent = [f"{uuid.uuid4().hex}-{i}" for i in range(20)]
    for nonce in sent:
        assert await sender.call("chat", {"nonce": nonce}) == [{"ok": True}]
    await wait_nonce(same, sent[-1])
    await asyncio.sleep(0.3)
    assert set(sent) <= nonces(same)
    assert not set(sent) & nonces(elsewhere), "the deployment on db 2 received db 1's chats"
    for cl in (sender, same, elsewhere):
        await cl.close()


async def test_deployment_name_separates_channel_and_token_cache(start_server, redis_url, tmp_path):
    """Two named deployments on one db: no chats cross, and one's cached token is not the other's."""
    names = [f"x-{uuid.uuid4().hex[:12]}", f"y-{uuid.uuid4().hex[:12]}"]
    env = [{"REDIS_URL": redis_url, "SOCKET_DEPLOYMENT": n} for n in names]
    x, x_users = start_server("optimized", companies=1, users=2, env=env[0], db=tmp_path / "x.db")
    x2, _ = start_server("optimized", companies=0, env=env[0], db=x.db, node=1)
    y, y_users = start_server("optimized", companies=1, users=2, env=env[1], db=tmp_path / "y.db")
    await wait_linked(x.url, x2.url, y.url)
    sender = await Client.connect(x.url, x_users[0]["token"])  # x's token now cached in Redis
    peer = await Client.connect(x2.url, x_users[1]["token"])
    other = await Client.connect(y.url, y_users[0]["token"])
    nonce = uuid.uuid4().hex
    assert await sender.call("chat", {"nonce": nonce}) == [{"ok": True}]
    await wait_nonce(peer, nonce)
    await asyncio.sleep(0.3)
    assert nonce not in nonces(other)

    client = redis.Redis.from_url(redis_url)
    try:
        key = f"caplab:{names[0]}:token:" + hashlib.sha256(x_users[0]["token"].encode()).hexdigest()
        assert client.exists(key), "x's token is not cached under x's prefix"
        with pytest.raises(ConnectRefused, match="invalid token"):
            await Client.connect(y.url, x_users[0]["token"])
    finally:
        for name in names:  # only this test's own keys
            for k in client.scan_iter(f"caplab:{name}:token:*", count=100):
                client.delete(k)
        client.close()
    for cl in (sender, peer, other):
        await cl.close()
