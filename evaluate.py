"""Accuracy (and optionally speed) of one model over a grid of SWAA configurations.

`python evaluate.py` runs the default grid (swaa/grid.yaml, bundled) on the embedded SmolLM2-135M-Instruct with its
trained FA-teacher adapter (data/adapters/teacher_fa; `--adapter none` for the bare model) and writes results, tables
and plots to results/. Finished cells are skipped when re-run with the same settings; Ctrl-C keeps them (exit
130), and the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from swaa.attention import BACKENDS
from swaa.cli import exit_input_error, given_values, int_at_least, int_values
from swaa.config import presets_with
from swaa.eval.grid import DEFAULT_GRID, GRID_SETTINGS, JUDGE, GridSettings, check_sample_flags, select_grid
from swaa.eval.report import write_report
from swaa.eval.results import RESULTS_FILE
from swaa.eval.runner import run_grid
from swaa.files import check_output_path
from swaa.generation import DECODE_MODES
from swaa.models import check_device
from swaa.tasks.scorers import SCORERS

# the embedded model's FA teacher (RESULTS.md): without it SmolLM2 fails most long-context tasks even with FA
DEFAULT_ADAPTER = Path(__file__).resolve().parent / "data" / "adapters" / "teacher_fa"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Hugging Face folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", help="LoRA adapter: a peft folder or a train.py .ckpt; 'none' for the bare model "
                                     "(default: data/adapters/teacher_fa with the embedded model, else none)")
    p.add_argument("--swaa", help=f"a grid YAML, comma-separated preset names, or inline JSON such as "
                                  f"'{{\"window\": 256, \"sink\": 16}}' (default: {DEFAULT_GRID.name})")
    p.add_argument("--configs", nargs="+", help="run only these configurations of the grid, by name")
    p.add_argument("--presets", help="SWAA presets YAML whose names --swaa and the grid may use besides the bundled "
                                     "swaa/presets.yaml (its own win on a shared name)")
    p.add_argument("--tasks", nargs="+", help="synthetic tasks, space or comma separated (default: from the grid)")
    p.add_argument("--lengths", nargs="+", help="prompt lengths in tokens, space or comma separated (default: grid)")
    p.add_argument("--n", type=int_at_least(1), help="samples per task and length (default: grid), or the first n "
                                                      "rows of --data (default: all)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-new-tokens", type=int_at_least(1))
    p.add_argument("--batch-size", type=int_at_least(1))
    p.add_argument("--data", help="evaluation file (.parquet, .jsonl or .json; data/README.md) instead of synthetic "
                                  "tasks")
    p.add_argument("--scorer", choices=list(SCORERS),
                   help="override every sample's scorer (judge needs --judge-model)")
    p.add_argument("--judge-model", help="model that judges answers when --scorer judge")
    p.add_argument("--speed", action="store_true", help="also time prefill and decode per config and length")
    p.add_argument("--decode", choices=DECODE_MODES, default="generate",
                   help="answers by transformers' generate, or by StaticDecoder steps (one CUDA graph replay per "
                        "token on GPU; generate's greedy answers in float32, rare bf16 near-ties may differ) "
                        "(default: %(default)s)")
    p.add_argument("--backend", default="auto", choices=sorted(BACKENDS),
                   help="SWAA attention backend of the SWA layers; part of each result's key (default: %(default)s)")
    p.add_argument("--out", default="results", help="results folder (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    args.tasks, args.configs = given_values(p, "--tasks", args.tasks), given_values(p, "--configs", args.configs)
    if args.adapter is None and args.model is None:
        args.adapter = str(DEFAULT_ADAPTER)
    elif args.adapter == "none":
        args.adapter = None
    args.lengths = int_values(p, "--lengths", args.lengths, 1)
    check_sample_flags(p, args.data, args.tasks, args.lengths, "data file")
    if args.scorer == JUDGE and args.judge_model is None:
        p.error(f"--scorer {JUDGE}: needs --judge-model, the model that judges the answers")
    if args.judge_model is not None and args.scorer != JUDGE:
        p.error(f"--judge-model {args.judge_model}: needs --scorer {JUDGE}"
                + (f", got --scorer {args.scorer}" if args.scorer else ""))
    try:
        check_device(args.device, "--device")
        presets_with(args.presets)  # read (and checked) even when no name of it is used
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_output_path(args.out, "--out", folder=True)
        configs, grid = select_grid(args.swaa, args.presets, args.configs)
        if args.data:  # the file brings the samples: all its rows unless --n
            grid = {**{k: v for k, v in grid.items() if k not in ("tasks", "lengths")}, "n": None}
        overrides = {k: getattr(args, k) for k in GRID_SETTINGS if getattr(args, k) is not None}
        settings = GridSettings(**{**grid, **overrides}, scorer=args.scorer, data_file=args.data,
                                judge_model=args.judge_model, speed=args.speed, decode=args.decode,
                                backend=args.backend, device=args.device, out_dir=args.out)
        records = run_grid(configs, settings, args.model, args.adapter, where="--model", judge_where="--judge-model")
        paths = write_report(records, args.out)
    except (ValueError, FileNotFoundError) as e:
        exit_input_error("evaluate.py", e)
    except KeyboardInterrupt:
        results = Path(args.out) / RESULTS_FILE  # written from the first finished cell on
        if results.is_file() and results.stat().st_size:
            saved = f"finished cells are saved in {results}; run the same command again to resume"
        else:
            saved = f"no cell had finished; nothing was saved in {results}"
        print(f"evaluate.py: interrupted; {saved}", file=sys.stderr)
        sys.exit(130)
    print(paths["markdown"].read_text())
    print(f"results: {args.out}/results.jsonl (per-sample outputs in {args.out}/samples/)")
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
