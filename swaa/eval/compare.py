"""Two evaluations of the same cells, prediction by prediction (e.g. `--decode static` against `generate`).

python -m swaa.eval.compare results/generate results/static   # per cell: accuracy, time, identical predictions
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from swaa.eval.results import RESULTS_FILE, load_samples, read_jsonl


def cells(folder: str | Path) -> dict[tuple, dict[str, Any]]:
    """(config name, task, length) -> record plus its predictions by sample id; the last record of a cell wins."""
    folder = Path(folder)
    out = {}
    for record in read_jsonl(folder / RESULTS_FILE, results=True):
        key = record["key"]
        samples = load_samples(folder, record)
        out[(record["config_name"], key["task"], key["length"])] = {
            **record, "predictions": {s["id"]: s["prediction"] for s in samples}}
    return out


def compare(a: str | Path, b: str | Path) -> list[dict[str, Any]]:
    """One row per cell present in both folders: accuracies, times, and how many of b's predictions equal a's."""
    left, right = cells(a), cells(b)
    shared = sorted(set(left) & set(right), key=str)
    if not shared:
        raise ValueError(f"{a} and {b} have no cell (config, task, length) in common")
    rows = []
    for cell in shared:
        x, y = left[cell], right[cell]
        same = sum(x["predictions"].get(i) == p for i, p in y["predictions"].items())
        rows.append({"config": cell[0], "task": cell[1], "length": cell[2], "accuracy_a": x["accuracy"],
                     "accuracy_b": y["accuracy"], "time_a": x["time_s"], "time_b": y["time_s"], "identical": same,
                     "n": len(y["predictions"])})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| config | task | length | accuracy a | accuracy b | time a s | time b s | identical predictions |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['task']} | {r['length']} | {r['accuracy_a']:.3f} | {r['accuracy_b']:.3f} | "
              f"{r['time_a']:.1f} | {r['time_b']:.1f} | {r['identical']}/{r['n']} |" for r in rows]
    total = (sum(r["identical"] for r in rows), sum(r["n"] for r in rows))
    times = (sum(r["time_a"] for r in rows), sum(r["time_b"] for r in rows))
    lines.append(f"| all | | | | | {times[0]:.1f} | {times[1]:.1f} | {total[0]}/{total[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="results folder of evaluate.py")
    parser.add_argument("b", help="results folder of evaluate.py with (some of) the same cells")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.a, args.b)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    print(markdown(rows))


if __name__ == "__main__":
    main()
