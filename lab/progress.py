"""Progress lines of ``caplab run`` (stderr), shared by the runner and the model's side."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"[caplab] {msg}", file=sys.stderr, flush=True)
