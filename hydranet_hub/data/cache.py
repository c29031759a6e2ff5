"""Reading a slice cache: typed views of its manifest and memory-mapped case arrays.

Layout of a cache folder::

    manifest.json                      settings, splits and one entry per finished case
    <task>/<case_id>.image.npy         float16 or float32 [Z, C, H, W], normalised intensities
    <task>/<case_id>.label.npy         uint8 [Z, H, W], class indices

Build or update one with `build_slice_cache`; open an existing one with `SliceCache.open`.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CacheError
from .manifest import MANIFEST_NAME, read_manifest, stable_seed

_logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "all")


@dataclass(frozen=True)
class CachedCase:
    """One cached case.

    Attributes:
        case_id: The case id, e.g. "la_003".
        split: "train" or "val".
        num_slices: Axial slices Z.
        channels: Modalities C stored per slice.
        image_path: The [Z, C, H, W] image array.
        label_path: The [Z, H, W] uint8 label array.
        foreground_slices: Slices whose label has any non-background class.
        spacing_mm: Source voxel spacing (x, y, z) in mm, before in-plane resizing.
    """

    case_id: str
    split: str
    num_slices: int
    channels: int
    image_path: Path
    label_path: Path
    foreground_slices: tuple[int, ...]
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class CachedTask:
    """One cached task: its class layout and finished cases.

    Attributes:
        name: Task name.
        modality_kind: "CT" or "MRI".
        modalities: Modality indices stored as channels.
        num_classes: Output classes, background included.
        class_names: Class names by class index.
        complete: Whether every case of the task was cached.
        cases: Finished cases sorted by id.
    """

    name: str
    modality_kind: str
    modalities: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    complete: bool
    cases: tuple[CachedCase, ...]

    def case(self, case_id: str) -> CachedCase:
        """Return a cached case by id.

        Raises:
            KeyError: If the task has no cached case with this id.
        """
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(f"Case {case_id!r} is not cached for task {self.name}.")


@dataclass(frozen=True)
class SliceCache:
    """An opened, validated slice cache.

    Attributes:
        cache_dir: The cache folder.
        slice_size: In-plane (height, width) of every slice in pixels.
        image_dtype: "float16" or "float32".
        context_slices: Default 2.5D neighbours k on each side of a slice.
        val_fraction: Share of cases per task in the validation split.
        seed: Seed of the case split and of the empty-slice subsampling.
        skip_empty_fraction: Share of label-free slices left out of the training slice index.
        tasks: Cached tasks by name.
    """

    cache_dir: Path
    slice_size: tuple[int, int]
    image_dtype: str
    context_slices: int
    val_fraction: float
    seed: int
    skip_empty_fraction: float
    tasks: dict[str, CachedTask]

    @classmethod
    def open(cls, cache_dir: Path | str, allow_incomplete: bool = False) -> "SliceCache":
        """Open a cache folder and check every entry against its arrays.

        Args:
            cache_dir: Folder written by `build_slice_cache`.
            allow_incomplete: Accept tasks whose build was interrupted, exposing only finished cases.

        Returns:
            The opened cache.

        Raises:
            CacheError: If the manifest is missing or invalid, a task is incomplete (unless
                allowed) or an array file is missing or has the wrong shape or dtype.
        """
        cache_dir = Path(cache_dir)
        manifest = read_manifest(cache_dir)
        settings = manifest["settings"]
        slice_size = (int(settings["slice_size"][0]), int(settings["slice_size"][1]))

        tasks = {}
        for name, task_entry in manifest["tasks"].items():
            task = _parse_task(cache_dir, name, task_entry)
            if not task.complete and not allow_incomplete:
                raise CacheError(
                    f"Task {name} in {cache_dir / MANIFEST_NAME} is incomplete ({len(task.cases)} of "
                    f"{len(task_entry['case_ids'])} cases): its build was interrupted. Run build_slice_cache "
                    "again to finish it, or open with allow_incomplete=True."
                )
            for case in task.cases:
                _check_arrays(case, slice_size, settings["image_dtype"])
            tasks[name] = task

        return cls(
            cache_dir=cache_dir,
            slice_size=slice_size,
            image_dtype=str(settings["image_dtype"]),
            context_slices=int(manifest["sampling"]["context_slices"]),
            val_fraction=float(manifest["split"]["val_fraction"]),
            seed=int(manifest["split"]["seed"]),
            skip_empty_fraction=float(manifest["sampling"]["skip_empty_fraction"]),
            tasks=tasks,
        )

    def task(self, name: str) -> CachedTask:
        """Return a cached task by name.

        Raises:
            KeyError: If the cache has no such task; the message lists the cached ones.
        """
        if name not in self.tasks:
            raise KeyError(f"Task {name!r} is not in the cache at {self.cache_dir}; cached tasks: {sorted(self.tasks)}.")
        return self.tasks[name]

    def cases(self, task: str, split: str = "all") -> tuple[str, ...]:
        """List case ids of a task in a split ("train", "val" or "all"), sorted."""
        _check_split(split)
        return tuple(case.case_id for case in self.task(task).cases if split in ("all", case.split))

    def num_classes(self, task: str) -> int:
        """Output classes of a task, background included."""
        return self.task(task).num_classes

    def in_channels(self, task: str, context_slices: int | None = None) -> int:
        """Input channels of a task's 2.5D slices: modalities * (2k + 1)."""
        k = self.context_slices if context_slices is None else context_slices
        return len(self.task(task).modalities) * (2 * k + 1)

    def load_arrays(self, task: str, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Memory-map a case's arrays read-only: image [Z, C, H, W] and label [Z, H, W]."""
        case = self.task(task).case(case_id)
        return np.load(case.image_path, mmap_mode="r"), np.load(case.label_path, mmap_mode="r")

    def slice_index(self, task: str, split: str, case_ids: tuple[str, ...] | None = None) -> list[tuple[str, int]]:
        """List the (case_id, z) pairs a dataset of this split draws from.

        In the train split, a fixed, seeded `skip_empty_fraction` of each case's label-free slices
        is left out. Validation and "all" keep every slice, so metrics cover whole volumes.

        Args:
            task: Task name.
            split: "train", "val" or "all".
            case_ids: Restrict to these cases (e.g. a labelled-data budget); default all in the split.

        Returns:
            Pairs sorted by case id, then slice.
        """
        selected = self.cases(task, split) if case_ids is None else tuple(sorted(case_ids))
        index = []
        for case_id in selected:
            case = self.task(task).case(case_id)
            keep = np.arange(case.num_slices)
            if split == "train" and self.skip_empty_fraction > 0:
                keep = self._subsample_empty(task, case)
            index.extend((case_id, int(z)) for z in keep)
        return index

    def _subsample_empty(self, task: str, case: CachedCase) -> np.ndarray:
        is_empty = np.ones(case.num_slices, dtype=bool)
        is_empty[list(case.foreground_slices)] = False
        empty = np.flatnonzero(is_empty)

        drop_count = int(np.floor(self.skip_empty_fraction * len(empty)))
        rng = np.random.default_rng([self.seed, *stable_seed(task, case.case_id)])
        dropped = rng.choice(empty, size=drop_count, replace=False)
        return np.setdiff1d(np.arange(case.num_slices), dropped)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid; expected one of {SPLITS}.")


def _parse_task(cache_dir: Path, name: str, entry: dict[str, Any]) -> CachedTask:
    try:
        cases = tuple(
            CachedCase(
                case_id=case_id,
                split=str(case["split"]),
                num_slices=int(case["num_slices"]),
                channels=int(case["channels"]),
                image_path=cache_dir / case["image_file"],
                label_path=cache_dir / case["label_file"],
                foreground_slices=tuple(int(z) for z in case["foreground_slices"]),
                spacing_mm=tuple(float(value) for value in case["spacing_mm"]),
            )
            for case_id, case in sorted(entry["cases"].items())
        )
        return CachedTask(
            name=name,
            modality_kind=str(entry["modality_kind"]),
            modalities=tuple(int(index) for index in entry["modalities"]),
            num_classes=int(entry["num_classes"]),
            class_names=tuple(str(class_name) for class_name in entry["class_names"]),
            complete=bool(entry["complete"]),
            cases=cases,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CacheError(
            f"Task {name} in {cache_dir / MANIFEST_NAME} has a malformed entry ({error!r}); rebuild the cache."
        ) from error


def _check_arrays(case: CachedCase, slice_size: tuple[int, int], image_dtype: str) -> None:
    expected = {
        case.image_path: ((case.num_slices, case.channels, *slice_size), np.dtype(image_dtype)),
        case.label_path: ((case.num_slices, *slice_size), np.dtype(np.uint8)),
    }
    for path, (shape, dtype) in expected.items():
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise CacheError(f"Cached array {path} is missing or unreadable ({error}); rebuild the cache.") from error
        if array.shape != shape or array.dtype != dtype:
            raise CacheError(
                f"Cached array {path} has shape {array.shape} and dtype {array.dtype}, expected {shape} "
                f"and {dtype}; rebuild the cache."
            )
