"""Synthetic long-context DataModule: RULER-style tasks (swaa.tasks.generators) as one-turn chats, generated offline.

Train and val samples come from the tasks' disjoint 'train' and 'val' splits; encoded train data is cached.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
import tempfile
from pathlib import Path

import datasets

from swaa.data.sft import ChatDataModule, content_digest, encode_messages, tokenizer_digest
from swaa.tasks import generators as generators_module
from swaa.tasks import haystack as haystack_module
from swaa.tasks.generators import TASKS, Sample, check_tasks, make_samples, train_answer

log = logging.getLogger(__name__)
CACHE_VERSION = "1"  # bump when the encoding changes


def split_evenly(n: int, k: int) -> list[int]:
    """n items over k groups, the first n % k groups one larger."""
    return [n // k + (i < n % k) for i in range(k)]


class SyntheticDataModule(ChatDataModule):
    """Long-context retrieval tasks for SFT: user = task prompt, assistant = the answers joined by commas.

    Args:
        tasks: task names of `swaa.tasks.generators.TASKS`.
        lengths: prompt lengths in tokens; samples are spread evenly over every (task, length) pair.
        n_train: training samples in total.
        n_val: validation samples in total.
        tokenizer: model path for `swaa.models.load_tokenizer`; None = the embedded SmolLM2.
        haystack: a text file used as filler for every split; None = the tasks' own train/val haystacks.
        batch_size: samples per batch and device.
        num_workers: DataLoader worker processes.
        seed: seed of the generated samples and of the batch order.
        cache_dir: where encoded training samples are cached; None = ~/.cache/swaa/data.
    """

    def __init__(self, tasks: list[str] = ["passkey", "niah_single", "niah_multikey", "kv_retrieval"],  # noqa: B006
                 lengths: list[int] = [2048, 4096], n_train: int = 1000, n_val: int = 32,  # noqa: B006
                 tokenizer: str | None = None, haystack: str | None = None, batch_size: int = 1,
                 num_workers: int = 0, seed: int = 0, cache_dir: str | None = None) -> None:
        super().__init__(tokenizer, batch_size, num_workers, seed, cache_dir)
        if not tasks:
            raise ValueError(f"tasks={tasks!r}: expected a non-empty list; known tasks: {', '.join(TASKS)}")
        check_tasks(tasks, "tasks")
        if not lengths or min(lengths) < 1:
            raise ValueError(f"lengths={lengths!r}: expected a non-empty list of ints >= 1")
        if n_train < 1 or n_val < 0:
            raise ValueError(f"n_train={n_train}, n_val={n_val}: expected n_train >= 1 and n_val >= 0")
        if haystack is not None and not Path(haystack).is_file():
            raise FileNotFoundError(f"haystack file {haystack} does not exist")
        self.save_hyperparameters()
        self.tasks, self.lengths, self.n_train, self.n_val = list(tasks), list(lengths), n_train, n_val
        self.haystack = haystack
        self._val_samples: list[Sample] = []

    def length_fields(self) -> dict[str, int | list[int]]:
        return {"lengths": self.lengths}

    def make_split(self, split: str, n: int) -> list[Sample]:
        """n samples of `split` ('train' or 'val'), spread evenly over (task, length) pairs, in that order."""
        pairs = [(task, length) for task in self.tasks for length in self.lengths]
        return [sample for (task, length), k in zip(pairs, split_evenly(n, len(pairs))) if k
                for sample in make_samples(task, k, length, self.tokenizer, seed=self.seed, split=split,
                                           haystack=self.haystack)]

    def encode(self, samples: list[Sample]) -> datasets.Dataset:
        rows = [encode_messages(self.tokenizer, [{"role": "user", "content": s.prompt},
                                                 {"role": "assistant", "content": train_answer(s)}])
                for s in samples]
        return datasets.Dataset.from_list(rows)

    def _cache_path(self) -> Path:
        code = "".join(inspect.getsource(m) for m in (generators_module, haystack_module))
        hay = content_digest(self.haystack) if self.haystack is not None else ""
        key = (f"{CACHE_VERSION}|{self.tasks}|{self.lengths}|{self.n_train}|{self.seed}|{hay}|"
               f"{tokenizer_digest(self.tokenizer)}|{code}")
        return self.cache_dir / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    def _train_data(self) -> datasets.Dataset:
        """Encoded training samples, from the cache when present (written atomically otherwise)."""
        path = self._cache_path()
        if path.is_dir():
            return datasets.load_from_disk(str(path))
        data = self.encode(self.make_split("train", self.n_train))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-")
        data.save_to_disk(tmp)
        try:
            os.replace(tmp, path)
            log.info("cached %d synthetic training samples in %s", len(data), path)
        except OSError:  # another process (two runs on one machine) cached the same samples first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not path.is_dir():
                raise
        return datasets.load_from_disk(str(path))

    def prepare_data(self) -> None:
        self._train_data()

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        self.train_data = self._train_data()
        self._val_samples = self.make_split("val", self.n_val)
        self.val_data = self.encode(self._val_samples) if self._val_samples else None
        log.info("synthetic data: %d train, %d val samples", len(self.train_data), len(self._val_samples))

    def val_samples(self) -> list[Sample]:
        """The validation Sample objects (for generation-based validation); available after `setup`."""
        return list(self._val_samples)
