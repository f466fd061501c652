"""``client/js/batch.js`` under Node with the official ``socket.io-client`` against a real server.

``tests/node/unwrap.js`` registers plain ``socket.on("chat")`` and ``onAny`` handlers after
``unwrapBatches(socket)``; the server's batches (JSON and zlib binary) must reach them as the
individual events, each exactly once and in send order, with Node's zlib and with the browser's
``DecompressionStream`` path; without batching (baseline) the handlers see the same, untouched.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.nodeclient import NODE_DIR, NodeClient, node_or_skip
from tests.sio import Client

SCRIPT = NODE_DIR / "unwrap.js"


def sent_payloads() -> list[dict]:
    """Small chats (JSON batches), big ones (over the 1024-byte threshold: zlib), then both mixed."""
    small = [{"n": i, "text": f"small {i}"} for i in range(5)]
    big = [{"n": 5 + i, "text": "big " + "y" * 1500} for i in range(5)]
    mixed = [{"n": 10 + i, "text": ("z" * 1200) if i % 3 == 0 else f"mixed {i}"} for i in range(30)]
    return [small, big, mixed]


@pytest.mark.parametrize(
    ("profile", "inflate"),
    [
        pytest.param("optimized", "auto", id="optimized-node-zlib"),
        pytest.param("optimized", "stream", id="optimized-decompressionstream"),
        pytest.param("baseline", "auto", id="baseline-no-batches"),
    ],
)
async def test_batch_js_hands_each_event_to_socket_on_in_order(start_server, profile, inflate):
    node_or_skip()
    # the window's merging: with batch_flush_soon an idle client's batch leaves at once, one entry each
    server, users = start_server(
        profile, companies=1, users=2, sets={"flush_interval_ms": 100, "batch_flush_soon": "off"}, env={"REDIS_URL": ""}
    )
    listener = await NodeClient.start(
        server.url, users[0]["token"], script=SCRIPT, args=["--on=chat", f"--inflate={inflate}"], label="unwrap"
    )
    sender = None
    try:
        await listener.connected()
        sender = await Client.connect(server.url, users[1]["token"])
        sent: list[dict] = []
        for phase in sent_payloads():
            for data in phase:
                assert await sender.call("chat", data) == [{"ok": True}]
                sent.append(data)
            last = sent[-1]
            await listener.wait_for(
                lambda x, last=last: x["type"] == "on" and x["args"][0]["data"] == last, timeout=10, what="last chat"
            )
        on = [x["args"] for x in listener.of("on")]
        assert [args[0]["data"] for args in on] == sent, listener.describe()  # each once, in order
        assert all(len(args) == 1 and args[0]["from"]["user"] == users[1]["user"] for args in on)
        assert [x["args"][0]["data"] for x in listener.of("any") if x["event"] == "chat"] == sent
        assert listener.of("batch_error") == []
        raw = listener.of("raw_batch")
        if profile == "optimized":
            assert {x["compressed"] for x in raw} == {True, False}, raw
            assert len(raw) < len(sent)  # some batches held several entries
        else:
            assert raw == []
    finally:
        if sender is not None:
            await sender.close()
        await listener.close()
    assert listener.of("exit")[-1]["reason"] == "stdin closed"


async def test_batch_js_refuses_a_bad_option_and_decodes_on_its_own():
    """``decodeBatch`` alone, and a bad ``inflate`` option as a clear error at set-up."""
    node = node_or_skip()
    code = r"""
      const zlib = require("node:zlib");
      const { decodeBatch, unwrapBatches } = require("../../client/js/batch.js");
      (async () => {
        const entries = [["chat", {"a": 1}], ["notice", "x", 2]];
        const packed = zlib.deflateSync(Buffer.from(JSON.stringify(entries)));
        const results = [await decodeBatch(entries), await decodeBatch(packed),
                         await decodeBatch(packed, {inflate: "stream"}),
                         await decodeBatch(new Uint8Array(packed).buffer, {inflate: "stream"})];
        let bad = null, notEntries = null;
        try { unwrapBatches({on() {}}, {inflate: "gzip"}); } catch (err) { bad = err.message; }
        try { await decodeBatch([1, 2]); } catch (err) { notEntries = err.message; }
        console.log(JSON.stringify({results, bad, notEntries}));
      })();
    """
    proc = await asyncio.create_subprocess_exec(
        node, "-e", code, cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    got = json.loads(out)
    entries = [["chat", {"a": 1}], ["notice", "x", 2]]
    assert got["results"] == [entries] * 4
    assert got["bad"] == 'options.inflate: expected "auto", "zlib", "stream" or a function'
    assert got["notEntries"] == "batch: an entry is not [eventName, ...args]"
