"""Step-indexed, resumable batches: for step s every task's batch is a pure function of (seed, s).

A run resumed at step s therefore gets exactly the batches, and the augmentations, that an
uninterrupted run gets from step s on, whatever the number of DataLoader workers, because each
sample's augmentation is seeded from its step and position rather than from a worker's stream.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_logger = logging.getLogger(__name__)


def derive_seed(*parts: object) -> int:
    """Hash any values into a 63-bit seed, stable across processes and Python runs."""
    text = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite sampler of (index, sample_seed) batches that can start at any step.

    The index stream is a concatenation of per-epoch permutations of the dataset, each
    sharded by rank (every rank takes every world_size-th index), so ranks see disjoint
    samples. Batch s of this rank is positions [s*B, (s+1)*B) of its stream. Each sample
    also gets a seed derived from (seed, task, rank, step, position), which seeds its
    augmentation.

    Args:
        dataset_size: Number of samples in the task's training split (> 0).
        batch_size: Samples per batch on this rank.
        seed: Run seed.
        task: Task name, so tasks draw independent streams.
        rank: This process's rank.
        world_size: Number of ranks.
        start_step: First step to produce (0 for a new run, the checkpoint step on resume).
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        task: str,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError(f"Task {task!r} has no training slices; check its cases and labels.")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.task = task
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step

    def _epoch_shard(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.task, "epoch", epoch))
        order = torch.randperm(self.dataset_size, generator=generator)
        # Pad by wrapping so every rank's shard has the same length.
        per_rank = -(-self.dataset_size // self.world_size)
        padded = order.repeat(-(-per_rank * self.world_size // self.dataset_size))[: per_rank * self.world_size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        shard_length = len(self._epoch_shard(0))
        step = self.start_step
        position = step * self.batch_size
        epoch, offset = divmod(position, shard_length)
        shard = self._epoch_shard(epoch)

        while True:
            batch = []
            for slot in range(self.batch_size):
                if offset == shard_length:
                    epoch, offset = epoch + 1, 0
                    shard = self._epoch_shard(epoch)
                sample_seed = derive_seed(self.seed, self.task, self.rank, step, slot)
                batch.append((int(shard[offset]), sample_seed))
                offset += 1
            yield batch
            step += 1


class SeededSamples(Dataset):
    """Dataset view whose items are keyed by (index, seed); the seed drives the augmentation.

    Each sample is augmented with its own torch.Generator seeded from the key, so the result
    depends only on the key, not on which worker process reads it or what it read before.

    Args:
        dataset: Map-style dataset returning {"image": [C, H, W], "label": [H, W], ...} without
            augmentation of its own.
        augment: hydranet_hub.data.AugmentConfig, or None for no augmentation.
    """

    def __init__(self, dataset: Dataset, augment: Any | None = None) -> None:
        self.dataset = dataset
        self.augment = augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        sample = dict(self.dataset[index])
        if self.augment is not None:
            from hydranet_hub.data.augment import augment_sample

            generator = torch.Generator().manual_seed(seed)
            image = torch.as_tensor(sample["image"], dtype=torch.float32)
            label = torch.as_tensor(sample["label"], dtype=torch.int64)
            sample["image"], sample["label"] = augment_sample(image, label, self.augment, generator)
        return sample


def _collate_tensors(samples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    # Only image and label are needed per step; names and slice numbers would cost IPC time.
    return {
        "image": torch.stack([torch.as_tensor(sample["image"]) for sample in samples]),
        "label": torch.stack([torch.as_tensor(sample["label"]) for sample in samples]),
    }


def make_train_loader(
    dataset: Dataset,
    augment: Any | None,
    task: str,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    start_step: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """Build the infinite, resumable training loader of one task (see StepBatchSampler)."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, task, rank, world_size, start_step)
    return DataLoader(
        SeededSamples(dataset, augment),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate_tensors,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
    )


def make_val_loader(
    dataset: Dataset, batch_size: int, rank: int, world_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """Build the finite validation loader of one task; each rank reads a disjoint shard."""
    shard = list(range(rank, len(dataset), world_size))
    return DataLoader(
        torch.utils.data.Subset(dataset, shard),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_tensors,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


class TaskBatches:
    """Iterator of {task: batch} dicts, one batch per task per step."""

    def __init__(self, loaders: Mapping[str, DataLoader]) -> None:
        self._iterators = {task: iter(loader) for task, loader in loaders.items()}

    def __iter__(self) -> "TaskBatches":
        return self

    def __next__(self) -> dict[str, dict[str, torch.Tensor]]:
        return {task: next(iterator) for task, iterator in self._iterators.items()}
