"""Start and stop reference-server nodes as subprocesses (for runs and tests)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server process did not print its listening line in time (the message ends with its log's tail)."""


def _first_line(proc: subprocess.Popen, deadline: float) -> bytes:
    """The child's first stdout line, or what it printed by ``deadline`` (never blocks past it)."""
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:  # the child closed stdout: it exited
            break
        buf += chunk
    return buf.split(b"\n", 1)[0]


def _log_tail(path: Path | None, lines: int = 3) -> str:
    if path is None or not path.exists():
        return "no log kept"
    tail = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
    return f"{path} ends: " + " | ".join(tail) if tail else f"{path} is empty"


def create_users(db: Path, companies: int, users_per_company: int, ttl_s: float | None = None) -> list[dict]:
    """Run ``python -m server users`` and return its JSON lines."""
    cmd = [
        sys.executable,
        "-m",
        "server",
        "users",
        "--db",
        str(db),
        "--companies",
        str(companies),
        "--users",
        str(users_per_company),
    ]
    if ttl_s is not None:
        cmd += ["--ttl", str(ttl_s)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@dataclass
class ServerProcess:
    """One running node: ``url``, its process, and where its log goes."""

    profile: str
    db: Path
    sets: dict[str, object] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    node: int = 0
    log_path: Path | None = None
    url: str = ""
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start the node; :class:`ServerStartError` if it has not printed its listening line within
        ``timeout`` s (it is killed, and the error shows the tail of its log)."""
        cmd = [
            sys.executable,
            "-m",
            "server",
            "--profile",
            self.profile,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            str(self.db),
            "--node",
            str(self.node),
        ]
        for name, value in self.sets.items():
            cmd += ["--set", f"{name}={value}"]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **self.env})
        finally:
            if not isinstance(log, int):
                log.close()  # the child holds its own descriptor
        line = _first_line(self.proc, time.monotonic() + timeout).decode(errors="replace")
        if not line.startswith("listening on "):
            exited = self.proc.poll()
            self.stop(timeout=2.0)
            why = f"exited with code {exited}" if exited is not None else f"no listening line within {timeout:g} s"
            raise ServerStartError(
                f"server node {self.node} did not start ({why}; printed {line!r}); {_log_tail(self.log_path)}"
            )
        self.url = line.split()[-1]
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # say where it hung before killing it: the server dumps every stack on SIGUSR1
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(0.5)
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
