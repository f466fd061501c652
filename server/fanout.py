"""Client managers whose room emits cost less per recipient than python-socketio's default.

The stock ``AsyncManager.emit`` creates one task per recipient and waits for all of them. Here an
event is encoded once and its packet put straight on each recipient's Engine.IO send queue (or on
its batch). The Redis variant reuses this for the local part of every published emit.
"""

from __future__ import annotations

import socketio
from engineio import packet as eio_packet

from .batching import Batcher, encode_entry
from .metrics import Metrics


class LabManager(socketio.AsyncManager):
    """``AsyncManager`` that counts deliveries, with optional encode-once fan-out and batching.

    With ``fast_fanout`` off and no batcher it is the stock manager plus a counter (baseline).
    """

    batcher: Batcher | None = None
    fast_fanout: bool = False
    metrics: Metrics | None = None

    def deliver(self, eio_sid: str, packets: list[eio_packet.Packet]) -> bool:
        """Queue packets on one client's transport without a task; False if it is gone."""
        sock = self.server.eio.sockets.get(eio_sid)
        if sock is None or sock.closed:
            return False
        for p in packets:
            sock.queue.put_nowait(p)
        return True

    async def emit(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        namespace = namespace or "/"
        room = to or room
        if self.metrics is not None and isinstance(room, str):
            n = len(self.rooms.get(namespace, {}).get(room, ()))
            self.metrics.events_out.inc(n)
            if self.batcher is None:
                self.metrics.packets_out.inc(n)
        use_fast = self.batcher is not None or self.fast_fanout
        if callback is not None or namespace != "/" or not use_fast:
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs)
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        recipients = [eio for sid, eio in self.get_participants(namespace, room) if sid not in skip]
        if self.batcher is not None:
            self.batcher.push(recipients, encode_entry(event, args))
            return
        text = socketio.packet.Packet(socketio.packet.EVENT, data=[event, *args]).encode()
        parts = text if isinstance(text, list) else [text]
        packets = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in parts]
        for eio_sid in recipients:
            self.deliver(eio_sid, packets)


class LabRedisManager(socketio.AsyncRedisManager, LabManager):
    """Redis pub/sub between nodes; local delivery through ``LabManager.emit``.

    MRO: AsyncRedisManager -> AsyncPubSubManager -> LabManager -> AsyncManager, so the
    pub/sub manager's local ``super().emit`` lands in ``LabManager.emit``.
    """
