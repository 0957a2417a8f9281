"""The grid: configs from a grid YAML, preset names or inline JSON; GridSettings checks every field when built."""

import re

import pytest
import torch

from swaa import SWAAConfig, load_presets
from swaa.eval.grid import DEFAULT_GRID, GRID_SETTINGS, GridSettings, load_grid, parse_swaa_spec, select_grid
from swaa.tasks.generators import TASKS


def test_parse_swaa_spec():
    assert list(parse_swaa_spec("fa, sink")) == ["fa", "sink"]
    assert parse_swaa_spec('{"window": 64, "sink": 4}') == {"w64-s4": SWAAConfig(window=64, sink=4)}
    assert parse_swaa_spec('{"mine": {"window": 64}, "base": "fa"}') == {"mine": SWAAConfig(window=64),
                                                                         "base": SWAAConfig()}
    with pytest.raises(ValueError, match=r"config nope: unknown SWAA preset 'nope'; choose one of \['fa'"):
        parse_swaa_spec("fa,nope")
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_swaa_spec("{window: 1")
    with pytest.raises(ValueError, match="SWAAConfig.window=0"):
        parse_swaa_spec('{"window": 0}')


def test_default_grid_names_existing_presets():
    configs, settings = load_grid(DEFAULT_GRID)
    assert "fa" in configs and len(configs) >= 4
    assert set(settings) <= set(GRID_SETTINGS)
    assert all(t in TASKS for t in settings["tasks"])
    GridSettings(**settings)  # the default grid's settings are valid


def test_load_grid_errors(tmp_path):
    bad = tmp_path / "grid.yaml"
    bad.write_text("configs: [fa]\ntemperature: 0.5\n")
    with pytest.raises(ValueError, match=r"unknown grid key\(s\) \['temperature'\]"):
        load_grid(bad)
    with pytest.raises(ValueError, match="cannot read grid file"):
        load_grid(tmp_path / "absent.yaml")


def test_unknown_grid_keys_yaml_reads_as_numbers_are_named(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("configs: [fa]\n1: x\ntemperature: 0.5\n")  # YAML reads the key 1 as an int
    with pytest.raises(ValueError, match=r"unknown grid key\(s\) \[1, 'temperature'\]"):
        load_grid(grid)


def test_grid_file_not_in_utf8_is_an_error_naming_it(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_bytes(b"configs: [fa]\n# caf\xe9\n")  # Latin-1
    with pytest.raises(ValueError, match=rf"^{re.escape(str(grid))}: cannot read grid file \('utf-8' codec"):
        load_grid(grid)


@pytest.mark.parametrize("text, message", [
    ("configs: [fa\n  n: 1\n", "invalid YAML at line 2, column 4 (expected ',' or ']', but got ':'; while parsing a "
                                "flow sequence at line 1, column 10)"),
    ("configs:\n\t- fa\n", "invalid YAML at line 2, column 1 (found character '\\t' that cannot start any token)"),
    ("configs: " + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML (nested too deeply to read)"),  # was RecursionError
])
def test_invalid_grid_yaml_is_one_line_naming_the_file_and_position(tmp_path, text, message):
    grid = tmp_path / "my_grid.yaml"
    grid.write_text(text)
    with pytest.raises(ValueError) as error:
        load_grid(grid)
    assert str(error.value) == f"{grid}: {message}"


@pytest.mark.parametrize("setting, message", [
    ("n: 0", "n=0: expected an int >= 1"),
    ("n: null", "n=None: expected an int >= 1"),
    ("batch_size: true", "batch_size=True: expected an int >= 1"),
    ("max_new_tokens: 2.5", "max_new_tokens=2.5: expected an int >= 1"),
    ("seed: x", "seed='x': expected an int"),
    ("lengths: [256, 0]", "lengths [0]: expected ints >= 1"),
    ("tasks: passkey", "tasks='passkey': expected a list"),
    ("tasks: [passkey, bogus]", f"tasks bogus: unknown task; choose from {', '.join(TASKS)}"),
    ("lengths: [256, 256]", "lengths=[256, 256]: [256] given more than once; give each value once"),
])
def test_bad_grid_values_name_the_file_then_field_and_value(tmp_path, setting, message):
    """Checked when the grid is read (before GridSettings, which would not know the file), as GridSettings checks."""
    grid = tmp_path / "my_grid.yaml"
    grid.write_text(f"configs: [fa]\n{setting}\n")
    with pytest.raises(ValueError) as error:
        load_grid(grid)
    assert str(error.value) == f"{grid}: {message}"


def test_select_grid(tmp_path):
    default_configs, default_settings = load_grid(DEFAULT_GRID)
    assert select_grid() == (default_configs, default_settings)
    configs, settings = select_grid("fa,sink")  # presets keep the default grid's settings
    assert list(configs) == ["fa", "sink"] and settings == default_settings
    grid = tmp_path / "mine.yaml"
    grid.write_text("configs: [fa, naive_swa]\nn: 3\n")
    assert select_grid(str(grid), names=["naive_swa"]) == ({"naive_swa": default_configs["naive_swa"]}, {"n": 3})
    with pytest.raises(ValueError, match=r"--configs: \['bogus'\] not in the grid; it has fa, naive_swa"):
        select_grid(str(grid), names=["fa", "bogus"])


def test_inline_json_with_an_unknown_field_names_it():
    with pytest.raises(ValueError, match=r"unknown SWAA config key\(s\) \['foo'\]"):
        parse_swaa_spec('{"window": 8, "foo": 1}')


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_cuda_is_an_error():
    with pytest.raises(ValueError, match=r"device='cuda': no CUDA device is available here"):
        GridSettings(tasks=["passkey"], lengths=[256], device="cuda")


def test_select_grid_reads_preset_names_from_a_presets_file_beside_the_bundled_ones(tmp_path):
    """`--presets selected.yaml --swaa fa,NAME` (what swaa.select writes, and the FA baseline): the file adds its
    names to the bundled presets and wins on a shared name; the settings come from the default grid."""
    presets = tmp_path / "selected.yaml"
    presets.write_text("greedy_w64_s4_fad_2of8: {window: 64, sink: 4, fa_decode: true, full_layers: [1, 5]}\n"
                       "sink: {window: 32, sink: 2}\n")
    configs, settings = select_grid("fa,greedy_w64_s4_fad_2of8,sink", presets)
    assert configs == {"fa": load_presets()["fa"], "sink": SWAAConfig(window=32, sink=2),
                       "greedy_w64_s4_fad_2of8": SWAAConfig(window=64, sink=4, fa_decode=True, full_layers=[1, 5])}
    assert settings == load_grid(DEFAULT_GRID)[1]
    with pytest.raises(ValueError, match="unknown SWAA preset 'nope'"):
        select_grid("nope", presets)


@pytest.mark.parametrize("fields, message", [
    (dict(tasks=["passkey", "nope", 1]), r"^tasks nope, 1: unknown tasks; choose from passkey, "),
    (dict(scorer="fuzzy"), r"unknown scorer 'fuzzy'; allowed: exact, contains"),
    (dict(scorer="judge"), r"scorer='judge', judge_model=None: the judge scorer needs a judge model"),
    (dict(judge_model="m"), r"scorer=None, judge_model='m': the judge scorer needs a judge model"),
    (dict(n=0), r"n=0: expected an int >= 1"),
    (dict(batch_size=True), r"batch_size=True: expected an int >= 1"),
    (dict(max_new_tokens=2.5), r"max_new_tokens=2.5: expected an int >= 1"),
    (dict(seed="0"), r"seed='0': expected an int"),
    (dict(lengths=[0]), r"lengths \[0\]: expected ints >= 1"),
    (dict(data_file="x.jsonl"), r"data_file='x.jsonl': a data file brings its own samples"),
    (dict(tasks=None), r"tasks=None, lengths=\[256\]: give tasks and lengths"),
    (dict(decode="fast"), r"decode='fast': expected one of \('generate', 'static'\)"),
    (dict(device="gpu0"), r"device='gpu0': expected a torch device"),
    (dict(tasks="passkey"), r"tasks='passkey': expected a list"),
    (dict(lengths=256), r"lengths=256: expected a list"),
])
def test_bad_settings_name_field_value_and_range(fields, message):
    with pytest.raises(ValueError, match=message):
        GridSettings(**{"tasks": ["passkey"], "lengths": [256], **fields})


def test_data_file_settings_need_no_tasks():
    settings = GridSettings(data_file="qa.jsonl", scorer="exact")
    assert settings.tasks is None and settings.n == 10


def test_a_task_or_length_given_twice_is_an_error():
    """A repeated task or length would run its cells twice and store duplicate records."""
    with pytest.raises(ValueError, match=r"^tasks=\['passkey', 'passkey'\]: \['passkey'\] given more than once"):
        GridSettings(tasks=["passkey", "passkey"], lengths=[256])
    with pytest.raises(ValueError, match=r"^lengths=\[256, 512, 256\]: \[256\] given more than once"):
        GridSettings(tasks=["passkey"], lengths=[256, 512, 256])


@pytest.mark.parametrize("swaa", ["", "  "])
def test_a_blank_swaa_is_an_error_not_the_default_grid(swaa):
    with pytest.raises(ValueError, match=rf"^--swaa {swaa!r}: empty; give a grid YAML, preset names or inline JSON, "
                                         r"or leave --swaa out for the default grid \(grid.yaml\)"):
        select_grid(swaa)
