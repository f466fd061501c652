"""The official Node ``socket.io-client`` v4 as a test client: ``tests/node/client.js`` in a subprocess.

The script prints one JSON line per thing it observes (see its header); ``NodeClient`` collects them
and lets a test wait for lines with a deadline. Install it with ``npm ci --prefix tests/node``
(``.ci/run`` does). Without ``node`` or ``tests/node/node_modules`` the tests that need it skip,
and in CI (``CI=true``) they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "client.js"


def node_or_skip() -> str:
    """The ``node`` executable; skip (fail in CI) when it or the installed client is missing."""
    node = shutil.which("node")
    if node is None:
        reason = "`node` is not on PATH (install Node.js >= 18, then: npm ci --prefix tests/node)"
    elif not (NODE_DIR / "node_modules" / "socket.io-client" / "package.json").is_file():
        reason = "tests/node/node_modules is missing socket.io-client: run `npm ci --prefix tests/node`"
    else:
        return node
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


class NodeClient:
    """One running ``client.js``: ``lines`` holds every JSON line it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label
        self.lines: list[dict] = []
        self.stderr = b""
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self._err_reader = asyncio.get_running_loop().create_task(self._read_stderr())

    @classmethod
    async def start(
        cls,
        url: str,
        token: str | None,
        emit: list[list] = (),
        max_s: float = 20.0,
        label: str = "node",
        script: Path = SCRIPT,
        args: list[str] = (),
    ) -> NodeClient:
        """Start the client; it connects on its own (wait with ``connected()``) and exits by ``max_s``.

        ``script`` is another script in ``tests/node`` taking the same --url/--token/--max-ms
        (e.g. ``unwrap.js``), ``args`` its own extra ``--name=value`` options.
        """
        node = node_or_skip()
        # --name=value: a token may start with "-", which parseArgs would take for an option
        cmd = [node, str(script), f"--url={url}", f"--max-ms={int(max_s * 1000)}", *args]
        if token is not None:
            cmd.append(f"--token={token}")
        cmd += [f"--emit={json.dumps(args)}" for args in emit]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
            cwd=NODE_DIR,
        )
        return cls(proc, label)

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            text = line.decode("utf-8", "replace").strip()
            try:
                obj = json.loads(text)
            except ValueError:
                obj = {"type": "unparsable", "text": text[:500]}
            self.lines.append(obj)
            self._changed.set()
        self.lines.append({"type": "eof"})
        self._changed.set()

    async def _read_stderr(self) -> None:
        self.stderr = await self.proc.stderr.read()

    async def wait_for(self, pred: Callable[[dict], bool], timeout: float = 5.0, what: str = "") -> dict:
        """The first line matching ``pred``; fails with every line so far after ``timeout`` s or at exit."""

        async def first() -> dict | None:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if pred(line):
                        return line
                    if line["type"] == "eof":
                        return None
                seen = len(self.lines)
                self._changed.clear()
                await self._changed.wait()

        try:
            found = await asyncio.wait_for(first(), timeout)
        except TimeoutError:
            found = None
        if found is None:
            pytest.fail(f"{self.label}: no {what or 'matching line'} within {timeout} s; saw {self.describe()}")
        return found

    async def connected(self, timeout: float = 10.0) -> str:
        """The socket id once connected; fails (with what it saw) on connect_error or exit."""
        line = await self.wait_for(
            lambda x: x["type"] in ("connected", "connect_error", "exit"), timeout, "connected line"
        )
        if line["type"] != "connected":
            pytest.fail(f"{self.label}: did not connect: {self.describe()}")
        return line["id"]

    def of(self, kind: str) -> list[dict]:
        return [x for x in self.lines if x["type"] == kind]

    def events(self, name: str | None = None) -> list[dict]:
        return [x for x in self.of("event") if name is None or x["event"] == name]

    async def emit(self, name: str, *args) -> None:
        """Emit an event with an ack (the ack shows up as an ``ack`` line)."""
        self.proc.stdin.write((json.dumps({"emit": [name, *args]}) + "\n").encode())
        await self.proc.stdin.drain()

    def describe(self, last: int = 30) -> str:
        tail = self.lines[-last:]
        err = self.stderr.decode("utf-8", "replace")[-1000:]
        return json.dumps(tail) + (f"; stderr: {err}" if err else "")

    async def close(self, timeout: float = 5.0) -> int:
        """Close stdin (the client disconnects and exits); kill it after ``timeout`` s. Returns the exit code."""
        if self.proc.returncode is None and self.proc.stdin and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        for task in (self._reader, self._err_reader):
            try:
                await asyncio.wait_for(task, timeout)
            except TimeoutError:
                task.cancel()
        return self.proc.returncode

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
