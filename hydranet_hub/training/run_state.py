"""The checkpoint of a training run: what it contains, and how a resumed run reads it back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydranet_hub.training import checkpoint as ckpt
from hydranet_hub.training.distributed import all_gather_objects
from hydranet_hub.training.rng import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from hydranet_hub.training.run import TrainingRun

_logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1


def save_run_state(run: "TrainingRun", wall_time_s: float) -> Path | None:
    """Write a checkpoint of the run after `run.step` steps and prune old ones.

    Every rank must call this, because each rank's random states are gathered into the file.

    Returns:
        The checkpoint path on rank 0, None on other ranks.
    """
    rng_states = all_gather_objects(run.context, capture_rng_state())
    if not run.context.is_main:
        return None

    state = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": run.step,
        "config": run.run_settings(),
        "tasks": {name: task.num_classes for name, task in run.tasks.items()},
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_states,
        "data": {"sampler": "step-indexed", "seed": run.config.seed, "world_size": run.context.world_size,
                 "batch_size_per_task": run.config.batch_size_per_task, "next_step": run.step},
        "metrics": run.metrics,
        "wall_time_s": wall_time_s,
    }
    path = ckpt.checkpoint_path(run.output_dir, run.step)
    ckpt.save_checkpoint(path, state)
    ckpt.prune_checkpoints(run.output_dir, run.config.keep_checkpoints)
    return path


def load_resume_state(run: "TrainingRun") -> dict[str, Any]:
    """Read and check the checkpoint named by `run.config.resume`.

    Returns:
        The checkpoint's state.

    Raises:
        CheckpointError: When the checkpoint is missing or corrupted, has another format version,
            or was trained on other tasks or class counts.
    """
    path = ckpt.resolve_resume_path(run.output_dir, run.config.resume)
    state = ckpt.load_checkpoint(path)
    if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ckpt.CheckpointError(
            f"Checkpoint {path} has format_version {state.get('format_version')!r}; this version of "
            f"hydranet-hub reads {CHECKPOINT_FORMAT_VERSION}."
        )
    saved_tasks = dict(state["tasks"])
    current_tasks = {name: task.num_classes for name, task in run.tasks.items()}
    if saved_tasks != current_tasks:
        raise ckpt.CheckpointError(
            f"Checkpoint {path} was trained on tasks {saved_tasks} but this run selects "
            f"{current_tasks}; resume with the same tasks and --label-mode."
        )
    _warn_changed_settings(run, state["config"], path)
    _logger.info("Resuming from %s at step %d", path, state["step"])
    return state


def _warn_changed_settings(run: "TrainingRun", saved: Mapping[str, Any], path: Path) -> None:
    current = run.run_settings()
    for name in run.resume_checked_settings:
        if saved.get(name) != current.get(name):
            _logger.warning("Resuming %s with %s=%r (checkpoint has %r); the run will not match an "
                            "uninterrupted one", path, name, current.get(name), saved.get(name))


def restore_run_state(run: "TrainingRun", state: Mapping[str, Any]) -> None:
    """Load model, optimiser, schedule, grad scaler, metrics and this rank's random states."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.metrics = dict(state.get("metrics") or {})

    rng_states = state["rng"]
    if len(rng_states) == run.context.world_size:
        restore_rng_state(rng_states[run.context.rank])
    else:
        _logger.warning("Checkpoint has random states of %d ranks but the run has %d; using rank 0's",
                        len(rng_states), run.context.world_size)
        restore_rng_state(rng_states[0])
