"""SyntheticDataModule: deterministic generation, disjoint train/val, cache, labels, loaders."""

import pytest

from swaa.data import SyntheticDataModule
from swaa.data.chat import IGNORE_INDEX
from swaa.data.synthetic import split_evenly
from swaa.tasks.generators import Sample, train_answer

TASKS = ["passkey", "kv_retrieval"]


def module(tok, tmp_path, **kwargs):
    args = dict(tasks=TASKS, lengths=[512, 1024], n_train=10, n_val=4, cache_dir=str(tmp_path / "cache"))
    dm = SyntheticDataModule(**{**args, **kwargs})
    dm._tokenizer = tok  # the session fixture; loading SmolLM2 again would take ~15 s
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_evenly():
    assert split_evenly(10, 4) == [3, 3, 2, 2] and split_evenly(2, 4) == [1, 1, 0, 0]


def test_deterministic_disjoint_and_spread_over_tasks(smollm2_tokenizer, tmp_path):
    a = module(smollm2_tokenizer, tmp_path / "a")
    b = module(smollm2_tokenizer, tmp_path / "b")
    assert a.train_data["input_ids"] == b.train_data["input_ids"]
    assert a.val_samples() == b.val_samples()
    assert len(a.train_data) == 10 and len(a.val_samples()) == 4
    assert all(isinstance(s, Sample) for s in a.val_samples())
    assert sorted((s.task, s.length) for s in a.val_samples()) == sorted((t, n) for t in TASKS for n in (512, 1024))
    train = {p for p in a.train_data["prompt"]}
    assert not train & {s.prompt for s in a.val_samples()}
    other_seed = module(smollm2_tokenizer, tmp_path / "c", seed=1)
    assert other_seed.train_data["input_ids"] != a.train_data["input_ids"]


def test_labels_are_the_answer(smollm2_tokenizer, tmp_path):
    dm = module(smollm2_tokenizer, tmp_path)
    for sample, row in zip(dm.val_samples(), dm.val_data):
        supervised = [t for t in row["labels"] if t != IGNORE_INDEX]
        assert smollm2_tokenizer.decode(supervised) == train_answer(sample) + "<|im_end|>"
        assert row["length"] <= sample.length + 64  # prompt fitted to <= length, plus template and answer


def test_train_data_comes_from_the_cache(smollm2_tokenizer, tmp_path, monkeypatch):
    first = module(smollm2_tokenizer, tmp_path)
    assert len(list((tmp_path / "cache").glob("synthetic-*"))) == 1

    def no_train(self, split, n):
        assert split == "val", "training samples were generated again instead of read from the cache"
        return first.val_samples()
    monkeypatch.setattr(SyntheticDataModule, "make_split", no_train)
    assert module(smollm2_tokenizer, tmp_path).train_data["input_ids"] == first.train_data["input_ids"]


def test_two_processes_caching_the_same_samples(smollm2_tokenizer, tmp_path, monkeypatch):
    """The second process to finish finds the cache written by the first: it keeps that one and cleans up its own."""
    first = module(smollm2_tokenizer, tmp_path / "first")
    cache = tmp_path / "shared"
    encode = SyntheticDataModule.encode

    def encode_while_another_finishes(self, samples):
        data = encode(self, samples)
        if not self._cache_path().exists():  # the training split: the other process wins the race
            data.save_to_disk(str(self._cache_path()))
        return data
    monkeypatch.setattr(SyntheticDataModule, "encode", encode_while_another_finishes)
    second = module(smollm2_tokenizer, tmp_path, cache_dir=str(cache))
    assert second.train_data["input_ids"] == first.train_data["input_ids"]
    assert [p.name.startswith("synthetic-") for p in cache.iterdir()] == [True]


def test_loaders(smollm2_tokenizer, tmp_path):
    dm = module(smollm2_tokenizer, tmp_path, batch_size=3)
    train = list(dm.train_dataloader())
    assert [len(b["input_ids"]) for b in train] and sum(len(b["input_ids"]) for b in train) == 10
    val = [b for b in dm.val_dataloader()]
    assert sum(len(b["input_ids"]) for b in val) == 4
    assert [b["input_ids"].tolist() for b in dm.val_dataloader()] == [b["input_ids"].tolist() for b in val]


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="^tasks telepathy: unknown task; choose from passkey"):
        SyntheticDataModule(tasks=["passkey", "telepathy"])
    with pytest.raises(FileNotFoundError, match="haystack file"):
        SyntheticDataModule(haystack=str(tmp_path / "missing.txt"))
