"""From a PretrainConfig to task configs, a slice cache and per-task datasets (via hydranet_hub.data)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydranet_hub.training.config import PretrainConfig
from hydranet_hub.training.distributed import DistContext, barrier

_logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class TaskData:
    """Datasets and metadata of one task."""

    name: str
    num_classes: int
    class_names: Mapping[int, str]
    train: Any  # hydranet_hub.data.SliceDataset, without augmentation of its own
    augment: Any | None  # hydranet_hub.data.AugmentConfig applied per sample by the loader
    val: Any | None  # None when the task has no validation cases
    num_train_cases: int
    config: Any  # hydranet_hub.data.TaskConfig


def _task_folders_under(data_root: Path) -> list[Path]:
    folders = sorted(path for path in data_root.iterdir() if (path / DATASET_JSON).is_file()
                     and not path.name.startswith("."))
    if not folders:
        raise ValueError(
            f"--data-root {data_root} contains no task folder with a {DATASET_JSON}; point it at "
            "the folder that holds TaskXX_Name/ folders, or use --demo."
        )
    return folders


def _resolve_task_folder(task: str, data_root: Path | None) -> Path:
    candidates = [Path(task).expanduser()]
    if data_root is not None:
        candidates.insert(0, data_root / task)
    for candidate in candidates:
        if (candidate / DATASET_JSON).is_file():
            return candidate

    where = f"under --data-root {data_root} or " if data_root is not None else ""
    raise ValueError(
        f"--task {task!r} not found {where}as a path: expected a folder with a {DATASET_JSON}. "
        "Give a folder name under --data-root or a path to an MSD task folder."
    )


def resolve_task_configs(config: PretrainConfig) -> list[Any]:
    """Build the TaskConfig of every task the run trains on.

    Sources, combined in this order: --demo (the embedded demo tasks), --task (names under
    --data-root, or paths), every task folder under --data-root when no --task is given, and
    --tasks-config (a YAML/JSON task list). --label-mode applies to the folders found here;
    tasks from --tasks-config keep their own label mode.

    Returns:
        TaskConfigs with unique names.

    Raises:
        ValueError: When no task is selected, a folder is missing, or two tasks share a name.
    """
    from hydranet_hub import data

    data_root = Path(config.data_root).expanduser() if config.data_root else None
    if data_root is not None and not data_root.is_dir():
        raise ValueError(f"--data-root {data_root} is not a folder; pass the folder of MSD TaskXX_Name folders.")

    folders: list[Path] = []
    if config.demo:
        from hydranet_hub.demo import DEMO_PRETRAIN_TASKS, demo_data_dir

        folders += [demo_data_dir() / name for name in DEMO_PRETRAIN_TASKS]
    if config.tasks:
        folders += [_resolve_task_folder(task, data_root) for task in config.tasks]
    elif data_root is not None:
        folders += _task_folders_under(data_root)

    task_configs = [
        data.msd_task_config(folder, label_mode=config.label_mode, modalities=config.modalities)
        for folder in folders
    ]
    if config.tasks_config:
        task_configs += list(data.load_task_configs(config.tasks_config))

    if not task_configs:
        raise ValueError(
            "No task selected: pass --data-root (folder of MSD task folders), --task, "
            "--tasks-config, or --demo for the embedded demo dataset."
        )
    names = [task.name for task in task_configs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Tasks {duplicates} are selected twice; list each task once.")

    # One shared encoder means one input channel count for every task.
    channels = {task.name: task.in_channels(config.context_slices) for task in task_configs}
    if len(set(channels.values())) > 1:
        raise ValueError(
            f"Tasks need different input channel counts {channels} (modalities x (2 x "
            "context_slices + 1)); give every task the same number of modalities, e.g. --modalities 0."
        )
    return task_configs


def open_task_data(
    config: PretrainConfig, context: DistContext, split_seed: int | None = None
) -> dict[str, TaskData]:
    """Resolve tasks, build (rank 0) or open (other ranks) the slice cache, and build datasets.

    Args:
        config: Run settings (tasks, slice size, 2.5D context, validation fraction, seed).
        context: Process context; rank 0 builds the cache while the others wait.
        split_seed: Seed of the train/validation case split; None uses `config.seed`. A fixed
            split seed keeps the validation cases the same when `config.seed` changes.

    Returns:
        Task name -> TaskData, in the order tasks were selected.

    Raises:
        ValueError: For invalid task selections or a task without training slices.
    """
    from hydranet_hub import data

    task_configs = resolve_task_configs(config)
    cache_dir = config.cache_path

    if context.is_main:
        cache = data.build_slice_cache(
            task_configs,
            cache_dir,
            slice_size=config.slice_size,
            context_slices=config.context_slices,
            val_fraction=config.val_fraction,
            seed=config.seed if split_seed is None else split_seed,
            num_workers=config.num_workers,
        )
    barrier(context)
    # NOTE: across nodes, cache_dir must be on a file system that every node reads.
    if not context.is_main:
        cache = data.SliceCache.open(cache_dir)

    augment = data.AugmentConfig() if config.augment else None
    result: dict[str, TaskData] = {}
    for task_config in task_configs:
        name = task_config.name
        if not cache.cases(name, "train"):
            raise ValueError(
                f"Task {name!r} has no training cases in cache {cache_dir}; it needs at least 2 cases "
                f"with val_fraction={config.val_fraction}, or lower --val-fraction."
            )
        # The loader augments each sample with a seed of its own, which keeps resumed runs exact.
        train = data.SliceDataset(cache, name, split="train", augment=None, max_cases=config.max_cases,
                                  context_slices=config.context_slices, seed=config.seed)

        val = None
        if cache.cases(name, "val"):
            val = data.SliceDataset(cache, name, split="val", augment=None, context_slices=config.context_slices)
        else:
            _logger.warning("Task %s has no validation cases (val_fraction=%s); it gets no Dice scores",
                            name, config.val_fraction)

        result[name] = TaskData(
            name=name,
            num_classes=int(task_config.num_classes),
            class_names=dict(enumerate(task_config.class_names)),
            train=train,
            augment=augment,
            val=val,
            num_train_cases=len(train.cases),
            config=task_config,
        )
    return result
