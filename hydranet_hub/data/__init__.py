"""Medical Segmentation Decathlon data pipeline: reading, normalisation, slice cache, datasets.

Typical use::

    from hydranet_hub.data import load_task_configs, build_slice_cache, make_task_loaders

    tasks = load_task_configs("tasks.yaml")
    cache = build_slice_cache(tasks, "cache/", slice_size=(256, 256), num_workers=4)
    loader = make_task_loaders(cache, [task.name for task in tasks], batch_size_per_task=8)
    for step, batches in zip(range(1000), loader):
        ...  # batches["Task02_Heart"]["image"] is [8, 3, 256, 256]

Reading NIfTI files needs the `train` extra (`pip install hydranet-hub[train]`); nibabel is only
imported when a file is read.
"""

from .augment import AugmentConfig, augment_sample
from .build import build_slice_cache
from .cache import CachedCase, CachedTask, SliceCache
from .config import (
    DEFAULT_CT_WINDOWS_HU,
    FALLBACK_CT_WINDOW_HU,
    TaskConfig,
    default_window_hu,
    load_task_configs,
    msd_task_config,
)
from .dataset import SliceDataset, select_case_budget
from .errors import CacheError, DatasetError
from .loaders import InfiniteShardedSampler, MultiTaskLoader, make_task_loaders
from .msd import MSDCase, MSDTask, read_msd_task
from .normalize import ZSCORE_CLIP, normalize_ct, normalize_image, normalize_mri
from .preprocess import PreprocessedCase, preprocess_case
from .slices import stack_context, to_axial_slices
from .volume import CaseVolume, check_msd_task, load_case

__all__ = [
    "AugmentConfig",
    "CacheError",
    "CachedCase",
    "CachedTask",
    "CaseVolume",
    "DEFAULT_CT_WINDOWS_HU",
    "DatasetError",
    "FALLBACK_CT_WINDOW_HU",
    "InfiniteShardedSampler",
    "MSDCase",
    "MSDTask",
    "MultiTaskLoader",
    "PreprocessedCase",
    "SliceCache",
    "SliceDataset",
    "TaskConfig",
    "ZSCORE_CLIP",
    "augment_sample",
    "build_slice_cache",
    "check_msd_task",
    "default_window_hu",
    "load_case",
    "load_task_configs",
    "make_task_loaders",
    "msd_task_config",
    "normalize_ct",
    "normalize_image",
    "normalize_mri",
    "preprocess_case",
    "read_msd_task",
    "select_case_budget",
    "stack_context",
    "to_axial_slices",
]
