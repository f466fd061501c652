"""``GET /socket-dashboard``: a live page of the node's figures (static files in ``server/static/``).

Live mode: the page connects to the Socket.IO namespace ``/admin`` with the official
socket.io-client (``static/socket.io.min.js``, 4.8.4, MIT) and receives ``metrics``: the JSON of
``/socket-metrics``, one snapshot per ``SOCKET_METRICS_INTERVAL`` (the seed's 5 s by default) for
all dashboard clients of this node (emitted on this node only, never over Redis). The emit goes
through the client manager, so with batching on it arrives in ``batch`` frames, which the page
unwraps with ``client/js/batch.js`` (served at ``/socket-dashboard/batch.js`` from the ``client``
package, not copied). When the socket cannot connect the page polls ``/socket-metrics`` instead.
The page draws the last minutes as plain SVG: no build step, no CDN, works offline.

Access: open when ``SOCKET_ADMIN_TOKEN`` is unset (it shows only what ``/socket-metrics`` already
serves to anyone). When the token is set the page needs either ``Authorization: Bearer <token>``
(the rule of the other admin endpoints, ``http.admin_refusal``), or a session from the login form:
``POST /socket-dashboard/login`` with the token in the form body sets an HttpOnly, SameSite=Strict
cookie holding a random session id (the token itself never goes into a cookie or a URL, as URLs
land in access logs). Sessions live in this process only, bounded in number and time. The same
session id is also set for the path ``/socket.io`` so the page's Socket.IO handshake carries it;
``/admin`` accepts that session or ``auth: {"token": ...}``, and refuses anything else
(``refusals{reason="dashboard_auth"}``). The login form takes at most ``LOGIN_BURST`` attempts per
IP, refilled at ``LOGIN_RATE`` per second: over it, HTTP 429 with ``Retry-After``
(``refusals{reason="dashboard_login"}``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import importlib.util
import logging
import math
import secrets
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING

import socketio
from aiohttp import web

from .limits import TokenBucket, forget_refilled

if TYPE_CHECKING:
    from .app import LabServer

log = logging.getLogger("server.dashboard")
STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "caplab_dashboard"
PATH = "/socket-dashboard"
SESSION_S = 8 * 3600
MAX_SESSIONS = 256
SOCKET_PATH = "/socket.io"  # where the session cookie also goes: the page's Socket.IO handshake
NAMESPACE = "/admin"
ROOM = "dashboard"
MIN_PUSH_GAP_S = 0.25  # a client's "refresh" request never makes the pushes more frequent than this
LOGIN_RATE = 5 / 60.0  # login attempts per second and IP: 5 a minute ...
LOGIN_BURST = 5  # ... at most 5 at once
MAX_LOGIN_BUCKETS = 10_000


def batch_js() -> Path:
    """``client/js/batch.js`` inside the installed ``client`` package (found without importing it)."""
    spec = importlib.util.find_spec("client")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the client package is not installed: /socket-dashboard needs client/js/batch.js")
    return Path(next(iter(spec.submodule_search_locations))) / "js" / "batch.js"


# the page loads only its own files and talks only to this origin
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _cookie(value: str, path: str, max_age: int, secure: bool) -> str:
    """One Set-Cookie value (aiohttp's ``set_cookie`` keeps one cookie per name, we set it for two paths)."""
    jar: SimpleCookie = SimpleCookie()
    jar[COOKIE] = value
    morsel = jar[COOKIE]
    morsel["path"], morsel["max-age"], morsel["samesite"] = path, str(max_age), "Strict"
    morsel["httponly"] = True  # a boolean attribute
    morsel["secure"] = secure
    if not max_age:
        morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    return morsel.OutputString()


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class Dashboard:
    """The page, its login form and the sessions the form hands out."""

    def __init__(self, lab: LabServer) -> None:
        self.lab = lab
        self.sessions: dict[bytes, float] = {}  # sha256(session id) -> expiry (monotonic)
        self.page = (STATIC / "dashboard.html").read_text(encoding="utf-8")
        self.login_page = (STATIC / "login.html").read_text(encoding="utf-8")
        self.batch_js = batch_js().read_bytes()
        self.login_buckets: dict[str, TokenBucket] = {}
        self.feed = AdminFeed(lab, self)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.show)
        app.router.add_post(PATH + "/login", self.login)
        app.router.add_post(PATH + "/logout", self.logout)
        app.router.add_get(PATH + "/batch.js", self.serve_batch_js)
        app.router.add_static(PATH + "/static/", STATIC, append_version=False)
        app.on_startup.append(self.feed.start)

    async def serve_batch_js(self, request: web.Request) -> web.Response:
        return web.Response(body=self.batch_js, content_type="text/javascript", charset="utf-8", headers=HEADERS)

    # -- sessions ---------------------------------------------------------------------------------
    def _valid_session(self, request: web.Request) -> bool:
        sid = request.cookies.get(COOKIE)
        return self.valid_session_id(sid)

    def valid_session_id(self, sid: str | None) -> bool:
        if not sid:
            return False
        now = time.monotonic()
        expiry = self.sessions.get(_digest(sid))
        return expiry is not None and expiry > now

    def _new_session(self) -> str:
        now = time.monotonic()
        for key in [k for k, exp in self.sessions.items() if exp <= now]:
            del self.sessions[key]
        while len(self.sessions) >= MAX_SESSIONS:  # the oldest goes first (dicts keep insertion order)
            del self.sessions[next(iter(self.sessions))]
        sid = secrets.token_urlsafe(32)
        self.sessions[_digest(sid)] = now + SESSION_S
        return sid

    def token_ok(self, given: str) -> bool:
        expected = self.lab.settings.admin_token
        return expected is not None and expected != "" and hmac.compare_digest(_digest(given), _digest(expected))

    # -- handlers ---------------------------------------------------------------------------------
    async def show(self, request: web.Request) -> web.Response:
        from .http import admin_refusal

        if self.lab.settings.admin_token:
            if request.headers.getall("Authorization", []):
                refused = admin_refusal(request, self.lab)
                if refused is not None:
                    return refused
            elif not self._valid_session(request):
                return self._login_form(401, "")
        s = self.lab.settings
        body = (
            self.page.replace("{{INTERVAL_MS}}", str(s.metrics_interval_ms))
            .replace("{{NODE}}", str(s.node))
            .replace("{{PROFILE}}", html.escape(s.profile))
            .replace("{{LOGOUT}}", "" if not s.admin_token else "logout")
        )
        return web.Response(text=body, content_type="text/html", headers=HEADERS)

    def _login_form(self, status: int, error: str) -> web.Response:
        body = self.login_page.replace("{{ERROR}}", html.escape(error))
        headers = {**HEADERS, "WWW-Authenticate": 'Bearer realm="admin"'} if status == 401 else HEADERS
        return web.Response(text=body, status=status, content_type="text/html", headers=headers)

    async def login(self, request: web.Request) -> web.Response:
        if not self.lab.settings.admin_token:
            raise web.HTTPSeeOther(PATH)  # nothing to log in to: the page is open
        if request.content_type != "application/x-www-form-urlencoded":
            return self._login_form(400, "send the login form (application/x-www-form-urlencoded)")
        wait_s = self._login_wait(request.remote or "?")
        if wait_s:
            self.lab.metrics.refusals.labels(reason="dashboard_login").inc()
            resp = self._login_form(429, f"too many login attempts from this address: retry in {wait_s} s")
            resp.headers["Retry-After"] = str(wait_s)
            return resp
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not given:
            return self._login_form(401, "enter the admin token (SOCKET_ADMIN_TOKEN)")
        if not self.token_ok(given):
            return self._login_form(403, "wrong admin token")
        resp = web.HTTPSeeOther(PATH, headers={"Cache-Control": "no-store"})
        sid = self._new_session()
        for path in (PATH, SOCKET_PATH):  # the page, and its Socket.IO handshake (namespace /admin)
            resp.headers.add("Set-Cookie", _cookie(sid, path, SESSION_S, request.secure))
        raise resp

    def _login_wait(self, ip: str) -> int:
        """0 when ``ip`` may try a login now (one attempt taken), else the seconds until it may."""
        now = time.monotonic()
        buckets = self.login_buckets
        bucket = buckets.get(ip)
        if bucket is None:
            if len(buckets) >= MAX_LOGIN_BUCKETS:  # forget refilled buckets, then the oldest
                forget_refilled(buckets, now)
                while len(buckets) >= MAX_LOGIN_BUCKETS:
                    del buckets[next(iter(buckets))]
            bucket = buckets[ip] = TokenBucket(LOGIN_RATE, LOGIN_BURST, stamp=now)
        if bucket.take(now):
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / bucket.rate))

    async def logout(self, request: web.Request) -> web.Response:
        sid = request.cookies.get(COOKIE)
        if sid:
            self.sessions.pop(_digest(sid), None)
        resp = web.HTTPSeeOther(PATH)
        for path in (PATH, SOCKET_PATH):
            resp.headers.add("Set-Cookie", _cookie("", path, 0, request.secure))
        raise resp


class AdminFeed:
    """Namespace ``/admin``: pushes the ``/socket-metrics`` snapshot to the dashboard clients.

    One snapshot per metrics tick for all of them (one room emit, on this node only), right after
    the tick so each push shows that tick's window; a client's ``refresh`` (sent by the page once
    connected) brings a push forward, never closer than ``MIN_PUSH_GAP_S`` to the previous one.
    With batching on, the namespace gets a batcher of its own (a batch is a packet of one
    namespace) on the profile's window, so pushes arrive as ``batch`` frames exactly as room events
    do on ``/``.
    """

    def __init__(self, lab: LabServer, dashboard: Dashboard) -> None:
        self.lab = lab
        self.dashboard = dashboard
        self.clients = 0
        self.wake = asyncio.Event()
        self.batcher = None
        if lab.batcher is not None:
            from .batching import Batcher

            b = lab.batcher
            self.batcher = Batcher(
                b.deliver, b.batch_size, b.batch_max_bytes, b.flush_interval_s, b.compression_threshold,
                lab.metrics, namespace=NAMESPACE,
            )  # fmt: skip
            manager = lab.sio.manager
            manager.namespace_batchers = {**(manager.namespace_batchers or {}), NAMESPACE: self.batcher}
        lab.sio.on("connect", self.connect, namespace=NAMESPACE)
        lab.sio.on("disconnect", self.disconnect, namespace=NAMESPACE)
        lab.sio.on("refresh", self.refresh, namespace=NAMESPACE)

    def authorised(self, environ: dict, auth: object) -> bool:
        if not self.lab.settings.admin_token:
            return True  # open, like /socket-metrics whose figures it pushes
        if isinstance(auth, dict) and isinstance(auth.get("token"), str):
            return self.dashboard.token_ok(auth["token"])
        request = environ.get("aiohttp.request")
        return request is not None and self.dashboard.valid_session_id(request.cookies.get(COOKIE))

    async def connect(self, sid: str, environ: dict, auth: object = None) -> None:
        if not self.authorised(environ, auth):
            self.lab.metrics.refusals.labels(reason="dashboard_auth").inc()
            raise socketio.exceptions.ConnectionRefusedError(
                "admin token required: log in at /socket-dashboard or connect with auth {token}"
            )
        await self.lab.sio.enter_room(sid, ROOM, namespace=NAMESPACE)
        self.clients += 1
        self.lab.metrics.dashboard_clients.set(self.clients)

    async def disconnect(self, sid: str, *reason: object) -> None:
        self.clients -= 1
        self.lab.metrics.dashboard_clients.set(self.clients)

    async def refresh(self, sid: str, *args: object) -> None:
        self.wake.set()

    async def start(self, app: web.Application) -> None:
        self.lab.after_sample.append(self.wake.set)  # a push right after each metrics tick
        self.lab.spawn(self.run())
        if self.batcher is not None:
            self.lab.spawn(self.batcher.run())

    async def run(self) -> None:
        from .http import snapshot

        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.clients > 0:
                try:
                    await self.lab.sio.emit(
                        "metrics", snapshot(self.lab), room=ROOM, namespace=NAMESPACE, ignore_queue=True
                    )
                except Exception as exc:  # the feed goes on (the pages poll meanwhile), counted
                    self.lab.metrics.errors.labels(kind="dashboard_push").inc()
                    log.warning("dashboard push failed: %s: %s", type(exc).__name__, str(exc)[:200])
                await asyncio.sleep(MIN_PUSH_GAP_S)
