"""The library internals server/compat.py names, checked against the installed libraries: an upgrade
that moves one fails here by name (the server tests would fail too, but somewhere far from the cause)."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

import engineio
import pytest
import socketio
from engineio.async_socket import AsyncSocket

from server.app import SioServer
from server.compat import (
    CALLS,
    OVERRIDES,
    TESTED,
    adopt,
    namespace_rooms,
    observe_many,
    packet_codec,
    pending_binary,
    replace_queue,
)
from server.fanout import LabRedisManager
from server.transport import GuardedSocket, LeanSocket

OURS = {
    socketio.AsyncServer: [SioServer],
    AsyncSocket: [GuardedSocket, LeanSocket],
    socketio.AsyncRedisManager: [LabRedisManager],
}
INSTALLED = f"python-socketio {version('python-socketio')}, python-engineio {version('python-engineio')}"


def _id(x: object) -> str:
    return getattr(x, "__name__", None) or str(x)


def _where(owner: type, name: str) -> str:
    return f"{owner.__module__}.{owner.__qualname__}.{name} ({INSTALLED})"


@pytest.mark.parametrize(("owner", "name", "params"), OVERRIDES + CALLS, ids=_id)
def test_the_private_method_is_there_with_the_parameters_the_server_uses(owner, name, params):
    method = getattr(owner, name, None)
    assert callable(method), f"{_where(owner, name)} is gone"
    assert tuple(inspect.signature(method).parameters)[1:] == params, f"{_where(owner, name)} changed its parameters"


@pytest.mark.parametrize(("owner", "name", "params"), OVERRIDES, ids=_id)
def test_every_override_keeps_the_library_signature(owner, name, params):
    overriding = [cls for cls in OURS[owner] if name in cls.__dict__]
    assert overriding, f"no server class overrides {name}: drop it from OVERRIDES"
    for cls in overriding:
        assert tuple(inspect.signature(cls.__dict__[name]).parameters)[1:] == params, f"{cls.__name__}.{name}"


def test_every_private_override_of_the_server_is_named_in_compat():
    named = {(owner, name) for owner, name, _ in OVERRIDES}
    for owner, classes in OURS.items():
        for cls in classes:
            for name in cls.__dict__:
                if name.startswith("_") and not name.startswith("__") and hasattr(owner, name):
                    assert (owner, name) in named, f"{cls.__name__}.{name} overrides a private {owner.__name__} method"


def test_private_state_the_server_reads_is_where_compat_reads_it():
    sio = socketio.AsyncServer(async_mode="aiohttp")
    assert pending_binary(sio) == {}
    sio.manager.rooms.setdefault("/", {})["c:1"] = {}
    assert namespace_rooms(sio.manager) == {"c:1": {}}


@pytest.mark.parametrize("amount", [0.0, 0.0004, 0.12, 0.3, 99.0])
def test_many_observations_at_once_leave_a_histogram_as_that_many_observe_calls_do(amount):
    from prometheus_client import CollectorRegistry, Histogram

    from server.metrics import LATENCY_BUCKETS

    one, many = (Histogram(name, "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry()) for name in "ab")
    for _ in range(7):
        one.observe(amount)
    observe_many(many, amount, 7)
    samples = [{(s.name[1:], tuple(s.labels.items())): s.value for s in h.collect()[0].samples} for h in (one, many)]
    assert samples[0].keys() == samples[1].keys()
    for key, value in samples[0].items():  # the sum: 7 additions against one product, equal to rounding
        assert samples[1][key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert samples[1][("_count", ())] == 7.0


def test_engineio_sockets_can_be_adopted_by_a_subclass():
    class Adopted(AsyncSocket):
        pass

    sock = AsyncSocket(engineio.AsyncServer(async_mode="aiohttp"), "sid")
    adopt(sock, Adopted)
    assert type(sock) is Adopted and sock.sid == "sid"


@pytest.mark.parametrize(("package", "minor"), TESTED.items())
def test_the_installed_library_is_the_tested_minor_version(package, minor):
    assert version(package).split(".")[:2] == minor.split("."), (
        f"{package} {version(package)}: compat tested on {minor}"
    )


def test_a_packet_class_reads_and_writes_its_json_and_binary_scan_through_the_codec_hooks():
    calls = []

    class Json:
        @staticmethod
        def dumps(obj, **kwargs):
            calls.append("dumps")
            return '["x",1]'

        @staticmethod
        def loads(text, **kwargs):
            calls.append("loads")
            return ["x", 1]

    def data_is_binary(cls, data):
        calls.append("binary")
        return False

    Packet = type("Packet", (socketio.packet.Packet,), packet_codec(Json, data_is_binary))
    assert Packet(socketio.packet.EVENT, data=["x", 1]).encode() == '2["x",1]'
    assert Packet(encoded_packet='2["x",1]').data == ["x", 1]
    assert calls[:2] == ["binary", "dumps"] and "loads" in calls


async def test_engineio_send_puts_every_packet_on_the_socket_queue_with_put_nowait():
    seen = []

    class Recorder(asyncio.Queue):
        def put_nowait(self, item):
            seen.append(item)
            super().put_nowait(item)

    sock = AsyncSocket(engineio.AsyncServer(async_mode="aiohttp"), "sid")
    replace_queue(sock, Recorder())
    pkt = engineio.packet.Packet(engineio.packet.MESSAGE, "2hi")
    await sock.send(pkt)
    assert seen == [pkt]
    assert await sock.poll() == [pkt]  # and the writer's poll takes them from it
