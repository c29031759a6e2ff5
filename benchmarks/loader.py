"""Slice-cache loading with augmentation, per worker, against the trainer's consumption.

The loader reads the embedded demo tasks from a slice cache built at 256x256 pixels, through the
trainer's own path (`make_train_loader`: step-indexed sampler, per-sample seeded augmentation,
collation) in this process, which is the work one DataLoader worker process does. The trainer
runs its step at the same slice size in float32 and under bf16 autocast.

How many workers a GPU needs is an estimate: the counted FLOPs of one training slice at 256x256
and an assumed share of a GPU's bf16 matrix rate, divided by one worker's measured rate.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.records import Figure, Target
from benchmarks.timing import paired_speedup, primary_clock, throughput, time_interleaved
from benchmarks.train_step import StepSettings, build_trainer_step, count_step_flops, random_batch

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderSettings:
    """Size of the loader benchmark.

    Attributes:
        slice_size_px: Height and width of cached slices in pixels.
        loader_batch_size: Slices per task per loader batch.
        loader_batches_per_repetition: Loader steps (one batch of every demo task) per timed repetition.
        trainer_tasks: Tasks of the trainer step that consumes slices.
        trainer_batch_size_per_task: Slices per task of that step.
        rounds: Timed interleaved rounds.
        gpu_bf16_tflops: Dense bf16 matrix rate of the GPU in the worker estimate, in TFLOP/s.
        gpu_utilisations: Shares of that rate a training step is assumed to reach.
    """

    slice_size_px: int = 256
    loader_batch_size: int = 2
    loader_batches_per_repetition: int = 4
    trainer_tasks: int = 7
    trainer_batch_size_per_task: int = 1
    rounds: int = 3
    # NOTE: about 790 TFLOP/s is the rate of a large bf16 matrix product reported for an H200; the
    # shares below are assumptions, not measurements of this model on a GPU.
    gpu_bf16_tflops: float = 790.0
    gpu_utilisations: tuple[float, ...] = (0.1, 0.3)


def _demo_loader(cache_dir: Path, settings: LoaderSettings) -> tuple[Any, int]:
    """Build the cache of the demo tasks and their training batches; return (batches, slices per step)."""
    from hydranet_hub import data
    from hydranet_hub.demo import DEMO_PRETRAIN_TASKS, demo_data_dir
    from hydranet_hub.training.data_feed import TaskBatches, make_train_loader

    task_configs = [data.msd_task_config(demo_data_dir() / name) for name in DEMO_PRETRAIN_TASKS]
    size = settings.slice_size_px
    cache = data.build_slice_cache(task_configs, cache_dir, slice_size=(size, size))

    loaders = {}
    for task_config in task_configs:
        dataset = data.SliceDataset(cache, task_config.name, split="train")
        loaders[task_config.name] = make_train_loader(
            dataset, data.AugmentConfig(), task_config.name, settings.loader_batch_size, seed=0, rank=0,
            world_size=1, start_step=0, num_workers=0, pin_memory=False,
        )
    return TaskBatches(loaders), len(loaders) * settings.loader_batch_size


def run(settings: LoaderSettings) -> dict[str, Any]:
    """Time the slice-cache loader against the trainer step at the same slice size.

    Returns:
        {"settings", "timings", "throughput_slices_per_s", "gpu_estimate", "figures"}.
    """
    with tempfile.TemporaryDirectory(prefix="hydranet-bench-cache-") as cache_dir:
        batches, slices_per_loader_step = _demo_loader(Path(cache_dir), settings)
        step_settings = StepSettings(slice_size_px=settings.slice_size_px, tasks=settings.trainer_tasks,
                                     batch_size_per_task=settings.trainer_batch_size_per_task)
        trainer_batch = random_batch(step_settings)
        trainer_fp32 = build_trainer_step(step_settings, "none")
        trainer_bf16 = build_trainer_step(step_settings, "bf16")
        flops_per_slice = count_step_flops(trainer_fp32, trainer_batch) / step_settings.slices_per_step

        def load() -> None:
            for _ in range(settings.loader_batches_per_repetition):
                next(batches)

        cases = {
            "loader_per_worker": load,
            "trainer_fp32": lambda: trainer_fp32(trainer_batch),
            "trainer_bf16": lambda: trainer_bf16(trainer_batch),
        }
        _logger.info("Timing %d rounds of %s", settings.rounds, ", ".join(cases))
        timings = time_interleaved(cases, settings.rounds)

    work = {
        "loader_per_worker": float(slices_per_loader_step * settings.loader_batches_per_repetition),
        "trainer_fp32": float(step_settings.slices_per_step),
        "trainer_bf16": float(step_settings.slices_per_step),
    }
    clock = primary_clock(torch.get_num_threads())
    rates = {name: throughput(timings[name], work[name], clock) for name in timings}

    def ratio(trainer: str) -> float:
        return paired_speedup(timings["loader_per_worker"], timings[trainer], work["loader_per_worker"], work[trainer],
                              clock)

    gpu_estimate = []
    for share in settings.gpu_utilisations:
        gpu_slices_per_s = settings.gpu_bf16_tflops * 1e12 * share / flops_per_slice
        gpu_estimate.append({
            "assumed_share_of_bf16_rate": share,
            "gpu_slices_per_s": gpu_slices_per_s,
            "workers_needed": math.ceil(gpu_slices_per_s / rates["loader_per_worker"]),
        })

    size = f"{settings.slice_size_px}x{settings.slice_size_px}"
    figures = [
        Figure("loader.vs_trainer_fp32", f"slice-cache loader with augmentation, one worker, {size}",
               "CPU trainer step, float32 (the CPU default)", ratio("trainer_fp32"), "x", Target(">=", 5.0),
               f"{rates['loader_per_worker']:.0f} vs {rates['trainer_fp32']:.2f} slices/s ({clock} time)"),
        Figure("loader.vs_trainer_bf16", f"slice-cache loader with augmentation, one worker, {size}",
               "CPU trainer step, bf16 autocast", ratio("trainer_bf16"), "x", Target(">=", 5.0),
               f"{rates['loader_per_worker']:.0f} vs {rates['trainer_bf16']:.2f} slices/s ({clock} time)"),
    ]
    for estimate in gpu_estimate:
        figures.append(Figure(
            f"loader.gpu_workers_at_{estimate['assumed_share_of_bf16_rate']:g}",
            "loader workers one GPU needs (estimate)",
            f"GPU at {estimate['assumed_share_of_bf16_rate']:.0%} of {settings.gpu_bf16_tflops:g} TFLOP/s bf16",
            float(estimate["workers_needed"]), "workers", None,
            f"{estimate['gpu_slices_per_s']:.0f} slices/s at {flops_per_slice / 1e9:.1f} GFLOP per slice",
        ))
    return {
        "settings": {**settings.__dict__, "gpu_utilisations": list(settings.gpu_utilisations)},
        "clock": clock,
        "timings": {name: timing.to_dict() for name, timing in timings.items()},
        "throughput_slices_per_s": rates,
        "flops_forward_backward_per_slice": flops_per_slice,
        "gpu_estimate": gpu_estimate,
        "figures": [figure.to_dict() for figure in figures],
    }
