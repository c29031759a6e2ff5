"""A PyTorch dataset of 2.5D slices read from a slice cache."""

import logging
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .augment import AugmentConfig, augment_sample
from .cache import SliceCache
from .manifest import stable_seed
from .slices import stack_context

_logger = logging.getLogger(__name__)


def select_case_budget(case_ids: tuple[str, ...], max_cases: int, seed: int, task: str) -> tuple[str, ...]:
    """Pick a labelled-data budget of `max_cases` cases, deterministically.

    Budgets are nested: for a fixed seed, the 5 cases of a budget of 5 are among the 10 of a
    budget of 10, so fine-tuning curves over budgets compare like with like.

    Args:
        case_ids: Candidate case ids, e.g. a task's train split.
        max_cases: Budget in volumes, 1 to len(case_ids).
        seed: Seed of the selection.
        task: Task name, mixed into the seed so tasks draw independently.

    Returns:
        The selected ids, sorted.

    Raises:
        ValueError: If `max_cases` is outside 1..len(case_ids).
    """
    if not 1 <= max_cases <= len(case_ids):
        raise ValueError(
            f"max_cases={max_cases} is invalid for task {task}; expected 1 to {len(case_ids)} (cases available)."
        )
    ordered = sorted(case_ids)
    rng = np.random.default_rng([seed, *stable_seed(task, "budget")])
    order = rng.permutation(len(ordered))
    return tuple(sorted(ordered[position] for position in order[:max_cases]))


class SliceDataset(Dataset):
    """2.5D slices of one task and split, memory-mapped from a slice cache.

    Each item is a dict with "image" (float32 [C * (2k + 1), H, W]), "label" (int64 [H, W]),
    "task" (str), "case" (str) and "slice" (int, the centre slice z).

    Augmentation randomness comes from a generator created once per process: in a DataLoader
    worker it is seeded with the worker's seed (`torch.utils.data.get_worker_info().seed`, which
    a seeded DataLoader generator makes reproducible), otherwise with `seed`.

    Args:
        cache: An opened slice cache.
        task: Task name in the cache.
        split: "train", "val" or "all".
        augment: Augmentations to apply, or None for none.
        max_cases: Labelled-data budget in volumes, chosen by `select_case_budget`; None uses all.
        context_slices: 2.5D neighbours k per side; None uses the cache's default.
        seed: Seed of the case budget and of augmentation outside DataLoader workers.

    Raises:
        KeyError: If the task is not cached.
        ValueError: If the split is unknown, `max_cases` is out of range or the split is empty.
    """

    def __init__(
        self,
        cache: SliceCache,
        task: str,
        split: str = "train",
        augment: AugmentConfig | None = None,
        max_cases: int | None = None,
        context_slices: int | None = None,
        seed: int = 0,
    ) -> None:
        self.cache = cache
        self.task = task
        self.split = split
        self.augment = augment
        self.context_slices = cache.context_slices if context_slices is None else int(context_slices)
        self.seed = seed
        if self.context_slices < 0:
            raise ValueError(f"context_slices={context_slices} is invalid; expected 0 or more.")

        candidates = cache.cases(task, split)
        if not candidates:
            raise ValueError(f"Task {task} has no cases in split {split!r} of the cache at {cache.cache_dir}.")
        self.cases = candidates if max_cases is None else select_case_budget(candidates, max_cases, seed, task)
        self.index = cache.slice_index(task, split, self.cases)

        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._generator: torch.Generator | None = None
        self._generator_pid: int | None = None
        _logger.debug("SliceDataset %s/%s: %d cases, %d slices", task, split, len(self.cases), len(self.index))

    @property
    def in_channels(self) -> int:
        """Input channels of each item: modalities * (2k + 1)."""
        return self.cache.in_channels(self.task, self.context_slices)

    @property
    def num_classes(self) -> int:
        """Output classes of the task, background included."""
        return self.cache.num_classes(self.task)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> dict[str, Any]:
        case_id, z = self.index[position]
        image_volume, label_volume = self._case_arrays(case_id)

        image = torch.from_numpy(stack_context(image_volume, z, self.context_slices).astype(np.float32))
        label = torch.from_numpy(np.asarray(label_volume[z], dtype=np.int64))
        if self.augment is not None:
            image, label = augment_sample(image, label, self.augment, self._augment_generator())

        return {"image": image, "label": label, "task": self.task, "case": case_id, "slice": z}

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps and generators are per process; workers reopen them instead of copying arrays.
        state = self.__dict__.copy()
        state["_arrays"] = {}
        state["_generator"] = None
        state["_generator_pid"] = None
        return state

    def _case_arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id not in self._arrays:
            self._arrays[case_id] = self.cache.load_arrays(self.task, case_id)
        return self._arrays[case_id]

    def _augment_generator(self) -> torch.Generator:
        # A forked worker inherits the parent's generator; the pid check gives it its own.
        if self._generator is None or self._generator_pid != os.getpid():
            worker = get_worker_info()
            seed = worker.seed if worker is not None else self.seed
            self._generator = torch.Generator().manual_seed(int(seed) % (2**63))
            self._generator_pid = os.getpid()
        return self._generator
