"""The training engine shared by pretraining and fine-tuning: data feed, steps, validation, checkpoints, resume.

`TrainingRun` trains a model that maps {task: images} to {task: logits} on the tasks that a
PretrainConfig selects. `hydranet_hub.training.loop` (HydraNet pretraining) and
`hydranet_hub.finetune` (one smp model on one task) subclass it and override its hooks:
`open_data`, `create_model`, `create_optimizer`, `on_step_start`, `on_gradients`,
`run_settings` and `finish`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from hydranet_hub.training import checkpoint as ckpt
from hydranet_hub.training import run_state
from hydranet_hub.training.config import PretrainConfig
from hydranet_hub.training.data_feed import TaskBatches, make_train_loader, make_val_loader
from hydranet_hub.training.distributed import (
    DistContext, all_reduce_sum, broadcast_object, cleanup_distributed, init_distributed,
)
from hydranet_hub.training.evaluate import validate
from hydranet_hub.training.losses import MultiTaskLoss
from hydranet_hub.training.optim import build_optimizer, build_scheduler
from hydranet_hub.training.precision import autocast_factory, make_grad_scaler, resolve_amp
from hydranet_hub.training.previews import preview_sample, save_previews
from hydranet_hub.training.rng import seed_everything
from hydranet_hub.training.run_lock import RunLock, RunLockedError
from hydranet_hub.training.run_log import RunLogger
from hydranet_hub.training.task_data import TaskData, open_task_data

_logger = logging.getLogger(__name__)

RUN_CONFIG_NAME = "run_config.json"


@dataclass(frozen=True)
class RunOutcome:
    """Outcome of one `TrainingRun.execute` call.

    Attributes:
        output_dir: Run folder.
        step: Optimisation steps finished, counting steps of resumed runs.
        finished: True when `step` reached `config.steps`.
        metrics: Last validation: task -> {"dice/<class>": value, "dice/mean": value}.
        checkpoint_path: The last checkpoint written (None on ranks other than 0).
        wall_time_s: Training time in seconds, summed over resumed runs.
        world_size: Number of processes that trained.
        model: The trained model (this rank's copy, on the training device).
        artifacts: What `TrainingRun.finish` returned (rank 0, finished runs), else None.
    """

    output_dir: Path
    step: int
    finished: bool
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    checkpoint_path: Path | None = None
    wall_time_s: float = 0.0
    world_size: int = 1
    model: torch.nn.Module | None = None
    artifacts: Any | None = None


def run_exclusive(config: PretrainConfig, make_run: Callable[[DistContext], "TrainingRun"]) -> RunOutcome:
    """Join the process group, lock the output folder, and execute the run that `make_run` builds.

    Args:
        config: Settings of the run; `device`, `output_dir` and `resume` are read here.
        make_run: Builds the run for this process's context.

    Returns:
        The outcome of `TrainingRun.execute`.

    Raises:
        RunLockedError: When another live run holds the output folder.
        OSError: When the output folder cannot be created.
        ValueError: When the output folder has checkpoints and `resume` is not set.
    """
    context = init_distributed(config.device)
    lock = RunLock(config.output_dir)
    try:
        # Rank 0 checks the folder and every rank raises the same error, so none waits forever.
        claim_error = _claim_output_dir(config, lock) if context.is_main else None
        claim_error = broadcast_object(context, claim_error)
        if claim_error is not None:
            error_type = {"locked": RunLockedError, "unwritable": OSError}.get(claim_error[0], ValueError)
            raise error_type(claim_error[1])
        return make_run(context).execute()
    finally:
        lock.release()
        cleanup_distributed(context)


def _claim_output_dir(config: PretrainConfig, lock: RunLock) -> tuple[str, str] | None:
    """Lock the run folder; return (kind, message) of the problem, or None when the run may start."""
    try:
        lock.acquire()
    except RunLockedError as error:
        return "locked", str(error)
    except OSError as error:
        return "unwritable", str(error)

    existing = ckpt.list_checkpoints(config.output_dir)
    if existing and not config.resume:
        lock.release()
        return "exists", (
            f"Output folder {config.output_dir} already has checkpoints up to step {existing[-1][0]}. Pass "
            "--resume to continue that run, or choose another --output-dir for a new one."
        )
    return None


class TrainingRun:
    """State of one training process between setup and the end of the run.

    Subclasses provide `create_model` and may override the other hooks. Every step feeds one
    batch of every task through the model, sums the task losses and takes one optimiser step.

    Args:
        config: Settings of the data feed, optimisation, validation, checkpoints and logging.
        context: This process's rank, world size and device.
    """

    # Label of the progress bar.
    progress_label = "train"
    # Validate once before the first step of a new run; the scores go to `initial_metrics`.
    validate_at_start = False
    # Settings compared between a checkpoint and the resuming run; a difference is logged.
    resume_checked_settings: tuple[str, ...] = (
        "steps", "batch_size_per_task", "lr", "weight_decay", "warmup_steps", "seed",
        "slice_size", "context_slices", "encoder", "amp", "augment", "task_weights",
    )

    def __init__(self, config: PretrainConfig, context: DistContext) -> None:
        self.config = config
        self.context = context
        self.output_dir = Path(config.output_dir)
        self.amp = resolve_amp(config.amp, context.device)
        self.autocast = autocast_factory(self.amp, context.device)
        self.metrics: dict[str, dict[str, float]] = {}
        self.initial_metrics: dict[str, dict[str, float]] | None = None
        self.last_checkpoint: Path | None = None
        self.step = 0

    # --- Hooks -------------------------------------------------------------------------------

    def open_data(self) -> dict[str, TaskData]:
        """Return the datasets of every task, by task name."""
        return open_task_data(self.config, self.context)

    def create_model(self) -> torch.nn.Module:
        """Build the model on the CPU; `self.tasks` and `self.in_channels` are set.

        The model's `forward` maps {task: images [N, C, H, W]} to {task: logits [N, K, H, W]}
        and its `forward_task(images, task)` returns one task's logits. Only rank 0 should read
        pretrained weights, because DistributedDataParallel copies rank 0's parameters.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement create_model")

    def create_optimizer(self) -> torch.optim.Optimizer:
        """Build the optimiser of `self.model`; the learning-rate schedule scales every group's lr."""
        return build_optimizer(self.model, self.config.lr, self.config.weight_decay)

    def on_step_start(self) -> None:
        """Run before each step's forward pass; `self.step` counts the steps already finished."""

    def on_gradients(self) -> None:
        """Run after the backward pass (gradients unscaled, not yet clipped), before the optimiser step."""

    def run_settings(self) -> dict[str, Any]:
        """Return the settings written to run_config.json and into every checkpoint."""
        return self.config.to_dict()

    def finish(self, wall_time_s: float) -> Any:
        """Run on rank 0 once the last step is done; the return value becomes `RunOutcome.artifacts`."""
        return None

    # --- Engine ------------------------------------------------------------------------------

    def execute(self) -> RunOutcome:
        """Train from step 0 or from the checkpoint named by `config.resume`, then validate and checkpoint."""
        config, context = self.config, self.context
        started = time.monotonic()
        seed_everything(config.seed, config.deterministic)

        self.tasks = self.open_data()
        self._build_model()
        resume_state = self._load_resume_state()
        self.step = int(resume_state["step"]) if resume_state else 0
        time_before = float(resume_state.get("wall_time_s", 0.0)) if resume_state else 0.0

        # Loaders draw their base seed from torch's generator on iter(), so they are created
        # before the checkpoint's random states are restored, in a new run and a resumed run alike.
        batches = TaskBatches(self._train_loaders(self.step))
        self.val_loaders = self._val_loaders()
        if resume_state:
            self._restore(resume_state)

        end_step = min(config.steps, config.stop_at_step or config.steps)
        run_logger = None
        if context.is_main:
            self._write_run_config()
            run_logger = RunLogger(self.output_dir, resume_step=self.step)
        try:
            if self.validate_at_start and self.step == 0:
                self._validate(run_logger)
                self.initial_metrics = self.metrics
            self._train(batches, end_step, run_logger, started, time_before)
            if self.step == config.steps and (not self.metrics or config.val_every == 0
                                              or self.step % config.val_every):
                self._validate(run_logger)
        finally:
            if run_logger is not None:
                run_logger.close()

        wall_time_s = time_before + time.monotonic() - started
        self._save_checkpoint(wall_time_s)
        finished = self.step >= config.steps
        artifacts = self.finish(wall_time_s) if finished and context.is_main else None
        return RunOutcome(
            output_dir=self.output_dir, step=self.step, finished=finished, metrics=self.metrics,
            checkpoint_path=self.last_checkpoint if context.is_main else None, wall_time_s=wall_time_s,
            world_size=context.world_size, model=self.model, artifacts=artifacts,
        )

    def _build_model(self) -> None:
        config, context = self.config, self.context
        first = next(iter(self.tasks.values()))
        self.in_channels = first.config.in_channels(config.context_slices)

        self.model = self.create_model().to(context.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

        self.criterion = MultiTaskLoss(config.task_weights, config.dice_weight, config.ce_weight)
        unknown = sorted(set(config.task_weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"task_weights names unknown task(s) {unknown}; tasks are {sorted(self.tasks)}.")
        self.optimizer = self.create_optimizer()
        self.scheduler = build_scheduler(self.optimizer, config.warmup_steps, config.steps, config.min_lr_ratio)
        self.scaler = make_grad_scaler(self.amp, context.device)

        self.trained_model: torch.nn.Module = self.model
        if context.is_distributed:
            # Every task's head runs every step, so no parameter goes unused in the backward pass.
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.trained_model = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=False
            )

    def _train_loaders(self, start_step: int) -> dict[str, Any]:
        config, context = self.config, self.context
        pin = context.device.type == "cuda"
        return {
            name: make_train_loader(task.train, task.augment, name, config.batch_size_per_task, config.seed, context.rank,
                                    context.world_size, start_step, config.num_workers, pin)
            for name, task in self.tasks.items()
        }

    def _val_loaders(self) -> dict[str, Any]:
        config, context = self.config, self.context
        pin = context.device.type == "cuda"
        return {
            name: make_val_loader(task.val, 2 * config.batch_size_per_task, context.rank, context.world_size,
                                  config.num_workers, pin)
            for name, task in self.tasks.items() if task.val is not None
        }

    def _train(self, batches: TaskBatches, end_step: int, run_logger: RunLogger | None,
               started: float, time_before: float) -> None:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        config = self.config
        progress = tqdm(total=config.steps, initial=self.step, desc=self.progress_label, unit="step",
                        disable=not self.context.is_main, dynamic_ncols=True)
        self.trained_model.train()
        # Log lines go through tqdm.write so they do not break the progress bar.
        with logging_redirect_tqdm():
            self._run_steps(batches, end_step, run_logger, started, time_before, progress)

    def _run_steps(self, batches: TaskBatches, end_step: int, run_logger: RunLogger | None,
                   started: float, time_before: float, progress: Any) -> None:
        config = self.config
        try:
            while self.step < end_step:
                scalars = self._train_step(next(batches))
                self.step += 1
                progress.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
                progress.update(1)
                if self.step % config.log_every == 0 or self.step == end_step:
                    self._log_train(scalars, run_logger)
                if config.val_every and self.step % config.val_every == 0:
                    self._validate(run_logger)
                if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < end_step:
                    self._save_checkpoint(time_before + time.monotonic() - started)
        finally:
            progress.close()

    def _train_step(self, batch: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, float]:
        device, config = self.context.device, self.config
        images, labels = {}, {}
        for name, task_batch in batch.items():
            image = task_batch["image"].to(device, non_blocking=True)
            if config.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            images[name] = image
            labels[name] = task_batch["label"].to(device, non_blocking=True)

        self.on_step_start()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.trained_model(images)
        loss, terms = self.criterion(logits, labels)
        if not math.isfinite(sum(term.total for term in terms.values())):
            details = {name: term.total for name, term in terms.items()}
            raise FloatingPointError(
                f"Loss is not finite at step {self.step + 1}: per-task losses {details}. Lower --lr, "
                "raise --warmup-steps or use --amp none."
            )

        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.on_gradients()
        max_norm = config.grad_clip_norm if config.grad_clip_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

        scalars = {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}
        for name, term in terms.items():
            scalars[f"loss/{name}"] = term.total
            scalars[f"dice_loss/{name}"] = term.dice
            scalars[f"ce_loss/{name}"] = term.cross_entropy
        return scalars

    def _log_train(self, scalars: dict[str, float], run_logger: RunLogger | None) -> None:
        # Losses are averaged over ranks so the log describes the global batch.
        names = [name for name in scalars if "loss" in name]
        values = torch.tensor([scalars[name] for name in names], dtype=torch.float64)
        if self.context.device.type == "cuda":
            values = values.to(self.context.device)
        values = all_reduce_sum(self.context, values).cpu() / self.context.world_size
        averaged = dict(scalars, **{name: float(value) for name, value in zip(names, values)})
        if run_logger is not None:
            run_logger.log(self.step, "train", averaged)

    def _validate(self, run_logger: RunLogger | None) -> None:
        if not self.val_loaders:
            return
        samples = {}

        def keep_preview(task: str, image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor) -> None:
            if self.context.is_main:
                # The slice with the most foreground shows more than an empty edge slice would.
                index = int((label > 0).flatten(1).sum(dim=1).argmax())
                samples[task] = preview_sample(image[index], label[index], logits[index])

        self.model.eval()
        self.metrics = validate(
            self.model.forward_task, self.val_loaders,
            {name: task.num_classes for name, task in self.tasks.items()}, self.context, self.autocast,
            class_names={name: task.class_names for name, task in self.tasks.items()},
            channels_last=self.config.channels_last, max_batches=self.config.val_max_batches,
            on_first_batch=keep_preview,
        )
        self.model.train()

        if run_logger is not None:
            for task, values in self.metrics.items():
                run_logger.log(self.step, "val", {f"{name}/{task}": value for name, value in values.items()})
            save_previews(samples, self.output_dir / "previews", self.step)
            summary = ", ".join(f"{task} {values['dice/mean']:.3f}" for task, values in self.metrics.items())
            _logger.info("Step %d validation mean Dice: %s", self.step, summary)

    def _save_checkpoint(self, wall_time_s: float) -> None:
        path = run_state.save_run_state(self, wall_time_s)
        if path is not None:
            self.last_checkpoint = path

    def _load_resume_state(self) -> dict[str, Any] | None:
        return run_state.load_resume_state(self) if self.config.resume else None

    def _restore(self, state: Mapping[str, Any]) -> None:
        run_state.restore_run_state(self, state)

    def _write_run_config(self) -> None:
        path = self.output_dir / RUN_CONFIG_NAME
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(self.run_settings(), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
