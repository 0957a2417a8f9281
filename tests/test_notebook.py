"""notebooks/analysis.ipynb runs top to bottom on the committed results fixture and shows the table and plots."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "results"


def test_notebook_executes_on_fixture(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    assert nb.cells[1].source.strip() == 'RESULTS = "../tests/fixtures/results"'
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert markdown and markdown[0].startswith("| config |") and "% of FA" in markdown[0]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # accuracy and speed plots
