"""SWAAConfig: the four SWAA knobs (window, sink, fa_decode, full_layers), validated at construction.

Semantics are docs/semantics.md. `layer_kinds(depth)` expands the config into one kind per layer, once.
"""

from __future__ import annotations

import dataclasses
import json
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml

LayerKind = Literal["full", "swa", "swa_fa_decode"]
_PATTERN = re.compile(r"every:([0-9]+):from:([0-9]+)")  # fullmatch only
PRESETS_FILE = "presets.yaml"  # bundled with the package, beside this module
PATTERN_HELP = "'odd', 'even', 'every:K:from:J' (K >= 1, J >= 0), or a list of 0-based layer indices"


def _check_index_list(field: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"SWAAConfig.{field}={value!r}: expected a list of int layer indices")
    bad = [v for v in value if v < 0]
    if bad:
        raise ValueError(f"SWAAConfig.{field}={value!r}: layer indices must be >= 0, got {bad}")
    if len(set(value)) != len(value):
        raise ValueError(f"SWAAConfig.{field}={value!r}: duplicate layer indices")
    return sorted(value)


@dataclasses.dataclass(frozen=True)
class SWAAConfig:
    """Sliding-window attention adaptation settings; `window=None` means plain full attention."""

    window: int | None = None
    """W: keys visible to a query in SWA layers, the query itself included (flash-attn window_size=(W-1, 0))."""
    sink: int = 0
    """S: the first S real tokens of each sequence stay visible in SWA layers."""
    fa_decode: bool | list[int] = False
    """Answer rows (generated tokens) use full attention: in all SWA layers (True) or only in these layers."""
    full_layers: list[int] | str = dataclasses.field(default_factory=list)
    """Layers that keep full attention everywhere: a list of indices or a pattern (see PATTERN_HELP)."""

    def __post_init__(self) -> None:
        w = self.window
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
            raise ValueError(f"SWAAConfig.window={w!r}: expected None (full attention) or an int >= 1")
        if not isinstance(self.sink, int) or isinstance(self.sink, bool) or self.sink < 0:
            raise ValueError(f"SWAAConfig.sink={self.sink!r}: expected an int >= 0")
        if w is None and self.sink:
            raise ValueError(f"SWAAConfig.sink={self.sink}: sink tokens need a window; set window or sink=0")
        for field in ("fa_decode", "full_layers"):
            if w is None and getattr(self, field):
                raise ValueError(f"SWAAConfig.{field}={getattr(self, field)!r}: needs a window (without one every "
                                 f"layer is full attention); set window or leave {field} empty")
        if not isinstance(self.fa_decode, bool):
            object.__setattr__(self, "fa_decode", _check_index_list("fa_decode", self.fa_decode))
        if isinstance(self.full_layers, str):
            if self.full_layers not in ("odd", "even") and not _PATTERN.fullmatch(self.full_layers):
                raise ValueError(f"SWAAConfig.full_layers={self.full_layers!r}: expected {PATTERN_HELP}")
            m = _PATTERN.fullmatch(self.full_layers)
            if m and int(m.group(1)) < 1:
                raise ValueError(f"SWAAConfig.full_layers={self.full_layers!r}: K in every:K:from:J must be >= 1")
        else:
            object.__setattr__(self, "full_layers", _check_index_list("full_layers", self.full_layers))

    @property
    def enabled(self) -> bool:
        return self.window is not None

    def full_layer_indices(self, depth: int) -> list[int]:
        """Expand `full_layers` for a model with `depth` layers; an index >= depth is an error."""
        spec = self.full_layers
        if isinstance(spec, str):
            k, j = {"odd": (2, 1), "even": (2, 0)}.get(spec) or map(int, _PATTERN.fullmatch(spec).groups())
            if j >= depth:  # the pattern would pick no layer
                raise ValueError(f"SWAAConfig.full_layers={spec!r}: starts at layer {j}, beyond a model with {depth} "
                                 f"layers (allowed J: 0..{depth - 1})")
            return list(range(j, depth, k))
        _check_depth("full_layers", spec, depth)
        return list(spec)

    def layer_kinds(self, depth: int) -> list[LayerKind]:
        """One kind per layer: 'full', 'swa' (SWA everywhere) or 'swa_fa_decode' (answer rows full)."""
        if not self.enabled:
            return ["full"] * depth
        full = set(self.full_layer_indices(depth))
        if isinstance(self.fa_decode, bool):
            fad = set(range(depth)) if self.fa_decode else set()
        else:
            _check_depth("fa_decode", self.fa_decode, depth)
            fad = set(self.fa_decode)
        return ["full" if i in full else "swa_fa_decode" if i in fad else "swa" for i in range(depth)]

    @property
    def tag(self) -> str:
        """Short readable name, e.g. 'fa', 'w512', 'w512-s64-fad-full:odd'."""
        if not self.enabled:
            return "fa"
        parts = [f"w{self.window}"]
        if self.sink:
            parts.append(f"s{self.sink}")
        if self.fa_decode is True:
            parts.append("fad")
        elif self.fa_decode:
            parts.append("fad:" + ",".join(map(str, self.fa_decode)))
        if self.full_layers:
            spec = self.full_layers
            parts.append("full:" + (spec if isinstance(spec, str) else ",".join(map(str, spec))))
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SWAAConfig:
        """Build from a mapping; unknown keys are an error that names them."""
        if not isinstance(data, dict):
            raise ValueError(f"SWAA config must be a mapping of {sorted(_FIELDS)}, got {data!r}")
        unknown = sorted(set(data) - _FIELDS, key=str)  # YAML keys may be numbers, dates or null too
        if unknown:
            raise ValueError(f"unknown SWAA config key(s) {unknown}; allowed: {sorted(_FIELDS)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SWAAConfig:
        return cls.from_dict(json.loads(text))


_FIELDS = {f.name for f in dataclasses.fields(SWAAConfig)}


def _check_depth(field: str, indices: list[int], depth: int) -> None:
    bad = [i for i in indices if i >= depth]
    if bad:
        raise ValueError(f"SWAAConfig.{field}: layer indices {bad} out of range for a model with {depth} layers "
                         f"(allowed 0..{depth - 1})")


def check_depth(configs: dict[str, SWAAConfig], depth: int, where: str = "config") -> None:
    """Every config's layer indices and pattern fit a model `depth` layers deep; else a ValueError naming
    `where` and the config."""
    for name, config in configs.items():
        try:
            config.layer_kinds(depth)
        except ValueError as e:
            raise ValueError(f"{where} {name}: {e}") from e


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """A YAML parse error of `text` in one line: 'invalid YAML at line L, column C (what)', counted from 1."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        line, column, what = mark.line + 1, mark.column + 1, e.problem
        context = getattr(e, "context_mark", None)
        if context is not None and e.context and (context.line, context.column) != (mark.line, mark.column):
            what += f"; {e.context} at line {context.line + 1}, column {context.column + 1}"
    elif isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow: an offset, no mark
        before = text[:e.position]
        line, column, what = before.count("\n") + 1, len(before) - before.rfind("\n"), str(e).splitlines()[0]
    else:
        return f"invalid YAML ({' '.join(str(e).split())})"
    return f"invalid YAML at line {line}, column {column} ({what})"


def read_yaml(source: Path | Traversable, what: str, name: str | None = None) -> Any:
    """The data of the YAML file `source`, a `what` (e.g. 'grid file'); errors are one line starting with `name`
    (default: the file)."""
    name = source if name is None else name
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{name}: cannot read {what} ({e})") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{name}: {_yaml_problem(e, text)}") from e
    except RecursionError as e:
        raise ValueError(f"{name}: invalid YAML (nested too deeply to read)") from e


def load_presets(path: str | Path | None = None) -> dict[str, SWAAConfig]:
    """Read a YAML file mapping preset names to SWAA configs; None reads the presets bundled with the package.
    Errors are one line starting with the file."""
    source = Path(path) if path is not None else resources.files("swaa") / PRESETS_FILE
    data = read_yaml(source, "SWAA presets file")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{source}: expected a non-empty mapping of preset name -> SWAA config")
    presets = {}
    for name, cfg in data.items():
        if not isinstance(name, str):  # e.g. yes, no, null or 1 as a name, which YAML reads as bool, None or int
            raise ValueError(f"{source}: preset name {name!r} is not a string; quote it")
        try:
            presets[name] = SWAAConfig.from_dict({} if cfg is None else cfg)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: preset {name!r}: {e}") from e
    return presets


def presets_with(path: str | Path | None, where: str = "--presets") -> dict[str, SWAAConfig]:
    """The bundled presets plus those of the YAML file `path` (its names win); the bundled ones alone for None.
    A `path` that is not a file, or not a presets YAML, is a one-line ValueError naming `where` and the path."""
    if path is None:
        return load_presets()
    if not Path(path).is_file():
        raise ValueError(f"{where} {path}: no such file")
    try:
        extra = load_presets(path)
    except ValueError as e:
        raise ValueError(f"{where} {e}") from e
    return {**load_presets(), **extra}


def resolve_swaa(spec: SWAAConfig | dict | str | None, presets: dict[str, SWAAConfig] | None = None,
                 where: str = "swaa") -> SWAAConfig:
    """The one way to turn a user's SWAA value into a config: a SWAAConfig, a dict of fields, a JSON object, a preset
    name (from `presets`, default the bundled ones) or None (full attention). Errors start with `where`."""
    if spec is None or isinstance(spec, SWAAConfig):
        return spec or SWAAConfig()
    if isinstance(spec, str) and not spec.strip().startswith("{"):
        presets = load_presets() if presets is None else presets
        if spec not in presets:
            raise ValueError(f"{where}: unknown SWAA preset {spec!r}; choose one of {sorted(presets)} or give a "
                             "mapping of SWAA fields")
        return presets[spec]
    try:
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as e:
                raise ValueError(f"invalid JSON ({e})") from e
        return SWAAConfig.from_dict(dict(spec) if isinstance(spec, dict) else spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}={spec!r}: {e}") from e
