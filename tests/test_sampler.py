"""Length-grouped batch sampler: coverage, DDP split, exact resume (plain, with workers, and through Lightning)."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from swaa.data.chat import PadCollator
from swaa.data.sampler import MEGA_BATCH_STEPS, LengthGroupedBatchSampler, ResumableDataLoader

LENGTHS = [(i * 37) % 101 + 1 for i in range(45)]
DATA = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate(LENGTHS)]


def loader(num_replicas=1, rank=0, batch_size=4, num_workers=0, lengths=LENGTHS):
    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=3, num_replicas=num_replicas, rank=rank)
    return ResumableDataLoader(DATA[:len(lengths)], batch_sampler=sampler, collate_fn=PadCollator(0),
                               num_workers=num_workers)


def ids(batch):
    return batch["input_ids"][:, 0].tolist()


def epochs(dl, n=2):
    return [ids(b) for _ in range(n) for b in dl]


def test_epoch_covers_every_sample_once_and_groups_by_length():
    sampler = LengthGroupedBatchSampler(LENGTHS, 4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12
    assert sorted(i for b in batches for i in b) == list(range(45))
    # one mega-batch here, sorted by length: a batch's lengths never interleave with another batch's
    spans = sorted((min(LENGTHS[i] for i in b), max(LENGTHS[i] for i in b)) for b in batches)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans, spans[1:]))
    assert len(LENGTHS) < 4 * MEGA_BATCH_STEPS


def test_epochs_differ_and_are_seeded():
    a, b = LengthGroupedBatchSampler(LENGTHS, 4, seed=0), LengthGroupedBatchSampler(LENGTHS, 4, seed=0)
    first, second = list(a), list(a)
    assert first != second and first == list(b)
    b.set_epoch(1)
    assert list(b) == second
    assert list(LengthGroupedBatchSampler(LENGTHS, 4, seed=1)) != first


def test_no_shuffle_is_the_same_every_epoch():
    sampler = LengthGroupedBatchSampler(LENGTHS, 4, seed=0, shuffle=False)
    assert list(sampler) == list(sampler)


@pytest.mark.parametrize("drop_last", [False, True])
def test_ddp_ranks_get_equal_disjoint_shares(drop_last):
    ranks = [list(LengthGroupedBatchSampler(LENGTHS, 4, seed=0, drop_last=drop_last, num_replicas=2, rank=r))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == (5 if drop_last else 6)
    assert all(len(a) == len(b) for a, b in zip(*ranks))
    seen = [i for rank in ranks for b in rank for i in b]
    if drop_last:
        assert len(seen) == 40 and len(set(seen)) == 40
    else:  # 45 samples padded to 46: every sample once, one repeated
        assert len(seen) == 46 and set(seen) == set(range(45))


def test_errors():
    with pytest.raises(ValueError, match="no samples"):
        LengthGroupedBatchSampler([], 2)
    with pytest.raises(ValueError, match="rank=2"):
        LengthGroupedBatchSampler(LENGTHS, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_samples"):
        LengthGroupedBatchSampler(LENGTHS[:10], 2).load_state_dict(LengthGroupedBatchSampler(LENGTHS, 2).state_dict())


@pytest.mark.parametrize("field, saved, new", [("batch_size", 2, 4), ("seed", 0, 1), ("shuffle", True, False),
                                               ("drop_last", False, True), ("num_replicas", 1, 2)])
def test_resume_with_other_order_settings_is_an_error_naming_the_field(field, saved, new):
    """Each of these changes which samples the remaining batches hold: the resumed run would skip or repeat some."""
    state = LengthGroupedBatchSampler(LENGTHS, **{"batch_size": 2, field: saved}).state_dict()
    with pytest.raises(ValueError, match=f"the checkpoint has {field}={saved}, this run has {field}={new};"):
        LengthGroupedBatchSampler(LENGTHS, **{"batch_size": 2, field: new}).load_state_dict(state)
    old = {k: state[k] for k in ("epoch", "batches_yielded", "num_samples", "num_replicas")}  # an older checkpoint
    if field != "num_replicas":
        LengthGroupedBatchSampler(LENGTHS, **{"batch_size": 2, field: new}).load_state_dict(old)


@pytest.mark.parametrize("num_replicas", [1, 2])
@pytest.mark.parametrize("k", [0, 1, 5, 6, 7, 11])
def test_resume_yields_exactly_the_remaining_batches(num_replicas, k):
    for rank in range(num_replicas):
        expected = epochs(loader(num_replicas, rank), 2)
        first = loader(num_replicas, rank)
        taken, it = [], iter(first)
        for _ in range(k):
            try:
                taken.append(ids(next(it)))
            except StopIteration:
                it = iter(first)
                taken.append(ids(next(it)))
        resumed = loader(num_replicas, rank)
        resumed.load_state_dict(first.state_dict())
        rest = [ids(b) for b in resumed]
        rest += [ids(b) for b in resumed] if len(taken) + len(rest) < len(expected) else []
        assert taken + rest == expected


def test_resume_counts_delivered_batches_not_worker_prefetch():
    expected = epochs(loader(), 1)
    first = loader(num_workers=2)
    it = iter(first)
    taken = [ids(next(it)) for _ in range(3)]
    state = first.state_dict()
    assert state["batches_yielded"] == 3 and first.batch_sampler.batches_yielded > 3  # workers ran ahead
    resumed = loader()
    resumed.load_state_dict(state)
    assert taken + [ids(b) for b in resumed] == expected


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(ids(batch))
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dl, tmp_path, ckpt_path=None, **trainer_args):
    model = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, **trainer_args)
    trainer.fit(model, train_dataloaders=dl, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("k", [4, 15])  # mid first epoch, mid second epoch (12 batches per epoch)
def test_lightning_resume_continues_with_the_remaining_batches(tmp_path, k):
    expected = fit(loader(), tmp_path / "full", max_epochs=2, enable_checkpointing=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=k, save_top_k=-1, filename="{step}")
    before = fit(loader(), tmp_path / "a", max_steps=k, callbacks=[ckpt])
    after = fit(loader(), tmp_path / "b", ckpt_path=tmp_path / "ckpt" / f"step={k}.ckpt", max_epochs=2,
                enable_checkpointing=False)
    assert len(expected) == 24 and before + after == expected
