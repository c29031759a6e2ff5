"""Multi-task batching: one batch per task for every optimisation step, sharded across DDP ranks."""

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .augment import AugmentConfig
from .cache import SliceCache
from .config import TaskConfig
from .dataset import SliceDataset
from .manifest import stable_seed

_logger = logging.getLogger(__name__)


class InfiniteShardedSampler(Sampler[int]):
    """Endless stream of dataset indices, reshuffled every pass and split across ranks.

    Each pass draws a permutation seeded by (seed, pass number), identical on every rank, pads it
    by wrapping around to a multiple of `world_size`, and gives rank r the positions
    r, r + world_size, ... So ranks see disjoint indices within a pass (apart from the padding)
    and every rank yields the same number of indices per pass.

    Args:
        num_items: Dataset length.
        seed: Seed shared by all ranks.
        rank: This process's rank, 0 to world_size - 1.
        world_size: Number of DDP processes.
        shuffle: Permute each pass; False walks 0..num_items-1 in order.
    """

    def __init__(self, num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if num_items < 1:
            raise ValueError(f"num_items={num_items} is invalid; an infinite sampler needs at least one item.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size} is invalid; expected 0 <= rank < world_size.")
        self.num_items = num_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle

    def __iter__(self) -> Iterator[int]:
        per_rank = -(-self.num_items // self.world_size)
        pass_number = 0
        while True:
            if self.shuffle:
                order = np.random.default_rng([self.seed, pass_number]).permutation(self.num_items)
            else:
                order = np.arange(self.num_items)
            padded = np.resize(order, per_rank * self.world_size)
            yield from (int(index) for index in padded[self.rank :: self.world_size])
            pass_number += 1


class MultiTaskLoader:
    """Iterable over steps: each step is a dict {task name: batch} with one batch per task.

    A batch is the default collation of `SliceDataset` items: "image" [B, C, H, W] float32,
    "label" [B, H, W] int64, "slice" [B] int64, and "task"/"case" lists of B strings. The
    iteration never ends; the caller decides the number of steps.

    Attributes:
        loaders: The underlying DataLoader per task.
        datasets: The SliceDataset per task.
    """

    def __init__(self, loaders: dict[str, DataLoader], datasets: dict[str, SliceDataset]) -> None:
        self.loaders = loaders
        self.datasets = datasets

    def __iter__(self) -> Iterator[dict[str, dict[str, Any]]]:
        iterators = {task: iter(loader) for task, loader in self.loaders.items()}
        while True:
            yield {task: next(iterator) for task, iterator in iterators.items()}


def make_task_loaders(
    cache: SliceCache,
    tasks: Sequence[str | TaskConfig],
    batch_size_per_task: int,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    augment: AugmentConfig | None = None,
    split: str = "train",
    max_cases: int | Mapping[str, int] | None = None,
    context_slices: int | None = None,
    pin_memory: bool = False,
) -> MultiTaskLoader:
    """Create infinite, seeded, DDP-sharded loaders yielding one batch per task per step.

    Args:
        cache: An opened slice cache.
        tasks: Task names (or their TaskConfig) to draw from.
        batch_size_per_task: Slices per task in each step, on this rank.
        num_workers: DataLoader worker processes per task (so len(tasks) * num_workers in all).
        seed: Seed of sampling order and augmentation; equal on every rank.
        rank: This process's DDP rank.
        world_size: Number of DDP processes; ranks receive disjoint shards of each pass.
        augment: Augmentations, e.g. AugmentConfig(); None disables them.
        split: Cache split to draw from.
        max_cases: Labelled-data budget in volumes, one int for all tasks or a per-task mapping.
        context_slices: 2.5D neighbours per side; None uses the cache's default.
        pin_memory: Passed to each DataLoader.

    Returns:
        The multi-task loader.

    Raises:
        KeyError: If a task is not cached.
        ValueError: If batch_size_per_task < 1, or a task's split has fewer slices than one batch.
    """
    if batch_size_per_task < 1:
        raise ValueError(f"batch_size_per_task={batch_size_per_task} is invalid; expected 1 or more.")

    loaders: dict[str, DataLoader] = {}
    datasets: dict[str, SliceDataset] = {}
    for task in tasks:
        name = task.name if isinstance(task, TaskConfig) else str(task)
        budget = max_cases.get(name) if isinstance(max_cases, Mapping) else max_cases
        dataset = SliceDataset(cache, name, split, augment, budget, context_slices, seed)
        if len(dataset) < batch_size_per_task:
            raise ValueError(
                f"Task {name} has {len(dataset)} slices in split {split!r}, fewer than "
                f"batch_size_per_task={batch_size_per_task}; lower the batch size or add cases."
            )

        task_seed = [seed, *stable_seed(name)]
        sampler = InfiniteShardedSampler(
            len(dataset), seed=int(np.random.default_rng(task_seed).integers(2**31)), rank=rank, world_size=world_size
        )
        # Worker seeds differ per rank so augmentations are not repeated across GPUs.
        generator = torch.Generator().manual_seed(int(np.random.default_rng([*task_seed, rank]).integers(2**63)))
        loaders[name] = DataLoader(
            dataset,
            batch_size=batch_size_per_task,
            sampler=sampler,
            num_workers=num_workers,
            generator=generator,
            drop_last=True,
            persistent_workers=num_workers > 0,
            pin_memory=pin_memory,
        )
        datasets[name] = dataset
    _logger.info("Multi-task loader over %s, %d slice(s) per task per step", list(loaders), batch_size_per_task)
    return MultiTaskLoader(loaders, datasets)
