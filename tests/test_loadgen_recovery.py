"""The load generator's recovery (``recover``): replayed deliveries are logged as ``recovered`` rows,
once each, and with the live ones they account for every chat sent while a client was away."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eventlog import benchmark_row, read_run
from lab.servers import ServerProcess, create_users
from loadgen import LoadSpec, run_load

COMPANIES, USERS = 2, 12  # 24 connections, one user each: conn i is user i


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recovery")
    users = create_users(tmp / "lab.db", COMPANIES, USERS)
    srv = ServerProcess("optimized", tmp / "lab.db", env={"REDIS_URL": ""}, log_path=tmp / "server.log").start()
    yield srv, users
    srv.stop()


def churn_run(url: str, users: list[dict], out, recover: bool, chat_to: str = "company"):
    # chat_to room: every client is in all 8 sub-rooms of its company and chats in one of them, so
    # the company's clients get each chat, as with chat_to company, through resumed sub-rooms
    rooms = {"rooms_per_connection": 8, "chat_to": "room"} if chat_to == "room" else {}
    spec = LoadSpec(
        **rooms,
        url=url,
        steps=[{"connections": COMPANIES * USERS, "hold_s": 4}],
        events_per_second=60,
        mix={"chat": 1},
        companies=COMPANIES,
        churn_per_s=4,
        churn_away_s=0.3,  # ~9 company chats missed per reconnect
        recover=recover,
        scrape=[],
    )
    return read_run(run_load(spec, out, [u["token"] for u in users], quiet=True))


def absences(df):
    """(conn, left, back): each planned close followed by a reconnect."""
    out = []
    ev = df[df["kind"].isin(["disconnect", "connect_ok"])]
    for conn, g in ev.groupby("conn"):
        kinds, ts = g["kind"].astype(str).to_numpy(), g["t"].to_numpy()
        for i in range(len(g) - 1):
            if kinds[i] == "disconnect" and kinds[i + 1] == "connect_ok":
                out.append((int(conn), float(ts[i]), float(ts[i + 1])))
    return out


def intended(rows) -> np.ndarray:
    return np.sort((rows["t"] - rows["latency_s"]).to_numpy())


@pytest.mark.parametrize("chat_to", ["company", "room"])
def test_churn_with_recover_replays_what_was_missed_once(node, tmp_path, chat_to):
    srv, users = node
    run = churn_run(srv.url, users, tmp_path / "runs", recover=True, chat_to=chat_to)
    df = run.events
    kinds = df["kind"].astype(str)
    # (a chat in flight when its sender closes may time out: not a chat the server took, so not counted)
    assert not kinds.isin(["reject", "connect_fail", "recovery_fail"]).any(), kinds.value_counts()
    company = {i: users[i]["company"] for i in range(COMPANIES * USERS)}
    chats = df[(kinds == "ack") & (df["name"] == "chat")]  # chats the server took (intended send times)
    chats = chats.assign(sent=chats["t"] - chats["latency_s"], company=chats["conn"].map(company))
    got = df[kinds.isin(["push", "recovered"]) & (df["name"] == "chat")]
    away = absences(df)
    assert len(away) >= 8, "the churn happened"
    missed_total = 0
    for conn, left, back in away:
        mine = intended(got[got["conn"] == conn])
        missed = chats[(chats["company"] == company[conn]) & (chats["sent"] >= left) & (chats["sent"] < back)]
        for s in missed["sent"]:
            hits = int(((mine > s - 1e-6) & (mine < s + 1e-6)).sum())
            assert hits == 1, f"conn {conn} away {left:.3f}-{back:.3f}: chat sent at {s:.6f} received {hits} times"
        missed_total += len(missed)
    recovered = int((kinds == "recovered").sum())
    assert missed_total > 20 and recovered > 0
    rec = df[kinds == "recovered"]
    sends = df[(kinds == "send") & (df["name"] == "chat")]  # acked or not (a sender's close may lose the ack)
    for conn, g in rec.groupby("conn"):  # each replay is a chat of the client's company
        sent = np.sort(sends[sends["conn"].map(company) == company[conn]]["t"].to_numpy())
        for s in intended(g):
            i = np.searchsorted(sent, s)
            near = [abs(sent[j] - s) for j in (i - 1, i) if 0 <= j < len(sent)]
            assert near and min(near) < 1e-6, f"conn {conn}: a replay at {s:.6f} matches no chat of its company"
    for conn, g in got.groupby("conn"):  # none twice, live or replayed
        sent = intended(g)
        assert (np.diff(sent) > 1e-6).all(), f"conn {conn} got a chat twice"
    assert (rec["latency_s"] > 0).all()  # from the original send time
    manifest = json.loads((run.path / "manifest.json").read_text())
    workers = manifest["generator"]["workers"]
    assert sum(w["recovered"] for w in workers) == recovered and sum(w["duplicate"] for w in workers) == 0
    row = benchmark_row(df, run.manifest)
    assert row["recovered"] == recovered and row["recovery_failures"] == 0
    assert row["pushes"] == int((kinds == "push").sum())  # replays are not pushes: push p95 is live only


def test_churn_without_recover_logs_no_replays(node, tmp_path):
    srv, users = node
    run = churn_run(srv.url, users, tmp_path / "runs", recover=False)
    kinds = run.events["kind"].astype(str)
    assert len(absences(run.events)) >= 8
    assert (kinds == "push").sum() > 0
    assert not kinds.isin(["recovered", "recovery_fail"]).any()
    row = benchmark_row(run.events, run.manifest)
    assert row["recovered"] == 0 and row["recovery_failures"] == 0


def test_a_delivery_seen_before_is_not_counted_again(tmp_path):
    """The worker's bookkeeping fed the frames a recovering client gets: the report, replays, then a
    live delivery of a number already replayed (a duplicate), which must not count twice."""
    import time

    from eventlog.reader import read_events
    from loadgen.worker import VConn, Worker

    spec = LoadSpec(url="http://127.0.0.1:1", steps=[{"connections": 1, "hold_s": 1}], recover=True)
    worker = Worker(spec, tmp_path, time.monotonic(), 0, ["token"])
    vc = VConn(0, "token", 0)
    vc.positions = {"c:1": ("e1", 4), "r:1:room0": ("e1", 9)}

    def chat(room: str, n: int, epoch: str = "e1") -> list:
        return [{"from": {}, "data": {"t": 0.0, "p": ""}}, {"_seq": [room, epoch, n]}]

    report = {"rooms": {"c:1": {"ok": True, "replayed": 2}, "r:1:room0": {"ok": False, "reason": "overrun"}}}
    worker.on_event(vc, "recovery", [report | {"positions": {"r:1:room0": ["e1", 30]}}])
    for args in (chat("c:1", 5), chat("c:1", 6), chat("c:1", 6), chat("c:1", 7), chat("r:1:room0", 30)):
        worker.on_event(vc, "chat", args)
    worker.on_event(vc, "chat", chat("r:1:room0", 31))
    worker.writer.close()
    kinds = read_events(tmp_path)["kind"].astype(str).tolist()
    assert kinds == ["recovery_fail", "recovered", "recovered", "push", "push"]
    assert worker.counts["duplicate"] == 2  # 6 again, and 30 (the position the failed room resumes from)
    assert vc.positions == {"c:1": ("e1", 7), "r:1:room0": ("e1", 31)}
