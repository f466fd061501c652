"""How far a generator host's monotonic clock is from the driver's: NTP-style round trips over UDP.

The driver answers each request with its ``time.monotonic()`` (:class:`ClockServer`). A generator
sends a request at its local ``t1``, gets the driver's ``T`` back at its local ``t2``: if the request
and the reply took equally long, the driver's clock read ``T`` at local ``(t1 + t2) / 2``, so

    offset = T - (t1 + t2) / 2      (driver clock minus local clock)

and however the round trip ``t2 - t1`` split between the two directions, the true offset is within
``(t2 - t1) / 2`` of that. Of many round trips the one with the shortest RTT is kept
(:func:`estimate`): it has the tightest bound. A generator on the driver's machine reads the same
machine-wide clock and finds an offset of about 0 within a few tens of microseconds.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

PACKET = struct.Struct("!8sd")  # request id, then the driver's clock (0 in a request)
SAMPLES = 50
REPLY_TIMEOUT_S = 0.5

Clock = Callable[[], float]
# one round trip: (local clock at send, the driver's clock, local clock at receive), or None if lost
Exchange = Callable[[], tuple[float, float, float] | None]


@dataclass(frozen=True)
class ClockEstimate:
    """The driver's clock minus this host's, at local time ``at``, within +-``uncertainty_s``."""

    offset_s: float
    uncertainty_s: float
    rtt_s: float
    at: float  # local clock at the kept sample's midpoint
    samples: int  # round trips that came back

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class ClockError(RuntimeError):
    """No round trip to the driver's clock server came back."""


def estimate(exchange: Exchange, samples: int = SAMPLES) -> ClockEstimate:
    """The offset from the round trip with the smallest RTT among ``samples`` tries (lost ones skipped)."""
    best: tuple[float, float, float] | None = None
    got = 0
    for _ in range(samples):
        sample = exchange()
        if sample is None:
            continue
        t1, remote, t2 = sample
        if t2 < t1:
            raise ValueError(f"the local clock went backwards ({t1} -> {t2}): not a monotonic clock")
        got += 1
        if best is None or t2 - t1 < best[2] - best[0]:
            best = sample
    if best is None:
        raise ClockError(f"none of {samples} round trips to the driver's clock server came back")
    t1, remote, t2 = best
    mid = (t1 + t2) / 2
    return ClockEstimate(offset_s=remote - mid, uncertainty_s=(t2 - t1) / 2, rtt_s=t2 - t1, at=mid, samples=got)


class ClockServer:
    """Answers round trips with the driver's clock, on a UDP port of ``host``, in a daemon thread.
    Use as a context manager; ``address`` is what generators are given."""

    def __init__(self, host: str = "127.0.0.1", clock: Clock = time.monotonic) -> None:
        self.clock = clock
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="caplab-clock-server", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(64)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            now = self.clock()
            if len(data) == PACKET.size:
                rid, _ = PACKET.unpack(data)
                try:
                    self.sock.sendto(PACKET.pack(rid, now), peer)
                except OSError:
                    pass

    def __enter__(self) -> ClockServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def udp_exchange(
    address: tuple[str, int], clock: Clock = time.monotonic, timeout_s: float = REPLY_TIMEOUT_S
) -> tuple[Exchange, Callable[[], None]]:
    """An :data:`Exchange` with the :class:`ClockServer` at ``address``, and a function to close its socket.
    A reply to an earlier (timed out) request is recognised by its id and skipped."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect(address)

    def exchange() -> tuple[float, float, float] | None:
        rid = os.urandom(8)
        t1 = clock()
        sock.send(PACKET.pack(rid, 0.0))
        deadline = t1 + timeout_s
        while True:
            left = deadline - clock()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                data = sock.recv(64)
            except (TimeoutError, ConnectionRefusedError):
                return None
            t2 = clock()
            if len(data) == PACKET.size:
                got, remote = PACKET.unpack(data)
                if got == rid:
                    return t1, remote, t2

    return exchange, sock.close


def measure_offset(address: tuple[str, int], samples: int = SAMPLES, clock: Clock = time.monotonic) -> ClockEstimate:
    """:func:`estimate` against the :class:`ClockServer` at ``address``."""
    exchange, close = udp_exchange(address, clock)
    try:
        return estimate(exchange, samples)
    finally:
        close()


def local_address_towards(host: str) -> str:
    """The address of this machine that packets to ``host`` leave from (where workers can reach it)."""
    if host in ("localhost", "") or host.startswith("127."):
        return "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))  # no packet is sent: this only picks the route
        return str(s.getsockname()[0])
