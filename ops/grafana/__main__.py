"""python -m ops.grafana [--check]: write (or compare) ops/grafana/socketio.json."""

from __future__ import annotations

import argparse
import sys

from . import OUT, render


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.grafana", description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 if the committed file differs from a fresh build")
    args = p.parse_args(argv)
    fresh = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != fresh:
            print(f"{OUT.name} is out of date: run python -m ops.grafana", file=sys.stderr)
            return 1
        print(f"{OUT.name} is up to date")
        return 0
    OUT.write_text(fresh)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
