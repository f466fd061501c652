"""The notebooks run top to bottom on the committed reference dataset (the lab's own real run)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from eventlog import read_manifest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), "needs a parameters cell"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_reference_dataset_is_a_real_lab_run():
    ref = NOTEBOOKS / "data" / "reference"
    import json

    record = json.loads((ref / "runs.json").read_text())
    assert record["measured"], "the reference holds measured runs"
    for p in record["measured"]:
        manifest = read_manifest(ref / p)
        assert manifest.source == "measured" and manifest.status == "complete"
        assert list((ref / p / "events").glob("part-*.parquet"))
