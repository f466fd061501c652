"""The shipped Prometheus rules and scrape config: promtool checks and unit tests, then a real
Prometheus scraping a real server and firing the connection-limit and Redis-link alerts."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.sio import Client
from tests.test_server_redis_outage import RedisProcess, free_port

OPS = Path(__file__).resolve().parent.parent / "ops" / "prometheus"
RULES = OPS / "socketio-alerts.yml"
CONFIG = OPS / "prometheus.yml"
UNIT_TESTS = sorted((OPS / "tests").glob("*.yml"))


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} required in CI (.ci/run installs the prometheus package)")
        pytest.skip(f"no {binary} binary")
    return path


def promtool(*args: str, cwd: Path = OPS) -> subprocess.CompletedProcess:
    return subprocess.run([need("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_rules_and_config_pass_promtool_check():
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout
    checked = promtool("check", "config", CONFIG.name)  # also checks the rule file it names
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_is_complete_and_unit_tested():
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    assert {"SocketMemoryCritical", "SocketLatencyHigh", "SocketConnectionLimit", "SocketRedisLinkDown"} <= set(names)
    for rule in rules():
        assert rule.get("for"), f"{rule['alert']}: no for:"
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    tested: dict[str, list[bool]] = {}
    for path in UNIT_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                tested.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for name in names:  # each: one evaluation where it fires, one (inside its for:) where it does not
        assert sorted(set(tested.get(name, []))) == [False, True], f"{name}: needs a firing and a silent case"


def test_rule_unit_tests_pass():
    assert UNIT_TESTS
    result = promtool("test", "rules", *(str(p.relative_to(OPS)) for p in UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("socketio_connections_active / socketio_limit_connections > 0.9", "socketio_connections_active > 18"),
        ("expr: socketio_memory_usage_percent > 90", "expr: socketio_memory_usage_percent >= 90"),
        ("for: 30s", "for: 0s"),
    ],
)
def test_unit_tests_catch_a_wrong_rule(tmp_path, old, new):
    """The unit tests are not vacuous: a seed-style fixed threshold, >= for >, or a dropped for: fails them."""
    text = RULES.read_text()
    assert text.count(old) == 1
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copytree(OPS / "tests", tmp_path / "tests")
    result = promtool("test", "rules", *(f"tests/{p.name}" for p in UNIT_TESTS), cwd=tmp_path)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, result.stdout


# -- a real Prometheus ----------------------------------------------------------------------------


class PrometheusProcess:
    """Prometheus on a free loopback port scraping ``target`` every second with the shipped config and
    rules; only the rules' ``for:`` is shortened (the expressions are the shipped ones)."""

    def __init__(self, workdir: Path, target: str, hold: str = "2s") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shipped = yaml.safe_load(RULES.read_text())
        for group in shipped["groups"]:
            for rule in group["rules"]:
                rule["for"] = hold
        (workdir / RULES.name).write_text(yaml.safe_dump(shipped))
        config = yaml.safe_load(CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(workdir / RULES.name)]
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> PrometheusProcess:
        cmd = [
            need("prometheus"),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with open(self.workdir / "prometheus.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text()[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    async def get(self, session: aiohttp.ClientSession, path: str, **params) -> dict:
        async with session.get(self.url + path, params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def until(self, session, what: str, probe, timeout: float = 20.0):
        """Poll ``probe(session)`` until it returns something truthy; fail with the last answer."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {self.log()}"
            try:
                last = await probe(session)
            except aiohttp.ClientConnectionError as exc:  # not listening yet
                last = exc
            else:
                if last:
                    return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout} s; last answer {last!r}\n{self.log()}")

    async def alerts(self, session, name: str) -> list[dict]:
        return [a for a in (await self.get(session, "/api/v1/alerts"))["alerts"] if a["labels"]["alertname"] == name]

    async def firing(self, session, name: str) -> list[dict]:
        return [a for a in await self.alerts(session, name) if a["state"] == "firing"]

    async def resolved(self, session, name: str) -> bool:
        return not await self.alerts(session, name)

    async def rule(self, session, name: str, evaluated_after: float) -> dict | None:
        """The alerting rule ``name`` once Prometheus has evaluated it after ``evaluated_after`` (epoch s)."""
        groups = (await self.get(session, "/api/v1/rules", type="alert"))["groups"]
        (rule,) = [r for g in groups for r in g["rules"] if r["name"] == name]
        stamp = re.sub(r"(\.\d{6})\d*", r"\1", rule["lastEvaluation"]).replace("Z", "+00:00")
        return rule if datetime.fromisoformat(stamp).timestamp() > evaluated_after else None

    async def value(self, session, query: str) -> float | None:
        result = (await self.get(session, "/api/v1/query", query=query))["result"]
        return float(result[0]["value"][1]) if result else None

    async def scraped(self, session, metric: str) -> float | None:
        """The value of ``metric`` once the target is up and Prometheus has it."""
        up = await self.value(session, 'up{job="socketio"}')
        return await self.value(session, metric) if up == 1 else None


def host_port(url: str) -> str:
    return url.split("//", 1)[1].rstrip("/")


async def test_real_prometheus_fires_the_connection_limit_alert(tmp_path, start_server):
    """SOCKET_MAX_CONNECTIONS=5: 4 connections (80 %) do not fire, 5 (100 %) do, read from /api/v1/alerts."""
    t0 = time.monotonic()
    server, users = start_server(
        "optimized", companies=1, users=5, env={"REDIS_URL": "", "SOCKET_MAX_CONNECTIONS": "5"}
    )
    prom = PrometheusProcess(tmp_path, host_port(server.url))
    clients: list[Client] = []
    try:
        prom.start()
        async with aiohttp.ClientSession() as session:
            assert await prom.until(session, "limit scraped", lambda s: prom.scraped(s, "socketio_limit_connections"))
            assert await prom.value(session, "socketio_limit_connections") == 5
            for user in users[:4]:
                clients.append(await Client.connect(server.url, user["token"]))
            await prom.until(session, "4 scraped", lambda s: prom.scraped(s, "socketio_connections_active == 4"))
            # 80 %: still inactive in an evaluation later than the shortened for: (2 s) after that scrape
            after = time.time() + 2.5
            rule = await prom.until(session, "later evaluation", lambda s: prom.rule(s, "SocketConnectionLimit", after))
            assert rule["state"] == "inactive" and rule["alerts"] == [], rule

            clients.append(await Client.connect(server.url, users[4]["token"]))
            firing = await prom.until(
                session,
                "SocketConnectionLimit firing",
                lambda s: prom.firing(s, "SocketConnectionLimit"),
            )
            (alert,) = firing
            assert alert["labels"]["instance"] == host_port(server.url)
            assert alert["labels"]["severity"] == "warning"
            assert float(alert["value"]) == 1.0
            assert "100% of SOCKET_MAX_CONNECTIONS" in alert["annotations"]["description"]
    finally:
        for client in clients:
            await client.close()
        prom.stop()
    assert time.monotonic() - t0 < 30


async def test_real_prometheus_fires_the_redis_link_alert(tmp_path, start_server):
    """A node on its own redis-server: the link alert fires when the test kills Redis, and resolves."""
    need("redis-server")
    t0 = time.monotonic()
    redis = RedisProcess(tmp_path / "redis.log")
    redis.start()
    prom = None
    try:
        server, _ = start_server("optimized", companies=1, users=1, env={"REDIS_URL": redis.url()})
        prom = PrometheusProcess(tmp_path, host_port(server.url)).start()
        async with aiohttp.ClientSession() as session:
            assert await prom.until(session, "link up scraped", lambda s: prom.scraped(s, "socketio_redis_up == 1"))
            after = time.time() + 2.5
            rule = await prom.until(session, "later evaluation", lambda s: prom.rule(s, "SocketRedisLinkDown", after))
            assert rule["state"] == "inactive", rule

            redis.kill()
            (alert,) = await prom.until(
                session, "SocketRedisLinkDown firing", lambda s: prom.firing(s, "SocketRedisLinkDown")
            )
            assert alert["labels"]["instance"] == host_port(server.url)
            assert alert["labels"]["severity"] == "critical"
            assert "cross-node deliveries are lost" in alert["annotations"]["description"]

            redis.start()  # same port: the node reconnects and the alert resolves
            await prom.until(session, "alert resolved", lambda s: prom.resolved(s, "SocketRedisLinkDown"))
    finally:
        if prom is not None:
            prom.stop()
        redis.kill()
    assert time.monotonic() - t0 < 30
