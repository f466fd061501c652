"""The official Node ``socket.io-client`` v4 against the reference server (``tests/node/client.js``).

A third-party client is the witness that what the server puts on the wire is Socket.IO as real
clients read it: plain events, batches (JSON and zlib binary), connect errors, and that no client
input can make the server send a frame those clients cannot parse (issue 13, finding 1).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.nodeclient import NodeClient, node_or_skip
from tests.sio import Client


@pytest.fixture
async def node_clients():
    """``await start(url, token, ...)`` -> a started ``NodeClient``; all are closed at teardown."""
    node_or_skip()  # before any server starts
    started: list[NodeClient] = []

    async def start(url: str, token: str | None, **kw) -> NodeClient:
        client = await NodeClient.start(url, token, label=f"node-{len(started)}", **kw)
        started.append(client)
        return client

    yield start
    await asyncio.gather(*(c.close() for c in started))


def chat_from(user: dict, data: object):
    """A predicate: the ``chat`` event of ``user`` carrying ``data``."""

    def match(line: dict) -> bool:
        if line["type"] != "event" or line["event"] != "chat" or not line["args"]:
            return False
        body = line["args"][0]
        return isinstance(body, dict) and body.get("from", {}).get("user") == user["user"] and body.get("data") == data

    return match


PROFILES = [
    pytest.param("baseline", {}, False, id="baseline"),
    pytest.param("optimized", {"flush_interval_ms": 50}, False, id="optimized-json-batch"),
    pytest.param("optimized", {"flush_interval_ms": 50, "compression_threshold": 64}, True, id="optimized-zlib-batch"),
]


@pytest.mark.parametrize(("profile", "sets", "compressed"), PROFILES)
async def test_node_client_sends_and_receives_chat(start_server, node_clients, profile, sets, compressed):
    server, users = start_server(profile, companies=2, users=2, sets=sets)
    listener = await node_clients(server.url, users[0]["token"])
    outsider = await node_clients(server.url, users[2]["token"])  # company 2: must hear nothing
    await listener.connected()
    await outsider.connected()
    payload = {"text": "hello from node " + "x" * 80, "n": 1}
    sender = await node_clients(server.url, users[1]["token"], emit=[["chat", payload]])
    await sender.connected()

    ack = await sender.wait_for(lambda x: x["type"] == "ack", what="chat ack")
    assert ack["args"] == [{"ok": True}]
    for client in (listener, sender):
        got = await client.wait_for(chat_from(users[1], payload), what="the chat")
        assert got.get("batched", False) == (profile == "optimized")
        assert got["args"][0]["from"] == {"company": 1, "user": users[1]["user"]}
    if profile == "optimized":
        assert {b["compressed"] for b in listener.of("batch")} == {compressed}

    await sender.emit("echo", {"a": [1, 2]}, "two")
    echo = await sender.wait_for(lambda x: x["type"] == "ack" and x["event"] == "echo", what="echo ack")
    assert echo["args"] == [{"a": [1, 2]}, "two"]

    # a barrier for the outsider: its own chat arrives after anything queued for it before
    await outsider.emit("chat", "barrier")
    await outsider.wait_for(chat_from(users[2], "barrier"), what="its own chat")
    assert all(chat_from(users[2], "barrier")(x) for x in outsider.events("chat")), outsider.describe()
    for client in (listener, sender, outsider):
        assert not client.of("disconnect") and not client.of("bad_batch"), client.describe()


async def test_node_client_sees_refused_token(start_server, node_clients):
    server, _ = start_server("optimized", companies=1, users=1)
    client = await node_clients(server.url, "not-a-token")
    line = await client.wait_for(lambda x: x["type"] in ("connect_error", "connected"), what="connect_error")
    assert line["type"] == "connect_error" and line["message"] == "invalid token", client.describe()
    await client.wait_for(lambda x: x["type"] == "exit", what="exit")


# -- issue 13, finding 1: NaN / Infinity relayed to every client ----------------------------------

POISONS = [
    pytest.param("NaN", id="nan"),
    pytest.param("Infinity", id="inf"),
    pytest.param("-Infinity", id="minus-inf"),
    pytest.param('{"x": NaN}', id="nested-nan"),
]


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize(
    ("profile", "sets"),
    [
        pytest.param("baseline", {}, id="baseline"),
        # a long window, so the poisoned chat and the good one sent right after share a batch
        pytest.param("optimized", {"flush_interval_ms": 500}, id="optimized"),
    ],
)
async def test_non_json_numbers_are_refused_not_relayed(start_server, node_clients, profile, sets, poison):
    """Expected behaviour (fails on the server as of issue 13): a chat whose payload holds NaN or
    +-Infinity (Python's json reads them, JSON has no such values) gets an error ack and reaches
    nobody; the official clients of the company stay connected and get the next good chat, on
    baseline (one frame per event) and on optimized (the good chat shares the poisoned one's batch)."""
    server, users = start_server(profile, companies=1, users=4, sets=sets)
    attacker_user, good_user = users[2], users[3]
    listeners = [await node_clients(server.url, u["token"]) for u in users[:2]]
    for client in listeners:
        await client.connected()
    attacker = await Client.connect(server.url, attacker_user["token"])
    good = await Client.connect(server.url, good_user["token"])
    try:
        ack = attacker.pending[9] = asyncio.get_running_loop().create_future()
        await attacker.conn.send_raw(f'429["chat",{poison}]')
        await good.send("chat", {"text": "after the poison"})
        closed = asyncio.ensure_future(attacker.closed.wait())
        await asyncio.wait([ack, closed], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        # barrier: the attacker's chat was handled (acked or not) before this one is sent, and each
        # client's queue is FIFO, so once this arrives anything the poisoned chat produced has too
        await good.send("chat", {"text": "barrier"})
        for client in listeners:
            await client.wait_for(
                lambda x: chat_from(good_user, {"text": "barrier"})(x) or x["type"] in ("disconnect", "bad_batch"),
                timeout=5,
                what="the barrier chat",
            )
    finally:
        await attacker.close()
        await good.close()

    problems = []  # every broken expectation at once: the fix has to satisfy all of them
    for client in listeners:
        for line in client.of("disconnect"):
            problems.append(f"{client.label} was disconnected: {line['reason']}")
        for line in client.of("bad_batch") + client.of("unparsable"):
            problems.append(f"{client.label} got a frame that is not JSON: {line}")
        if not [x for x in client.events("chat") if chat_from(good_user, {"text": "after the poison"})(x)]:
            problems.append(f"{client.label} lost the good chat sent right after the poisoned one")
        relayed = [x for x in client.events() if from_user(x) == attacker_user["user"]]
        if relayed:
            problems.append(f"{client.label} received the refused chat: {relayed}")
    if not ack.done():
        problems.append(f"no ack within 5 s (attacker connection closed: {attacker.conn.closed})")
    elif not (len(ack.result()) == 1 and isinstance(ack.result()[0], dict) and "error" in ack.result()[0]):
        problems.append(f"the attacker was acked {ack.result()}, expected an error ack")
    assert not problems, (
        f'42["chat",{poison}] on {profile}: '
        + "; ".join(problems)
        + "".join(f"\n{c.label} saw: {c.describe()}" for c in listeners)
    )


def from_user(line: dict) -> object:
    body = line["args"][0] if line["args"] else None
    return body.get("from", {}).get("user") if isinstance(body, dict) else None
