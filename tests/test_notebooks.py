"""The notebooks run top to bottom on the committed reference dataset (the lab's own real run), draw their figures
as inline images, resolve their data wherever the kernel starts, and are committed with fresh outputs.

Re-render the committed outputs after a change that moves a number (from the repo root):
    .venv/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.record_timing=False \
        notebooks/*.ipynb
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from nbclient import NotebookClient

from eventlog import read_manifest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
REFERENCE = NOTEBOOKS / "data" / "reference"
RERENDER = (
    "re-render: jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb (see this file's docstring)"
)
# figures each notebook draws on the reference dataset (notebook 2's GC histogram needs more than 5 pauses; the
# reference run has 1, so it prints that instead)
FIGURES = {"1-before-after": 1, "2-calibration": 2, "3-capacity": 1, "4-what-if": 2}
PNG = b"\x89PNG\r\n\x1a\n"


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    errors = ["\n".join(o["traceback"]) for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors[0]
    return nb


def images(nb: nbformat.NotebookNode) -> list[bytes]:
    return [
        base64.b64decode(o["data"]["image/png"])
        for c in nb.cells
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]


def texts(nb: nbformat.NotebookNode) -> list[list]:
    """Every code cell's outputs but the PNG bytes (the tables, printed numbers and figure reprs)."""
    return [
        [
            o.get("text")
            if o.output_type == "stream"
            else {k: v for k, v in o.get("data", {}).items() if k != "image/png"}
            for o in c.outputs
        ]
        for c in nb.cells
        if c.cell_type == "code"
    ]


def test_every_notebook_is_listed():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_draws_its_figures_and_its_committed_outputs_are_fresh(name, tmp_path):
    committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert [c for c in committed.cells if "parameters" in c.metadata.get("tags", [])], "needs a parameters cell"
    source = "\n".join(c.source for c in committed.cells)
    assert 'matplotlib.use("Agg")' not in source, "the Agg backend drops every figure in Jupyter"
    assert len(images(committed)) == FIGURES[name], f"committed outputs lack figures; {RERENDER}"

    fresh = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for c in fresh.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    execute(fresh, tmp_path)  # the kernel starts outside the repo: paths still resolve
    figures = images(fresh)
    assert len(figures) == FIGURES[name]
    assert all(f.startswith(PNG) and 2_000 < len(f) < 150_000 for f in figures), [len(f) for f in figures]
    stray = [
        o for c in fresh.cells for o in c.get("outputs", []) if "[None" in str(o.get("data", {}).get("text/plain", ""))
    ]
    assert not stray, stray
    assert texts(fresh) == texts(committed), f"committed outputs are stale; {RERENDER}"


def reports_folder(repo: Path) -> Path:
    """A copy of the reference laid out as `caplab run` writes it: runs.json paths relative to the repo root."""
    record = json.loads((REFERENCE / "runs.json").read_text())
    out = repo / "reports" / "mine"
    shutil.copytree(REFERENCE, out, ignore=shutil.ignore_patterns("runs"))
    for p in record["measured"]:
        shutil.copytree(REFERENCE / p, repo / "runs" / Path(p).name)
    record["measured"] = [f"runs/{Path(p).name}" for p in record["measured"]]
    (out / "runs.json").write_text(json.dumps(record))
    return out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_papermill_runs_a_notebook_on_a_report_folder_whose_run_paths_are_relative_to_the_repo(tmp_path):
    out = reports_folder(tmp_path / "repo")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = tmp_path / "done.ipynb"
    papermill.execute_notebook(
        NOTEBOOKS / "1-before-after.ipynb",
        done,
        parameters={"OUTPUTS": str(out)},
        cwd=elsewhere,
        kernel_name="python3",
        progress_bar=False,
    )
    nb = nbformat.read(done, as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    for p in json.loads((REFERENCE / "runs.json").read_text())["measured"]:
        assert read_manifest(REFERENCE / p).run_id in printed
    assert len(images(nb)) == FIGURES["1-before-after"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_missing_outputs_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match=r"reports/no-such: no runs.json there"):
        papermill.execute_notebook(
            NOTEBOOKS / "3-capacity.ipynb",
            tmp_path / "done.ipynb",
            parameters={"OUTPUTS": "reports/no-such"},
            cwd=tmp_path,
            kernel_name="python3",
            progress_bar=False,
        )


def test_nbconvert_executes_a_notebook_from_the_venv(tmp_path):
    """`jupyter nbconvert --execute` (a dev dependency) works as the README shows, from any folder."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--stdout",
            str(NOTEBOOKS / "1-before-after.ipynb"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(images(nbformat.reads(done.stdout, as_version=4))) == FIGURES["1-before-after"]


def test_reference_dataset_is_a_real_lab_run():
    record = json.loads((REFERENCE / "runs.json").read_text())
    assert record["measured"], "the reference holds measured runs"
    for p in record["measured"]:
        manifest = read_manifest(REFERENCE / p)
        assert manifest.source == "measured" and manifest.status == "complete"
        assert list((REFERENCE / p / "events").glob("part-*.parquet"))
