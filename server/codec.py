"""The ``fast_json`` toggle: orjson for python-socketio's packets, as strict as :class:`~server.guard.StrictJson`.

python-socketio reads and writes every packet's JSON through its packet class's ``json`` attribute
(the hook its ``json=`` argument sets). ``StrictJson`` builds a new ``JSONDecoder`` per packet
(its ``parse_int``/``parse_float`` guards) and a new encoder per ack; :class:`FastJson` does one
orjson pass instead, and gives exactly StrictJson's answers:

- orjson refuses NaN, Infinity, numbers that overflow to infinity and lone surrogates; each such
  text goes to the strict stdlib decoder (one reused instance), which refuses it with the same
  reason (``non_finite``...) or, for a lone surrogate, reads it as before;
- orjson reads integers past 64 bits as floats: a text whose data holds an integral float of 2**63
  or more is read again by the stdlib decoder (ints up to ``MAX_INT_DIGITS`` digits, a refusal beyond);
- orjson reads nesting deeper than Python can recurse over: texts of ``DEEP_TEXT`` characters or
  more (the shortest text nested that deep) are read by the stdlib decoder (``too_deep``);
- orjson cannot write non-str keys, ints past 64 bits or very deep data: those go to ``json.dumps``.
  orjson writes NaN as ``null`` (never the ``NaN`` token clients cannot parse); the server sends
  no floats of its own, and every float it relays was read strictly.
"""

from __future__ import annotations

import json

import orjson

from .compat import packet_codec
from .guard import PacketRejected, StrictJson, _float, _int, _no_constant

DEEP_TEXT = 1800  # 900 levels of "[]" (Python's json recursion limit is about 1000)
BIG = 9.2e18  # about 2**63: orjson reads integers past 64 bits as floats of at least this size
_strict = json.JSONDecoder(parse_constant=_no_constant, parse_int=_int, parse_float=_float)


def strict_loads(text: str | bytes):
    """The strict stdlib decoder, built once (``StrictJson.loads`` builds one per call)."""
    if isinstance(text, bytes | bytearray):
        text = text.decode()
    try:
        return _strict.decode(text)
    except RecursionError:
        raise PacketRejected("too_deep", "JSON nested too deeply") from None


def _exact(data) -> bool:
    """No float that may be an integer orjson read past 64 bits (integral and >= 2**63 in size)."""
    kind = type(data)
    if kind is float:
        return not (data.is_integer() and abs(data) >= BIG)
    if kind is list:
        for item in data:
            if not _exact(item):
                return False
    elif kind is dict:
        for item in data.values():
            if not _exact(item):
                return False
    return True


class FastJson:
    """A ``json``-like module for python-socketio's packets: orjson where it answers as StrictJson does."""

    @staticmethod
    def loads(text, **kwargs):
        if len(text) >= DEEP_TEXT:
            return strict_loads(text)
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return strict_loads(text)  # the strict reason (or, for a lone surrogate, the stdlib's reading)
        return data if _exact(data) else strict_loads(text)

    @staticmethod
    def dumps(obj, **kwargs) -> str:
        try:
            return orjson.dumps(obj).decode()
        except TypeError:  # a non-str key, an int past 64 bits, deep nesting: the stdlib's answer
            return StrictJson.dumps(obj, separators=(",", ":"))


def fast_dumps(obj) -> str:
    """Compact JSON for what the server sends itself (batch entries), like ``guard.dumps``."""
    return FastJson.dumps(obj)


def _binary(data) -> bool:
    if isinstance(data, bytes | bytearray):
        return True
    if isinstance(data, list):
        for item in data:
            if _binary(item):
                return True
    elif isinstance(data, dict):
        for item in data.values():
            if _binary(item):
                return True
    return False


def data_is_binary(cls, data) -> bool:
    """python-socketio's ``Packet.data_is_binary`` with the same answer, stopping at the first binary
    item (the stock one builds a list per level and reduces it, for every packet it creates)."""
    return _binary(data)


# what the fast_json toggle puts on the node's packet class (server/app.py)
PACKET_HOOKS = packet_codec(FastJson, data_is_binary)
