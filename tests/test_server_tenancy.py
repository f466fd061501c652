"""Tenant isolation (a property test over random joins and chats) and cross-tenant refusals."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sio import Client
from tests.test_server_auth import metrics

ROOMS = ["a", "b", "c"]
op = st.one_of(
    st.tuples(st.just("join"), st.integers(0, 5), st.sampled_from(ROOMS)),
    st.tuples(st.just("leave"), st.integers(0, 5), st.sampled_from(ROOMS)),
    st.tuples(st.just("chat"), st.integers(0, 5), st.sampled_from([None, *ROOMS])),
    st.tuples(st.just("cross"), st.integers(0, 5), st.sampled_from(ROOMS)),
)


async def run_ops(url, users, ops):
    clients = [await Client.connect(url, u["token"]) for u in users]
    who = {id(c): (u["company"], u["user"]) for c, u in zip(clients, users, strict=True)}
    joined = {i: set() for i in range(len(clients))}
    sent = []
    for kind, i, room in ops:
        c, company = clients[i], users[i]["company"]
        if kind == "join":
            assert (await c.call("join", room))[0] == {"ok": True, "room": room}
            joined[i].add(room)
        elif kind == "leave":
            await c.call("leave", room)
            joined[i].discard(room)
        elif kind == "chat":
            payload = {"n": len(sent)} if room is None else {"n": len(sent), "room": room}
            reply = (await c.call("chat", payload))[0]
            if room is None or room in joined[i]:
                assert reply == {"ok": True}
                sent.append((company, room, i, payload))
            else:
                assert reply["error"] == "bad_argument"
        else:  # addressing another company's room is refused
            other = 2 if company == 1 else 1
            assert (await c.call("join", {"room": room, "company": other}))[0]["error"] == "cross_tenant"
            assert (await c.call("join", f"c:{other}"))[0]["error"] == "cross_tenant"
            assert (await c.call("chat", {"room": room, "company": other}))[0]["error"] == "cross_tenant"
    await asyncio.sleep(0.35)  # more than one flush window
    for c in clients:
        company, _ = who[id(c)]
        for name, args in c.events:
            assert name == "chat"
            assert args[0]["from"]["company"] == company, "a delivery crossed companies"
    # and every chat reached exactly the members it should have at send time: at least the sender
    for _, _, i, payload in sent:
        assert any(a[0]["data"] == payload for _, a in clients[i].events)
    for c in clients:
        await c.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=25))
def test_no_delivery_crosses_a_company(start_server_once, ops):
    url, users = start_server_once
    asyncio.run(run_ops(url, users, ops))


async def test_cross_tenant_attempts_are_counted(start_server):
    server, users = start_server("baseline", companies=2, users=1)
    c = await Client.connect(server.url, users[0]["token"])
    assert (await c.call("join", {"room": "x", "company": 2}))[0]["error"] == "cross_tenant"
    assert (await c.call("join", 42))[0]["error"] == "bad_argument"
    await c.close()
    counters = (await metrics(server.url))["counters"]
    assert counters["errors"] == {"cross_tenant": 1.0, "bad_argument": 1.0}
