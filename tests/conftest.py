"""Shared fixtures: real server processes on free loopback ports, real Redis."""

from __future__ import annotations

import os

import pytest

from lab.servers import ServerProcess, create_users

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def start_server(tmp_path):
    """Start nodes: ``start_server("optimized", companies=2, users=3, sets={...})`` -> (server, users)."""
    started: list[ServerProcess] = []

    def start(profile="optimized", companies=2, users=3, sets=None, env=None, db=None, node=0):
        db = db or tmp_path / f"lab-{len(started)}.db"
        records = create_users(db, companies, users) if companies else []
        server = ServerProcess(
            profile, db, dict(sets or {}), dict(env or {}), node, log_path=tmp_path / f"server-{len(started)}.log"
        )
        started.append(server.start())
        return server, records

    yield start
    for server in started:
        assert server.stop() == 0, f"server exited uncleanly; log: {server.log_path.read_text()[-2000:]}"


@pytest.fixture
def redis_url():
    """A real Redis; in CI its absence is a failure, elsewhere a skip."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis required in CI at {REDIS_URL}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def start_server_once(start_server):
    """One optimized server with 3 users in each of 2 companies, for property tests."""
    server, users = start_server("optimized", companies=2, users=3, sets={"flush_interval_ms": 50})
    return server.url, users
