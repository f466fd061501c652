"""Progress of ``caplab run`` and ``caplab simulate`` on stderr, shared by the runner and the model's side.

Every message is a ``[caplab] ...`` line, as before. Inside :func:`display`, when stderr is a terminal,
a rich progress display sits under those lines: a spinner, the step in progress, ``k/N`` once a batch
of simulations reports its size, and the time the step has taken, so a long step is never silent. In a
pipe, a file or CI logs nothing changes: the lines only.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

_live: Progress | None = None
_task: TaskID | None = None

# the executor's batch lines (lab/executor.py ProgressLines): "  8 replications on this process ..."
# starts a batch of 8, "  3/8 replications done" advances it
_BATCH = re.compile(r"^\s*(\d+) \S+ on .+ \.\.\.$")
_DONE = re.compile(r"^\s*(\d+)/(\d+) \S+ done$")


def log(msg: str) -> None:
    if _live is None or _task is None:
        print(f"[caplab] {msg}", file=sys.stderr, flush=True)
        return
    _live.console.print(f"[caplab] {msg}", markup=False, highlight=False, soft_wrap=True)
    count(msg)


def count(msg: str) -> None:
    """Move the display on from a progress line: a batch's size and how many of it are done, or the
    step in progress (its description)."""
    if _live is None or _task is None:
        return
    if m := _DONE.match(msg):
        _live.update(_task, completed=int(m[1]), total=int(m[2]))
    elif m := _BATCH.match(msg):
        _live.reset(_task, total=int(m[1]), description=msg.strip())
    elif msg.strip() and not msg.startswith("  "):  # a new step (indented lines are its details)
        _live.reset(_task, total=None, description=msg.strip())


@contextlib.contextmanager
def display(console: Console | None = None) -> Iterator[None]:
    """A rich progress display on stderr for the block, when stderr is a terminal (or on ``console``);
    nested calls share the outer one; elsewhere the block runs unchanged."""
    global _live, _task
    if _live is not None:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as live:
        _live, _task = live, live.add_task("starting", total=None)
        try:
            yield
        finally:
            _live = _task = None
