import pytest

from swaa import SWAAConfig, load_presets
from swaa.config import presets_with, resolve_swaa


def test_layer_kinds_and_patterns():
    cfg = SWAAConfig(window=4, sink=2, fa_decode=[0, 2], full_layers="odd")
    assert cfg.layer_kinds(4) == ["swa_fa_decode", "full", "swa_fa_decode", "full"]
    assert SWAAConfig(window=4, full_layers="even").full_layer_indices(5) == [0, 2, 4]
    assert SWAAConfig(window=4, full_layers="every:4:from:1").full_layer_indices(10) == [1, 5, 9]
    assert SWAAConfig(window=4, fa_decode=True).layer_kinds(2) == ["swa_fa_decode"] * 2
    assert SWAAConfig().layer_kinds(3) == ["full"] * 3


def test_round_trip_and_tag():
    cfg = SWAAConfig(window=512, sink=64, fa_decode=True, full_layers=[3, 1])
    assert cfg.full_layers == [1, 3]
    assert SWAAConfig.from_json(cfg.to_json()) == cfg
    assert SWAAConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.tag == "w512-s64-fad-full:1,3"
    assert SWAAConfig().tag == "fa"
    assert SWAAConfig(window=8, fa_decode=[1, 2], full_layers="odd").tag == "w8-fad:1,2-full:odd"


@pytest.mark.parametrize("kwargs, words", [
    ({"window": 0}, ["window=0", ">= 1"]),
    ({"window": 2.5}, ["window=2.5"]),
    ({"window": 8, "sink": -1}, ["sink=-1", ">= 0"]),
    ({"sink": 4}, ["sink=4", "window"]),
    ({"window": 8, "full_layers": "third"}, ["full_layers='third'", "every:K:from:J"]),
    ({"window": 8, "full_layers": "every:0:from:1"}, ["K", ">= 1"]),
    ({"window": 8, "full_layers": [1, 1]}, ["duplicate"]),
    ({"window": 8, "fa_decode": [-1]}, ["fa_decode", ">= 0"]),
    ({"window": 8, "fa_decode": "yes"}, ["fa_decode"]),
    ({"window": 8, "full_layers": "every:4:from:3\n"}, ["every:K:from:J"]),
    ({"full_layers": [1]}, ["full_layers=[1]", "needs a window"]),
    ({"fa_decode": True}, ["fa_decode=True", "needs a window"]),
])
def test_invalid_values_name_field_and_value(kwargs, words):
    with pytest.raises(ValueError) as err:
        SWAAConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_layer_index_beyond_depth():
    with pytest.raises(ValueError, match=r"\[7\] out of range .* 4 layers \(allowed 0..3\)"):
        SWAAConfig(window=8, full_layers=[1, 7]).layer_kinds(4)
    with pytest.raises(ValueError, match="fa_decode"):
        SWAAConfig(window=8, fa_decode=[4]).layer_kinds(4)
    with pytest.raises(ValueError, match=r"'every:4:from:30': starts at layer 30, beyond a model with 4 layers"):
        SWAAConfig(window=8, full_layers="every:4:from:30").layer_kinds(4)
    with pytest.raises(ValueError, match=r"'odd': starts at layer 1, beyond a model with 1 layers"):
        SWAAConfig(window=8, full_layers="odd").layer_kinds(1)
    assert SWAAConfig(window=8, full_layers="even").full_layer_indices(1) == [0]


def test_unknown_key():
    with pytest.raises(ValueError, match=r"unknown SWAA config key\(s\) \['windw'\]"):
        SWAAConfig.from_dict({"windw": 3})


def test_shipped_presets_parse(tmp_path):
    presets = load_presets()
    assert presets["fa"] == SWAAConfig()
    assert presets["sink_fa_decode_interleave_half"].tag == "w512-s64-fad-full:odd"
    bad = tmp_path / "p.yaml"
    bad.write_text("x: {window: -2}\n")
    with pytest.raises(ValueError, match="preset 'x'.*window=-2"):
        load_presets(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_presets(tmp_path / "missing.yaml")


def test_presets_with_a_missing_file_names_the_flag_and_path(tmp_path):
    with pytest.raises(ValueError, match=r"^--presets .*missing.yaml: no such file$"):
        presets_with(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, problem", [
    ("a:\n\twindow: 8\n", "invalid YAML at line 2, column 1 (found character '\\t' that cannot start any token)"),
    ("a: {window: 8\n", "invalid YAML at line 2, column 1 (expected ',' or '}', but got '<stream end>'; while "
                        "parsing a flow mapping at line 1, column 4)"),
    ("a: {window: 8}\x01\n", "invalid YAML at line 1, column 15 (unacceptable character #x0001: special characters are "
                             "not allowed)"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML (nested too deeply to read)"),  # was a RecursionError
], ids=["tab-indented", "unbalanced", "control-character", "nested-too-deeply"])
def test_presets_with_invalid_yaml_is_one_line_naming_the_flag_file_and_position(tmp_path, text, problem):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        presets_with(path)
    assert str(err.value) == f"--presets {path}: {problem}"


@pytest.mark.parametrize("text, problem", [
    ("- a\n- b\n", "expected a non-empty mapping of preset name -> SWAA config"),
    ("a: 0\n", "preset 'a': SWAA config must be a mapping of"),  # a falsy value is not full attention
    ("yes: {window: 8}\n", "preset name True is not a string; quote it"),  # YAML 1.1 reads yes as a bool
    ("a: {window: 8, 1: 2, x: 3}\n", r"preset 'a': unknown SWAA config key(s) [1, 'x']"),
], ids=["list", "falsy-config", "bool-name", "mixed-keys"])
def test_presets_with_yaml_that_is_not_presets_names_the_flag_and_file(tmp_path, text, problem):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        presets_with(path)
    assert str(err.value).startswith(f"--presets {path}: {problem}")


def test_presets_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_bytes(b"a: {window: 8}\n\xff\n")
    with pytest.raises(ValueError, match=r"^--presets .*my\.yaml: cannot read SWAA presets file \('utf-8' codec"):
        presets_with(path)


def test_resolve_swaa_presets_json_and_errors():
    assert resolve_swaa(None).window is None
    assert resolve_swaa("sink_fa_decode") == load_presets()["sink_fa_decode"]
    assert resolve_swaa({"window": 16, "full_layers": "odd"}).tag == "w16-full:odd"
    assert resolve_swaa('{"window": 16, "sink": 2}').tag == "w16-s2"
    with pytest.raises(ValueError, match="swaa: unknown SWAA preset 'nope'"):
        resolve_swaa("nope")
    with pytest.raises(ValueError, match="unknown SWAA config key"):
        resolve_swaa({"windw": 3})
    with pytest.raises(ValueError, match=r"--x='\{bad': invalid JSON"):
        resolve_swaa("{bad", where="--x")
