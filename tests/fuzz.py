"""Hypothesis strategies for Engine.IO / Socket.IO frames, and a corpus of known-bad frames.

A frame is what one websocket message carries: text (an Engine.IO packet type, then for type 4 a
Socket.IO packet) or bytes (a binary attachment). The strategies mix well-formed packets, near
misses (bad JSON, NaN, reserved names, huge attachment counts, wrong types) and noise.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

RESERVED = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]
EVENTS = ["echo", "chat", "join", "leave", "no-such-event", "", "batch", *RESERVED]

# frames each of which once hurt the server (issue 13), plus classic parser traps
CORPUS: list[str | bytes] = [
    '42["chat",NaN]',
    '42["chat",Infinity]',
    '42["chat",{"x":-Infinity}]',
    '42["echo",1e999]',
    '42["disconnect"]',
    '42["disconnect","made-up reason"]',
    '42["connect",{"REMOTE_ADDR":"6.6.6.6"},{"token":"x"}]',
    '45999999999-["echo",{"_placeholder":true,"num":0}]',
    '451-["echo",{"_placeholder":true,"num":7}]',
    "7",
    "8",
    "9",
    "",
    "a",
    "4",
    "40",
    '40{"token":"\\ud800"}',
    "41",
    "43",
    "44",
    '42{"a":1}',
    "42[]",
    "42[1,2]",
    '42["echo"',
    "42" + "[" * 5000,
    "42" + "1" * 120 + '["echo"]',
    '42["join","general\\n"]',
    '42["join",{"room":"x","company":2}]',
    '42["chat",{"room":"nope"}]',
    "2probe",
    "5",
    "6",
    "b" + "AAAA",
    "bnot-base64!",
    b"\x00\x01\x02",
    b"",
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20,
)
poison = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "[" * 3000, '"\\ud800"', "01", "{", "tru"])


@st.composite
def event_packet(draw) -> str:
    """A Socket.IO EVENT, sometimes with a poisoned argument spliced into its JSON text."""
    name = draw(st.one_of(st.sampled_from(EVENTS), st.text(max_size=10)))
    args = draw(st.lists(json_values, max_size=3))
    text = json.dumps([name, *args])
    if draw(st.booleans()) and text.endswith("]"):
        text = text[:-1] + "," + draw(poison) + "]"
    ack = draw(st.one_of(st.none(), st.integers(0, 10**6)))
    return "42" + ("" if ack is None else str(ack)) + text


@st.composite
def socketio_packet(draw) -> str:
    """Any Socket.IO packet type (0-9), attachments, namespace, id and payload, mostly near misses."""
    kind = draw(st.integers(0, 9))
    attachments = draw(st.one_of(st.just(""), st.integers(0, 10**11).map(lambda n: f"{n}-")))
    namespace = draw(st.one_of(st.just(""), st.sampled_from(["/", "/admin,", "/x?y=1,"])))
    ack = draw(st.one_of(st.just(""), st.integers(0, 10**6).map(str)))
    payload = draw(st.one_of(json_values.map(json.dumps), poison, st.text(max_size=20)))
    return "4" + str(kind) + attachments + namespace + ack + payload


frames = st.one_of(
    event_packet(),
    socketio_packet(),
    st.sampled_from(CORPUS),
    st.text(max_size=40),
    st.binary(max_size=64),
    st.sampled_from(["2", "3", "6"]),  # ping, pong, noop: fine from a client
)
