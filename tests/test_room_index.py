"""The ``room_index`` toggle: a disconnect visits the socket's own rooms, and leaves the room table,
the callbacks and the pending sets exactly as python-socketio's scan of every room does."""

from __future__ import annotations

import socketio
from hypothesis import given, settings
from hypothesis import strategies as st

from server.fanout import LabManager

SIDS = [f"s{i}" for i in range(6)]
ROOMS = ["c:1", "c:2", "u:1:1", "u:2:5", "c:1:sub"]
NAMESPACES = ["/", "/admin"]

op = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(SIDS), st.sampled_from(NAMESPACES)),
    st.tuples(st.just("enter"), st.sampled_from(SIDS), st.sampled_from(NAMESPACES), st.sampled_from(ROOMS)),
    st.tuples(st.just("leave"), st.sampled_from(SIDS), st.sampled_from(NAMESPACES), st.sampled_from(ROOMS)),
    st.tuples(st.just("close"), st.sampled_from(NAMESPACES), st.sampled_from(ROOMS)),
    st.tuples(st.just("disconnect"), st.sampled_from(SIDS), st.sampled_from(NAMESPACES)),
)


def managers() -> tuple[socketio.AsyncManager, LabManager]:
    stock, indexed = socketio.AsyncManager(), LabManager()
    indexed.room_index = {}
    for m in (stock, indexed):
        m.set_server(socketio.AsyncServer(async_mode="aiohttp"))
    return stock, indexed


def apply(m: socketio.AsyncManager, step: tuple, connected: set) -> None:
    kind = step[0]
    if kind == "connect":
        _, sid, ns = step
        if (sid, ns) not in connected:  # as the server: one connect per sid and namespace
            connected.add((sid, ns))
            m.basic_enter_room(sid, ns, None, f"e-{sid}")
            m.basic_enter_room(sid, ns, sid, f"e-{sid}")
            if sid == "s5":
                m.pending_disconnect.setdefault(ns, []).append(sid)
            m.callbacks[sid] = {1: print}
    elif kind == "enter":
        _, sid, ns, room = step
        if (sid, ns) in connected:
            m.basic_enter_room(sid, ns, room, f"e-{sid}")
    elif kind == "leave":
        _, sid, ns, room = step
        m.basic_leave_room(sid, ns, room)
    elif kind == "close":
        _, ns, room = step
        m.basic_close_room(room, ns)
    else:
        _, sid, ns = step
        connected.discard((sid, ns))
        m.basic_disconnect(sid, ns)


def state(m: socketio.AsyncManager) -> tuple:
    rooms = {ns: {room: dict(members) for room, members in table.items()} for ns, table in m.rooms.items()}
    return rooms, dict(m.callbacks), {k: list(v) for k, v in m.pending_disconnect.items()}


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40))
def test_an_indexed_manager_keeps_the_same_rooms_as_python_socketios(steps):
    stock, indexed = managers()
    live_a: set = set()
    live_b: set = set()
    for step in steps:
        apply(stock, step, live_a)
        apply(indexed, step, live_b)
        assert state(indexed) == state(stock), step
        for sid in SIDS:
            for ns in NAMESPACES:
                assert indexed.get_rooms(sid, ns) == stock.get_rooms(sid, ns)  # the same rooms, in the same order


def test_a_disconnect_touches_only_the_sockets_own_rooms():
    """The stock disconnect tests membership in every room; the indexed one in none but the socket's."""
    _, indexed = managers()
    for i in range(200):
        sid = f"s{i}"
        indexed.basic_enter_room(sid, "/", None, f"e{i}")
        indexed.basic_enter_room(sid, "/", sid, f"e{i}")
        indexed.basic_enter_room(sid, "/", f"u:1:{i}", f"e{i}")

    class Watched(dict):
        touched = 0

        def __contains__(self, key):
            Watched.touched += 1
            return super().__contains__(key)

    table = indexed.rooms["/"]
    for room in list(table):
        table[room] = Watched(table[room])  # a plain dict stands in for the bidict: only membership is counted
    indexed.basic_disconnect("s7", "/")
    assert Watched.touched <= 3
    assert "s7" not in table and "u:1:7" not in table and "s7" not in table[None]
    assert len(table) == 1 + 2 * 199
