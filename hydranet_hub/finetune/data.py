"""Labelled-data budgets below whole volumes: a seeded share of a task's training slices."""

from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import Dataset, Subset

from hydranet_hub.training.data_feed import derive_seed

_logger = logging.getLogger(__name__)


def select_slice_fraction(dataset: Dataset, fraction: float, seed: int, task: str) -> Subset:
    """Keep a seeded share of a dataset's slices, at least one.

    Selections are nested: for a fixed seed, the slices kept at fraction 0.1 are among those
    kept at 0.2, so curves over fractions compare like with like.

    Args:
        dataset: A map-style dataset of slices, e.g. a `hydranet_hub.data.SliceDataset`.
        fraction: Share of slices to keep, 0 < fraction <= 1.
        seed: Seed of the selection.
        task: Task name, mixed into the seed so tasks draw independently.

    Returns:
        A Subset whose `indices` are the kept positions, in dataset order.

    Raises:
        ValueError: If `fraction` is outside (0, 1] or the dataset is empty.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"slice_fraction={fraction!r} is invalid for task {task}: expected 0 < fraction <= 1.")
    size = len(dataset)
    if size == 0:
        raise ValueError(f"Task {task} has no training slices to select a fraction of.")

    keep = max(1, math.ceil(fraction * size - 1e-9))
    generator = torch.Generator().manual_seed(derive_seed(seed, task, "slice-fraction"))
    order = torch.randperm(size, generator=generator)
    indices = sorted(int(index) for index in order[:keep])
    _logger.info("Task %s: training on %d of %d slices (slice_fraction=%s)", task, keep, size, fraction)
    return Subset(dataset, indices)
