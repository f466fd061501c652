"""Engine.IO sockets of the reference server: validated frames, prompt closes, bounded send queues.

``GuardedSocket`` (every profile) fixes what python-engineio leaves to the peer:

- a frame that is not Engine.IO (empty, ``7``, ``a``...) closes that client with one counted,
  rate-limited log line instead of two tracebacks;
- a socket the server closes drops its websocket at once (stock engine.io keeps the descriptor
  until the next read times out, about 45 s for a peer that says nothing);
- with ``outbound`` limits (the ``conn_limits`` toggle) the send queue is bounded in messages and
  bytes: a client that does not read is dropped with reason ``slow_client`` instead of growing the
  server's memory with its company's traffic (the slow-client backpressure engine.io lacks). The
  bound applies while the client's connection is not taking data (the kernel's send buffer is full):
  a burst that merely outruns the writer task inside one loop iteration is no sign of a slow reader.

``LeanSocket`` (the ``lean_transport`` toggle): python-engineio's ``_websocket_handler`` reads
every message through a new task and an ``asyncio.wait_for`` (its dead-client timeout). The
server's service task already closes sockets whose pongs stop (``check_ping_timeout``), which also
ends this read, so here each message is one plain ``await ws.wait()``. Upgrades from long-polling
keep the stock path.

``direct_write`` (with ``lean_transport``): engine.io puts every outgoing packet on an
``asyncio.Queue`` that a writer task per connection empties (one task wake-up and a ``wait_for``
per packet). Here :class:`DirectQueue` writes a packet's websocket frame straight to the transport
when nothing is ahead of it (queue empty, no write in progress, the kernel took every byte so far);
otherwise the packet queues (bounded as ``Outbox``) and a writer task is started for as long as
the queue holds packets. A connection keeps no writer task while it keeps up, and no ping task
either: its next PING is a loop timer (engine.io starts a task per connection that sleeps a ping
interval).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from engineio import exceptions, packet
from engineio.async_socket import AsyncSocket

from . import compat

if TYPE_CHECKING:
    from .app import LabServer

log = logging.getLogger("server.transport")
ABORT_AFTER_S = 1.0  # a closed socket's CLOSE packet gets this long to leave before the TCP connection is cut


def frame_ok(data: object) -> bool:
    """An Engine.IO frame: binary, or text starting with a packet type 0-6 (or ``b``, base64 binary)."""
    if isinstance(data, (bytes, bytearray)):
        return True
    if not isinstance(data, str) or data == "" or data[0] not in "0123456b":
        return False
    if data[0] == "b":  # base64 binary (a polling habit; rare over websocket): engine.io decodes it unguarded
        try:
            base64.b64decode(data[1:], validate=True)
        except ValueError:
            return False
    return True


class Outbox(asyncio.Queue):
    """The send queue of one socket, bounded in messages and bytes while ``stalled()``; overflow calls
    ``on_overflow`` once."""

    def __init__(
        self, max_messages: int, max_bytes: int, on_overflow: Callable[[], None], stalled: Callable[[], bool]
    ) -> None:
        super().__init__()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.stalled = stalled
        self.on_overflow = on_overflow
        self.bytes = 0
        self.overflowed = False

    def put_nowait(self, item) -> None:
        if item is not None:
            if self.overflowed:
                return
            size = len(item.encode()) if item.packet_type == packet.MESSAGE else 8  # encode() is cached
            # the bound is on backlog: one packet larger than it still goes out to a client that keeps up
            over = self.qsize() >= self.max_messages or (self.bytes + size > self.max_bytes and self.qsize())
            if over and self.stalled():
                self.overflowed = True
                self.on_overflow()
                return
            self.bytes += size
        super().put_nowait(item)

    def get_nowait(self):
        item = super().get_nowait()
        if item is not None and item.packet_type == packet.MESSAGE:
            self.bytes = max(0, self.bytes - len(item.encode()))
        return item


def ws_frame(data: str | bytes) -> bytes:
    """One unmasked, uncompressed, final websocket frame (RFC 6455 5.2): text for str, binary for bytes."""
    if isinstance(data, str):
        data, head = data.encode(), 0x81
    else:
        head = 0x82
    n = len(data)
    if n < 126:
        return bytes((head, n)) + data
    if n < 65536:
        return struct.pack("!BBH", head, 126, n) + data
    return struct.pack("!BBQ", head, 127, n) + data


class DirectQueue(Outbox):
    """A send queue that writes a packet's frame to the transport at once when nothing is ahead of it."""

    transport: asyncio.Transport | None = None  # set while the lean loop runs
    start_writer: Callable[[], None] | None = None
    writing = False  # a writer task holds or sends packets: new ones queue behind them

    def put_nowait(self, item) -> None:
        t = self.transport
        if (
            item is not None
            and t is not None
            and not self.writing
            and not self.qsize()
            and not t.get_write_buffer_size()
            and not t.is_closing()
        ):
            frame = item.__dict__.get("ws_frame")  # a fan-out hands every recipient the same packet: frame it once
            if frame is None:
                frame = item.ws_frame = ws_frame(item.encode())
            t.write(frame)
            return
        super().put_nowait(item)
        if self.start_writer is not None and not self.writing:
            self.start_writer()


def writing(lab: LabServer, eio_sid: str) -> bool:
    """Is a write to this client still in progress (packets queued, or bytes the kernel has not taken)?"""
    sock = lab.sio.eio.sockets.get(eio_sid)
    if sock is None:
        return False
    queue = sock.queue
    if queue.qsize() or getattr(queue, "writing", False):
        return True
    if isinstance(queue, DirectQueue) and queue.transport is not None:  # the lean loop's, without the look-ups
        return queue.transport.get_write_buffer_size() > 0
    transport = sock.transport() if isinstance(sock, GuardedSocket) else None
    return transport is not None and transport.get_write_buffer_size() > 0


def peer_stalled(lab: LabServer, eio_sid: str) -> bool:
    sock = lab.sio.eio.sockets.get(eio_sid)
    return not isinstance(sock, GuardedSocket) or sock.stalled()


class GuardedSocket(AsyncSocket):
    lab: LabServer
    ws = None

    @classmethod
    def adopt(cls, sock: AsyncSocket, lab: LabServer) -> None:
        """Turn engine.io's new socket into this class (before its transport starts)."""
        compat.adopt(sock, cls)
        sock.lab = lab
        s = lab.settings
        if s.toggles.direct_write and s.toggles.lean_transport:
            sid = sock.sid
            limited = s.toggles.conn_limits
            old = compat.replace_queue(
                sock,
                DirectQueue(
                    s.max_outbound_messages if limited else 2**62,
                    s.max_outbound_bytes if limited else 2**62,
                    lambda: lab.drop_eio(sid, "slow_client"),
                    lambda: peer_stalled(lab, sid),
                ),
            )
            while not old.empty():  # the OPEN packet engine.io queued already
                sock.queue.put_nowait(old.get_nowait())
        elif s.toggles.conn_limits:
            sid = sock.sid  # the callback must not hold the socket: a cycle would outlive the connection until a GC
            old, sock.queue = (
                sock.queue,
                Outbox(
                    s.max_outbound_messages,
                    s.max_outbound_bytes,
                    lambda: lab.drop_eio(sid, "slow_client"),
                    lambda: peer_stalled(lab, sid),
                ),
            )
            while not old.empty():  # the OPEN packet engine.io queued already
                sock.queue.put_nowait(old.get_nowait())

    def reject_frame(self, data: object) -> None:
        self.lab.metrics.errors.labels(kind="malformed_frame").inc()
        log.warning("closing %s: not an Engine.IO frame: %r", self.sid, str(data)[:40])

    async def receive(self, pkt):
        if not 0 <= pkt.packet_type <= packet.NOOP:
            self.reject_frame(str(pkt.packet_type))
            await self.close(wait=False, abort=True)
            raise exceptions.SocketIsClosedError()
        return await super().receive(pkt)

    async def close(self, wait=True, abort=False, reason=None):
        was_closed = self.closed
        await super().close(wait=False, abort=abort, reason=reason)  # never wait on a peer that does not read
        if not was_closed:
            self.queue.put_nowait(None)  # ends the writer, which closes the websocket
            self.abort_later(0.0 if abort else ABORT_AFTER_S)

    def transport(self) -> asyncio.Transport | None:
        request = self.ws.environ.get("aiohttp.request") if self.ws is not None else None
        return request.transport if request is not None else None

    def stalled(self) -> bool:
        """Is the peer not taking data? Its kernel send buffer is full (bytes wait in user space), or
        it has no websocket (a long-polling client that stopped polling)."""
        transport = self.transport()
        return transport is None or transport.get_write_buffer_size() > 0

    def abort_later(self, delay: float) -> None:
        transport = self.transport()
        if transport is not None:
            asyncio.get_running_loop().call_later(delay, transport.abort)

    async def _websocket_handler(self, ws):
        self.ws = ws
        wait = ws.wait

        async def checked_wait():  # the stock loop decodes outside its try: a bad frame would escape as a traceback
            data = await wait()
            if not frame_ok(data):
                self.reject_frame(data)
                return None  # the stock loop ends as for a peer that closed
            return data

        ws.wait = checked_wait
        try:
            return await super()._websocket_handler(ws)
        except Exception as exc:  # whatever escapes the stock loop must still close the socket (else: a phantom)
            self.lab.metrics.errors.labels(kind="malformed_frame").inc()
            log.warning("closing %s after a transport error: %s: %s", self.sid, type(exc).__name__, str(exc)[:200])
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)
        finally:  # break the cycles (ws -> checked_wait -> ws, socket -> ws -> handler -> socket)
            del ws.wait
            self.ws = None


class LeanSocket(GuardedSocket):
    last_ping: float | None  # engine.io's: when the unanswered PING went out (None: answered)

    def schedule_ping(self):
        """direct_write: the next PING from a loop timer, not a task per connection sleeping a ping interval."""
        if not isinstance(self.queue, DirectQueue):
            return super().schedule_ping()
        if self.last_ping:  # as engine.io: only after the previous ping's pong
            self.last_ping = None
            asyncio.get_running_loop().call_later(self.server.ping_interval, self._ping_due)

    def _ping_due(self) -> None:
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.queue.put_nowait(packet.Packet(packet.PING))

    async def _websocket_handler(self, ws):
        if self.connected:  # an upgrade from polling: the stock handshake
            return await super()._websocket_handler(ws)
        self.ws = ws
        try:
            await self._lean_loop(ws)
        finally:
            self.ws = None  # socket -> ws -> handler -> socket would wait for a GC pass

    async def _lean_loop(self, ws):
        self.connected = True
        self.upgraded = True
        server = self.server
        max_size = server.max_http_buffer_size
        queue = self.queue
        direct = isinstance(queue, DirectQueue)
        writer_task: asyncio.Future | None = None

        async def drain():  # direct_write: send what queued while the transport was busy, then end
            try:
                while not queue.empty():
                    pkt = queue.get_nowait()
                    if pkt is None:
                        queue.transport = queue.start_writer = None
                        await ws.close()
                        return
                    await ws.send(pkt.encode())
            except Exception:
                queue.transport = queue.start_writer = None  # the connection failed: nothing more goes out
            finally:
                queue.writing = False

        def start_writer():
            nonlocal writer_task
            queue.writing = True  # from now: one drain task at a time, packets queue behind it
            writer_task = asyncio.ensure_future(drain())

        async def writer():
            while True:
                try:
                    packets = await self.poll()
                except exceptions.QueueEmpty:
                    break
                if not packets:
                    break
                try:
                    for pkt in packets:
                        await ws.send(pkt.encode())
                except Exception:
                    break
            await ws.close()

        if direct:
            queue.transport, queue.start_writer = self.transport(), start_writer
            if not queue.empty():  # the OPEN packet
                start_writer()
        else:
            writer_task = asyncio.ensure_future(writer())
        while True:
            try:
                data = await ws.wait()
            except Exception:
                break
            if data is None or len(data) > max_size:
                break
            if not frame_ok(data):
                self.reject_frame(data)
                break
            try:
                pkt = packet.Packet(encoded_packet=data)
            except ValueError:
                self.reject_frame(data)
                break
            try:
                await self.receive(pkt)
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                break
            except Exception as exc:
                self.lab.metrics.errors.labels(kind="handler_error").inc()
                log.warning("receive error on %s: %s: %s", self.sid, type(exc).__name__, str(exc)[:200])
        await self.queue.put(None)
        while writer_task is not None and not writer_task.done():
            await writer_task  # direct_write: the drain that took the None may be a later one
        if direct:
            queue.transport = queue.start_writer = None  # socket -> queue -> start_writer -> socket
        await self.close(wait=False, abort=True, reason=server.reason.CLIENT_DISCONNECT)
