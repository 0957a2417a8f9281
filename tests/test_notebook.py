"""notebooks/analysis.ipynb runs top to bottom on the results fixture and on committed compact records, and shows
the table, the plots (with a model benchmark, the frontier) and one cell's samples."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from swaa.eval.frontier import frontier_table, headline_text
from swaa.eval.results import load_records, of_tasks

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "results"
SPEED = "../benchmarks/model_h100_qwen3_4b_liger_fa4_64k_128k.json"
TRAINED = ["niah_multikey", "niah_multivalue"]


@pytest.mark.parametrize("results, speed, plots", [
    (None, None, 2),  # the notebook's default: the fixture, with speed data (accuracy and speed plots)
    ("../records/smollm2_teacher", None, 1),  # committed compact records (samples.jsonl.gz), no speed data
    ("../records/smollm2_selection", SPEED, 2),  # with a model benchmark: accuracy and frontier plots
])
def test_notebook_executes(monkeypatch, results, speed, plots):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    assert nb.cells[1].source.strip() == 'RESULTS = "../tests/fixtures/results"'
    if results is not None:
        nb.cells[1].source = f"RESULTS = {results!r}"
    speed_cell = next(c for c in nb.cells if c.source.startswith("SPEED = None"))
    if speed is not None:
        speed_cell.source = speed_cell.source.replace("SPEED = None", f"SPEED = {speed!r}", 1).replace(
            "TASKS = None", f"TASKS = {TRAINED!r}", 1)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert markdown and markdown[0].startswith("| config |") and "% of FA" in markdown[0]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == plots
    samples = [o for o in outputs if "text/html" in o.get("data", {})][-1]["data"]["text/html"]  # one cell's samples
    assert "prediction" in samples and "key_hash" not in samples
    frontier = [m for m in markdown if "prefill speedup" in m]
    assert bool(frontier) == (speed is not None)
    if speed is not None:  # the headline swaa.eval.frontier computes from the same files
        bench = json.loads((ROOT / "notebooks" / speed).read_text())
        table = frontier_table(of_tasks(load_records(ROOT / "notebooks" / results), TRAINED), bench, 65536, depth=30)
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert headline_text(table, 95.0) in text and "x (" in headline_text(table, 95.0)
