"""notebooks/analysis.ipynb runs top to bottom on the results fixture and on committed compact records, and shows
the table, the plots and one cell's samples."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "results"


@pytest.mark.parametrize("results, plots", [
    (None, 2),  # the notebook's default: the fixture, with speed data (accuracy and speed plots)
    ("../records/smollm2_teacher", 1),  # committed compact records (samples.jsonl.gz), no speed data
])
def test_notebook_executes(monkeypatch, results, plots):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    assert nb.cells[1].source.strip() == 'RESULTS = "../tests/fixtures/results"'
    if results is not None:
        nb.cells[1].source = f"RESULTS = {results!r}"
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert markdown and markdown[0].startswith("| config |") and "% of FA" in markdown[0]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == plots
    samples = [o for o in outputs if "text/html" in o.get("data", {})][-1]["data"]["text/html"]  # one cell's samples
    assert "prediction" in samples and "key_hash" not in samples
