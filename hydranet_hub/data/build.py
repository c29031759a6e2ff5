"""Building and updating a slice cache from MSD task folders."""

import logging
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import os_error_naming
from ._optional import require
from .cache import SliceCache
from .config import TaskConfig
from .errors import CacheError, DatasetError
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    build_lock,
    case_file_names,
    read_manifest,
    remove_case_files,
    remove_temporary_files,
    save_array_atomic,
    settings_digest,
    stable_seed,
    write_json_atomic,
)
from .msd import MSDCase, MSDTask, read_msd_task
from .preprocess import preprocess_case

_logger = logging.getLogger(__name__)

IMAGE_DTYPES = ("float16", "float32")

# Finished entries are flushed to the manifest at most this often; a kill loses at most this
# much finished work, which the next build redoes.
_MANIFEST_FLUSH_INTERVAL_S = 2.0


@dataclass(frozen=True)
class _CaseJob:
    """Everything a worker process needs to cache one case."""

    task: str
    config: TaskConfig
    case: MSDCase
    num_modalities: int
    split: str
    source: dict[str, Any]
    cache_dir: Path
    slice_size: tuple[int, int]
    image_dtype: str


def build_slice_cache(
    tasks: Sequence[TaskConfig],
    cache_dir: Path | str,
    slice_size: tuple[int, int] = (256, 256),
    context_slices: int = 1,
    val_fraction: float = 0.2,
    seed: int = 0,
    num_workers: int = 0,
    skip_empty_fraction: float = 0.0,
    image_dtype: str = "float16",
) -> SliceCache:
    """Build, resume or update a slice cache for MSD tasks.

    Each volume is loaded once, reoriented to RAS+, normalised, cut into axial slices and resized
    in-plane (bilinear for images, nearest for labels), then stored per case as .npy arrays.
    Cases already cached with the same settings and unchanged source files (size and mtime) are
    skipped, so a rerun after an interruption only processes what is missing. What triggers work:

    - slice_size or image_dtype changed: every task is rebuilt.
    - a task's `TaskConfig` changed (modalities, window, labels...): that task is rebuilt.
    - a source file changed or a case was added: that case is rebuilt.
    - val_fraction, seed, context_slices or skip_empty_fraction changed: only the manifest is
      updated, because these settings act when slices are read.

    Concurrent calls on the same folder wait for each other on a file lock (POSIX systems only).
    So every DDP rank may call this, and later ranks find the cache complete.

    Args:
        tasks: Task settings, e.g. from `load_task_configs` or `msd_task_config`.
        cache_dir: Output folder; created if missing. Tasks cached earlier and not listed now
            are kept as long as slice_size and image_dtype are unchanged.
        slice_size: In-plane (height, width) of cached slices in pixels.
        context_slices: Default 2.5D neighbours k per side read by `SliceDataset` (stacked at
            load time, so it does not change the arrays).
        val_fraction: Share of each task's cases held out for validation, split by case.
        seed: Seed for the case split and the empty-slice subsampling.
        num_workers: Worker processes; 0 processes cases in this process. Each worker holds one
            whole volume as float32 in memory (about 1 GB for a 512x512x900 CT).
        skip_empty_fraction: Share (0 to 1) of label-free slices per case left out of the
            training slice index; validation always keeps every slice.
        image_dtype: "float16" (half the disk space; values within [-5, 5] keep about 3 decimal
            digits) or "float32".

    Returns:
        The opened cache.

    Raises:
        DatasetError: If a task folder or case is invalid; finished cases stay cached.
        ValueError: If an argument is out of range.
    """
    _check_arguments(tasks, slice_size, context_slices, val_fraction, num_workers, skip_empty_fraction, image_dtype)
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise os_error_naming(
            error,
            f"Could not create the slice cache folder {cache_dir} ({error}). Choose a cache folder "
            "on a writable disk, under folders that exist or can be created.",
        ) from error
    slice_size = (int(slice_size[0]), int(slice_size[1]))
    settings = {"format_version": FORMAT_VERSION, "slice_size": list(slice_size), "image_dtype": image_dtype}

    with build_lock(cache_dir):
        remove_temporary_files(cache_dir)
        manifest, stale = _start_manifest(cache_dir, settings)
        manifest["split"] = {"val_fraction": float(val_fraction), "seed": int(seed)}
        manifest["sampling"] = {"context_slices": int(context_slices), "skip_empty_fraction": float(skip_empty_fraction)}

        jobs: list[_CaseJob] = []
        for config in tasks:
            msd_task = read_msd_task(config.root)
            _check_config_against_task(config, msd_task)
            jobs.extend(_plan_task(manifest, config, msd_task, cache_dir, slice_size, image_dtype, stale))

        # Untrusted entries leave the manifest before their arrays are deleted or overwritten.
        write_json_atomic(cache_dir / MANIFEST_NAME, manifest)
        for entry in stale:
            remove_case_files(cache_dir, entry)

        _logger.info("Slice cache %s: %d case(s) to process", cache_dir, len(jobs))
        _run_jobs(jobs, manifest, cache_dir, num_workers)
        _warn_background_only(manifest, [config.name for config in tasks])
    return SliceCache.open(cache_dir)


def _check_arguments(
    tasks: Sequence[TaskConfig],
    slice_size: tuple[int, int],
    context_slices: int,
    val_fraction: float,
    num_workers: int,
    skip_empty_fraction: float,
    image_dtype: str,
) -> None:
    names = [config.name for config in tasks]
    if not names:
        raise ValueError("tasks is empty; pass at least one TaskConfig.")
    if len(set(names)) != len(names):
        raise ValueError(f"Task names {names} repeat; give every TaskConfig a distinct name.")
    if len(slice_size) != 2 or min(int(size) for size in slice_size) < 1:
        raise ValueError(f"slice_size={slice_size!r} is invalid; expected (height, width) in pixels, e.g. (256, 256).")
    if context_slices < 0:
        raise ValueError(f"context_slices={context_slices} is invalid; expected 0 or more.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} is invalid; expected 0 <= val_fraction < 1.")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers} is invalid; expected 0 or more.")
    if not 0.0 <= skip_empty_fraction <= 1.0:
        raise ValueError(f"skip_empty_fraction={skip_empty_fraction} is invalid; expected a value in [0, 1].")
    if image_dtype not in IMAGE_DTYPES:
        raise ValueError(f"image_dtype={image_dtype!r} is invalid; expected one of {IMAGE_DTYPES}.")


def _check_config_against_task(config: TaskConfig, msd_task: MSDTask) -> None:
    source = msd_task.root / "dataset.json"
    if config.labels != msd_task.labels:
        raise DatasetError(
            f"Task {config.name}: labels {config.labels} differ from those in {source} {msd_task.labels}; "
            "rebuild the config with msd_task_config."
        )
    out_of_range = [index for index in config.modalities if index >= len(msd_task.modalities)]
    if out_of_range:
        raise DatasetError(
            f"Task {config.name}: modality indices {out_of_range} do not exist; {source} declares "
            f"{len(msd_task.modalities)} modalities {msd_task.modalities}."
        )


def _start_manifest(cache_dir: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load the previous manifest if its settings match, otherwise start a new one.

    Returns:
        The manifest to update and the case entries it no longer trusts, whose arrays the caller
        deletes once the new manifest is written.
    """
    digest = settings_digest(settings)
    fresh = {"format_version": FORMAT_VERSION, "settings": settings, "settings_hash": digest, "tasks": {}}
    if not (cache_dir / MANIFEST_NAME).exists():
        return fresh, []

    try:
        previous = read_manifest(cache_dir)
    except CacheError as error:
        _logger.warning("Ignoring the previous manifest and rebuilding: %s", error)
        return fresh, []

    if previous["settings_hash"] != digest:
        _logger.info("Cache settings changed from %s to %s; rebuilding every task", previous["settings"], settings)
        stale = [entry for task_entry in previous["tasks"].values() for entry in task_entry.get("cases", {}).values()]
        return fresh, stale
    return previous, []


def _plan_task(
    manifest: dict[str, Any],
    config: TaskConfig,
    msd_task: MSDTask,
    cache_dir: Path,
    slice_size: tuple[int, int],
    image_dtype: str,
    stale: list[dict[str, Any]],
) -> list[_CaseJob]:
    """Update the manifest entry of one task and return the cases that need processing.

    Entries the manifest stops trusting are appended to `stale`.
    """
    task_hash = settings_digest({"settings": manifest["settings_hash"], "config": config.cache_key()})
    previous = manifest["tasks"].get(config.name)
    if previous is not None and previous.get("config_hash") != task_hash:
        _logger.info("Task %s settings changed; rebuilding its cases", config.name)
        stale.extend(previous.get("cases", {}).values())
        previous = None
    previous_cases = {} if previous is None else previous.get("cases", {})

    case_ids = [case.case_id for case in msd_task.cases]
    splits = _assign_splits(case_ids, manifest["split"]["val_fraction"], manifest["split"]["seed"], config.name)

    kept: dict[str, Any] = {}
    jobs = []
    for case in msd_task.cases:
        source = _source_stats(msd_task.root, case)
        entry = previous_cases.get(case.case_id)
        if entry is not None and entry.get("source") == source and _arrays_intact(cache_dir, entry):
            kept[case.case_id] = {**entry, "split": splits[case.case_id]}
            continue
        jobs.append(_CaseJob(
            task=config.name,
            config=config,
            case=case,
            num_modalities=len(msd_task.modalities),
            split=splits[case.case_id],
            source=source,
            cache_dir=cache_dir,
            slice_size=slice_size,
            image_dtype=image_dtype,
        ))

    stale.extend(entry for case_id, entry in previous_cases.items() if case_id not in kept)

    manifest["tasks"][config.name] = {
        "config": config.cache_key(),
        "config_hash": task_hash,
        "modality_kind": config.modality_kind,
        "modalities": list(config.modalities),
        "num_classes": config.num_classes,
        "class_names": list(config.class_names),
        "case_ids": sorted(case_ids),
        "complete": not jobs,
        "cases": kept,
    }
    return jobs


def _assign_splits(case_ids: list[str], val_fraction: float, seed: int, task: str) -> dict[str, str]:
    """Split cases into train and val, deterministically from seed and task name, by case."""
    ordered = sorted(case_ids)
    val_count = int(round(val_fraction * len(ordered)))
    if val_fraction > 0 and len(ordered) >= 2:
        val_count = min(max(val_count, 1), len(ordered) - 1)
    elif len(ordered) < 2:
        val_count = 0
        if val_fraction > 0:
            _logger.warning("Task %s has a single case; it goes to the train split and val stays empty", task)

    rng = np.random.default_rng([seed, *stable_seed(task)])
    order = rng.permutation(len(ordered))
    val_ids = {ordered[position] for position in order[:val_count]}
    return {case_id: "val" if case_id in val_ids else "train" for case_id in ordered}


def _source_stats(root: Path, case: MSDCase) -> dict[str, Any]:
    stats = {}
    for key, path in (("image", case.image), ("label", case.label)):
        status = path.stat()
        stats[key] = {"path": path.relative_to(root).as_posix(), "size": status.st_size, "mtime_ns": status.st_mtime_ns}
    return stats


def _arrays_intact(cache_dir: Path, entry: dict[str, Any]) -> bool:
    try:
        image = np.load(cache_dir / entry["image_file"], mmap_mode="r")
        label = np.load(cache_dir / entry["label_file"], mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return False
    return image.shape[0] == label.shape[0] == entry.get("num_slices")


def _run_jobs(jobs: list[_CaseJob], manifest: dict[str, Any], cache_dir: Path, num_workers: int) -> None:
    """Process jobs serially or in a pool, recording each finished case in the manifest."""
    manifest_path = cache_dir / MANIFEST_NAME
    pending: dict[str, int] = {}
    for job in jobs:
        pending[job.task] = pending.get(job.task, 0) + 1
    last_flush = time.monotonic()

    tqdm = require("tqdm", "the slice cache progress bar").tqdm
    progress = tqdm(total=len(jobs), desc="Caching slices", unit="case", disable=not jobs)
    try:
        for task, case_id, entry in _iterate_results(jobs, num_workers):
            task_entry = manifest["tasks"][task]
            task_entry["cases"][case_id] = entry
            pending[task] -= 1
            task_entry["complete"] = pending[task] == 0
            progress.update(1)

            if time.monotonic() - last_flush >= _MANIFEST_FLUSH_INTERVAL_S:
                write_json_atomic(manifest_path, manifest)
                last_flush = time.monotonic()
    except BaseException:
        progress.close()
        # Record the cases finished so far, but let the original error through: after a disk
        # filled up, this write fails too, and its error would hide the cause.
        try:
            write_json_atomic(manifest_path, manifest)
        except OSError as error:
            _logger.warning("Could not record the finished cases in %s: %s", manifest_path, error)
        raise
    progress.close()
    write_json_atomic(manifest_path, manifest)


def _warn_background_only(manifest: dict[str, Any], task_names: list[str]) -> None:
    # A single case with only background is normal (a healthy scan); a whole task without any
    # foreground voxel usually means the labels were not copied or were overwritten.
    for name in task_names:
        cases = manifest["tasks"][name]["cases"]
        if cases and not any(entry["foreground_slices"] for entry in cases.values()):
            _logger.warning(
                "%s: none of its %d cached case(s) has a label value other than 0 (background). "
                "Training teaches its decoder nothing but background; check the files in labelsTr/.",
                name, len(cases),
            )


def _iterate_results(jobs: list[_CaseJob], num_workers: int):
    if num_workers == 0 or len(jobs) <= 1:
        for job in jobs:
            yield _process_job(job)
        return

    context = multiprocessing.get_context()
    with context.Pool(min(num_workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_process_job, jobs)


def _init_worker() -> None:
    import torch

    # Workers run side by side; one intra-op thread each avoids oversubscribing the cores.
    torch.set_num_threads(1)


def _process_job(job: _CaseJob) -> tuple[str, str, dict[str, Any]]:
    processed = preprocess_case(job.config, job.case, job.num_modalities, job.slice_size)
    image_file, label_file = case_file_names(job.task, job.case.case_id)

    # Both arrays are in place before the entry that points at them is returned.
    save_array_atomic(job.cache_dir / image_file, processed.image.astype(job.image_dtype))
    save_array_atomic(job.cache_dir / label_file, processed.label)

    entry = {
        "split": job.split,
        "num_slices": int(processed.image.shape[0]),
        "channels": int(processed.image.shape[1]),
        "image_file": image_file,
        "label_file": label_file,
        "foreground_slices": list(processed.foreground_slices),
        "spacing_mm": list(processed.spacing_mm),
        "source_shape": list(processed.source_shape),
        "source": job.source,
    }
    return job.task, job.case.case_id, entry
