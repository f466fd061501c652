"""What the server accepts from the wire: strict JSON, bounded attachments, no reserved event names.

Python's ``json`` reads and writes ``NaN`` and ``Infinity``, which are not JSON: one such payload
relayed to a room disconnects every official ``socket.io-client`` in it ("parse error"). Here
both directions are strict. Every refusal names its cause (``kind``), one per metric label.
"""

from __future__ import annotations

import json

import socketio
from socketio import packet as sio_packet

# names socket.io reserves for its own lifecycle; a client may never trigger them as events
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
MAX_INT_DIGITS = 100  # as engine.io's own guard: int("9" * 10**6) would take seconds


class PacketRejected(Exception):
    """A packet the server refuses. ``close``: the transport is dropped, else the sender gets an error ack."""

    def __init__(self, kind: str, detail: str, close: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.close = close
        self.packet: object = None  # the decoded packet, when there is one to answer


def _no_constant(name: str):
    raise PacketRejected("non_finite", f"{name} is not JSON: numbers must be finite")


def _int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise PacketRejected("bad_payload", f"integer of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999 parses to inf: just as unsendable
        raise PacketRejected("non_finite", f"{text[:20]} overflows to infinity: numbers must be finite")
    return value


class StrictJson:
    """A ``json``-like module for python-socketio's packets: no NaN/Infinity either way."""

    @staticmethod
    def loads(text, **kwargs):
        try:
            return json.loads(text, parse_constant=_no_constant, parse_int=_int, parse_float=_float)
        except RecursionError:
            raise PacketRejected("too_deep", "JSON nested too deeply") from None

    @staticmethod
    def dumps(obj, **kwargs):
        kwargs["allow_nan"] = False
        return json.dumps(obj, **kwargs)


def dumps(obj) -> str:
    """Compact strict JSON for what the server sends itself (batch entries)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class StrictPacket(socketio.packet.Packet):
    """Socket.IO packet with strict JSON and a cap on announced binary attachments."""

    json = StrictJson
    max_attachments = 10

    def decode(self, encoded_packet):
        try:  # StrictJson raises PacketRejected itself (non-finite, too deep); it passes through
            count = super().decode(encoded_packet)
        except (ValueError, TypeError, IndexError) as exc:
            raise PacketRejected("malformed_packet", f"undecodable packet: {exc}", close=True) from None
        if count and count > self.max_attachments:
            raise PacketRejected(
                "too_many_attachments", f"{count} attachments announced, at most {self.max_attachments}", close=True
            )
        return count


def event_name(pkt: socketio.packet.Packet) -> str:
    """The event name of an EVENT / BINARY_EVENT packet, or a refusal saying why not."""
    data = pkt.data
    if not isinstance(data, list) or not data:
        raise PacketRejected("malformed_packet", "an event is a JSON array [name, ...args]", close=True)
    name = data[0]
    if not isinstance(name, str):
        raise PacketRejected("bad_event_name", "the event name must be a string")
    if name in RESERVED_EVENTS:
        raise PacketRejected("reserved_event", f"{name!r} is reserved by Socket.IO and cannot be sent")
    return name


EVENT_TYPES = (sio_packet.EVENT, sio_packet.BINARY_EVENT)
