"""Every place the server relies on python-socketio / python-engineio internals, named in one module.

The server subclasses ``socketio.AsyncServer``, engine.io's ``AsyncSocket`` and the Redis manager and
overrides some of their private methods (:data:`OVERRIDES`), calls others (:data:`CALLS`), reads
private state (:func:`pending_binary`, :func:`namespace_rooms`) and turns engine.io's new sockets
into its own class (:func:`adopt`). ``tests/test_server_compat.py`` checks each of them against the
installed libraries, so an upgrade that moves one fails that test by name instead of changing the
server's behaviour silently. The versions it was tested with (:data:`TESTED`) are pinned in
``pyproject.toml``.
"""

from __future__ import annotations

from typing import Any

import socketio
from engineio.async_socket import AsyncSocket

# package -> the minor version every hook below was checked against (pinned in pyproject.toml)
TESTED = {"python-socketio": "5.18", "python-engineio": "4.15"}

Hook = tuple[type, str, tuple[str, ...]]  # (library class, private method, its parameters after self)

# private methods the server's subclasses override (server/app.py, server/transport.py, server/fanout.py)
OVERRIDES: tuple[Hook, ...] = (
    (socketio.AsyncServer, "_handle_eio_message", ("eio_sid", "data")),
    (socketio.AsyncServer, "_handle_connect", ("eio_sid", "namespace", "data")),
    (socketio.AsyncServer, "_handle_eio_connect", ("eio_sid", "environ")),
    (socketio.AsyncServer, "_handle_eio_disconnect", ("eio_sid", "reason")),
    (socketio.AsyncServer, "_handle_event_internal", ("server", "sid", "eio_sid", "data", "namespace", "id")),
    (AsyncSocket, "_websocket_handler", ("ws",)),
    (AsyncSocket, "schedule_ping", ()),  # called after the handshake and after each PONG (direct_write)
    (socketio.AsyncRedisManager, "_redis_connect", ()),
    (socketio.AsyncRedisManager, "_handle_emit", ("message",)),
    (socketio.AsyncRedisManager, "_publish", ("data",)),
    (socketio.AsyncRedisManager, "_listen", ()),
)

# private methods the server calls without overriding them
CALLS: tuple[Hook, ...] = (
    (socketio.AsyncServer, "_send_packet", ("eio_sid", "pkt")),
    (socketio.AsyncServer, "_handle_event", ("eio_sid", "namespace", "id", "data")),
    (socketio.AsyncServer, "_handle_ack", ("eio_sid", "namespace", "id", "data")),
    (socketio.AsyncServer, "_handle_disconnect", ("eio_sid", "namespace", "reason")),
    (socketio.AsyncRedisManager, "_get_redis_module", ()),
)


def pending_binary(sio: socketio.AsyncServer) -> dict[str, Any]:
    """Binary packets still waiting for attachments, by Engine.IO sid (python-socketio's
    ``_binary_packet``: the server assembles attachments itself, and drops a refused client's)."""
    return sio._binary_packet


def namespace_rooms(manager: socketio.AsyncManager, namespace: str = "/") -> dict[Any, dict[str, str]]:
    """room -> {sid: eio sid} of one namespace (the manager's ``rooms`` table; deleting an empty
    room's entry is how python-socketio itself removes it)."""
    return manager.rooms.get(namespace, {})


def adopt(sock: AsyncSocket, cls: type[AsyncSocket]) -> None:
    """Turn engine.io's just-created socket into ``cls``, a subclass that adds methods and no slots
    (engine.io creates its sockets itself and offers no factory)."""
    sock.__class__ = cls


def packet_codec(json_module: Any, data_is_binary: Any) -> dict[str, Any]:
    """Class attributes for a ``socketio.packet.Packet`` subclass: python-socketio reads and writes
    every packet's JSON through the class's ``json`` (the hook its ``json=`` argument sets) and calls
    ``data_is_binary`` on the data of every packet it creates (server/codec.py, ``fast_json``)."""
    return {"json": json_module, "data_is_binary": classmethod(data_is_binary)}


def observe_many(histogram: Any, amount: float, count: int) -> None:
    """``count`` observations of the same ``amount`` in a prometheus_client ``Histogram``, with one
    addition to its sum and one to its bucket instead of ``count`` locked ``observe`` calls: the state
    ``Histogram.observe`` itself updates (``_sum``, ``_upper_bounds``, ``_buckets``; a batch flush to a
    room of thousands records one delay per recipient, server/batching.py)."""
    histogram._sum.inc(amount * count)
    for i, bound in enumerate(histogram._upper_bounds):
        if amount <= bound:
            histogram._buckets[i].inc(count)
            break


def replace_queue(sock: AsyncSocket, queue: Any) -> Any:
    """Give an engine.io socket another send queue and return the old one. engine.io's
    ``AsyncSocket.send`` puts every packet on ``sock.queue`` with ``put`` (which calls ``put_nowait``)
    and its ``poll`` takes them with ``get``/``get_nowait``: a subclass of ``asyncio.Queue`` that
    overrides ``put_nowait`` sees every packet (server/transport.py, ``Outbox``, ``DirectQueue``)."""
    old, sock.queue = sock.queue, queue
    return old
