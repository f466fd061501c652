"""Start and stop reference-server nodes as subprocesses (for runs and tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server process did not print its listening line."""


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
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **self.env}, text=True
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("listening on ") or time.monotonic() > deadline:
            self.stop()
            raise ServerStartError(f"server did not start: {line!r} (see {self.log_path})")
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

    def __exit__(self, *exc) -> None:
        self.stop()
