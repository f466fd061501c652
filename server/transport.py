"""A leaner Engine.IO websocket loop for the ``lean_transport`` toggle.

python-engineio's ``AsyncSocket._websocket_handler`` reads every message through a new task and an
``asyncio.wait_for`` (its dead-client timeout). The server's service task already closes sockets
whose pongs stop (``check_ping_timeout``), which also ends this read, so here each message is one
plain ``await ws.wait()``. Upgrades from long-polling keep the stock path.
"""

from __future__ import annotations

import asyncio

from engineio import exceptions, packet
from engineio.async_socket import AsyncSocket


class LeanSocket(AsyncSocket):
    async def _websocket_handler(self, ws):
        if self.connected:  # an upgrade from polling: the stock handshake
            return await super()._websocket_handler(ws)
        self.connected = True
        self.upgraded = True
        server = self.server
        max_size = server.max_http_buffer_size

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

        writer_task = asyncio.ensure_future(writer())
        while True:
            try:
                data = await ws.wait()
            except Exception:
                break
            if data is None or len(data) > max_size:
                break
            try:
                pkt = packet.Packet(encoded_packet=data)
            except ValueError:
                break  # not Engine.IO: close this client only
            try:
                await self.receive(pkt)
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                break
            except Exception:
                server.logger.exception("receive error")
        await self.queue.put(None)
        await writer_task
        await self.close(wait=False, abort=True, reason=server.reason.CLIENT_DISCONNECT)
