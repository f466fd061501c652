"""The load generator against the real server: complete logs, counts that match, robustness."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from pydantic import ValidationError

from eventlog import benchmark_row, read_run
from lab.servers import ServerProcess, create_users
from loadgen import LoadSpec, read_tokens, run_load
from loadgen import protocol as p


def spec_for(base_url, **kw) -> LoadSpec:
    base = {
        "url": base_url,
        "steps": [{"connections": 20, "hold_s": 2}],
        "events_per_second": 40,
        "connect_rate": 200,
        "scrape": [base_url],
        "scrape_interval_s": 0.5,
    }
    return LoadSpec(**{**base, **kw})


@pytest.fixture
def server(tmp_path):
    def start(profile="optimized", companies=4, users=50, **sets):
        users = create_users(tmp_path / "lab.db", companies, users)
        srv = ServerProcess(
            profile, tmp_path / "lab.db", {"metrics_interval_ms": 500, **sets}, log_path=tmp_path / "server.log"
        ).start()
        servers.append(srv)
        return srv, [u["token"] for u in users]

    servers: list[ServerProcess] = []
    yield start
    for s in servers:
        s.stop()


@pytest.mark.parametrize("profile", ["baseline", "optimized"])
def test_200_connections_10_seconds_match_server_counters(server, tmp_path, profile):
    srv, tokens = server(profile)
    spec = spec_for(
        srv.url,
        steps=[{"connections": 200, "hold_s": 8}],
        events_per_second=200,
        mix={"echo": 0.8, "chat": 0.2},
        rooms_per_connection=1,
    )
    run = read_run(run_load(spec, tmp_path / "runs", tokens, quiet=True))
    df, m = run.events, run.manifest
    assert m.status == "complete" and m.source == "measured"
    counts = df["kind"].value_counts()
    assert counts["connect_ok"] == 200 and counts.get("connect_fail", 0) == 0
    assert counts["send"] == counts["ack"] > 1000
    assert counts.get("timeout", 0) == counts.get("error", 0) == 0
    final = df[(df["kind"] == "sample") & (df["node"] == 0)].groupby("name", observed=True)["value"].last()
    # every event the generator recorded as sent was counted by the server, and nothing else
    assert final["events_in"] == counts["send"]
    # every delivery the server made reached a client, and was timed
    assert final["events_out"] == counts["push"]
    assert final["connects"] == 200
    row = benchmark_row(df, m)
    assert row["throughput_eps"] == pytest.approx(200, rel=0.25)
    assert row["max_stable_connections"] == 200
    assert 0 < row["p95_ms"] < 1000 and row["peak_memory_mb"] > 10 and row["mean_cpu_pct"] > 0


def test_pings_keep_idle_connections_alive(server, tmp_path):
    srv, tokens = server(heartbeat_s=0.3, ping_timeout_s=0.5)
    spec = spec_for(srv.url, steps=[{"connections": 10, "hold_s": 2.5}], events_per_second=0)
    df = read_run(run_load(spec, tmp_path / "runs", tokens, quiet=True)).events
    assert (df["kind"] == "error").sum() == 0
    assert (df["kind"] == "disconnect").sum() == 10  # only the planned closes at the end


def test_server_side_disconnect_is_recorded_and_run_goes_on(server, tmp_path):
    srv, tokens = server(event_rate=2, event_burst=2, flood_strikes=5, ban_s=0)
    spec = spec_for(srv.url, steps=[{"connections": 5, "hold_s": 3}], events_per_second=100, mix={"echo": 1})
    run = read_run(run_load(spec, tmp_path / "runs", tokens, quiet=True))
    df = run.events
    assert run.manifest.status == "complete"
    assert (df["kind"] == "reject").sum() > 0
    dropped = df[(df["kind"] == "error") & df["name"].astype(str).str.startswith("dropped")]
    assert len(dropped) == 5


def test_batch_frames_are_unpacked(server, tmp_path):
    srv, tokens = server(flush_interval_ms=50, compression_threshold=200)
    spec = spec_for(
        srv.url, steps=[{"connections": 8, "hold_s": 2}], events_per_second=40, mix={"chat": 1}, payload_bytes=300
    )
    df = read_run(run_load(spec, tmp_path / "runs", tokens[:8], quiet=True)).events  # 8 users of company 1
    sends = (df["kind"] == "send").sum()
    assert (df["kind"] == "push").sum() == sends * 8


def test_protocol_decoder():
    assert p.decode('2["chat",{"a":1}]').data == ["chat", {"a": 1}]
    pkt = p.decode('312["ok"]')
    assert (pkt.type, pkt.id, pkt.data) == (p.ACK, 12, ["ok"])
    pkt = p.decode('51-/admin,7["batch",{"_placeholder":true,"num":0}]')
    assert (pkt.attachments, pkt.namespace, pkt.id) == (1, "/admin", 7)
    assert p.fill_placeholders(pkt.data, [b"z"]) == ["batch", b"z"]
    for bad in ("", "x", "9[]", "2[oops", "51[]"):
        with pytest.raises(p.ProtocolError):
            p.decode(bad)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"url": "http://10.1.2.3:80"}, "loopback"),
        ({"url": "http://example.com"}, "loopback"),
        ({"source_addrs": ["192.168.1.2"]}, "127.0.0.0/8"),
        ({"mix": {"echo": 0}}, "positive sum"),
        ({"chat_to": "room"}, "rooms_per_connection"),
        ({"steps": []}, "at least 1"),
        ({"events_per_second": -1}, "greater than or equal"),
        ({"steps": [{"connections": 1, "hold_s": 7200}]}, "max_duration_s"),
    ],
)
def test_bad_settings_are_refused_clearly(kw, message):
    with pytest.raises(ValidationError, match=message):
        spec_for("http://127.0.0.1:1", **kw)


def test_token_file_errors(tmp_path):
    f = tmp_path / "tokens.jsonl"
    f.write_text('{"company": 1, "user": 1, "token": "a"}\nplain-token\n')
    assert read_tokens(f) == ["a", "plain-token"]
    f.write_text('{"company": 1}\n')
    with pytest.raises(ValueError, match=r"tokens\.jsonl:1"):
        read_tokens(f)


def test_refused_connections_are_logged(server, tmp_path):
    srv, tokens = server()
    spec = spec_for(srv.url, steps=[{"connections": 6, "hold_s": 1}], events_per_second=0)
    run = read_run(run_load(spec, tmp_path / "runs", tokens[:1], quiet=True))  # one user: limit 3
    fails = run.events[run.events["kind"] == "connect_fail"]
    assert len(fails) == 3 and fails["name"].astype(str).str.contains("user connection limit").all()
    with urllib.request.urlopen(srv.url + "/socket-metrics") as r:
        assert json.load(r)["counters"]["refusals"]["limit_user"] == 3


def test_churn_keeps_the_offered_rate(server, tmp_path):
    """Reconnecting clients keep one schedule each: the offered rate stays the configured one.

    (A reconnect used to leave its old schedule in the heap, so every churned client then sent at
    twice its rate and the offered load crept up with the run.)"""
    srv, tokens = server("baseline")
    spec = spec_for(
        srv.url,
        steps=[{"connections": 100, "hold_s": 8}],
        events_per_second=200,
        mix={"echo": 1},
        churn_per_s=25,  # 200 reconnects: with the old bug, about twice the rate by the end
        arrival="fixed",
    )
    run = read_run(run_load(spec, tmp_path / "runs", tokens, quiet=True))
    df = run.events
    assert (df["kind"] == "disconnect").sum() >= 100 + 150  # the churn happened (100 closes at the end)
    sends = df[(df["kind"] == "send") & (df["name"] == "echo")]
    late = sends[sends["t"] >= sends["t"].max() - 4]  # the last 4 s, after most of the churn
    assert len(late) / 4 == pytest.approx(200, rel=0.08)


def test_each_step_sends_its_own_chat_share_and_churns_at_its_own_rate(server, tmp_path):
    """Issue 11's calibration design varies the chat share and the churn step by step (Step.chat_share,
    Step.churn_per_s): the generator changes both at each step's start."""
    srv, tokens = server("optimized")
    spec = spec_for(
        srv.url,
        steps=[
            {"connections": 20, "hold_s": 3, "chat_share": 0.0},
            {"connections": 20, "hold_s": 3, "chat_share": 0.5, "churn_per_s": 5},
        ],
        events_per_second=60,
        mix={"echo": 1},
    )
    run = read_run(run_load(spec, tmp_path / "runs", tokens, quiet=True))
    df = run.events
    second = df[(df["kind"] == "sample") & (df["name"] == "step")]["t"].iloc[1]
    sends = df[df["kind"] == "send"]
    first, later = sends[sends["t"] < second], sends[sends["t"] >= second + 0.1]
    assert (first["name"] == "echo").all() and len(first) > 50
    assert (later["name"] == "chat").mean() == pytest.approx(0.5, abs=0.12)
    closes = df[(df["kind"] == "disconnect") & (df["t"] < df[df["name"] == "end"]["t"].min())]
    assert len(closes) >= 5 and (closes["t"] >= second).all()  # churn in the second step only
    # the generator's own loop: CPU and time waiting for a core, every second (eventlog.sched)
    waited = df[(df["kind"] == "sample") & (df["name"] == "gen_runqueue_wait_seconds:0")]["value"]
    assert len(waited) >= 5 and waited.is_monotonic_increasing and waited.iloc[-1] > 0


def test_a_late_send_takes_the_mix_of_the_step_it_was_intended_in(tmp_path):
    """The sender can reach a send after its step has ended (the open loop is behind by a tick):
    its event name must still come from the step its intended time is in. (It used to come from
    the mix current at dispatch, so a chat crossed back into a step with no chat: a CI failure.)"""
    from loadgen.worker import Worker

    spec = spec_for(
        "http://127.0.0.1:1",
        steps=[
            {"connections": 20, "hold_s": 3, "chat_share": 0.0},
            {"connections": 20, "hold_s": 3, "chat_share": 1.0},
        ],
    )
    worker = Worker(spec, tmp_path / "run", 0.0, 0, ["token"])
    second = spec.schedule()[1][0]
    assert {worker.pick(second - 1e-6) for _ in range(200)} == {"echo"}
    assert {worker.pick(second) for _ in range(200)} == {"chat"}
    assert {worker.pick(0.0) for _ in range(200)} == {"echo"}
    worker.writer.close()


def test_a_chat_node_step_gives_one_nodes_clients_every_chat(tmp_path):
    """Step.chat_node (issue 11's Redis design step): on two nodes, node 0's clients send the step's
    chats at twice its share and node 1's none, so the step's chat rate stays; other steps as before;
    a chat_node past the last node, or a share one node's clients cannot carry, is refused."""
    from loadgen.worker import Worker

    two = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    steps = [{"connections": 20, "hold_s": 3, "chat_share": 0.3}, {"connections": 20, "hold_s": 3, "chat_share": 0.3}]
    steps[1]["chat_node"] = 0
    spec = spec_for(two[0], nodes=two, steps=steps)
    worker = Worker(spec, tmp_path / "run", 0.0, 0, ["token"])
    second = spec.schedule()[1][0]
    share = {
        (t, n): np.mean([worker.pick(at, n) == "chat" for _ in range(4000)])
        for t, at in (("first", 0.0), ("second", second))
        for n in (0, 1)
    }
    worker.writer.close()
    assert share[("first", 0)] == pytest.approx(0.3, abs=0.03) and share[("first", 1)] == pytest.approx(0.3, abs=0.03)
    assert share[("second", 0)] == pytest.approx(0.6, abs=0.03) and share[("second", 1)] == 0.0
    assert spec.step_mix(1) == {"echo": 0.7, "chat": 0.3}  # one node: every client, as written
    with pytest.raises(ValidationError, match=r"steps\[1\].chat_node 2: there are 2 nodes"):
        spec_for(two[0], nodes=two, steps=[steps[0], {**steps[1], "chat_node": 2}])
    with pytest.raises(ValidationError, match=r"chat share x 2 > 1"):
        spec_for(two[0], nodes=two, steps=[steps[0], {**steps[1], "chat_share": 0.6}])
