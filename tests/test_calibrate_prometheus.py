"""caplab calibrate --prometheus (issue 11, B7): a real Prometheus scraping a real server under a small load;
the calibration comes from its range queries over the same counters the lab's scraper reads."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from eventlog import read_run
from lab.prometheus import matchers, query_for
from model import Calibration
from tests.sio import Client
from tests.test_cli_errors import ROOT, caplab, one_line_error
from tests.test_ops_prometheus import PrometheusProcess, host_port


async def load(clients: list[Client], rate: float, seconds: float) -> None:
    """Each client calls echo (one in ten: chat) ``rate`` times a second for ``seconds``, bounded."""

    async def one(c: Client, k: int) -> None:
        for i in range(int(rate * seconds)):
            await c.call("chat" if (i + k) % 10 == 0 else "echo", {"n": i})
            await asyncio.sleep(1.0 / rate)

    await asyncio.gather(*(one(c, k) for k, c in enumerate(clients)))


async def ready(prom: PrometheusProcess, session: aiohttp.ClientSession) -> bool:
    try:  # 503 (text) while its storage starts
        return await prom.scraped(session, "socketio_connections_active") is not None
    except aiohttp.ContentTypeError:
        return False


async def test_calibrate_from_a_real_prometheus(tmp_path, start_server):
    server, users = start_server("optimized", companies=1, users=12, env={"REDIS_URL": ""})
    prom = PrometheusProcess(tmp_path, host_port(server.url)).start()
    clients: list[Client] = []
    try:
        async with aiohttp.ClientSession() as session:
            await prom.until(session, "target scraped", lambda s: ready(prom, s))
            started = time.time()
            # connections and rate stepped apart, so the fit has something to separate
            for user in users[:4]:
                clients.append(await Client.connect(server.url, user["token"]))
            await load(clients, 10, 5)
            for user in users[4:]:
                clients.append(await Client.connect(server.url, user["token"]))
            await load(clients, 5, 5)
            await load(clients[:6], 30, 5)
            for c in clients:
                await c.close()
            clients = []
            async with session.get(server.url + "/socket-metrics") as r:
                served = (await r.json())["counters"]["events_in"]
            # the last scrape has the final count
            await prom.until(
                session,
                "final count scraped",
                lambda s: prom.value(s, f"sum(socketio_events_received_total) == {served}"),
            )
        seconds = time.time() - started + 3
        out = tmp_path / "cal.json"
        res = caplab(
            "calibrate",
            "--prometheus",
            prom.url,
            "--selector",
            '{job="socketio"}',
            "--seconds",
            f"{seconds:.0f}",
            "--profile",
            "optimized",
            "--runs",
            str(tmp_path / "runs"),
            "--out",
            str(out),
            cwd=ROOT,
        )
        assert res.returncode == 0, res.stderr
        run = read_run(res.stdout.splitlines()[0].split(": ", 1)[1])
        ev = run.events
        got = ev[(ev["kind"] == "sample") & (ev["name"] == "events_in")]["value"].max()
        assert got == served  # the very counter the server serves on /socket-metrics
        assert run.manifest.model_dump()["instances"] == [host_port(server.url)]
        cal = Calibration.load(out)
        fit = cal.fit["cpu"]
        assert fit["n_samples"] >= 8 and "events_in" in fit["regressors"]
        assert cal.cpu_per_event_s > 0 and 0 <= fit["r2"] <= 1
        assert "condition_number" in fit and not cal.gc.cpu_excluded  # no pause samples: GC stays in the CPU
        assert json.loads(out.read_text())["source_runs"] == [run.run_id]
        # a selector that matches nothing is one line, not a traceback
        res = caplab(
            "calibrate",
            "--prometheus",
            prom.url,
            "--selector",
            '{job="nothing"}',
            "--profile",
            "optimized",
            "--runs",
            str(tmp_path / "runs"),
            "--out",
            str(out),
            cwd=ROOT,
        )
        one_line_error(res, "calibrate", "job=", "selector")
    finally:
        for c in clients:
            await c.close()
        prom.stop()


def test_selector_is_checked_and_merged_into_each_query():
    assert matchers('{job="socketio", instance=~"10.*"}') == 'job="socketio", instance=~"10.*"'
    assert query_for("socketio_redis_messages_total", 'job="x"', 'op="publish"') == (
        'sum by (instance) (socketio_redis_messages_total{job="x",op="publish"})'
    )
    with pytest.raises(ValueError, match="label matchers"):
        matchers("up{job='x'}")
