"""swaa.select: budgets, answer NLL as in training, the choice on planted models, outputs and the CLI."""

import json
import logging
import re

import pytest
import torch
import yaml
from conftest import interrupted_at_call, tiny_model

import swaa.select as select
from swaa.config import SWAAConfig, load_presets, resolve_swaa
from swaa.eval.grid import parse_swaa_spec
from swaa.integration import apply_swaa, remove_swaa
from swaa.select import (CalibrationBatch, answer_nll, calibration_samples, distinct_budgets, encode_samples, main,
                         make_batches, passes_fingerprint, periodic_layers, resolve_budget, select_full_layers)
from swaa.tasks.generators import TASKS

IGNORE = -100


@pytest.mark.parametrize("budget, depth, count", [(2, 8, 2), ("2", 8, 2), ("1/4", 30, 7), (0.25, 30, 7),
                                                  ("0.125", 30, 3), (0.3, 10, 3), (7, 8, 7)])
def test_budget_is_a_count_or_a_fraction_rounded_down(budget, depth, count):
    assert resolve_budget(budget, depth) == count


@pytest.mark.parametrize("budget", [0, "0", 8, 9, -1, "1.0", 1.0, 0.05, "half", True])
def test_budget_out_of_range_names_the_value_and_range(budget):
    with pytest.raises(ValueError, match=r"budget=.*1\.\.7 .*\(0, 1\) of the 8 layers"):
        resolve_budget(budget, 8)


def test_budget_errors_name_where_it_came_from():
    with pytest.raises(ValueError, match=r"^--budget='0' means no full layer; expected a count in 1\.\.7"):
        resolve_budget("0", 8, "--budget")
    with pytest.raises(ValueError, match=r"^--budget='2' and --budget='1/4' both mean 2 of the 8 layers"):
        distinct_budgets(["1/4", "2"], 8, "--budget")


def test_one_layer_model_is_an_error():
    with pytest.raises(ValueError, match="1 layer.*>= 2 layers"):
        resolve_budget(1, 1)
    with pytest.raises(ValueError, match="1 layer"):
        select_full_layers(tiny_model(layers=1), _batches(tiny_model(layers=1), 1), window=4, budget=1,
                           progress=False)


def test_periodic_layers_match_the_every_pattern():
    assert periodic_layers(30, 7) == SWAAConfig(window=8, full_layers="every:4:from:3").full_layer_indices(30)
    assert periodic_layers(8, 2) == [3, 7]
    assert periodic_layers(30, 8) == [2, 5, 8, 11, 14, 17, 20, 23]


def _sequences(model, n: int = 4, prompt: int = 48, answer: int = 3, seed: int = 0) -> list[dict]:
    """Random prompts of different lengths; the answer is the model's own greedy continuation under full attention."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        ids = torch.randint(0, model.config.vocab_size, (1, prompt + 3 * i), generator=gen)
        with torch.no_grad():
            for _ in range(answer):
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], 1)
        ids = ids[0].tolist()
        samples.append({"input_ids": ids, "labels": [IGNORE] * (len(ids) - answer) + ids[-answer:]})
    return samples


def _batches(model, batch_size: int, **kwargs):
    return make_batches(_sequences(model, **kwargs), batch_size, pad_token_id=0)


def test_answer_nll_is_the_training_loss_per_sample():
    """Left-padded batches give each sample the loss that a training forward with labels (P from the labels) gives."""
    model = tiny_model(layers=2)
    samples = _sequences(model, n=3)
    config = SWAAConfig(window=8, sink=2, fa_decode=True, full_layers=[1])
    batched = answer_nll(model, config, make_batches(samples, 3, pad_token_id=0))
    apply_swaa(model, config, "reference")
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]])).loss
                  for s in samples]  # make_batches orders samples by length: these are already in that order
    remove_swaa(model)
    torch.testing.assert_close(batched, torch.stack(losses), rtol=1e-4, atol=1e-5)
    fa = answer_nll(model, SWAAConfig(), make_batches(samples, 3, pad_token_id=0))
    assert (fa - batched).abs().max() > 1e-3  # the window matters on these prompts: the comparison has teeth


def _planted(attention_layers: tuple[int, ...], layers: int = 4):
    """A tiny model whose attention contributes only in `attention_layers` (o_proj zero elsewhere), with sharp
    output logits, so the full attention of those layers alone decides the answer NLL."""
    model = tiny_model(layers=layers)
    with torch.no_grad():
        for idx, layer in enumerate(model.model.layers):
            if idx in attention_layers:
                layer.self_attn.o_proj.weight.mul_(20)
            else:
                layer.self_attn.o_proj.weight.zero_()
        model.lm_head.weight.mul_(30)
    return model


def test_planted_layer_is_chosen_without_fa_decode():
    model = _planted((2,))
    selection = select_full_layers(model, _batches(model, 2), window=4, fa_decode=False, budget=1, progress=False)
    assert selection.chosen == {"greedy": [2], "sensitivity": [2]}
    assert selection.nll_swa > selection.nll_fa + 1.0
    assert selection.nll_single[2] == pytest.approx(selection.nll_fa, rel=1e-4)
    assert [selection.nll_single[i] for i in (0, 1, 3)] == [selection.nll_swa] * 3  # attention there is zeroed
    assert "swaa_runtime" not in model.__dict__ and "swaa" not in model.config.to_dict()


def test_greedy_steps_with_fa_decode_reach_full_attention():
    """With FA decode the answer rows are full everywhere: layer 1's prompt rows carry the distant context that the
    last layer reads, and the last layer's last prompt row predicts the first answer token; both full = FA."""
    model = _planted((1, 3))
    selection = select_full_layers(model, _batches(model, 2), window=4, fa_decode=True, budget=2,
                                   criteria=("greedy",), progress=False)
    assert selection.greedy_order == [1, 3]
    assert selection.chosen == {"greedy": [1, 3]}
    assert selection.nll_chosen["greedy"] == pytest.approx(selection.nll_fa, rel=1e-4)
    assert selection.nll_chosen["greedy"] < selection.nll_single[1] < selection.nll_swa - 1.0
    assert len(selection.greedy) == 2 and sorted(selection.greedy[1]) == [0, 2, 3]


def test_choice_has_the_budget_size_no_duplicates_and_is_stable():
    model = tiny_model(layers=5)
    batches = _batches(model, 2, n=2)
    runs = [select_full_layers(model, batches, window=4, sink=1, budget="1/2", progress=False) for _ in range(2)]
    for criterion, layers in runs[0].chosen.items():
        assert len(layers) == 2 and len(set(layers)) == 2 and set(layers) <= set(range(5)), criterion
    first, second = (run.to_dict() for run in runs)
    first.pop("seconds"), first.pop("seconds_per_forward"), second.pop("seconds"), second.pop("seconds_per_forward")
    assert first == second


def test_calibration_samples_are_deterministic_for_a_seed(smollm2_tokenizer):
    first, again, other = (calibration_samples(smollm2_tokenizer, ["passkey", "niah_single"], [200], n=3, seed=seed)
                           for seed in (1, 1, 2))
    assert [s.prompt for s in first] == [s.prompt for s in again]
    assert [s.task for s in first] == ["passkey", "passkey", "niah_single"]
    assert [s.prompt for s in first] != [s.prompt for s in other]


def test_calibration_file_and_context_errors(smollm2_tokenizer, tmp_path):
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say the number {i} back.", "answer": str(1000 + i)}) + "\n"
                            for i in range(3)))
    samples = calibration_samples(smollm2_tokenizer, data=data, n=2)
    encoded = encode_samples(smollm2_tokenizer, samples, context=4096)
    supervised = [smollm2_tokenizer.decode([t for t in e["labels"] if t != IGNORE]) for e in encoded]
    assert [s.startswith(str(1000 + i)) for i, s in enumerate(supervised)] == [True, True]
    batch = make_batches(encoded, 2, smollm2_tokenizer.pad_token_id)[0]
    first_supervised = sorted(next(i for i, t in enumerate(e["labels"]) if t != IGNORE) for e in encoded)
    assert sorted(batch.prompt_len.tolist()) == first_supervised
    with pytest.raises(ValueError, match=r"calib-0 is \d+ tokens .* context of 10 tokens"):
        encode_samples(smollm2_tokenizer, samples, context=10)
    with pytest.raises(ValueError, match="do not also give tasks"):
        calibration_samples(smollm2_tokenizer, ["passkey"], data=data)


def test_cli_writes_presets_that_load_and_resolve(tmp_path, capsys):
    out = tmp_path / "sel.yaml"
    main(["--model", "tiny:llama:4:49152", "--window", "16", "--sink", "2", "--budget", "2", "--tasks", "passkey",
          "--lengths", "160", "--n", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    presets = load_presets(out)
    assert sorted(presets) == ["greedy_w16_s2_fad_2of4", "sensitivity_w16_s2_fad_2of4"]
    for name in presets:
        config = resolve_swaa(name, presets)
        assert (config.window, config.sink, config.fa_decode) == (16, 2, True)
        assert len(config.full_layer_indices(4)) == 2 and f"{name}: full_layers {config.full_layers}" in printed
    entries = yaml.safe_load(out.read_text())
    assert {name: resolve_swaa(entry, where="--model.swaa") for name, entry in entries.items()} == presets  # train.py
    assert parse_swaa_spec(",".join(presets), out) == presets  # evaluate.py --swaa NAMES --presets FILE
    scores = json.loads(out.with_suffix(".scores.json").read_text())
    assert [row["layer"] for row in scores["layers"]] == [0, 1, 2, 3]
    assert scores["chosen"]["greedy"] == presets["greedy_w16_s2_fad_2of4"].full_layers
    assert scores["calibration"]["lengths"] == [160] and scores["model"] == "tiny:llama:4:49152"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_several_budgets_share_their_passes(tmp_path, capsys):
    out = tmp_path / "sel.yaml"
    main(["--model", "tiny:llama:4:49152", "--window", "16", "--budget", "1,2", "--tasks", "passkey", "--lengths",
          "160", "--n", "2", "--criterion", "greedy", "--out", str(out)])
    presets = load_presets(out)
    assert sorted(presets) == ["greedy_w16_s0_fad_1of4", "greedy_w16_s0_fad_2of4"]
    two, one = (json.loads((tmp_path / f"sel.{k}of4.scores.json").read_text()) for k in (2, 1))
    assert one["chosen"]["greedy"] == [two["greedy"][0]["layer"]]  # greedy to 1 is the first step of greedy to 2
    assert one["nll_chosen"]["greedy"] == two["greedy"][0]["nll"]
    assert two["forwards"] == 1 + 1 + 4 + 3 + 1  # FA, all SWA, one-layer sets, step 2, the periodic pair
    assert one["forwards"] == 0 and one["seconds_per_forward"] is None  # its periodic layer [3] was measured too
    assert (tmp_path / "sel.1of4.png").is_file() and "10 passes over" in capsys.readouterr().out


def test_cli_rerun_with_other_budgets_removes_only_the_earlier_runs_outputs(tmp_path, caplog, monkeypatch,
                                                                           smollm2_tokenizer):
    """A rerun into the same --out leaves exactly its own scores and plots (single-budget vs .<k>of<depth> files,
    budgets no longer asked for: removed and logged); the passes file and files of other names stay."""
    monkeypatch.setattr(select, "load_tokenizer", lambda path, where: smollm2_tokenizer)  # loaded once, not per run
    caplog.set_level(logging.INFO, logger="swaa.select")
    argv = ["--model", "tiny:llama:4:49152", "--window", "16", "--tasks", "passkey", "--lengths", "160", "--n", "2",
            "--criterion", "greedy", "--out", str(tmp_path / "sel.yaml")]
    others = {"notes.txt", "other.scores.json", "other.2of4.png", "sel.backup.png", "sel.02of4.png", "selx.png",
              "sel.2of4.scores.json.bak", "sel.yml"}
    for name in others:
        (tmp_path / name).write_text("not select's\n")
    (tmp_path / "sel.5of8.png").mkdir()
    single = {"sel.scores.json", "sel.png"}

    def per_budget(*counts: int) -> set[str]:
        return {f"sel.{k}of4.{ext}" for k in counts for ext in ("scores.json", "png")}

    # written and removed: both ways between one budget and several, and a budget no longer asked for
    for budgets, written, removed in [(["2"], single, set()), (["2", "1"], per_budget(1, 2), single),
                                      (["2", "3"], per_budget(2, 3), per_budget(1)), (["3"], single, per_budget(2, 3))]:
        caplog.clear()
        main([*argv, "--budget", *budgets])
        assert {p.name for p in tmp_path.iterdir()} == {"sel.yaml", "sel.passes.json", "sel.5of8.png", *others,
                                                         *written}, budgets
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed ")]
        assert sorted(logged) == sorted(f"removed {tmp_path / name}: an earlier run's output into sel.yaml that this "
                                        "run does not write" for name in removed), budgets
    assert json.loads((tmp_path / "sel.scores.json").read_text())["budget"] == 3
    assert all((tmp_path / name).read_text() == "not select's\n" for name in others)


def error_line(capsys, argv: list[str]) -> str:
    """The last stderr line of swaa.select run with `argv`, which must end with exit status 2 (a bad input)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--budget", "1/4", "1"], r"--budget='1' and --budget='1/4' both mean 1 of the 4 layers"),
    (["--budget", "4"], r"--budget='4' means every layer full .* 1\.\.3"),
    (["--budget", "0"], r"--budget='0' means no full layer; expected a count in 1\.\.3 or a fraction in \(0, 1\)"),
    (["--budget", "1", "--model", "tiny:llama:1:49152"], r"1 layer"),
    (["--budget", "1", "--device", "bogus"], r"--device='bogus': expected a torch device"),
    (["--budget", "1", "--model", "tiny:llama:4:256"], r"--model='tiny:llama:4:256': vocab 256 is smaller than the "
                                                        r"SmolLM2 tokenizer's"),
    (["--budget", "1", "--model", "tiny:llama:4:x"], r"--model='tiny:llama:4:x': expected 'tiny:<family>:<layers>"),
])
def test_cli_errors_name_the_flag_and_range_and_exit_2(argv, message, tmp_path, capsys):
    line = error_line(capsys, ["--model", "tiny:llama:4:49152", "--window", "16", "--out", str(tmp_path / "x.yaml"),
                               *argv])
    assert line.startswith("python -m swaa.select: error: ") and re.search(message, line)


@pytest.mark.parametrize("argv, message", [
    (["--window", "0"], "argument --window: expected an integer >= 1, got '0'"),
    (["--sink", "-1"], "argument --sink: expected an integer >= 0, got '-1'"),
    (["--n", "0"], "argument --n: expected an integer >= 1, got '0'"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    (["--lengths", "160,0"], "--lengths: expected an integer >= 1, got '0'"),
    (["--data", "q.jsonl", "--tasks", "passkey"], "--data q.jsonl: a calibration file brings its own samples; do not "
                                                  "also give --tasks or --lengths"),
    (["--tasks", "passkey,bogus"], f"--tasks bogus: unknown task; choose from {', '.join(TASKS)}"),
])
def test_cli_bad_values_name_the_flag_before_the_model_is_read(argv, message, tmp_path, capsys, monkeypatch):
    """Not n=0, make_batches' batch_size, make_samples' task or SWAAConfig.window: the flag, its value and range,
    before any loading."""
    monkeypatch.setattr(select, "load_config", lambda *a: pytest.fail("the model config was read before the error"))
    argv = ["--model", "tiny:llama:4:49152", "--window", "16", "--budget", "1", "--out", str(tmp_path / "x.yaml"),
            *argv]
    assert error_line(capsys, argv) == f"python -m swaa.select: error: {message}"


@pytest.mark.parametrize("flag", ["--budget", "--tasks", "--lengths"])
def test_cli_option_given_without_values_is_an_error(flag, tmp_path, capsys):
    """'--tasks ,' (every value empty) must not fall back to the defaults."""
    argv = ["--model", "tiny:llama:4:49152", "--window", "16", "--out", str(tmp_path / "x.yaml"), "--budget", "1"]
    assert error_line(capsys, [*argv, flag, ","]).endswith(f"{flag}: no values given")
    assert not (tmp_path / "x.yaml").exists()


def test_cli_interrupted_selection_resumes_from_its_saved_passes(tmp_path, monkeypatch, caplog):
    """Ctrl-C after 4 passes: exit 130 with those passes saved; the same command measures only the rest and writes
    what an uninterrupted run writes; a rerun reuses every pass, other settings measure anew."""
    argv = ["--model", "tiny:llama:4:49152", "--window", "16", "--budget", "2", "--tasks", "passkey", "--lengths",
            "160", "--n", "2"]
    main([*argv, "--out", str(tmp_path / "straight.yaml")])
    straight = json.loads((tmp_path / "straight.scores.json").read_text())
    out = tmp_path / "sel.yaml"
    monkeypatch.setattr(select, "answer_nll", interrupted_at_call(select.answer_nll, 5))
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(out)])
    assert stop.value.code == 130 and "4 passes are saved in" in caplog.text
    assert len(json.loads(out.with_suffix(".passes.json").read_text())["passes"]) == 4 and not out.exists()

    main([*argv, "--out", str(out)])
    resumed = json.loads(out.with_suffix(".scores.json").read_text())
    assert resumed["forwards"] == straight["forwards"] - 4
    assert {k: resumed[k] for k in ("chosen", "nll_chosen", "layers", "greedy")} == \
        {k: straight[k] for k in ("chosen", "nll_chosen", "layers", "greedy")}
    assert yaml.safe_load(out.read_text()) == yaml.safe_load((tmp_path / "straight.yaml").read_text())

    main([*argv, "--out", str(out)])
    assert json.loads(out.with_suffix(".scores.json").read_text())["forwards"] == 0
    main([*argv, "--sink", "2", "--out", str(out)])
    passes = json.loads(out.with_suffix(".passes.json").read_text())["passes"]
    assert json.loads(out.with_suffix(".scores.json").read_text())["forwards"] == len(passes) > 4
    assert "holds passes of another model, adapter, settings or calibration data" in caplog.text


def test_cli_backend_the_device_cannot_run_is_an_error_that_keeps_the_saved_passes(tmp_path, capsys):
    """--backend flash on CPU: one error line before the passes file is opened (it would be replaced by a file of
    the new settings' fingerprint)."""
    passes = tmp_path / "sel.passes.json"
    passes.write_text('{"fingerprint": "earlier", "passes": []}')
    line = error_line(capsys, ["--model", "tiny:llama:4:49152", "--window", "16", "--budget", "1", "--device", "cpu",
                               "--backend", "flash", "--out", str(tmp_path / "sel.yaml")])
    assert re.search(r"--backend flash: not available on cpu \(backend 'flash' needs a CUDA", line)
    assert passes.read_text() == '{"fingerprint": "earlier", "passes": []}'


def test_cli_unreadable_passes_file_is_an_error_naming_it(tmp_path, capsys):
    (tmp_path / "sel.passes.json").write_text('{"fingerprint": "x", "passes": [[')
    line = error_line(capsys, ["--model", "tiny:llama:4:49152", "--window", "16", "--budget", "1", "--tasks",
                               "passkey", "--lengths", "160", "--n", "2", "--out", str(tmp_path / "sel.yaml")])
    assert re.search(r"sel\.passes\.json: not a swaa\.select passes file .*remove it", line)


def test_passes_fingerprint_follows_settings_adapter_files_and_tokens(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    ids = torch.arange(6).reshape(1, 6)
    batches = [CalibrationBatch(ids, torch.ones_like(ids), torch.tensor([[IGNORE] * 4 + [4, 5]]))]
    settings = {"model": "tiny:llama:4:49152", "adapter": str(adapter), "window": 16}
    first = passes_fingerprint(settings, batches)
    assert passes_fingerprint(dict(settings), batches) == first
    assert passes_fingerprint({**settings, "window": 8}, batches) != first
    assert passes_fingerprint(settings, [CalibrationBatch(ids + 1, torch.ones_like(ids), batches[0].labels)]) != first
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")
    assert passes_fingerprint(settings, batches) != first
