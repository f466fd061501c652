"""Admin endpoints and what the open ones expose (issue 13, findings 9 and 13), over real HTTP.

/socket-diagnostics and /socket-cleanup need exactly ``Authorization: Bearer <SOCKET_ADMIN_TOKEN>``
(401 missing, empty, malformed or undecodable; 403 wrong). /socket-health and /socket-metrics stay
open and carry only aggregates: no user ids, IPs, socket ids, room names or paths.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.connection import ConnectRefused
from tests.sio import Client

TOKEN = "s3cret-admin"
ADMIN = ("/socket-diagnostics", "GET"), ("/socket-cleanup", "POST")


async def raw_request(url: str, method: str, path: str, headers: list[bytes]) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte on a plain socket: (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host.encode(), *headers]
        writer.write(b"\r\n".join([*head, b"Content-Length: 0", b"Connection: close", b"", b""]))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.fixture
def admin_server(start_server):
    server, _ = start_server("optimized", companies=1, users=1, env={"SOCKET_ADMIN_TOKEN": TOKEN})
    return server


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], 401),
        ([b"Authorization:"], 401),
        ([b"Authorization: Bearer"], 401),
        ([b"Authorization: Bearer   "], 401),
        ([f"Authorization: {TOKEN}".encode()], 401),  # the bare token, no scheme
        ([f"Authorization: Basic {TOKEN}".encode()], 401),
        ([f"Authorization: Bearer {TOKEN} {TOKEN}".encode()], 401),
        ([f"Authorization: Bearer {TOKEN}".encode()] * 2, 401),
        ([b"Authorization: Bearer \xff\xfe\xfd"], 401),  # not UTF-8
        ([b"Authorization: Bearer s3cret-adm\xefn"], 401),  # Latin-1, not UTF-8
        ([b"Authorization: Bearer wrong"], 403),
        ([f"Authorization: Bearer {TOKEN}x".encode()], 403),
        ([f"Authorization: Bearer {TOKEN[:-1]}".encode()], 403),
        ([f"Authorization: Bearer {TOKEN}".encode()], 200),
        ([f"Authorization: bearer {TOKEN}".encode()], 200),
        ([f"Authorization: BEARER  {TOKEN}".encode()], 200),
    ],
)
async def test_admin_header_rules(admin_server, headers, status):
    for path, method in ADMIN:
        got, body = await raw_request(admin_server.url, method, path, headers)
        assert got == status, (path, headers, body)
        assert body.count(b"\n") == 0 and json.loads(body), body  # one line of JSON
        if status != 200:
            assert set(json.loads(body)) == {"error"}
    log = admin_server.log_path.read_text()
    assert "Traceback" not in log and "Error handling request" not in log


async def test_401_says_how_and_server_lives_on(admin_server):
    status, body = await raw_request(admin_server.url, "GET", "/socket-diagnostics", [b"Authorization: Bearer \xff"])
    assert status == 401 and "UTF-8" in json.loads(body)["error"]
    async with aiohttp.ClientSession() as s, s.get(admin_server.url + "/socket-diagnostics") as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    async with aiohttp.ClientSession() as s, s.get(admin_server.url + "/socket-health") as r:
        assert r.status == 200


async def test_admin_endpoints_off_without_a_token(start_server):
    server, _ = start_server("baseline", companies=1, users=1)
    for path, method in ADMIN:
        assert (await raw_request(server.url, method, path, []))[0] == 401
        assert (await raw_request(server.url, method, path, [b"Authorization: Bearer anything"]))[0] == 403


def walk(node, path=()):
    """Every (path, key, value) of a JSON document; lists index as ``[]``."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from walk(v, (*path, k))
    elif isinstance(node, list):
        for v in node:
            yield path, None, v
            yield from walk(v, (*path, "[]"))


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_open_endpoints_carry_no_identities(start_server, profile):
    """Users from several IPs, in named sub-rooms, chatting, refused, disconnected: then the audit."""
    server, users = start_server(profile, companies=2, users=30, env={"SOCKET_ADMIN_TOKEN": TOKEN})
    companies = {str(u["company"]) for u in users}
    picked = [u for u in users if u["user"] > 20][::7]  # user ids that are not company ids
    room = f"audit-{uuid.uuid4().hex[:10]}"
    clients = []
    for i, u in enumerate(picked):
        c = await Client.connect(server.url, u["token"], local_addr=f"127.0.1.{40 + i}")
        assert await c.call("join", room) == [{"ok": True, "room": room}]
        await c.call("chat", {"room": room, "text": "hi"})
        await c.call("echo", 1)
        await c.call("no-such-event")
        await c.call("join", {"room": room, "company": 99})  # cross-tenant, refused
        clients.append(c)
    with pytest.raises(ConnectRefused, match="invalid token"):
        await Client.connect(server.url, "not-a-token", local_addr="127.0.1.99")
    await clients.pop().close()  # one disconnect
    await asyncio.sleep(0.3)

    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + "/socket-diagnostics", headers=headers) as r:
            diag = await r.json()
        async with s.get(server.url + "/socket-metrics") as r:
            doc = await r.json()
        async with s.get(server.url + "/socket-metrics?format=prometheus") as r:
            text = await r.text()
        async with s.get(server.url + "/socket-health") as r:
            health = await r.json()
    # what must not leak: everything diagnostics shows per connection, plus tokens, names, the db path
    busiest = diag["busiest_connections"]
    assert busiest and {b["ip"] for b in busiest} >= {"127.0.1.40"}
    secrets = {room, str(server.db), server.db.name, *(u["token"] for u in users)}
    secrets |= {b["sid"] for b in busiest} | {b["ip"] for b in busiest} | {"127.0.1.99"}
    secrets |= {r for b in busiest for r in b["rooms"]}
    secrets |= {f"u:{u['company']}:{u['user']}" for u in picked} | {f"c:{c}:r:{room}" for c in companies}
    user_ids = {str(u["user"]) for u in picked}
    assert not user_ids & companies

    for name, body in (("json", json.dumps(doc)), ("prometheus", text), ("health", json.dumps(health))):
        leaked = [x for x in secrets if x in body]
        assert not leaked, f"/socket-metrics {name} shows {leaked}"

    for path, key, value in walk(doc):
        if key is not None and key.isdigit():
            assert path == ("connections", "byCompany") and key in companies, (path, key)
        if key is None:  # the one list: gc pauses as [seq, time, generation, pause]
            assert path[:2] == ("gc", "recent"), path
        if isinstance(value, str):
            assert value not in user_ids, (path, key, value)
    assert all(len(x) == 4 and x[2] in (0, 1, 2) for x in doc["gc"]["recent"])

    label_names = {"company", "reason", "kind", "event", "result", "generation", "op", "le"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= label_names, (sample.name, sample.labels)
            for label, value in sample.labels.items():
                if label == "company":
                    assert value in companies, sample
                elif label not in ("le", "generation"):
                    assert not value.isdigit() and value not in user_ids, sample
    for c in clients:
        await c.close()
