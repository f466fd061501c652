"""``GET /socket-dashboard``: a live page of the node's figures (static files in ``server/static/``).

The page polls ``/socket-metrics`` every ``SOCKET_METRICS_INTERVAL`` (the seed's 5 s by default)
and draws the last minutes as plain SVG: no build step, no CDN, works offline.

Access: open when ``SOCKET_ADMIN_TOKEN`` is unset (it shows only what ``/socket-metrics`` already
serves to anyone). When the token is set the page needs either ``Authorization: Bearer <token>``
(the rule of the other admin endpoints, ``http.admin_refusal``), or a session from the login form:
``POST /socket-dashboard/login`` with the token in the form body sets an HttpOnly, SameSite=Strict
cookie holding a random session id (the token itself never goes into a cookie or a URL, as URLs
land in access logs). Sessions live in this process only, bounded in number and time.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .app import LabServer

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "caplab_dashboard"
PATH = "/socket-dashboard"
SESSION_S = 8 * 3600
MAX_SESSIONS = 256
# the page loads only its own files and talks only to this origin
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class Dashboard:
    """The page, its login form and the sessions the form hands out."""

    def __init__(self, lab: LabServer) -> None:
        self.lab = lab
        self.sessions: dict[bytes, float] = {}  # sha256(session id) -> expiry (monotonic)
        self.page = (STATIC / "dashboard.html").read_text(encoding="utf-8")
        self.login_page = (STATIC / "login.html").read_text(encoding="utf-8")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.show)
        app.router.add_post(PATH + "/login", self.login)
        app.router.add_post(PATH + "/logout", self.logout)
        app.router.add_static(PATH + "/static/", STATIC, append_version=False)

    # -- sessions ---------------------------------------------------------------------------------
    def _valid_session(self, request: web.Request) -> bool:
        sid = request.cookies.get(COOKIE)
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

    def _token_ok(self, given: str) -> bool:
        expected = self.lab.settings.admin_token
        return bool(expected) and hmac.compare_digest(_digest(given), _digest(expected))

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
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not given:
            return self._login_form(401, "enter the admin token (SOCKET_ADMIN_TOKEN)")
        if not self._token_ok(given):
            return self._login_form(403, "wrong admin token")
        resp = web.HTTPSeeOther(PATH, headers={"Cache-Control": "no-store"})
        resp.set_cookie(
            COOKIE,
            self._new_session(),
            max_age=SESSION_S,
            path=PATH,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        sid = request.cookies.get(COOKIE)
        if sid:
            self.sessions.pop(_digest(sid), None)
        resp = web.HTTPSeeOther(PATH)
        resp.del_cookie(COOKIE, path=PATH)
        raise resp
