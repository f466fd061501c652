"""Every command in the README's bash code blocks still works as written (issue 9, item 8).

The commands are read from README.md itself. Each must be one this test knows (``KNOWN``): a README
command added, or changed in any way, fails here until it is added, so the README cannot drift
unseen. Every known command is checked at parse level with its exact arguments (``caplab`` through
its own argparse parser and, for ``load``, the load it would send; ``python -m server`` through the
server's parser and settings, ``--set`` values and environment included; scripts exist and are
executable; the ``pytest -m`` markers select tests); the cheap ones really run, the load commands at
tiny sizes (``run``: the same options with smaller values) against servers started with the README's
own commands, and the Python client example against one of them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ADMIN = "readme-admin-token"


@dataclass(frozen=True)
class Known:
    kind: str  # caplab | server | script | pytest | promtool | python-c | external | client
    run: str | None = None  # caplab: the tiny-size variant really run; server: the start command run
    server: str | None = None  # caplab run: the db of the server it is sent to
    why: str = ""  # external: why it is not run here, and what checks it instead


KNOWN: dict[str, Known] = {
    "scripts/quickstart": Known("script"),
    "scripts/test": Known("script"),
    "python -m server users --db lab.db --companies 4 --users 500 '>' users.jsonl": Known("server", run="lab.db"),
    "python -m server --profile optimized --host 127.0.0.1 --port 0 --db lab.db '[--set' 'batching=off]' '[--set' "
    "'batch_size=20]'": Known("server", run="lab.db"),
    "MAX_CONNECTIONS=1000 EVENTS_PER_SECOND=500 TEST_DURATION=300000 SOCKET_URL=http://127.0.0.1:PORT caplab load "
    "--tokens users.jsonl": Known(
        "caplab",
        run="MAX_CONNECTIONS=20 EVENTS_PER_SECOND=20 TEST_DURATION=2000 SOCKET_URL=http://127.0.0.1:PORT caplab load "
        "--tokens users.jsonl",
        server="lab.db",
    ),
    "caplab load --url http://127.0.0.1:PORT --tokens users.jsonl --steps 200:10,1000:10,2000:10 --mix "
    "echo=0.95,chat=0.05 --rooms 1 --churn 2 --workers 2 --out runs": Known(
        "caplab",
        run="caplab load --url http://127.0.0.1:PORT --tokens users.jsonl --steps 10:0.5,20:0.5 "
        "--mix echo=0.95,chat=0.05 --rooms 1 --churn 2 --workers 1 --out runs",  # 2 workers: 21 s here, 1: 7 s
        server="lab.db",
    ),
    "python -m server users --db /tmp/rec.db --companies 2 --users 12 '>' /tmp/rec-users.jsonl": Known(
        "server", run="rec.db"
    ),
    "python -m server --profile optimized --port 0 --db /tmp/rec.db": Known("server", run="rec.db"),
    "caplab load --url http://127.0.0.1:PORT --tokens /tmp/rec-users.jsonl --connections 24 --duration 20 "
    "--events-per-second 60 --mix chat=1 --churn 4 --churn-away 0.5 --recover": Known(
        "caplab",
        run="caplab load --url http://127.0.0.1:PORT --tokens /tmp/rec-users.jsonl --connections 24 --duration 2 "
        "--events-per-second 60 --mix chat=1 --churn 4 --churn-away 0.5 --recover",
        server="rec.db",
    ),
    ".venv/bin/python -m pytest -m benchmark -s": Known("pytest"),
    ".venv/bin/python -m pytest -m load -s": Known("pytest"),
    ".venv/bin/python -m server users --db lab.db --companies 2 --users 10 '>' users.jsonl": Known("server"),
    ".venv/bin/python -m server --profile optimized --host 127.0.0.1 --port 8000 --db lab.db": Known("server"),
    "prometheus --config.file=ops/prometheus/prometheus.yml --storage.tsdb.path=/tmp/caplab-prometheus "
    "--web.listen-address=127.0.0.1:9090": Known(
        "external", why="a real Prometheus on these files: tests/test_ops_prometheus.py"
    ),
    "curl -s http://127.0.0.1:9090/api/v1/alerts": Known("external", why="Prometheus' alerts API"),
    "promtool check config ops/prometheus/prometheus.yml": Known("promtool"),
    "promtool test rules ops/prometheus/tests/socketio-alerts.test.yml": Known("promtool"),
    '.venv/bin/python -c \'import json; print(json.dumps({"dashboard": json.load(open("ops/grafana/socketio.json")), '
    '"overwrite": True}))\'': Known("python-c"),
    "curl -s -u admin:admin -H 'Content-Type: application/json' -X POST --data-binary @- "
    "http://127.0.0.1:3000/api/dashboards/db": Known("external", why="needs a Grafana; none is installable here"),
    "SLACK_WEBHOOK_URL=http://127.0.0.1:9/hook SOCKET_MEMORY_THRESHOLD=1 .venv/bin/python -m server --port 8000 --set "
    "metrics_interval_ms=1000 --set alert_retries=1": Known("server"),
    "sleep 4": Known("external", why="shell"),
    "curl -s 'http://127.0.0.1:8000/socket-metrics?format=prometheus'": Known(
        "external", why="the alert metrics: tests/test_slack_alerts.py"
    ),
    "grep '^socketio_alert_'": Known("external", why="shell"),
    "kill %1": Known("external", why="shell"),
    "SOCKET_ADMIN_TOKEN=change-me .venv/bin/python -m server --profile optimized --port 8000": Known("server"),
    ".venv/bin/python -m server users --db lab.db --companies 1 --users 2 '>' users.jsonl": Known("server"),
    ".venv/bin/python -m server --profile optimized --port 8000 --db lab.db": Known("server"),
    ".venv/bin/python chat_client.py": Known("client"),
    # parse-level only: a production Prometheus; tests/test_calibrate_prometheus.py runs it on a real one
    "caplab calibrate --prometheus http://prometheus:9090 --selector '{job=\"socketio\"}' --seconds 3600 --step 15 "
    "--profile optimized --out cal.json": Known("caplab"),
    # parse-level only: 46 minutes of measurement; tests/test_validation_passes.py pools passes and predicts
    # across configurations on simulated stand-ins, tests/test_cli_report.py runs a compare scenario end to end
    "caplab run scenarios/validation.yaml": Known("caplab"),
    "caplab run scenarios/validation.yaml --reuse 'runs/*-validation-*.[123]-*'": Known("caplab"),
    # parse-level only: a run of the reader's; tests/test_model_replay.py replays the reference runs
    "caplab simulate --calibration cal.json --replay runs/RUN_ID --out runs": Known("caplab"),
    # parse-level only: a real cluster and shared storage; tests/test_executor.py runs both on a LocalCluster
    "caplab run scenarios/what-if.yaml --cluster tcp://scheduler.example:8786 --runs /shared/caplab/runs": Known(
        "caplab"
    ),
    "caplab simulate --calibration cal.json --connections 10000 --events-per-connection 0.5 --duration 600 "
    "--replications 8 --cluster tcp://scheduler.example:8786 --out /shared/caplab/runs": Known("caplab"),
    "dask scheduler --host 127.0.0.1 --port 8786": Known("external", why="Dask's own CLI: tests/test_executor.py"),
    "dask worker tcp://127.0.0.1:8786 --nworkers 2 --nthreads 1": Known(
        "external", why="Dask's own CLI: tests/test_executor.py"
    ),
    "caplab run scenarios/what-if.yaml --cluster tcp://127.0.0.1:8786": Known("caplab"),
    # parse-level only: generator hosts of a real cluster; tests/test_load_cluster.py runs them on a LocalCluster
    "dask scheduler --port 8786": Known("external", why="Dask's own CLI: tests/test_load_cluster.py"),
    "dask worker tcp://SCHEDULER:8786 --nworkers 1 --nthreads 1": Known(
        "external", why="Dask's own CLI: tests/test_load_cluster.py"
    ),
    "caplab load --url http://127.0.0.1:PORT --tokens users.jsonl --connections 20000 --events-per-second 5000 "
    "--duration 300 --cluster tcp://SCHEDULER:8786": Known("caplab"),
    "caplab run scenarios/before-after.yaml --cluster tcp://SCHEDULER:8786 --load-on-cluster": Known("caplab"),
}

SEPARATORS = (";", "&&", "||", "|", "&")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    blocks, body, lang = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def split_commands(block: str) -> list[list[str]]:
    """The simple commands of a bash block: continuation lines joined, comments dropped, split at
    ``;``, ``&&``, ``||``, ``|`` and ``&``; a redirection stays in its command as ``>``, FILE."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        cmd: list[str] = []
        for tok in lex:
            if tok in SEPARATORS:
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        if cmd:
            out.append(cmd)
    return out


def readme_commands() -> list[str]:
    return [
        shlex.join(cmd)
        for lang, body in code_blocks(README.read_text())
        if lang == "bash"
        for cmd in split_commands(body)
    ]


def split_env(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading NAME=VALUE assignments, and the command after them."""
    env, i = {}, 0
    while i < len(tokens) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[i]):
        name, _, value = tokens[i].partition("=")
        env[name] = value
        i += 1
    return env, tokens[i:]


def split_redirect(argv: list[str]) -> tuple[list[str], str | None]:
    if ">" in argv:
        i = argv.index(">")
        return argv[:i], argv[i + 1]
    return argv, None


def server_args(argv: list[str]) -> list[str]:
    """The arguments after ``python -m server`` (README's ``[...]`` marks optional parts: kept, unbracketed)."""
    i = argv.index("-m")
    assert argv[i + 1] == "server" and Path(argv[0]).name == "python", argv
    return [a.strip("[]") for a in argv[i + 2 :]]


def parse_caplab(argv: list[str], env: dict[str, str]):
    from lab.cli import build_parser
    from lab.loadcli import spec_from_args

    assert argv[0] == "caplab", argv
    argv = [a.replace("PORT", "1") for a in argv[1:]]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"caplab {shlex.join(argv)}: does not parse: {err.getvalue().strip()}")
    if args.command == "load":
        spec_from_args(args, env={k: v.replace("PORT", "1") for k, v in env.items()})  # the load it would send
    return args


def parse_server(argv: list[str], env: dict[str, str]) -> None:
    from server.__main__ import _serve_parser, _users_parser
    from server.settings import build_settings, parse_overrides

    args_list, _ = split_redirect(server_args(argv))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            if args_list[:1] == ["users"]:
                _users_parser().parse_args(args_list[1:])
                return
            args = _serve_parser().parse_args(args_list)
        except SystemExit:
            pytest.fail(f"python -m server {shlex.join(args_list)}: does not parse: {err.getvalue().strip()}")
    fields = {"host": args.host, "port": args.port, "db": args.db, "node": args.node}
    build_settings(args.profile, {**parse_overrides(args.set), **fields}, env=env)  # --set and env values valid


def options(tokens: list[str]) -> tuple[set[str], set[str]]:
    env, argv = split_env(tokens)
    return set(env), {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def markers_used() -> set[str]:
    found: set[str] = set()
    for f in (ROOT / "tests").glob("test_*.py"):
        found.update(re.findall(r"pytest\.mark\.(\w+)", f.read_text()))
    return found


def test_every_readme_command_is_known():
    commands = readme_commands()
    assert len(commands) >= 20, "the README's bash blocks were not found"
    unknown = [c for c in commands if c not in KNOWN]
    assert not unknown, f"README commands this test does not know (add each to KNOWN with its check): {unknown}"
    stale = [k for k in KNOWN if k not in commands]
    assert not stale, f"KNOWN lists commands the README no longer has: {stale}"


def test_every_readme_command_parses_as_written():
    registered = {
        m.split(":")[0].strip()
        for m in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    }
    used = markers_used()
    for command, known in KNOWN.items():
        tokens = shlex.split(command)
        env, argv = split_env(tokens)
        if known.kind == "caplab":
            args = parse_caplab(argv, env)
            if known.run:  # the tiny variant: the same command with the same options, smaller values
                run_env, run_argv = split_env(shlex.split(known.run))
                assert parse_caplab(run_argv, run_env).command == args.command, known.run
                assert options(shlex.split(known.run)) == options(tokens), (command, known.run)
        elif known.kind == "server":
            parse_server(argv, env)
        elif known.kind == "script":
            path = ROOT / argv[0]
            assert path.is_file() and os.access(path, os.X_OK), f"{argv[0]}: missing or not executable"
            assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, f"{argv[0]}: bash syntax"
        elif known.kind == "pytest":
            assert (ROOT / argv[0]).exists() and argv[1:3] == ["-m", "pytest"], command
            expr = argv[argv.index("-m", 2) + 1]
            for marker in re.findall(r"[A-Za-z_]\w*", expr):
                if marker in ("and", "or", "not"):
                    continue
                assert marker in registered, f"{command}: marker {marker!r} is not registered in pyproject.toml"
                assert marker in used, f"{command}: no test is marked {marker!r}: it selects nothing"
        elif known.kind == "promtool":
            assert (ROOT / argv[-1]).is_file(), command
            if shutil.which("promtool"):
                res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
                assert res.returncode == 0, (command, res.stdout[-1000:], res.stderr[-1000:])
        elif known.kind == "python-c":
            res = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr[-1000:]
            assert json.loads(res.stdout)["dashboard"]["panels"], "the Grafana payload has no panels"
        elif known.kind == "client":
            assert python_block("chat_client.py"), "the README's chat_client.py block is missing"
            compile(python_block("chat_client.py"), "chat_client.py", "exec")
        else:
            assert known.kind == "external" and known.why, command
            for arg in argv:  # the repository files it names exist
                path = arg.split("=", 1)[-1]
                if path.startswith(("ops/", "scripts/", "scenarios/")):
                    assert (ROOT / path).exists(), f"{command}: {path} does not exist"


def python_block(name: str) -> str:
    """The README's ```python block that follows the line naming ``name``."""
    text = README.read_text()
    m = re.search(rf"`{re.escape(name)}`:\s*\n+```python\n(.*?)\n```", text, re.S)
    return m.group(1) if m else ""


def start_node(argv: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "SOCKET_ADMIN_TOKEN": ADMIN}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        pytest.fail(f"server did not start: {line!r}")
    return proc, line.split()[-1]


@pytest.fixture(scope="module")
def readme_servers(tmp_path_factory):
    """The README's own commands that create users and start servers (``run``), in a scratch folder
    (``/tmp/`` in a command becomes that folder): {db name: url}."""
    work = tmp_path_factory.mktemp("readme")
    procs, urls = [], {"dir": str(work)}
    try:
        for command, known in KNOWN.items():
            if known.kind != "server" or not known.run:
                continue
            argv, out = split_redirect(server_args(shlex.split(command.replace("/tmp/", f"{work}/"))))
            if argv[:1] == ["users"]:
                res = subprocess.run(
                    [sys.executable, "-m", "server", *argv], cwd=work, capture_output=True, text=True, timeout=60
                )
                assert res.returncode == 0, res.stderr
                (work / str(out)).write_text(res.stdout)
            else:
                proc, url = start_node(argv, work)
                procs.append(proc)
                urls[known.run] = url
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
            if proc.stdout:
                proc.stdout.close()


LOAD_RUNS = [c for c, k in KNOWN.items() if k.kind == "caplab" and k.run]


@pytest.mark.parametrize("command", LOAD_RUNS, ids=[f"load{i}" for i in range(len(LOAD_RUNS))])
def test_readme_load_commands_run_at_tiny_sizes(readme_servers, command):
    known = KNOWN[command]
    work = Path(readme_servers["dir"])
    port = readme_servers[known.server].rsplit(":", 1)[1]
    env, argv = split_env(shlex.split(known.run.replace("PORT", port).replace("/tmp/", f"{work}/")))
    full_env = {k: v for k, v in os.environ.items() if k not in ("SOCKET_URL", "MAX_CONNECTIONS")}
    full_env.update(env, SOCKET_ADMIN_TOKEN=ADMIN)
    res = subprocess.run(
        [sys.executable, "-m", "lab.cli", *argv[1:]], cwd=work, env=full_env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert " 0 refused or failed" in res.stdout, res.stdout  # every connection accepted, as the README expects
    assert "(measured, optimized)" in res.stdout, res.stdout
    assert (work / res.stdout.strip().splitlines()[-1] / "manifest.json").exists()


def test_readme_python_client_example_runs(readme_servers):
    work = Path(readme_servers["dir"])
    code = python_block("chat_client.py").replace("http://127.0.0.1:8000", readme_servers["lab.db"])
    (work / "chat_client.py").write_text(code)
    res = subprocess.run([sys.executable, "chat_client.py"], cwd=work, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout.splitlines()
    # what the README says it prints: the echo's ack, the chat's ack, the chat (it may arrive before the
    # chat's ack), the positions
    assert out[0] == "{'hello': 1}" and "{'ok': True}" in out, res.stdout
    assert any(line.startswith("chat from") and "'text': 'hi'" in line for line in out), res.stdout
    assert any(line.startswith("positions") and line.endswith("connected True") for line in out), res.stdout
