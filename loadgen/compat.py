"""Every place the load generator reaches into a library's internals, in one module.

Each hook has a test (tests/test_loadgen_compat.py) against a real connection, so a library
release that moves what it relies on fails that test by name instead of changing the generator's
behaviour silently.
"""

from __future__ import annotations

import asyncio

import aiohttp


def ws_transport(ws: aiohttp.ClientWebSocketResponse) -> asyncio.WriteTransport | None:
    """The asyncio transport under an aiohttp client websocket.

    aiohttp has no public accessor for it; its ``WebSocketWriter`` (``ws._writer``) holds it. The
    generator reads the transport's write-buffer size to tell a peer that stopped reading (the
    kernel's send buffer is full and asyncio is buffering) without awaiting the drain, and aborts
    the TCP connection of an unresponsive server through it. None once aiohttp has dropped it.
    """
    return ws._writer.transport


def send_buffered(ws: aiohttp.ClientWebSocketResponse) -> int:
    """Bytes asyncio holds for this websocket because the kernel would not take them (0: flowing)."""
    transport = ws_transport(ws)
    return transport.get_write_buffer_size() if transport is not None else 0
