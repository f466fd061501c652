"""``/socket-dashboard`` in a real headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright.

The page is live over Socket.IO (namespace ``/admin``, the official socket.io-client with
``client/js/batch.js``) and polls ``/socket-metrics`` only when the socket cannot connect.
Playwright's own browser download is never used (``executable_path``). Without Chromium or the
``playwright`` package the tests skip, and in CI (``CI=true``) they fail. Each test saves a
screenshot under its ``tmp_path`` (printed with ``-s``, kept by pytest as a test artifact).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import zlib
from pathlib import Path

import aiohttp
import pytest

from tests.sio import Client

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TOKEN = "dash-s3cret-token"
FAST = {"metrics_interval_ms": 1000}  # the page refreshes every SOCKET_METRICS_INTERVAL


def need_browser() -> None:
    reason = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is missing: scripts/setup installs the dev extras"
    if reason is None and not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture
async def browser():
    need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


async def until(what: str, check, timeout: float = 10.0, every: float = 0.1):
    """Poll ``await check()`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(every)


async def snapshot(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url + "/socket-metrics") as resp:
        return await resp.json()


async def shown(page) -> dict:
    """What the page shows: the raw value behind each figure, its text, and each chart's state."""
    return await page.evaluate(
        """() => {
          const v = (id) => document.getElementById(id);
          const d = document.body.dataset;
          const out = {refreshes: Number(d.refreshes), error: v("error").textContent, transport: d.transport,
                       socket_updates: Number(d.socketUpdates), poll_updates: Number(d.pollUpdates),
                       batches: Number(d.batches), transport_text: v("transport").textContent,
                       last: window.caplabDashboard ? window.caplabDashboard.last : null};
          for (const id of ["connections", "memory", "p95", "eps", "status"]) {
            out[id] = v(id).dataset.value; out[id + "_text"] = v(id).textContent;
          }
          for (const id of ["connections", "memory", "p95", "eps"]) {
            const svg = v("chart-" + id);
            out["chart_" + id] = {points: Number(svg.dataset.points), last: svg.dataset.last,
                                  polyline: svg.querySelector("polyline")?.getAttribute("points") || ""};
          }
          return out;
        }"""
    )


def matches(page_view: dict, body: dict) -> None:
    """The page shows exactly the figures of a /socket-metrics body (raw values; text rounded)."""
    assert int(page_view["connections"]) == body["connections"]["total"]
    assert float(page_view["memory"]) == body["memory"]["usage"]
    assert float(page_view["p95"]) == body["performance"]["latency"]["p95"]
    assert float(page_view["eps"]) == body["performance"]["throughput"]["eventsPerSecond"]
    assert page_view["status"] == page_view["status_text"] == body["memory"]["status"]
    assert abs(float(page_view["memory_text"].replace(",", "")) - body["memory"]["usage"]) <= 0.05 + 1e-9
    assert abs(float(page_view["p95_text"].replace(",", "")) - body["performance"]["latency"]["p95"]) <= 0.05 + 1e-9


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_page_is_live_over_the_socket_and_charts_follow_the_load(start_server, browser, tmp_path, profile):
    # optimized: a low compression threshold, so every push is a zlib batch the page must inflate
    sets = {**FAST, "compression_threshold": 200} if profile == "optimized" else FAST
    server, users = start_server(profile, companies=2, users=3, sets=sets, env={"REDIS_URL": ""})
    page = await browser.new_page(viewport={"width": 1280, "height": 760})
    polled: list[str] = []
    page.on("request", lambda req: polled.append(req.url) if "/socket-metrics" in req.url else None)
    resp = await page.goto(server.url + "/socket-dashboard")
    assert resp.status == 200
    assert await page.title() == "Socket.IO dashboard · node 0"
    first = await until("a first update", lambda: _updated(page, 1))
    assert first["error"] == "" and first["transport"] == "socket" and first["transport_text"] == "live"
    matches(first, first["last"])  # what the page received is what it shows

    # within one interval the page agrees with an independent read of /socket-metrics
    mine = await snapshot(server.url)
    now = await until("the next update", lambda: _updated(page, first["refreshes"] + 1))
    assert int(now["connections"]) == mine["connections"]["total"] == 0
    assert now["status"] == mine["memory"]["status"]
    assert abs(float(now["memory"]) - mine["memory"]["usage"]) < 2.0
    assert now["last"]["counters"]["dashboard_clients"] == 1  # the page itself, counted
    matches(now, now["last"])

    # load changes: six real clients connect and send events; the cards and the charts follow
    clients = [await Client.connect(server.url, u["token"]) for u in users]
    try:
        for client in clients:
            for n in range(5):
                assert await client.call("echo", n) == [n]

        async def loaded():
            view = await shown(page)
            ok = view["chart_connections"]["last"] == "6" and float(view["eps"] or 0) > 0
            return view if ok else None

        view = await until("connections chart at 6 and events/s above 0", loaded, timeout=10)
        assert int(view["connections"]) == 6
        assert view["chart_connections"]["points"] > now["chart_connections"]["points"]
        assert view["chart_connections"]["polyline"] != now["chart_connections"]["polyline"]
        assert float(view["chart_eps"]["last"]) > 0
        matches(view, view["last"])
        shot = tmp_path / f"dashboard-{profile}.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    after = await until("connections back to 0", lambda: _connections(page, "0"))
    assert after["chart_connections"]["last"] == "0"

    # every update came over the socket: the page never polled
    assert after["transport"] == "socket" and after["poll_updates"] == 0, after
    assert after["socket_updates"] == after["refreshes"] >= 3
    assert polled == []
    served = await snapshot(server.url)
    if profile == "optimized":
        # each push arrived as a zlib-compressed `batch` frame: the page sees `metrics` only
        # through unwrapBatches, which inflated it (DecompressionStream)
        assert after["batches"] >= after["socket_updates"]
        assert served["counters"]["batches_compressed"] >= after["socket_updates"]
    else:
        assert after["batches"] == 0  # no batching: plain `metrics` events, batch.js idle
    await page.close()
    gone = await until("the dashboard client gone", lambda: _dashboard_clients(server.url, 0))
    assert gone["counters"]["dashboard_clients"] == 0


async def _updated(page, n: int):
    view = await shown(page)
    return view if view["refreshes"] >= n and view["last"] else None


async def _dashboard_clients(url: str, n: int):
    body = await snapshot(url)
    return body if body["counters"]["dashboard_clients"] == n else None


async def _connections(page, want: str):
    view = await shown(page)
    return view if view["connections"] == want and view["chart_connections"]["last"] == want else None


async def test_admin_token_protects_the_page_and_the_login_form_sets_a_session(start_server, browser, tmp_path):
    server, _ = start_server("optimized", companies=1, users=1, sets=FAST, env={"SOCKET_ADMIN_TOKEN": TOKEN})
    url = server.url + "/socket-dashboard"

    # outside the browser: Bearer as for the other admin endpoints; nothing else opens it
    async with aiohttp.ClientSession() as http:
        for headers, status in [
            ({}, 401),
            ({"Authorization": "Bearer wrong"}, 403),
            ({"Authorization": "Basic " + TOKEN}, 401),
            ({"Authorization": "Bearer " + TOKEN}, 200),
            ({"Cookie": "caplab_dashboard=forged"}, 401),
        ]:
            async with http.get(url, headers=headers) as resp:
                assert resp.status == status, (headers, status, await resp.text())
                if status == 200:
                    assert 'id="chart-connections"' in await resp.text()
        async with http.get(url + "?token=" + TOKEN) as resp:
            assert resp.status == 401  # a token in a URL is never taken
        async with http.post(url + "/login", data={"token": "wrong"}, allow_redirects=False) as resp:
            assert resp.status == 403 and "wrong admin token" in await resp.text()
            assert "Set-Cookie" not in resp.headers

    context = await browser.new_context()
    page = await context.new_page()
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    resp = await page.goto(url)
    assert resp.status == 401
    assert await page.locator("#connections").count() == 0  # no figures before login
    await page.fill("#token", "not-it")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert "wrong admin token" in await page.locator("#error").text_content()
    await page.fill("#token", TOKEN)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == url
    view = await until("an update after login", lambda: _updated(page, 1))
    assert view["error"] == "" and view["status"] in ("healthy", "degraded", "critical")
    assert view["transport"] == "socket"  # the session cookie let the page's socket into /admin

    cookies = await context.cookies()
    assert {c["path"] for c in cookies} == {"/socket-dashboard", "/socket.io"}  # the page and its handshake only
    for cookie in cookies:
        assert cookie["name"] == "caplab_dashboard" and cookie["value"] == cookies[0]["value"]
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
        assert TOKEN not in cookie["value"]
    cookie = cookies[0]
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    assert urls and all(TOKEN not in u for u in urls), urls
    await page.screenshot(path=str(tmp_path / "dashboard-logged-in.png"))

    # the session works for the page only as long as it lasts: logging out ends it
    async with page.expect_navigation():
        await page.click("header form button")
    assert await context.cookies() == []
    assert (await page.goto(url)).status == 401
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Cookie": f"caplab_dashboard={cookie['value']}"}) as r,
    ):
        assert r.status == 401
    await context.close()


async def admin_socket(url: str, auth: dict | None = None, headers: dict | None = None):
    """python-socketio's client on namespace /admin; returns (client, events) or raises ConnectionError."""
    import socketio

    sio = socketio.AsyncClient(reconnection=False)
    events: list[tuple[str, object]] = []
    refused: list[object] = []
    sio.on("*", lambda event, *args: events.append((event, args)), namespace="/admin")
    sio.on("connect_error", refused.append, namespace="/admin")
    try:
        await sio.connect(url, namespaces=["/admin"], auth=auth, headers=headers or {}, wait_timeout=5)
    except socketio.exceptions.ConnectionError as exc:
        await sio.disconnect()
        raise socketio.exceptions.ConnectionError(f"{exc}: {refused}") from None
    except BaseException:
        await sio.disconnect()
        raise
    return sio, events


async def test_admin_socket_refuses_unauthorised_clients_and_the_page_falls_back_to_polling(
    start_server, browser, tmp_path
):
    import socketio

    server, _ = start_server("optimized", companies=1, users=1, sets=FAST, env={"SOCKET_ADMIN_TOKEN": TOKEN})
    url = server.url

    # no credentials, a wrong token, a forged session, a Bearer header: all refused at CONNECT
    refusals = [
        {},
        {"auth": {"token": "wrong"}},
        {"headers": {"Cookie": "caplab_dashboard=forged"}},
        {"headers": {"Authorization": "Bearer " + TOKEN}},
    ]
    for kwargs in refusals:
        with pytest.raises(socketio.exceptions.ConnectionError, match="admin token required"):
            await admin_socket(url, **kwargs)
    body = await snapshot(url)
    assert body["counters"]["refusals"]["dashboard_auth"] == len(refusals)
    assert body["counters"]["dashboard_clients"] == 0

    # the token in the CONNECT packet's auth (never in a URL) is let in and fed batches
    sio, events = await admin_socket(url, auth={"token": TOKEN})
    try:
        await sio.emit("refresh", namespace="/admin")
        got = await until("a batch with metrics", lambda: _batched_metrics(events))
        assert got["connections"]["total"] == 0 and got["counters"]["dashboard_clients"] == 1
    finally:
        await sio.disconnect()

    # a page opened with a Bearer header has no session: its socket is refused, it polls
    context = await browser.new_context(extra_http_headers={"Authorization": "Bearer " + TOKEN})
    page = await context.new_page()
    polled: list[str] = []
    page.on("request", lambda req: polled.append(req.url) if "/socket-metrics" in req.url else None)
    assert (await page.goto(url + "/socket-dashboard")).status == 200
    view = await until("two polled updates", lambda: _polled(page, 2))
    assert view["transport"] == "polling" and view["socket_updates"] == 0 and view["batches"] == 0
    assert view["transport_text"] == "polling (socket refused)"
    assert (await page.get_attribute("#transport", "title")).startswith("admin token required")
    assert len(polled) >= 2
    matches(view, view["last"])
    await page.screenshot(path=str(tmp_path / "dashboard-polling.png"))
    await context.close()
    assert (await snapshot(url))["counters"]["refusals"]["dashboard_auth"] == len(refusals) + 1


async def test_page_polls_while_the_socket_cannot_connect_and_goes_live_when_it_can(start_server, browser):
    server, _ = start_server("optimized", companies=0, sets=FAST, env={"REDIS_URL": ""})
    page = await browser.new_page()
    await page.route("**/socket.io/**", lambda route: route.abort())  # the socket cannot reach the server
    assert (await page.goto(server.url + "/socket-dashboard")).status == 200
    view = await until("two polled updates", lambda: _polled(page, 2))
    assert view["transport"] == "polling" and view["socket_updates"] == 0 and view["error"] == ""
    matches(view, view["last"])
    await page.unroute("**/socket.io/**")  # the network is back: socket.io-client reconnects, polling stops

    async def live():
        v = await shown(page)
        return v if v["transport"] == "socket" and v["socket_updates"] >= 2 else None

    view = await until("live over the socket again", live, timeout=15)
    assert view["transport_text"] == "live" and view["batches"] >= 2
    polls = view["poll_updates"]
    await until("two more socket updates", lambda: _socket_updates(page, view["socket_updates"] + 2))
    assert (await shown(page))["poll_updates"] == polls  # no polling while live
    await page.close()


async def test_login_form_is_rate_limited_per_address(start_server):
    server, _ = start_server("baseline", companies=0, sets=FAST, env={"SOCKET_ADMIN_TOKEN": TOKEN, "REDIS_URL": ""})
    login = server.url + "/socket-dashboard/login"
    async with aiohttp.ClientSession() as http:
        for _ in range(5):  # the burst: 5 attempts are judged
            async with http.post(login, data={"token": "guess"}, allow_redirects=False) as resp:
                assert resp.status == 403
        async with http.post(login, data={"token": TOKEN}, allow_redirects=False) as resp:
            assert resp.status == 429  # the 6th within the minute is not, even with the right token
            retry = int(resp.headers["Retry-After"])
            assert 1 <= retry <= 12  # one attempt comes back every 12 s
            assert f"too many login attempts from this address: retry in {retry} s" in await resp.text()
            assert "Set-Cookie" not in resp.headers
        async with http.get(server.url + "/socket-metrics") as resp:
            assert (await resp.json())["counters"]["refusals"]["dashboard_login"] == 1


async def _batched_metrics(events: list) -> dict | None:
    """The first ``metrics`` entry of a ``batch`` frame (JSON, or zlib-compressed JSON), as the wire carries it."""
    for name, args in events:
        if name == "batch":
            entries = args[0] if isinstance(args[0], list) else json.loads(zlib.decompress(args[0]))
            for entry in entries:
                if entry[0] == "metrics":
                    return entry[1]
    return None


async def _polled(page, n: int):
    view = await shown(page)
    return view if view["poll_updates"] >= n and view["last"] else None


async def _socket_updates(page, n: int):
    view = await shown(page)
    return view if view["socket_updates"] >= n else None
