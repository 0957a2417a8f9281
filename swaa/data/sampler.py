"""Length-grouped, DDP-aware batch sampler with exact mid-epoch resume, and the DataLoader that checkpoints it.

Lightning's fit loop saves `state_dict()` of every train dataloader that has one and calls `load_state_dict()` before
creating the iterator on resume, so a resumed run continues with exactly the batches it had not trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

MEGA_BATCH_STEPS = 16
"""A mega-batch holds this many optimizer steps' worth of samples (all ranks), sorted by length inside."""


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar-length samples in a seeded random order; each rank gets `len(self)` batches per epoch.

    Per epoch: a permutation seeded by (seed, epoch), cut into mega-batches sorted by length (longest first), cut into
    steps of `batch_size * num_replicas` samples, steps shuffled; rank r takes the r-th slice of every step, so ranks
    see batches of similar length at the same step. Without `drop_last` the permutation is padded (cyclically) to a
    multiple of `num_replicas` and the last step is split evenly; with it, only whole steps are kept.
    The position (epoch, batches already yielded) is `state_dict()`; iterating after a finished epoch starts the next.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank}, num_replicas={num_replicas}: expected num_replicas >= 1 and "
                             f"0 <= rank < num_replicas")
        if len(lengths) == 0:
            raise ValueError("LengthGroupedBatchSampler: no samples (lengths is empty)")
        step = batch_size * num_replicas
        if drop_last and len(lengths) < step:
            raise ValueError(f"drop_last with {len(lengths)} samples < batch_size * num_replicas = {step}: no batches")
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.batches_yielded = 0

    def __len__(self) -> int:
        n, step = len(self.lengths), self.batch_size * self.num_replicas
        if self.drop_last:
            return n // step
        return -(-n // step)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch (a no-op if it is the current epoch)."""
        if epoch != self.epoch:
            self.epoch, self.batches_yielded = epoch, 0

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`, in order."""
        n, replicas, step = len(self.lengths), self.num_replicas, self.batch_size * self.num_replicas
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        total = len(self) * step if self.drop_last else -(-n // replicas) * replicas
        order = order.repeat(-(-total // n))[:total]
        steps = []
        for mega in order.split(step * MEGA_BATCH_STEPS):
            mega = mega[torch.argsort(self.lengths[mega], descending=True, stable=True)]
            steps.extend(mega.split(step))
        if self.shuffle:
            steps = [steps[i] for i in torch.randperm(len(steps), generator=gen)]
        return [s.view(replicas, -1)[self.rank].tolist() for s in steps]

    def restart(self) -> None:
        """Start over from the first batch of epoch 0."""
        self.epoch, self.batches_yielded = 0, 0

    def begin(self) -> dict[str, int]:
        """Move on to the next epoch if the current one is finished; returns the position iteration starts from."""
        if self.batches_yielded >= len(self):
            self.epoch, self.batches_yielded = self.epoch + 1, 0
        return self.state_dict()

    def __iter__(self) -> Iterator[list[int]]:
        start = self.begin()
        return self._iter_from(start["epoch"], start["batches_yielded"])

    def _iter_from(self, epoch: int, start: int) -> Iterator[list[int]]:
        for batch in self.epoch_batches(epoch)[start:]:
            self.batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The position, and the settings that fix the batches' order (a resume must have the same)."""
        return {"epoch": self.epoch, "batches_yielded": self.batches_yielded, "num_samples": len(self.lengths),
                "num_replicas": self.num_replicas, "batch_size": self.batch_size, "seed": self.seed,
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from `state`'s position; its settings must be this sampler's (checkpoints written before
        batch_size, seed, shuffle and drop_last were saved are checked for the number of samples and devices only)."""
        mine = self.state_dict()
        for key in ("num_samples", "num_replicas", "batch_size", "seed", "shuffle", "drop_last"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"cannot resume the batch sampler: the checkpoint has {key}={state[key]}, this run "
                                 f"has {key}={mine[key]}; resume with the same data, batch size, seed, shuffle, "
                                 f"drop_last and number of devices, or the run would skip or repeat samples")
        self.epoch, self.batches_yielded = state["epoch"], state["batches_yielded"]


class RestartingDataLoader(DataLoader):
    """DataLoader over a LengthGroupedBatchSampler that starts every pass at the first batch of epoch 0: each
    validation (and the sanity check) sees the same batches; nothing is checkpointed."""

    def __iter__(self) -> Iterator[Any]:
        self.batch_sampler.restart()
        return super().__iter__()


class ResumableDataLoader(DataLoader):
    """DataLoader over a LengthGroupedBatchSampler whose `state_dict()` counts batches delivered, not prefetched."""

    def __init__(self, dataset: Dataset, batch_sampler: LengthGroupedBatchSampler, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._position: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        if self._position is not None:  # forget batches that workers fetched but this loader never delivered
            self.batch_sampler.load_state_dict(self._position)
        self._position = self.batch_sampler.begin()
        return self._count(super().__iter__(), self._position)

    @staticmethod
    def _count(batches: Iterator[Any], position: dict[str, int]) -> Iterator[Any]:
        for batch in batches:
            position["batches_yielded"] += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self._position) if self._position is not None else self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)
        self._position = None
