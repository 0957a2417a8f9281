"""Tables (Markdown, CSV) and plots (PNG) from evaluation records: one row per model run and SWAA configuration.

Merge several result folders into one report: python -m swaa.eval.report results/a results/b --out results/all
"""

from __future__ import annotations

import argparse
import io
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from swaa.cli import split_values
from swaa.eval.results import DEFAULTED_KEY_FIELDS, load_records, of_configs, of_tasks
from swaa.files import check_output_path, write_atomic

log = logging.getLogger(__name__)
FA_TAG = "fa"


def _run_label(key: dict[str, Any]) -> str:
    """Model file name, plus the adapter's: runs/<run>/checkpoints/last.ckpt reads '<run>', like the adapter folder
    exported from it (so the two share a row); another checkpoint of the run reads '<run>/<file>'."""
    model = Path(key["model"]).name
    if key["adapter"] is None:
        return model
    adapter = Path(key["adapter"])
    name = adapter.name
    if adapter.parent.name == "checkpoints":
        run = adapter.parent.parent.name
        name = run if adapter.name == "last.ckpt" else f"{run}/{adapter.name}"
    return f"{model} + {name}"


def config_label(record: dict[str, Any]) -> str:
    """The record's configuration name, plus its attention backend where that is not the default: 'half [fa4]'."""
    backend = record["key"].get("backend")
    return record["config_name"] if backend is None else f"{record['config_name']} [{backend}]"


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record (long form); for a repeated (run, config, task, length) the last record wins."""
    if not records:
        raise ValueError("no evaluation records to report")
    rows = []
    for r in records:
        key, speed = r["key"], r["speed"] or {}
        backend = key.get("backend", DEFAULTED_KEY_FIELDS["backend"])
        rows.append({"run": _run_label(key), "config": config_label(r), "backend": backend, "tag": key["swaa_tag"],
                     "task": key["task"], "length": key["length"],
                     "cell": key["task"] if key["length"] is None else f"{key['task']}@{key['length']}",
                     "accuracy": r["accuracy"], "stderr": r["stderr"], "n": r["n"],
                     "n_unparsed": r["n_unparsed"], "prefill_ms": speed.get("prefill_ms", math.nan),
                     "decode_ms_per_token": speed.get("decode_ms_per_token", math.nan)})
    df = pd.DataFrame(rows)
    dup = df.duplicated(["run", "config", "cell"], keep="last")
    if dup.any():
        log.warning("%d older records for the same (run, config, cell) were replaced by later ones", int(dup.sum()))
    return df[~dup].reset_index(drop=True)


def _names(fa_run: str, run: str) -> bool:
    """Whether `fa_run` names the run label `run`: the label itself or its adapter's name."""
    return run == fa_run or run.endswith(f" + {fa_run}")


def _fa_reference_run(df: pd.DataFrame, fa_run: str, where: str) -> str:
    """The one run label that `fa_run` names (the label itself or its adapter's name) and that has FA records; errors
    start with `where`."""
    runs = sorted({run for run in df["run"] if _names(fa_run, run)})
    if len(runs) != 1:
        raise ValueError(f"{where}={fa_run!r} matches {len(runs)} runs {runs}; expected one of "
                         f"{sorted(set(df['run']))}")
    if not ((df["run"] == runs[0]) & (df["tag"] == FA_TAG)).any():
        raise ValueError(f"{where}={fa_run!r}: run {runs[0]!r} has no full-attention (tag {FA_TAG!r}) records")
    return runs[0]


def of_configs_with_fa(records: list[dict[str, Any]], configs: list[str] | None,
                       fa_run: str | None = None) -> list[dict[str, Any]]:
    """The rows `--configs` keeps: those configurations; FA rows only of runs that have another listed one (of every
    run when FA is the only one listed); and the FA row of `fa_run`, listed or not."""
    chosen = of_configs(records, configs)
    if configs is None:
        return chosen
    kept = {id(r) for r in chosen}
    others = {_run_label(r["key"]) for r in chosen if r["key"]["swaa_tag"] != FA_TAG}

    def keep(r: dict[str, Any]) -> bool:
        run, is_fa = _run_label(r["key"]), r["key"]["swaa_tag"] == FA_TAG
        if is_fa and fa_run is not None and _names(fa_run, run):
            return True
        return id(r) in kept and (not is_fa or not others or run in others)
    return [r for r in records if keep(r)]


def _fa_config(fa_backends: dict[str, str], run: str, backend: str, warned: set) -> str:
    """The FA row (config label) of `run` that rows on `backend` compare to, from its FA rows' backends by label: the
    one on the same backend, else the only one; among several, the one named 'fa', else the first by name, with a
    warning (once per run and backend, `warned`) naming it."""
    candidates = sorted(c for c, b in fa_backends.items() if b == backend) or sorted(fa_backends)
    chosen = min(candidates, key=lambda c: (c != FA_TAG, c))
    if len(candidates) > 1 and (run, backend) not in warned:
        warned.add((run, backend))
        log.warning("run %r has %d full-attention rows %s for backend %r; '%% of FA' uses %r", run, len(candidates),
                    candidates, backend, chosen)
    return chosen


def summary_table(records: list[dict[str, Any]], fa_run: str | None = None, where: str = "fa_run") -> pd.DataFrame:
    """Numeric table, rows (run, config): per-cell accuracy and stderr, mean, '% of FA' (and its se), n, prefill ms
    per length.

    '% of FA' is the mean relative to the mean of the full-attention config (tag 'fa') over the same cells: of the
    same run, or of the run `fa_run` names (its label or adapter name; errors about it start with `where`) for every
    row; of a run with several FA rows, the one on the row's backend (see `_fa_config`). n is the smallest cell's
    sample count; 'mean se' and '% of FA se' assume independent cells.
    """
    df = records_frame(records)
    fa_rows = df[df["tag"] == FA_TAG]
    fa = {run_config: g.set_index("cell")[["accuracy", "stderr"]]
          for run_config, g in fa_rows.groupby(["run", "config"], sort=False)}
    fa_backends = {run: dict(zip(g["config"], g["backend"])) for run, g in fa_rows.groupby("run", sort=False)}
    reference = {run: run for run in fa_backends} if fa_run is None else \
        dict.fromkeys(df["run"], _fa_reference_run(df, fa_run, where))
    cells = list(dict.fromkeys(df["cell"]))
    lengths = [x for x in dict.fromkeys(df["length"]) if x is not None and not pd.isna(x)]
    table_rows, warned = [], set()
    for (run, config), g in df.groupby(["run", "config"], sort=False):
        by_cell = g.set_index("cell")
        row: dict[str, Any] = {"run": run, "config": config, "tag": g["tag"].iloc[0]}
        for cell in cells:
            row[cell] = by_cell["accuracy"].get(cell, math.nan)
            row[f"{cell} se"] = by_cell["stderr"].get(cell, math.nan)
        row["mean"] = g["accuracy"].mean()
        row["mean se"] = math.sqrt((g["stderr"] ** 2).sum()) / len(g)
        fa_key = None if run not in reference else \
            (reference[run], _fa_config(fa_backends[reference[run]], reference[run], g["backend"].iloc[0], warned))
        fa_cells = fa[fa_key].reindex(g["cell"]) if fa_key is not None else None
        if fa_cells is None or fa_cells["accuracy"].isna().any() or fa_cells["accuracy"].mean() <= 0:
            row["% of FA"] = row["% of FA se"] = math.nan
        else:
            fa_mean, fa_se = fa_cells["accuracy"].mean(), math.sqrt((fa_cells["stderr"] ** 2).sum()) / len(g)
            row["% of FA"] = 100 * row["mean"] / fa_mean
            row["% of FA se"] = 0.0 if fa_key == (run, config) else \
                100 / fa_mean * math.hypot(row["mean se"], row["mean"] * fa_se / fa_mean)  # a ratio to itself: 0
        row["n"] = int(g["n"].min())
        for length in lengths:
            row[f"prefill ms@{length}"] = g.loc[g["length"] == length, "prefill_ms"].median()
        table_rows.append(row)
    return pd.DataFrame(table_rows).dropna(axis=1, how="all")


def _fmt(value: float, se: float | None = None) -> str:
    if pd.isna(value):
        return "-"
    text = f"{100 * value:.1f}"
    return text if se is None or pd.isna(se) else f"{text} ± {100 * se:.1f}"


def markdown_table(table: pd.DataFrame) -> str:
    """Markdown rendering of `summary_table`: accuracies in percent as 'acc ± stderr'."""
    cells = [c for c in table.columns if f"{c} se" in table.columns and c not in ("mean", "% of FA")]
    speed = [c for c in table.columns if c.startswith("prefill ms@")]
    multi_run = table["run"].nunique() > 1
    header = (["run"] if multi_run else []) + ["config", *cells, "mean", "% of FA", "n", *speed]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        values = ([row["run"]] if multi_run else []) + [row["config"]]
        values += [_fmt(row[c], row[f"{c} se"]) for c in cells]
        values += [_fmt(row["mean"], row["mean se"])]
        pct = row.get("% of FA", math.nan)
        values += ["-" if pd.isna(pct) else f"{pct:.0f}%", str(row["n"])]
        values += ["-" if pd.isna(row[c]) else f"{row[c]:.0f}" for c in speed]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def config_colors(configs: list[str]) -> dict[str, tuple]:
    """A colour per configuration, the same in every panel: tab10, or tab20 beyond 10 (distinct up to 20)."""
    cmap = colormaps["tab10" if len(configs) <= 10 else "tab20"]
    return {config: cmap(i % cmap.N) for i, config in enumerate(configs)}


def plot_accuracy(records: list[dict[str, Any]]) -> Figure:
    """Grouped bars per run: x = prompt length, one bar per configuration (mean over tasks, ± stderr); each panel's
    legend sits to the right of its axes, never over the bars."""
    df = records_frame(records)
    df["length"] = df["length"].fillna("file")
    runs = list(dict.fromkeys(df["run"]))
    colors = config_colors(list(dict.fromkeys(df["config"])))
    width_in = max(6.0, 1.2 * df["config"].nunique() * df["length"].nunique()) + 2.5  # + the legend column
    fig = Figure(figsize=(width_in, 3.5 * len(runs)), layout="constrained")
    for i, run in enumerate(runs):
        ax = fig.add_subplot(len(runs), 1, i + 1)
        g = df[df["run"] == run]
        lengths, configs = list(dict.fromkeys(g["length"])), list(dict.fromkeys(g["config"]))
        width = 0.8 / len(configs)
        for j, config in enumerate(configs):
            c = g[g["config"] == config].groupby("length", sort=False)
            acc = c["accuracy"].mean().reindex(lengths)
            se = c["stderr"].apply(lambda s: math.sqrt((s ** 2).sum()) / len(s)).reindex(lengths)
            ax.bar([k + j * width for k in range(len(lengths))], 100 * acc, width, yerr=100 * se, label=config,
                   capsize=2, color=colors[config])
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(lengths))], [str(x) for x in lengths])
        ax.set(xlabel="prompt length (tokens)", ylabel="accuracy (%)", ylim=(0, 105), title=run)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def plot_speed(records: list[dict[str, Any]]) -> Figure | None:
    """Accuracy vs prefill time per configuration, one marker series per length; None without speed data."""
    df = records_frame(records).dropna(subset=["prefill_ms"])
    if df.empty:
        return None
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    points = df.groupby(["run", "length", "config"], sort=False).agg(acc=("accuracy", "mean"),
                                                                     ms=("prefill_ms", "median")).reset_index()
    for (run, length), g in points.groupby(["run", "length"], sort=False):
        label = f"{length} tokens" if points["run"].nunique() == 1 else f"{run}, {length} tokens"
        ax.scatter(g["ms"], 100 * g["acc"], label=label)
        for _, p in g.iterrows():
            ax.annotate(p["config"], (p["ms"], 100 * p["acc"]), fontsize="x-small", xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="prefill time (ms)", ylabel="accuracy (%)", title="accuracy vs prefill time")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _save_png(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_atomic(path, buf.getvalue())


def write_report(records: list[dict[str, Any]], out_dir: str | Path, fa_run: str | None = None,
                 where: str = "fa_run") -> dict[str, Path]:
    """Write table.md, table.csv, accuracy.png and (with speed data) speed.png to `out_dir`; returns the paths.
    `fa_run`, `where`: see `summary_table`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(records, fa_run, where)
    paths = {"markdown": out / "table.md", "csv": out / "table.csv", "accuracy_plot": out / "accuracy.png"}
    write_atomic(paths["markdown"], markdown_table(table))
    write_atomic(paths["csv"], table.to_csv(index=False))
    _save_png(plot_accuracy(records), paths["accuracy_plot"])
    speed = plot_speed(records)
    if speed is not None:
        paths["speed_plot"] = out / "speed.png"
        _save_png(speed, paths["speed_plot"])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m swaa.eval.report",
                                     description="One report (table.md, table.csv, plots) from several result folders.")
    parser.add_argument("results", nargs="+", help="result folders (or results.jsonl files) of evaluate.py")
    parser.add_argument("--out", required=True, help="folder for table.md, table.csv, accuracy.png (speed.png)")
    parser.add_argument("--fa-run", help="'%% of FA' against this run's FA row for every row (its label or adapter "
                        "name, e.g. teacher_fa_more); default: each run's own FA row")
    parser.add_argument("--tasks", nargs="+", help="only the cells of these tasks, space or comma separated "
                                                   "(default: every task)")
    parser.add_argument("--configs", nargs="+", help="only the rows of these configuration names, space or comma "
                                                     "separated (default: every configuration); fa among others keeps "
                                                     "the FA rows of runs with another listed one; --fa-run's FA row "
                                                     "always stays")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_output_path(args.out, "--out", folder=True)
        records = of_configs_with_fa(of_tasks(load_records(args.results), split_values(args.tasks)),
                                     split_values(args.configs), args.fa_run)
        if args.configs is not None and not any(r["key"]["swaa_tag"] == FA_TAG for r in records):
            log.warning("no FA row among --configs %s: '%% of FA' stays empty; list fa too, or pass --fa-run",
                        " ".join(split_values(args.configs)))
        paths = write_report(records, args.out, args.fa_run, "--fa-run")
    except (OSError, ValueError) as e:
        parser.error(str(e))
    print(paths["markdown"].read_text(), end="")
    for path in paths.values():
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
