"""Engine.IO v4 / Socket.IO v5 text codec (websocket transport), and the server's batch format."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

# Engine.IO packet types (first character of a text frame)
EIO_OPEN, EIO_CLOSE, EIO_PING, EIO_PONG, EIO_MESSAGE = "0", "1", "2", "3", "4"
# Socket.IO packet types (first character after the Engine.IO MESSAGE type)
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)

_dumps = json.JSONEncoder(separators=(",", ":")).encode


class ProtocolError(ValueError):
    """A frame that is not valid Engine.IO v4 / Socket.IO v5."""


@dataclass(slots=True)
class SioPacket:
    type: int
    data: object = None
    id: int | None = None
    namespace: str = "/"
    attachments: int = 0
    buffers: list[bytes] = field(default_factory=list)


def encode_connect(auth: dict | None) -> str:
    return "40" + (_dumps(auth) if auth is not None else "")


def encode_event(name: str, args: list, ack_id: int | None = None) -> str:
    return "42" + ("" if ack_id is None else str(ack_id)) + _dumps([name, *args])


def decode(text: str) -> SioPacket:
    """Decode a Socket.IO packet (the part of an Engine.IO MESSAGE after its '4')."""
    if not text or not text[0].isdigit():
        raise ProtocolError(f"bad Socket.IO packet type in {text[:20]!r}")
    ptype = int(text[0])
    if ptype > BINARY_ACK:
        raise ProtocolError(f"unknown Socket.IO packet type {ptype}")
    i, n = 1, len(text)
    attachments = 0
    if ptype in (BINARY_EVENT, BINARY_ACK):
        dash = text.find("-", i)
        if dash < 0 or not text[i:dash].isdigit():
            raise ProtocolError("binary packet without attachment count")
        attachments, i = int(text[i:dash]), dash + 1
    namespace = "/"
    if i < n and text[i] == "/":
        comma = text.find(",", i)
        namespace, i = (text[i:], n) if comma < 0 else (text[i:comma], comma + 1)
    j = i
    while j < n and text[j].isdigit():
        j += 1
    ack_id = int(text[i:j]) if j > i else None
    try:
        data = json.loads(text[j:]) if j < n else None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"bad JSON in Socket.IO packet: {exc}") from None
    return SioPacket(ptype, data, ack_id, namespace, attachments)


def fill_placeholders(data: object, buffers: list[bytes]) -> object:
    """Replace ``{"_placeholder": true, "num": i}`` with the i-th binary attachment."""
    if isinstance(data, dict):
        if data.get("_placeholder") is True and isinstance(data.get("num"), int):
            return buffers[data["num"]]
        return {k: fill_placeholders(v, buffers) for k, v in data.items()}
    if isinstance(data, list):
        return [fill_placeholders(v, buffers) for v in data]
    return data


def expand_batch(arg: object) -> list[list]:
    """Entries of a ``batch`` event's argument (JSON array, or zlib-compressed JSON bytes)."""
    if isinstance(arg, bytes | bytearray):
        arg = json.loads(zlib.decompress(arg))
    if not isinstance(arg, list):
        raise ProtocolError("batch argument must be a list or compressed bytes")
    return arg
