"""Scale-out: two nodes on one real Redis deliver a chat across nodes; the token cache is shared."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.sio import Client
from tests.test_server_auth import metrics

pytestmark = pytest.mark.redis


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
    await asyncio.sleep(0.3)  # let both nodes' pub/sub listeners subscribe
    assert await on_a.call("chat", {"hello": "from a"}) == [{"ok": True}]
    got = await on_b.wait_events(1, timeout=5)
    assert got[0][1][0] == {"from": {"company": 1, "user": c1[0]["user"]}, "data": {"hello": "from a"}}
    await asyncio.sleep(0.3)
    assert other.events == [], "company 2's client on node b received company 1's chat"
    for c in (on_a, on_b, other):
        await c.close()
    if profile == "optimized":  # the token cache lives in Redis: node b never queried for a's user
        queries = (await metrics(a.url))["counters"]["db_queries"] + (await metrics(b.url))["counters"]["db_queries"]
        assert queries == 3
