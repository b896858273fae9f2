"""The batch sampler of training: class draws x images per class, seeded by (seed, epoch)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import S2SDError


class ClassBatchSampler(torch.utils.data.Sampler):
    """Batches of ``classes_per_batch`` class draws x ``samples_per_class`` images each.

    ``replacement=True`` (the reference's sampler, the default): classes are drawn with replacement, and
    each drawn class's images with replacement, so a class may appear more than once in a batch (56
    draws from CUB's 100 training classes give about 43 distinct ones). ``replacement=False``: distinct
    classes, and a class's images without replacement unless it has too few (then with replacement).

    There are ``len(labels) // batch_size`` batches per epoch, drawn from a generator seeded by
    (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would. Under
    DistributedDataParallel each rank takes every ``world_size``-th batch, all ranks as many.
    """

    def __init__(
        self,
        labels: np.ndarray,
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        replacement: bool = True,
    ):
        labels = np.asarray(labels)
        self.order = np.argsort(labels, kind="stable")  # images grouped by class
        self.classes, self.starts, self.counts = np.unique(labels[self.order], return_index=True, return_counts=True)
        if not replacement and len(self.classes) < classes_per_batch:
            raise S2SDError(
                f"a batch needs {classes_per_batch} distinct classes (--batch-size / --samples-per-class) but the "
                f"training split has only {len(self.classes)}; lower --batch-size, raise --samples-per-class, "
                f"or use --sampler replacement"
            )
        self.small_classes = int((self.counts < samples_per_class).sum())
        self.classes_per_batch, self.samples_per_class, self.replacement = (
            classes_per_batch,
            samples_per_class,
            replacement,
        )
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.batches_per_rank = max(1, len(labels) // (classes_per_batch * samples_per_class) // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for batch in range(self.batches_per_rank * self.world_size):
            indices = self._draw(rng)
            if batch % self.world_size == self.rank:
                yield indices.tolist()

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.replacement:
            classes = rng.integers(0, len(self.classes), self.classes_per_batch)
            picks = rng.integers(0, self.counts[classes][:, None], (self.classes_per_batch, self.samples_per_class))
            return self.order[self.starts[classes][:, None] + picks].ravel()
        classes = rng.choice(len(self.classes), self.classes_per_batch, replace=False)
        return np.concatenate([self._members(rng, c) for c in classes])

    def _members(self, rng: np.random.Generator, index: int) -> np.ndarray:
        members = self.order[self.starts[index] : self.starts[index] + self.counts[index]]
        return rng.choice(members, self.samples_per_class, replace=len(members) < self.samples_per_class)
