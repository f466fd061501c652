"""``/socket-dashboard`` in a real headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright.

Playwright's own browser download is never used (``executable_path``). Without Chromium or the
``playwright`` package the tests skip, and in CI (``CI=true``) they fail. Each test saves a
screenshot under its ``tmp_path`` (printed with ``-s``, kept by pytest as a test artifact).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
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
          const out = {refreshes: Number(document.body.dataset.refreshes), error: v("error").textContent};
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
    assert abs(float(page_view["memory_text"].replace(",", "")) - body["memory"]["usage"]) <= 0.05
    assert abs(float(page_view["p95_text"].replace(",", "")) - body["performance"]["latency"]["p95"]) <= 0.05


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
async def test_page_shows_the_metrics_and_charts_follow_the_load(start_server, browser, tmp_path, profile):
    server, users = start_server(profile, companies=2, users=3, sets=FAST, env={"REDIS_URL": ""})
    page = await browser.new_page(viewport={"width": 1280, "height": 760})
    bodies: list[dict] = []

    async def record(resp) -> None:
        if resp.url.endswith("/socket-metrics") and resp.ok:
            bodies.append(await resp.json())

    pending: list[asyncio.Future] = []
    page.on("response", lambda resp: pending.append(asyncio.ensure_future(record(resp))))
    resp = await page.goto(server.url + "/socket-dashboard")
    assert resp.status == 200
    assert await page.title() == "Socket.IO dashboard · node 0"
    first = await until("a first refresh", lambda: _refreshed(page, bodies, 1))
    assert first["error"] == ""
    matches(first, bodies[-1])  # what the page received is what it shows

    # within one refresh the page agrees with an independent read of /socket-metrics
    mine = await snapshot(server.url)
    now = await until("the next refresh", lambda: _refreshed(page, bodies, first["refreshes"] + 1))
    assert int(now["connections"]) == mine["connections"]["total"] == 0
    assert now["status"] == mine["memory"]["status"]
    assert abs(float(now["memory"]) - mine["memory"]["usage"]) < 2.0
    matches(now, bodies[-1])

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
        shot = tmp_path / f"dashboard-{profile}.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    after = await until("connections back to 0", lambda: _connections(page, "0"))
    assert after["chart_connections"]["last"] == "0"
    await page.close()
    await asyncio.gather(*pending, return_exceptions=True)  # a read cut short by the close is no finding


async def _refreshed(page, bodies: list, n: int):
    view = await shown(page)
    return view if view["refreshes"] >= n and bodies else None


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
    view = await until("a refresh after login", lambda: _refreshed(page, [True], 1))
    assert view["error"] == "" and view["status"] in ("healthy", "degraded", "critical")

    (cookie,) = await context.cookies()
    assert cookie["name"] == "caplab_dashboard"
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/socket-dashboard")
    assert TOKEN not in cookie["value"]
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    assert urls and all(TOKEN not in u for u in urls), urls
    await page.screenshot(path=str(tmp_path / "dashboard-logged-in.png"))

    # the session works for the page only as long as it lasts: logging out ends it
    async with page.expect_navigation():
        await page.click("header form button")
    assert (await page.goto(url)).status == 401
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Cookie": f"caplab_dashboard={cookie['value']}"}) as r,
    ):
        assert r.status == 401
    await context.close()
