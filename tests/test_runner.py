"""run_grid end to end with a tiny model: records, resume, no stale reuse; bad input fails before model loading."""

import copy
import json

import pytest
import torch

from conftest import tiny_model
from swaa import SWAAConfig
from swaa.eval import runner
from swaa.eval.grid import GridSettings
from swaa.eval.report import markdown_table, summary_table
from swaa.eval.runner import LoadedModel, run_grid
from swaa.eval.speed import speed_setup

CONFIGS = {"fa": SWAAConfig(), "swa": SWAAConfig(window=32, sink=2, fa_decode=True)}


@pytest.fixture(scope="module")
def model(smollm2_tokenizer):
    return tiny_model(vocab_size=len(smollm2_tokenizer), layers=2)


@pytest.fixture
def no_loading(monkeypatch):
    """Any model or tokenizer load fails the test: errors must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the error")
    for name in ("load_model", "load_tokenizer", "_load_model"):
        monkeypatch.setattr(runner, name, forbidden)


def _run(model, tokenizer, out, configs=CONFIGS, **overrides):
    settings = dict(tasks=["passkey"], lengths=[256], n=2, max_new_tokens=4, batch_size=2, out_dir=out, progress=False)
    return run_grid(configs, GridSettings(**{**settings, **overrides}), loaded=LoadedModel(model, tokenizer,
                                                                                          "tiny-llama-2"))


def test_run_grid_records_resume_and_table(model, smollm2_tokenizer, tmp_path, monkeypatch):
    records = _run(model, smollm2_tokenizer, tmp_path, tasks=["passkey", "niah_single"])
    assert [(r["config_name"], r["key"]["task"], r["key"]["length"]) for r in records] == [
        ("fa", "passkey", 256), ("fa", "niah_single", 256), ("swa", "passkey", 256), ("swa", "niah_single", 256)]
    assert all(r["n"] == 2 and 0 <= r["accuracy"] <= 1 and r["key"]["scorer"] == "contains" for r in records)
    assert records[2]["key"]["swaa"] == CONFIGS["swa"].to_dict() and records[2]["key"]["swaa_tag"] == "w32-s2-fad"
    samples = [json.loads(line) for line in (tmp_path / records[0]["samples_file"]).read_text().splitlines()]
    assert [s["id"] for s in samples] == ["passkey-256-eval-s0-0", "passkey-256-eval-s0-1"]
    assert all(isinstance(s["prediction"], str) and s["answers"] for s in samples)
    assert "| fa |" in markdown_table(summary_table(records))
    assert "swaa" not in model.config.to_dict()  # remove_swaa ran after the last config

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished cell was generated again")
    monkeypatch.setattr(runner, "generate_answers", no_generation)
    again = _run(model, smollm2_tokenizer, tmp_path, tasks=["passkey", "niah_single"])
    assert [r["key_hash"] for r in again] == [r["key_hash"] for r in records]
    with pytest.raises(AssertionError, match="generated again"):
        _run(model, smollm2_tokenizer, tmp_path, tasks=["passkey", "niah_single"], max_new_tokens=5)


def test_static_decode_gives_the_same_records(model, smollm2_tokenizer, tmp_path):
    def predictions(records, out):
        return [[json.loads(line)["prediction"] for line in (out / r["samples_file"]).read_text().splitlines()]
                for r in records]
    want = _run(model, smollm2_tokenizer, tmp_path / "generate", max_new_tokens=6)
    got = _run(model, smollm2_tokenizer, tmp_path / "static", max_new_tokens=6, decode="static", speed=True)
    assert [r["key_hash"] for r in got] == [r["key_hash"] for r in want]
    assert all(r["speed"]["decode"] == "static" and r["speed"]["decode_ms_per_token"] >= 0 for r in got)
    assert predictions(got, tmp_path / "static") == predictions(want, tmp_path / "generate")


def test_speed_is_measured_and_requested_later(model, smollm2_tokenizer, tmp_path):
    configs = {"fa": SWAAConfig()}
    first = _run(model, smollm2_tokenizer, tmp_path, configs=configs)
    assert first[0]["speed"] is None
    timed = _run(model, smollm2_tokenizer, tmp_path, configs=configs, speed=True)
    assert timed[0]["key_hash"] == first[0]["key_hash"] and timed[0]["speed"]["decode"] == "generate"
    assert timed[0]["speed"]["prefill_ms"] >= 0 and timed[0]["speed"]["decode_ms_per_token"] >= 0


def test_speed_of_another_decode_mode_or_dtype_is_measured_again(model, smollm2_tokenizer, tmp_path, monkeypatch):
    """A timing is reused only under the decode mode, device and dtype it was measured under."""
    def fake_speed(model, tokenizer, length, decode):  # the stored fields of measure_speed, without the timing
        return {"prefill_ms": 1.0, "decode_ms_per_token": 1.0, **speed_setup(decode, model.device, model.dtype)}
    monkeypatch.setattr(runner, "measure_speed", fake_speed)
    configs = {"fa": SWAAConfig()}
    generate = _run(model, smollm2_tokenizer, tmp_path, configs=configs, speed=True)
    assert {k: generate[0]["speed"][k] for k in ("decode", "device", "dtype")} == {
        "decode": "generate", "device": "cpu", "dtype": "float32"}
    static = _run(model, smollm2_tokenizer, tmp_path, configs=configs, speed=True, decode="static")
    assert static[0]["key_hash"] == generate[0]["key_hash"] and static[0]["speed"]["decode"] == "static"

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished cell was generated again")
    monkeypatch.setattr(runner, "generate_answers", no_generation)
    assert _run(model, smollm2_tokenizer, tmp_path, configs=configs, speed=True, decode="static") == static
    with pytest.raises(AssertionError, match="generated again"):
        _run(copy.deepcopy(model).to(torch.bfloat16), smollm2_tokenizer, tmp_path, configs=configs, speed=True,
             decode="static")


def test_data_file_cells(model, smollm2_tokenizer, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Say {w}.", "answer": w}) for w in ("yes", "no", "maybe")))
    records = _run(model, smollm2_tokenizer, tmp_path / "out", tasks=None, lengths=None, data_file=data, n=2,
                   configs={"fa": SWAAConfig()}, scorer="exact")
    assert len(records) == 1
    assert records[0]["key"]["task"] == "qa" and records[0]["key"]["length"] is None and records[0]["n"] == 2
    assert records[0]["key"]["scorer"] == "exact" and records[0]["key"]["data_id"] is not None


def test_bad_configs_fail_before_loading(no_loading, tmp_path):
    with pytest.raises(ValueError, match="configs: expected a non-empty mapping"):
        run_grid({}, GridSettings(tasks=["passkey"], lengths=[256], out_dir=tmp_path))


def test_bad_data_files_fail_before_loading(no_loading, tmp_path):
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "q?", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"missing field\(s\) 'prompt' \(or 'context' and 'question'\)"):
        run_grid(CONFIGS, GridSettings(data_file=missing, out_dir=tmp_path))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read it as parquet"):
        run_grid(CONFIGS, GridSettings(data_file=broken, out_dir=tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_grid(CONFIGS, GridSettings(data_file=tmp_path / "nowhere.jsonl", out_dir=tmp_path))


def _model_folder(tmp_path, context):
    folder = tmp_path / "model"
    tiny_model(layers=1, max_position_embeddings=context).config.save_pretrained(folder)
    return folder


def test_length_beyond_context_fails_before_loading(no_loading, tmp_path):
    with pytest.raises(ValueError, match=r"exceed the model context of 4096 tokens .*use lengths <= 4064"):
        run_grid(CONFIGS, GridSettings(tasks=["passkey"], lengths=[1024, 4090], max_new_tokens=32, out_dir=tmp_path),
                 _model_folder(tmp_path, 4096))


def test_bad_judge_model_fails_before_loading(no_loading, tmp_path):
    settings = GridSettings(tasks=["passkey"], lengths=[256], scorer="judge", judge_model=tmp_path / "judge",
                            out_dir=tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        run_grid(CONFIGS, settings, _model_folder(tmp_path, 4096))
    assert str(error.value).startswith(f"judge_model {tmp_path / 'judge'}: expected a Hugging Face folder")


def test_a_tiny_judge_spec_is_a_judge_model(model, smollm2_tokenizer, tmp_path):
    """A tiny spec judges like a folder: its spec is its identity in the scorer key (no file to hash)."""
    spec = f"tiny:llama:1:{len(smollm2_tokenizer)}"
    settings = GridSettings(tasks=["passkey"], lengths=[256], n=1, scorer="judge", judge_model=spec, out_dir=tmp_path)
    plan = runner.plan_grid(CONFIGS, settings, loaded=LoadedModel(model, smollm2_tokenizer, "tiny-llama-2"))
    assert plan.scorer == f"judge:{spec}:{spec}"


def test_prompt_tokens_beyond_context_fail_before_model_loading(smollm2_tokenizer, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")
    monkeypatch.setattr(runner, "_load_model", forbidden)
    monkeypatch.setattr(runner, "load_tokenizer", lambda path, where: smollm2_tokenizer)
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "word " * 200, "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"prompt lengths \{'long': 2\d\d\}"):
        run_grid(CONFIGS, GridSettings(data_file=data, out_dir=tmp_path), _model_folder(tmp_path, 128))


def test_answers_longer_than_max_new_tokens_warn(model, smollm2_tokenizer, tmp_path, caplog):
    """Four 7-digit values with commas are 35 SmolLM2 tokens: 32 new tokens would cut every answer."""
    _run(model, smollm2_tokenizer, tmp_path / "a", configs={"fa": SWAAConfig()}, tasks=["niah_multivalue"], n=1,
         max_new_tokens=32)
    assert "max_new_tokens=32 is below the reference answer length" in caplog.text
    assert "niah_multivalue@256" in caplog.text
    caplog.clear()
    _run(model, smollm2_tokenizer, tmp_path / "b", configs={"fa": SWAAConfig()}, tasks=["niah_multivalue"], n=1,
         max_new_tokens=40)
    assert "below the reference answer length" not in caplog.text


def test_out_of_memory_halves_the_batch(model, smollm2_tokenizer, tmp_path, monkeypatch, caplog):
    generate, tried = runner.generate_answers, []

    def small_gpu(model, tokenizer, prompts, max_new_tokens, batch_size, decode):
        tried.append(batch_size)
        if batch_size > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        decode=decode)
    monkeypatch.setattr(runner, "generate_answers", small_gpu)
    records = _run(model, smollm2_tokenizer, tmp_path, configs={"fa": SWAAConfig()}, batch_size=4)
    assert tried == [4, 2, 1] and records[0]["n"] == 2
    assert "generating this cell again with batch_size 1" in caplog.text
    monkeypatch.setattr(runner, "generate_answers", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError()))
    with pytest.raises(torch.OutOfMemoryError):
        _run(model, smollm2_tokenizer, tmp_path / "b", configs={"fa": SWAAConfig()}, batch_size=1)
