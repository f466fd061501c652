"""The server's wire format, as the client reads it.

``batch``: one Socket.IO event whose single argument is a JSON array of entries
``[event_name, arg1, ...]``, or a binary attachment holding the zlib (RFC 1950) compressed UTF-8
JSON text of that array.

Recovery tag: a room delivery to a client that connected with ``recover`` carries one extra, last
argument ``{"_seq": [room, epoch, n]}``.
"""

from __future__ import annotations

import json
import zlib

TAG = "_seq"


class FrameError(ValueError):
    """A ``batch`` frame that does not follow the wire format."""


def decode_batch(arg: object) -> list[list]:
    """The entries of one ``batch`` event argument (JSON list or zlib-compressed bytes)."""
    if isinstance(arg, (bytes, bytearray, memoryview)):
        try:
            arg = json.loads(zlib.decompress(bytes(arg)).decode("utf-8"))
        except (zlib.error, UnicodeDecodeError, ValueError) as exc:
            raise FrameError(f"batch attachment is not zlib-compressed JSON: {exc}") from None
    if not isinstance(arg, list) or not all(isinstance(e, list) and e and isinstance(e[0], str) for e in arg):
        raise FrameError("batch must be a list of [event_name, ...args] entries")
    return arg


def split_tag(args: list) -> tuple[list, tuple[str, str, int] | None]:
    """(args without the recovery tag, (room, epoch, n) or None)."""
    if args and isinstance(args[-1], dict) and len(args[-1]) == 1 and TAG in args[-1]:
        tag = args[-1][TAG]
        if isinstance(tag, list) and len(tag) == 3:
            return args[:-1], (tag[0], tag[1], tag[2])
    return args, None
