"""A connect storm from one loopback address: ``python -m tests.storm URL SOURCE_IP RATE SECONDS``.

Opens a TCP connection, sends an Engine.IO websocket handshake, reads the status line and hangs
up, RATE times a second for SECONDS (bounded in count and time; loopback only). Prints one JSON
line: attempts and answers by HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections import Counter
from urllib.parse import urlsplit


async def attempt(host: str, port: int, source: str, counts: Counter) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(source, 0)), 5)
    except (OSError, TimeoutError):
        counts["connect_error"] += 1
        return
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        line = await asyncio.wait_for(reader.readline(), 5)
        counts[line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "no_answer"] += 1
    except (OSError, TimeoutError):
        counts["io_error"] += 1
    finally:
        writer.transport.abort()


async def storm(url: str, source: str, rate: float, seconds: float) -> Counter:
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost") and source.startswith("127."), "loopback only"
    counts: Counter = Counter()
    tasks: set[asyncio.Task] = set()
    total = int(rate * seconds)
    start = time.monotonic()
    sent = 0
    while sent < total and time.monotonic() - start < seconds + 5:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            if len(tasks) < 1000:  # bounded in flight
                t = asyncio.get_running_loop().create_task(attempt(parts.hostname, parts.port, source, counts))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            else:
                counts["skipped"] += 1
            sent += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks, return_exceptions=True)
    counts["attempts"] = sent
    counts["seconds"] = round(time.monotonic() - start, 2)
    return counts


if __name__ == "__main__":
    url, source, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(asyncio.run(storm(url, source, rate, seconds))), flush=True)
