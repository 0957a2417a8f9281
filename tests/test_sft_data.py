"""SFTDataModule on local jsonl / parquet / arrow files: formats, filtering, split, cache, errors, loaders."""

import json
import logging
import re

import datasets
import pytest

from swaa.data import SFTDataModule, sft
from swaa.data.chat import IGNORE_INDEX

RECORDS = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(18)]
LONG = {"prompt": "word " * 400, "response": "long"}
NO_ANSWER = {"conversations": [{"role": "user", "content": "anyone?"}]}
SHAREGPT = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                              {"from": "human", "value": "bye"}, {"from": "gpt", "value": "see you"}]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def module(tok, tmp_path, train_files, **kwargs):
    dm = SFTDataModule(train_files, max_length=kwargs.pop("max_length", 200), cache_dir=str(tmp_path / "cache"),
                       **kwargs)
    dm._tokenizer = tok  # the session fixture; loading SmolLM2 again would take ~15 s
    return dm


@pytest.fixture()
def files(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", RECORDS[:10] + [LONG, NO_ANSWER])
    parquet = tmp_path / "b.parquet"
    datasets.Dataset.from_list([{"conversations": SHAREGPT["conversations"]}] + [
        {"conversations": [{"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["response"]}]}
        for r in RECORDS[10:]]).to_parquet(str(parquet))
    return [jsonl, str(parquet)]


def test_formats_filter_counts_and_split(smollm2_tokenizer, tmp_path, files, caplog):
    dm = module(smollm2_tokenizer, tmp_path, files, val_fraction=0.25, seed=1)
    with caplog.at_level(logging.INFO, logger="swaa.data.sft"):
        dm.prepare_data()
        dm.setup("fit")
    assert "train: 21 samples, kept 19; dropped 1 over max_length=200, 0 under min_length=1, 1 without" in caplog.text
    assert (len(dm.train_data), len(dm.val_data)) == (14, 5)
    assert all(p["scorer"] == "contains" and len(p["answers"]) == 1 for p in dm.val_prompts())
    pairs = {(p["prompt"], p["answers"][0]) for p in dm.val_prompts()}
    pairs |= set(zip(dm.train_data["prompt"], dm.train_data["answer"]))
    # every kept record once; the ShareGPT chat contributes its last user turn and last answer
    assert pairs == {(r["prompt"], r["response"]) for r in RECORDS} | {("bye", "see you")}


def test_split_is_deterministic_by_seed(smollm2_tokenizer, tmp_path, files):
    def val(seed):
        dm = module(smollm2_tokenizer, tmp_path, files, val_fraction=0.25, seed=seed)
        dm.setup()
        return [p["prompt"] for p in dm.val_prompts()]
    assert val(0) == val(0) != val(1)


def test_val_files_and_min_length(smollm2_tokenizer, tmp_path, files):
    val = write_jsonl(tmp_path / "val.jsonl", RECORDS[:3])
    dm = module(smollm2_tokenizer, tmp_path, files[:1], val_files=[val], min_length=30)
    dm.setup()
    assert len(dm.val_data) == 3 and len(dm.train_data) == 10
    assert all(n >= 30 for n in dm.train_data["length"])


def test_loader_batches(smollm2_tokenizer, tmp_path, files):
    dm = module(smollm2_tokenizer, tmp_path, files, batch_size=4, val_fraction=0)
    dm.setup()
    assert dm.val_dataloader() == []
    batches = list(dm.train_dataloader())
    assert sum(len(b["input_ids"]) for b in batches) == 19
    for b in batches:
        assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()
        assert ((b["labels"] != IGNORE_INDEX).sum(1) > 0).all()


def test_every_validation_pass_starts_at_the_first_batch(smollm2_tokenizer, tmp_path, files):
    """A pass cut short (the sanity check, limit_val_batches) does not move the next pass on."""
    dm = module(smollm2_tokenizer, tmp_path, files, batch_size=2, val_fraction=0.25)
    dm.setup()
    loader = dm.val_dataloader()
    first = next(iter(loader))["input_ids"]  # a pass of one batch
    full = [b["input_ids"] for b in loader]
    assert len(full) == 3 and full[0].equal(first)
    assert [b["input_ids"] for b in loader][0].equal(first)  # and after a full pass


def test_cache_is_reused_and_keyed_by_content(smollm2_tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, RECORDS[:4])
    first = sft.encode_file(path, smollm2_tokenizer, tmp_path / "cache")
    monkeypatch.setattr(sft, "encode_messages", lambda *a: pytest.fail("cached file was re-encoded"))
    assert sft.encode_file(path, smollm2_tokenizer, tmp_path / "cache")["input_ids"] == first["input_ids"]
    write_jsonl(path, RECORDS[:5])
    with pytest.raises(pytest.fail.Exception, match="re-encoded"):
        sft.encode_file(path, smollm2_tokenizer, tmp_path / "cache")


def test_arrow_and_save_to_disk_folder(smollm2_tokenizer, tmp_path):
    data = datasets.Dataset.from_list(RECORDS[:4])
    data.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    assert len(sft.load_records(tmp_path / "saved")) == 4
    assert sft.load_records(arrow)["prompt"] == data["prompt"]


def test_missing_fields_error_names_file_and_fields(smollm2_tokenizer, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}])
    dm = module(smollm2_tokenizer, tmp_path, [bad])
    with pytest.raises(ValueError, match=r"bad\.jsonl, record 1: record has fields \['answer', 'question'\]"):
        dm.setup()


def test_unreadable_and_unsupported_files(tmp_path):
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"cannot read data file .*broken\.parquet"):
        sft.load_records(tmp_path / "broken.parquet")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt: unsupported format '\.txt'"):
        sft.load_records(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        sft.load_records(tmp_path / "missing.jsonl")


def test_nothing_left_reports_counts(smollm2_tokenizer, tmp_path, files):
    dm = module(smollm2_tokenizer, tmp_path, files, max_length=5)
    with pytest.raises(ValueError, match=r"no samples left: train: 21 samples, kept 0; dropped 21 over max_length=5, "
                                         r"0 under min_length=1, 0 without a supervised"):
        dm.setup()


def test_argument_errors():
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        SFTDataModule(["a.jsonl"], val_fraction=1.5)
    with pytest.raises(ValueError, match="train_files is empty"):
        SFTDataModule([])


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", "", "data file {path} is empty$"),
    ("blank.jsonl", "\n\n", "cannot read data file {path}: no records, only whitespace$"),
    ("syntax.jsonl", '{"prompt": "p", "response": "r"}\n{"prompt": "p" "response": "r"}\n',
     r"cannot read data file {path}: line 2: invalid JSON \(Expecting ',' delimiter, column 16\)$"),
    ("array.jsonl", '{"prompt": "p", "response": "r"}\n\n["p", "r"]\n',
     "cannot read data file {path}: line 3: expected a JSON object \\(one record per line\\), got list$"),
    ("document.json", '[{"prompt": "p",\n  "response": }]\n',
     r"cannot read data file {path}: line 2: invalid JSON \(Expecting value, column 15\)$"),
], ids=["empty", "blank", "jsonl_syntax", "jsonl_not_an_object", "json_document"])
def test_malformed_json_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message.format(path=re.escape(str(path)))):
        sft.load_records(path)
