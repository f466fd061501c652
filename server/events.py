"""Tenant-scoped event handlers: connect, disconnect, echo, chat, join, leave, and the catch-all.

Rooms: every socket is in ``c:<company>`` and ``u:<company>:<user>``; sub-rooms a client joins
are ``c:<company>:r:<name>``. Clients only ever name a sub-room; the company part comes from their
token, so no client can address another company's room.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import socketio

from .auth import AuthError
from .limits import LimitExceeded, TokenBucket
from .recovery import BadRecoverRequest, parse_request

if TYPE_CHECKING:
    from .app import LabServer

log = logging.getLogger("server.events")
BATCHABLE = ("echo", "chat", "join", "leave")  # events a client may send alone or inside a batch
ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # used with fullmatch: "$" would let "name\n" through
# disconnect reasons are metric labels: a closed set (python-socketio's reasons and the server's own)
DISCONNECT_REASONS = frozenset(
    {
        *(v for k, v in vars(socketio.AsyncServer.reason).items() if k.isupper()),
        "flood",
        "slow_client",
        "protocol_error",
        "connect_timeout",
    }
)


class BadArgument(Exception):
    """An event argument of the wrong type or shape."""


class CrossTenant(Exception):
    """An attempt to reach another company's rooms."""


def company_room(company: int) -> str:
    return f"c:{company}"


def user_room(company: int, user: int) -> str:
    return f"u:{company}:{user}"


def sub_room(company: int, name: str) -> str:
    return f"c:{company}:r:{name}"


@dataclass(slots=True)
class SocketState:
    """What the server keeps per socket. Baseline never deletes it (the seed's 'memory leak')."""

    sid: str
    company: int
    user: int
    ip: str
    connected_at: float
    bucket: TokenBucket | None = None
    rooms: set[str] = field(default_factory=set)
    events: int = 0
    rejected: int = 0
    connected: bool = True
    kicked: bool = False  # disconnected for flooding; events still in flight are dropped


class HasCompany(Protocol):
    company: int


def room_name(state: HasCompany, arg: object) -> str:
    """Validate a sub-room reference (a name, or ``{"room": name, "company": id}``)."""
    if isinstance(arg, dict):
        company = arg.get("company", state.company)
        if company != state.company:
            raise CrossTenant(f"room of company {company!r} refused: you belong to company {state.company}")
        arg = arg.get("room")
    if not isinstance(arg, str):
        raise BadArgument('room must be a string name or {"room": name}')
    if ":" in arg:
        raise CrossTenant("room names may not contain ':' (internal room names are not addressable)")
    if not ROOM_NAME.fullmatch(arg):
        raise BadArgument("room name must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return arg


class Handlers:
    """Socket.IO handlers bound to one ``LabServer``."""

    def __init__(self, lab: LabServer) -> None:
        self.lab = lab

    def register(self, sio: socketio.AsyncServer) -> None:
        sio.on("connect", self.connect)
        sio.on("disconnect", self.disconnect)
        self.batchable = {name: self.wrap(name, getattr(self, "on_" + name)) for name in BATCHABLE}
        for name, handler in self.batchable.items():
            sio.on(name, handler)
        sio.on("batch", self.on_batch)
        sio.on("*", self.unknown)

    # -- connection lifecycle -------------------------------------------------------------
    async def connect(self, sid: str, environ: dict, auth: object = None) -> None:
        lab, s = self.lab, self.lab.settings
        request = environ.get("aiohttp.request")
        ip = (request.remote if request is not None else None) or environ.get("REMOTE_ADDR", "?")
        try:
            if s.toggles.rate_limit and lab.bans.banned(ip):
                raise LimitExceeded("ip_banned", "this address is refused for a while after flooding")
            if s.toggles.conn_limits and lab.memory_status == "critical":
                raise LimitExceeded("memory_critical", "server memory is critical; try later")
            queries = lab.db.queries
            try:
                user = await lab.auth.authenticate(auth)
            finally:
                lab.metrics.db_queries.inc(lab.db.queries - queries)
            if s.toggles.token_cache:
                lab.metrics.token_cache.labels(result="miss" if lab.db.queries > queries else "hit").inc()
            if s.toggles.conn_limits:
                lab.limiter.check(user.company, user.id, ip)
            recover = None
            if lab.recovery is not None and isinstance(auth, dict) and "recover" in auth:
                rooms, since = parse_request(auth["recover"], s.max_rooms_per_socket)
                recover = [room_name(SimpleNamespace(company=user.company), r) for r in rooms], since
        except (BadRecoverRequest, BadArgument, CrossTenant) as exc:
            lab.metrics.refusals.labels(reason="bad_recover").inc()
            raise socketio.exceptions.ConnectionRefusedError(f"bad recover payload: {exc}") from None
        except AuthError as exc:
            lab.metrics.refusals.labels(reason=exc.code).inc()
            raise socketio.exceptions.ConnectionRefusedError(exc.reason) from None
        except LimitExceeded as exc:
            lab.metrics.refusals.labels(reason=exc.code).inc()
            raise socketio.exceptions.ConnectionRefusedError(exc.reason) from None
        except UnicodeError:  # e.g. a token holding a lone surrogate: not a token anyone was given
            lab.metrics.refusals.labels(reason="auth_invalid").inc()
            raise socketio.exceptions.ConnectionRefusedError("invalid token") from None
        except Exception as exc:  # a failed dependency: refused with a reason, counted as what it is
            lab.metrics.errors.labels(kind="connect_error").inc()
            log.warning("connect failed: %s: %s", type(exc).__name__, str(exc)[:200])
            raise socketio.exceptions.ConnectionRefusedError("server error during connect; retry") from None
        eio_sid = lab.sio.manager.eio_sid_from_sid(sid, "/")
        sock = lab.sio.eio.sockets.get(eio_sid) if eio_sid is not None else None
        if sock is None or sock.closing or sock.closed:  # it went away while we authenticated: its disconnect
            lab.metrics.refusals.labels(reason="closed_during_connect").inc()  # has run, so counting it would
            raise socketio.exceptions.ConnectionRefusedError("connection closed")  # leave a phantom connection
        lab.limiter.add(user.company, user.id, ip)
        bucket = TokenBucket(s.event_rate, s.event_burst) if s.toggles.rate_limit else None
        lab.sockets[sid] = SocketState(sid, user.company, user.id, ip, time.time(), bucket)
        await lab.sio.enter_room(sid, company_room(user.company))
        await lab.sio.enter_room(sid, user_room(user.company, user.id))
        if recover is not None:
            await self.resume(lab.sockets[sid], eio_sid, *recover)
        lab.metrics.connects.inc()
        lab.metrics.connections.inc()

    async def disconnect(self, sid: str, reason: str = "unknown") -> None:
        lab = self.lab
        if lab.recovery is not None:
            lab.recovery.forget(lab.sio.manager.eio_sid_from_sid(sid, "/"))
        state = lab.sockets.get(sid)
        if state is None or not state.connected:
            return
        state.connected = False
        lab.limiter.remove(state.company, state.user, state.ip)
        lab.metrics.connections.dec()
        reason = lab.disconnect_reasons.pop(sid, reason)
        lab.metrics.disconnects.labels(reason=reason if reason in DISCONNECT_REASONS else "other").inc()
        if lab.settings.toggles.cleanup:
            del lab.sockets[sid]

    # -- events -----------------------------------------------------------------------------
    def wrap(self, name: str, fn):
        lab = self.lab
        events_in: Any = lab.metrics.events_in.labels(event=name)
        handler_seconds: Any = lab.metrics.handler_seconds
        if lab.lean is not None:  # lean_metrics: plain numbers, folded into these when read
            events_in, handler_seconds = lab.lean.counter(events_in), lab.lean.handler_seconds

        async def handler(sid: str, *args):
            t0 = time.perf_counter()
            events_in.inc()
            state = lab.sockets.get(sid)
            if state is None or not state.connected:
                return {"error": "not connected"}
            state.events += 1  # the token bucket was charged on receipt (SioServer), for every packet
            try:
                return await fn(state, *args)
            except BadArgument as exc:
                lab.metrics.errors.labels(kind="bad_argument").inc()
                return {"error": "bad_argument", "detail": str(exc)}
            except CrossTenant as exc:
                lab.metrics.errors.labels(kind="cross_tenant").inc()
                lab.metrics.refusals.labels(reason="cross_tenant").inc()
                return {"error": "cross_tenant", "detail": str(exc)}
            except Exception as exc:  # a bug or a failed dependency: this event fails, the client stays
                lab.metrics.errors.labels(kind="handler_error").inc()
                log.warning("%s handler failed: %s: %s", name, type(exc).__name__, str(exc)[:200])
                return {"error": "server_error", "detail": f"{name} failed on the server"}
            finally:
                handler_seconds.inc(time.perf_counter() - t0)

        return handler

    async def resume(self, state: SocketState, eio_sid: str, names: list[str], since: dict) -> None:
        """Recovery at connect: join the named sub-rooms, then hold the report and the replay
        until the CONNECT packet has gone out (``SioServer._handle_connect``)."""
        lab, s = self.lab, self.lab.settings
        joined = []
        for name in names:
            if s.toggles.conn_limits and name not in state.rooms and len(state.rooms) >= s.max_rooms_per_socket:
                break
            state.rooms.add(name)
            joined.append(name)
            await lab.sio.enter_room(state.sid, sub_room(state.company, name))
        member_of = {company_room(state.company), user_room(state.company, state.user)}
        member_of.update(sub_room(state.company, name) for name in state.rooms)
        assert lab.recovery is not None  # only clients of a node with recovery get here
        lab.recovery.resume(eio_sid, member_of, since, joined)

    async def on_batch(self, sid: str, entries=None, *rest):
        """A client's batch of events ``[[event, ...args], ...]``: each entry is handled as if sent alone,
        pays the rate limit like one packet (the batch's own packet paid for the first), and its
        reply is the ack's list at the entry's index."""
        lab = self.lab
        state = lab.sockets.get(sid)
        if state is None or not state.connected:
            return {"error": "not connected"}
        limit = lab.settings.batch_size
        if not isinstance(entries, list) or not entries or len(entries) > limit:
            lab.metrics.errors.labels(kind="bad_argument").inc()
            return {"error": "bad_argument", "detail": f"batch takes a list of 1 to {limit} [event, ...args] entries"}
        replies = []
        for i, entry in enumerate(entries):
            if i and state.bucket is not None and not state.bucket.take(time.monotonic()):
                replies.append(await self.rate_limited(state))
                continue
            if not isinstance(entry, list) or not entry or entry[0] not in self.batchable:
                lab.metrics.errors.labels(kind="bad_argument").inc()
                detail = f"entries are [event, ...args], event one of {', '.join(BATCHABLE)}"
                replies.append({"error": "bad_argument", "detail": detail})
                continue
            replies.append(await self.batchable[entry[0]](sid, *entry[1:]))
        return replies

    async def rate_limited(self, state: SocketState) -> dict:
        lab, s = self.lab, self.lab.settings
        state.rejected += 1
        if state.kicked:
            return {"error": "rate_limited", "detail": "disconnected for flooding"}
        lab.metrics.refusals.labels(reason="rate_limited").inc()
        assert state.bucket is not None  # rate-limited: the rate_limit toggle gave it a bucket
        if state.bucket.strike(s.flood_window_s) >= s.flood_strikes:
            state.kicked = True
            lab.metrics.refusals.labels(reason="flood_disconnect").inc()
            lab.bans.ban(state.ip, s.ban_s)
            lab.drop(state.sid, "flood")
        return {"error": "rate_limited", "detail": f"over {s.event_rate:g} events/s"}

    async def on_echo(self, state: SocketState, *args):
        return args[0] if len(args) == 1 else tuple(args)

    async def on_chat(self, state: SocketState, payload=None, *rest):
        room = company_room(state.company)
        if isinstance(payload, dict) and ("room" in payload or "company" in payload):
            name = room_name(state, payload)
            if name not in state.rooms:
                raise BadArgument(f"join room {name!r} before chatting in it")
            room = sub_room(state.company, name)
        await self.lab.sio.emit(
            "chat", {"from": {"company": state.company, "user": state.user}, "data": payload}, room=room
        )
        return self.lab.sio.manager.delivery_ack()  # {"ok": True}, plus local_only when no other node got it

    async def on_join(self, state: SocketState, arg=None, *rest):
        name = room_name(state, arg)
        s = self.lab.settings
        if s.toggles.conn_limits and name not in state.rooms and len(state.rooms) >= s.max_rooms_per_socket:
            self.lab.metrics.refusals.labels(reason="room_limit").inc()
            return {"error": "room_limit", "detail": f"at most {s.max_rooms_per_socket} rooms per connection"}
        state.rooms.add(name)
        room = sub_room(state.company, name)
        await self.lab.sio.enter_room(state.sid, room)
        recovery = self.lab.recovery
        if recovery is not None and self.lab.sio.manager.eio_sid_from_sid(state.sid, "/") in recovery.sequenced:
            position = recovery.position(room)  # after entering: the next delivery here is position + 1
            if position is not None:
                return {"ok": True, "room": name, "position": {room: position}}
        return {"ok": True, "room": name}

    async def on_leave(self, state: SocketState, arg=None, *rest):
        name = room_name(state, arg)
        state.rooms.discard(name)
        await self.lab.sio.leave_room(state.sid, sub_room(state.company, name))
        return {"ok": True, "room": name}

    async def unknown(self, event: str, sid: str, *args):
        self.lab.metrics.events_in.labels(event="unknown").inc()
        self.lab.metrics.errors.labels(kind="unknown_event").inc()
        return {"error": "unknown_event", "detail": f"no handler for event {event!r}"}
