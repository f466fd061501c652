#!/bin/sh
""":"
exec "${0%/*}/../.venv/bin/python" "$0" "$@"  # sh: run this file with the venv's Python
":" Copy a scenario's outputs and its measured runs into notebooks/data/reference (the dataset the
notebooks and their tests read). Usage: scripts/make_reference.py reports/quickstart [DEST]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from lab.results import resolve_run


def main(src: str, dest: str = "notebooks/data/reference") -> None:
    src_dir, dest_dir = Path(src), Path(dest)
    shutil.rmtree(dest_dir, ignore_errors=True)
    (dest_dir / "runs").mkdir(parents=True)
    record = json.loads((src_dir / "runs.json").read_text())
    measured = []
    for p in record["measured"]:
        run = resolve_run(src_dir, p)
        shutil.copytree(run, dest_dir / "runs" / run.name, ignore=shutil.ignore_patterns("*.log"))
        measured.append(f"runs/{run.name}")
    record["measured"] = measured
    record["simulated"] = [Path(s).name for s in record.get("simulated", [])]  # ids only: not copied
    (dest_dir / "runs.json").write_text(json.dumps(record, indent=2))
    for f in src_dir.iterdir():
        if f.suffix in (".csv", ".json", ".md") and f.name != "runs.json":
            shutil.copy(f, dest_dir / f.name)
    model = dest_dir / "model.json"
    if model.exists():
        m = json.loads(model.read_text())
        m["calibrations"] = {k: Path(v).name for k, v in (m.get("calibrations") or {}).items()}
        m["simulated"] = [Path(s).name for s in m.get("simulated", [])]
        model.write_text(json.dumps(m, indent=2))
    print(dest_dir)


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        sys.exit("usage: scripts/make_reference.py reports/NAME [DEST (default notebooks/data/reference)]")
    main(*sys.argv[1:])
