"""The accuracy-speed frontier: each evaluated configuration's accuracy (% of FA) beside the prefill and decode
speedup that `python -m swaa.bench model` measured for a configuration with the same fraction of full layers and the
same FA decode setting (speed depends on how many layers are full, not which), and the headline figure: the largest
prefill speedup among configurations that keep at least a threshold of FA's accuracy.

    python -m swaa.eval.frontier records/smollm2_teacher records/smollm2_grid \
        --speed benchmarks/model_h200_qwen3_4b_16k_64k.json --length 65536 --out results/frontier
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from swaa.cli import split_values
from swaa.config import SWAAConfig, check_depth
from swaa.eval.report import FA_TAG, config_label, summary_table
from swaa.eval.results import load_records, of_tasks, path_identity
from swaa.files import check_output_path, write_atomic
from swaa.models import DEFAULT_GGUF, load_config
from swaa.tiny import is_tiny_spec

log = logging.getLogger(__name__)
FRACTION_TOLERANCE = 0.05  # an evaluated and a timed configuration match when their full fractions differ by less


def full_fraction(config: SWAAConfig, depth: int) -> float:
    """Share of the `depth` layers that keep full attention (1.0 for plain FA)."""
    return 1.0 if not config.enabled else len(config.full_layer_indices(depth)) / depth


@functools.cache
def config_depth(model: str | None) -> int | None:
    """num_hidden_layers of load_config(model), read once per model; None (with a warning) when it cannot be read."""
    try:
        return load_config(model).num_hidden_layers
    except (OSError, ValueError) as e:
        log.warning("cannot read the number of layers of model %s: %s", model or DEFAULT_GGUF, e)
        return None


def model_depth(model: str, model_id: str | None) -> int | None:
    """Layers of a records' model where this machine can tell: a tiny spec, the very file or folder the records were
    made with (same path_identity), or the embedded SmolLM2 by its file name; else None."""
    if is_tiny_spec(model) or Path(model).exists() and path_identity(model) == model_id:
        return config_depth(model)
    return config_depth(None) if Path(model).name == DEFAULT_GGUF else None


def check_records_depth(records: list[dict[str, Any]], configs: dict[str, SWAAConfig], depth: int) -> None:
    """--depth is the depth of each records' model that model_depth knows, and check_depth of the records' configs
    passes (the only check for an unknown model); else a ValueError naming --depth."""
    for model, model_id in dict.fromkeys((r["key"]["model"], r["key"]["model_id"]) for r in records):
        known = model_depth(model, model_id)
        if known is None:
            log.warning("model %s: its number of layers is not known here; --depth %d is taken as it", model, depth)
        elif known != depth:
            raise ValueError(f"--depth {depth}: {'larger' if depth > known else 'smaller'} than the records' model "
                             f"depth {known} (model {model}); the full fractions need --depth {known}")
    try:
        check_depth(configs, depth)
    except ValueError as e:
        listed = [i for c in configs.values() for spec in (c.full_layers, c.fa_decode) if isinstance(spec, list)
                  for i in spec]
        raise ValueError(f"--depth={depth} is not the evaluated model's number of layers: {e} "
                         f"(largest listed layer index in the records: {max(listed, default='none')})") from e


def load_speed(path: str | Path) -> dict[str, Any]:
    """The JSON that `python -m swaa.bench model` wrote at `path`; any other file is an error naming --speed."""
    try:
        bench = json.loads(Path(path).read_text())
        bench["meta"]["model"]["num_hidden_layers"], bench["meta"]["configs"], bench["rows"]  # what speed_rows reads
        known = [c["name"] for c in bench["meta"]["configs"]]
        unknown = sorted({r["config"] for r in bench["rows"]} - set(known))
    except (OSError, ValueError, LookupError, TypeError) as e:
        raise ValueError(f"--speed {path}: expected the JSON of `python -m swaa.bench model` (meta.model."
                         f"num_hidden_layers, meta.configs, rows); {type(e).__name__}: {e}") from e
    if unknown:
        raise ValueError(f"--speed {path}: rows name config(s) {unknown} that meta.configs does not list; known "
                         f"configs: {known}")
    return bench


def speed_rows(bench: dict[str, Any], length: int) -> list[dict[str, Any]]:
    """(full fraction, FA decode, prefill / decode speedup) of every timed SWAA row of a model benchmark at `length`."""
    depth = bench["meta"]["model"]["num_hidden_layers"]
    configs = {c["name"]: c for c in bench["meta"]["configs"]}  # load_speed checks that every row's config is here
    rows = []
    for r in bench["rows"]:
        if r["length"] != length or r.get("status") != "ok" or r.get("prefill_speedup") is None:
            continue
        config = configs[r["config"]]
        if config["hf_window"] is not None:
            continue
        swaa = SWAAConfig.from_dict(config["swaa"])
        rows.append({"speed_config": r["config"], "fraction": full_fraction(swaa, depth),
                     "fa_decode": bool(swaa.fa_decode), "prefill_speedup": r["prefill_speedup"],
                     "decode_speedup": r.get("static_decode_speedup") or r.get("decode_speedup")})
    if not rows:
        raise ValueError(f"the benchmark has no timed rows at length {length}; lengths: "
                         f"{sorted({r['length'] for r in bench['rows']})}")
    return rows


def frontier_table(records: list[dict[str, Any]], bench: dict[str, Any], length: int, depth: int,
                   fa_run: str | None = None, where: str = "fa_run") -> pd.DataFrame:
    """One row per evaluated (run, config): % of FA (and se), full fraction, and the matched speed row's speedups.
    `fa_run`, `where`: see `summary_table`."""
    table = summary_table(records, fa_run, where)
    no_fa = sorted(set(table["run"]) - set(table.loc[table["tag"] == FA_TAG, "run"])) if fa_run is None else []
    if no_fa:
        raise ValueError(f"run(s) {no_fa} have no full-attention row (config tag {FA_TAG!r}) to give '% of FA': "
                         f"evaluate them with config `fa` too, or pass {where} naming a run that has one")
    if "% of FA" not in table:  # summary_table drops the column when no row has one
        raise ValueError(f"no FA row scores above 0 on these cells (runs {sorted(set(table['run']))}): '% of FA' is "
                         f"undefined; choose other --tasks or evaluate a model that solves them under FA")
    configs = {config_label(r): SWAAConfig.from_dict(r["key"]["swaa"]) for r in records}
    check_records_depth(records, configs, depth)
    speeds = speed_rows(bench, length)
    out = []
    for _, row in table.iterrows():
        config = configs[row["config"]]
        fraction = full_fraction(config, depth)
        match = None if not config.enabled else min(
            (s for s in speeds if s["fa_decode"] == bool(config.fa_decode)
             and abs(s["fraction"] - fraction) < FRACTION_TOLERANCE),
            key=lambda s: abs(s["fraction"] - fraction), default=None)
        speed = {"speed_config": "fa", "prefill_speedup": 1.0, "decode_speedup": 1.0} if not config.enabled else \
            {k: match[k] for k in ("speed_config", "prefill_speedup", "decode_speedup")} if match else \
            {"speed_config": None, "prefill_speedup": math.nan, "decode_speedup": math.nan}
        out.append({"run": row["run"], "config": row["config"], "tag": row["tag"], "full_fraction": fraction,
                    "% of FA": row["% of FA"], "% of FA se": row["% of FA se"], **speed})
    return pd.DataFrame(out)


def headline(table: pd.DataFrame, threshold: float) -> dict[str, Any] | None:
    """The row with the largest prefill speedup among those at >= `threshold` % of FA (FA itself excluded)."""
    kept = table[(table["% of FA"] >= threshold) & (table["tag"] != "fa") & table["prefill_speedup"].notna()]
    return None if kept.empty else kept.loc[kept["prefill_speedup"].idxmax()].to_dict()


def headline_text(table: pd.DataFrame, threshold: float) -> str:
    """The headline in one line, e.g. 'largest prefill speedup at >= 95% of FA: 2.18x (config, 97.4%)'."""
    best = headline(table, threshold)
    return f"largest prefill speedup at >= {threshold:g}% of FA: " + (
        "none" if best is None else f"{best['prefill_speedup']:.2f}x ({best['config']}, {best['% of FA']:.1f}%)")


def plot_frontier(table: pd.DataFrame, threshold: float, length: int) -> Figure:
    """Accuracy (% of FA, ± se) against prefill speedup, one point per evaluated configuration, one colour per run."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    timed = table[table["prefill_speedup"].notna()]
    for run, rows in timed.groupby("run", sort=False):
        ax.errorbar(rows["prefill_speedup"], rows["% of FA"], yerr=rows["% of FA se"], fmt="o", capsize=3, label=run)
    for _, r in timed.iterrows():
        ax.annotate(f"{r['config']}", (r["prefill_speedup"], r["% of FA"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    if timed["run"].nunique() > 1:
        ax.legend(fontsize=7, loc="lower left")
    ax.set_xlabel(f"prefill speedup over FA at {length // 1024}k tokens")
    ax.set_ylabel("accuracy, % of FA")
    return fig


def write_frontier(table: pd.DataFrame, threshold: float, length: int, out: str | Path) -> dict[str, Path]:
    """frontier.md, frontier.csv, frontier.png and headline.json in `out`."""
    out = Path(out)
    paths = {name: out / file for name, file in (("markdown", "frontier.md"), ("csv", "frontier.csv"),
                                                  ("plot", "frontier.png"), ("headline", "headline.json"))}
    write_atomic(paths["markdown"], markdown(table))
    write_atomic(paths["csv"], table.to_csv(index=False))
    buf = io.BytesIO()
    plot_frontier(table, threshold, length).savefig(buf, format="png", dpi=120)
    write_atomic(paths["plot"], buf.getvalue())
    write_atomic(paths["headline"], json.dumps({"threshold": threshold, "length": length,
                                                "best": headline(table, threshold)}, indent=1, default=str) + "\n")
    return paths


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    """`value` formatted with `spec` and `suffix`, or 'n/a' when it is missing (None or NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec) + suffix


def markdown(table: pd.DataFrame) -> str:
    lines = ["| run | config | full layers | % of FA | prefill speedup | decode speedup | timed as |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['config']} | {r['full_fraction']:.2f} | {_fmt(r['% of FA'], '.1f')} ± "
              f"{_fmt(r['% of FA se'], '.1f')} | {_fmt(r['prefill_speedup'], '.2f', 'x')} | "
              f"{_fmt(r['decode_speedup'], '.2f', 'x')} | {_fmt(r['speed_config'], 's')} |"
              for _, r in table.iterrows()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m swaa.eval.frontier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results folders or results.jsonl files (evaluate.py --out)")
    p.add_argument("--speed", required=True, help="JSON of `python -m swaa.bench model` (FA and SWAA rows)")
    p.add_argument("--length", type=int, default=65536, help="prompt length of the speed rows (default: %(default)s)")
    p.add_argument("--depth", type=int, default=30,
                   help="layers of the evaluated model (default: %(default)s, SmolLM2)")
    p.add_argument("--fa-run", help="the run whose FA row is every row's reference (default: each run's own)")
    p.add_argument("--threshold", type=float, default=95.0, help="%% of FA to keep (default: %(default)s)")
    p.add_argument("--tasks", nargs="+", help="%% of FA over the cells of these tasks only, space or comma separated "
                                              "(default: every task)")
    p.add_argument("--out", required=True, help="folder for frontier.md, frontier.csv, frontier.png, headline.json")
    args = p.parse_args(argv)
    if args.depth < 1:
        p.error(f"--depth: expected the evaluated model's number of layers, an int >= 1; got {args.depth}")
    if not (math.isfinite(args.threshold) and args.threshold > 0):
        p.error(f"--threshold: expected a finite % of FA > 0; got {args.threshold}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_output_path(args.out, "--out", folder=True)
        bench = load_speed(args.speed)
        records = of_tasks(load_records(args.results), split_values(args.tasks))
        table = frontier_table(records, bench, args.length, args.depth, args.fa_run, "--fa-run")
        paths = write_frontier(table, args.threshold, args.length, args.out)
    except (OSError, ValueError, KeyError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")  # one line, exit 2 like the argument errors above
    print(markdown(table))
    print(headline_text(table, args.threshold))
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
