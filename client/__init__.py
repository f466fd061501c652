"""Client SDK for the reference server (python-socketio underneath; knows the server only by its wire format).

    from client import AsyncClient

    client = AsyncClient("http://127.0.0.1:8000", token="...")
    client.subscribe("chat", lambda msg: print(msg))
    await client.connect()
    await client.emit("chat", {"text": "hi"})          # waits for the server's ack and returns it

Offers: ``subscribe`` / ``unsubscribe``, ``emit`` (ack or fire-and-forget, optional client-side
batching), ``join`` / ``leave`` sub-rooms (re-joined after a reconnect), transparent decoding of
the server's ``batch`` frames, reconnect with exponential backoff and full jitter, and
missed-message recovery (``recover=True``).
"""

from .backoff import Backoff
from .frames import decode_batch
from .sdk import AsyncClient, NotConnectedError, RecoveryReport

__all__ = ["AsyncClient", "Backoff", "NotConnectedError", "RecoveryReport", "decode_batch"]
