"""An evaluation grid: named SWAA configurations (a grid YAML, preset names or inline JSON) and the settings of a run
(GridSettings, validated at construction)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

from swaa import SWAAConfig
from swaa.attention import BACKENDS
from swaa.config import presets_with, read_yaml, resolve_swaa
from swaa.generation import DECODE_MODES
from swaa.models import check_device
from swaa.tasks.generators import check_tasks
from swaa.tasks.scorers import SCORERS

DEFAULT_GRID = resources.files("swaa") / "grid.yaml"  # evaluate.py's default grid, bundled with the package
GRID_SETTINGS = ("tasks", "lengths", "n", "seed", "max_new_tokens", "batch_size")  # what a grid YAML may also set
JUDGE = "judge"


def _named_configs(spec: Any, presets_path: str | Path | None, where: str) -> dict[str, SWAAConfig]:
    """A list of preset names, or a mapping of name -> config dict (or preset name), as SWAA configs."""
    if isinstance(spec, list):
        spec = {name: name for name in spec}
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{where}: expected a non-empty list of preset names or a mapping name -> SWAA config")
    presets = presets_with(presets_path) if any(isinstance(v, str) for v in spec.values()) else {}
    return {str(name): resolve_swaa(value, presets, f"{where}: config {name}") for name, value in spec.items()}


def load_grid(path: str | Path, presets_path: str | Path | None = None,
              where: str | None = None) -> tuple[dict[str, SWAAConfig], dict[str, Any]]:
    """(configs, settings) from a grid YAML: `configs` plus optional defaults for GRID_SETTINGS, each checked as
    GridSettings checks it. Errors are one line starting with the file (after `where`, the flag that named it, if
    given)."""
    path = Path(path)
    source = f"{where} {path}" if where else str(path)
    data = read_yaml(path, "grid file", source)
    if not isinstance(data, dict) or "configs" not in data:
        raise ValueError(f"{source}: expected a mapping with a 'configs' key")
    unknown = sorted(set(data) - {"configs", *GRID_SETTINGS}, key=str)
    if unknown:
        raise ValueError(f"{source}: unknown grid key(s) {unknown}; allowed: configs, {', '.join(GRID_SETTINGS)}")
    settings = {k: v for k, v in data.items() if k != "configs"}
    for name, value in settings.items():
        try:
            _check_setting(name, value)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
    return _named_configs(data["configs"], presets_path, source), settings


def parse_swaa_spec(spec: str, presets_path: str | Path | None = None) -> dict[str, SWAAConfig]:
    """--swaa value: inline JSON (one config, or name -> config) or comma-separated preset names."""
    spec = spec.strip()
    if spec.startswith("{"):
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"--swaa {spec!r}: invalid JSON ({e})") from e
        if not data or set(data) & {f.name for f in dataclasses.fields(SWAAConfig)}:  # one config (unknown keys: error)
            config = resolve_swaa(data, where="--swaa")
            return {config.tag: config}
        return _named_configs(data, presets_path, "--swaa")
    names = [s.strip() for s in spec.split(",") if s.strip()]
    return _named_configs(names, presets_path, "--swaa")


def select_grid(swaa: str | None = None, presets_path: str | Path | None = None,
                names: list[str] | None = None) -> tuple[dict[str, SWAAConfig], dict[str, Any]]:
    """(configs, grid settings) of evaluate.py's --swaa (a grid YAML, or a spec with the default grid's settings;
    None = the default grid; a blank one is an error) and --configs (these configurations only, by name)."""
    if swaa is not None and not swaa.strip():
        raise ValueError(f"--swaa {swaa!r}: empty; give a grid YAML, preset names or inline JSON, or leave --swaa out "
                         f"for the default grid ({DEFAULT_GRID.name})")
    grid_file = swaa if swaa and swaa.endswith((".yaml", ".yml")) else DEFAULT_GRID
    spec = bool(swaa) and grid_file == DEFAULT_GRID  # the default grid gives only its settings, from bundled presets
    configs, settings = load_grid(grid_file, None if spec else presets_path, "--swaa" if grid_file == swaa else None)
    if spec:
        configs = parse_swaa_spec(swaa, presets_path)
    if names:
        unknown = [name for name in names if name not in configs]
        if unknown:
            raise ValueError(f"--configs: {unknown} not in the grid; it has {', '.join(configs)}")
        configs = {name: configs[name] for name in names}
    return configs, settings


def _repeated(values: list) -> list:
    """The values that occur more than once in `values`, each once, in order."""
    return list(dict.fromkeys(v for i, v in enumerate(values) if v in values[:i]))


def check_sample_flags(parser: argparse.ArgumentParser, data: str | None, tasks: list[str] | None,
                       lengths: list[int] | None, what: str) -> None:
    """Parser errors for `--data` (a `what`, e.g. 'data file') given with --tasks or --lengths, a value given twice
    to --tasks or --lengths (its cells would run twice), and unknown --tasks."""
    if data and (tasks or lengths):
        parser.error(f"--data {data}: a {what} brings its own samples; do not also give --tasks or --lengths")
    for flag, values in (("--tasks", tasks), ("--lengths", lengths)):
        if repeated := _repeated(values or []):
            parser.error(f"{flag} {', '.join(map(str, repeated))}: given more than once; give each value once")
    try:
        check_tasks(tasks or [], "--tasks")
    except ValueError as e:
        parser.error(str(e))


def _check_setting(name: str, value: Any) -> None:
    """Type and range of one GRID_SETTINGS value (tasks and lengths may be None: not given)."""
    if name in ("tasks", "lengths"):
        if value is None:
            return
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}={value!r}: expected a list")
        if name == "tasks":
            check_tasks(value)
        elif bad := [x for x in value if not isinstance(x, int) or isinstance(x, bool) or x < 1]:
            raise ValueError(f"lengths {bad}: expected ints >= 1")
        if repeated := _repeated(list(value)):
            raise ValueError(f"{name}={list(value)!r}: {repeated} given more than once; give each value once")
    elif name == "seed":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"seed={value!r}: expected an int")
    elif not isinstance(value, int) or isinstance(value, bool) or value < 1:  # n, max_new_tokens, batch_size
        raise ValueError(f"{name}={value!r}: expected an int >= 1")


@dataclasses.dataclass
class GridSettings:
    """How to run a grid: synthetic `tasks` x `lengths` (n samples each) or the first n samples of `data_file` (all
    for n None), greedy answers of up to `max_new_tokens`, scored by each sample's scorer or `scorer` (with
    `judge_model` for 'judge'); `speed` also times prefill and decode; SWA layers run on `backend`; results go to
    `out_dir`."""

    tasks: list[str] | None = None
    lengths: list[int] | None = None
    n: int | None = 10
    seed: int = 0
    max_new_tokens: int = 32
    batch_size: int = 8
    scorer: str | None = None
    data_file: str | Path | None = None
    judge_model: str | Path | None = None
    speed: bool = False
    decode: str = "generate"
    backend: str = "auto"
    device: str = "cpu"
    out_dir: str | Path = "results"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in GRID_SETTINGS:
            if name != "n" or self.n is not None or self.data_file is None:  # n None: every row of data_file
                _check_setting(name, getattr(self, name))
        if self.data_file is None:
            if not self.tasks or not self.lengths:
                raise ValueError(f"tasks={self.tasks!r}, lengths={self.lengths!r}: give tasks and lengths for "
                                 "synthetic tasks, or a data file")
        elif self.tasks or self.lengths:
            raise ValueError(f"data_file={str(self.data_file)!r}: a data file brings its own samples: do not also "
                             f"give tasks ({self.tasks!r}) or lengths ({self.lengths!r})")
        if self.scorer is not None and self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; allowed: {', '.join(SCORERS)}")
        if (self.scorer == JUDGE) != (self.judge_model is not None):
            raise ValueError(f"scorer={self.scorer!r}, judge_model={self.judge_model!r}: the judge scorer needs a "
                             "judge model and a judge model needs scorer='judge'")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode={self.decode!r}: expected one of {DECODE_MODES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: expected one of {sorted(BACKENDS)}")
        check_device(self.device)
