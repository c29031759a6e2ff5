"""The multi-task pretraining loop: every step serves one batch of every task through one encoder pass."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from hydranet_hub.models import HydraNet
from hydranet_hub.training import checkpoint as ckpt
from hydranet_hub.training.config import PretrainConfig
from hydranet_hub.training.data_feed import TaskBatches, make_train_loader, make_val_loader
from hydranet_hub.training.distributed import (
    DistContext, all_gather_objects, all_reduce_sum, broadcast_object, cleanup_distributed, init_distributed,
)
from hydranet_hub.training.evaluate import validate
from hydranet_hub.training.losses import MultiTaskLoss
from hydranet_hub.training.optim import build_optimizer, build_scheduler
from hydranet_hub.training.precision import autocast_factory, make_grad_scaler, resolve_amp
from hydranet_hub.training.previews import preview_sample, save_previews
from hydranet_hub.training.publish import check_exportable, export_run, push_export
from hydranet_hub.training.rng import capture_rng_state, restore_rng_state, seed_everything
from hydranet_hub.training.run_lock import RunLock, RunLockedError
from hydranet_hub.training.run_log import RunLogger
from hydranet_hub.training.task_data import TaskData, open_task_data

_logger = logging.getLogger(__name__)

RUN_CONFIG_NAME = "run_config.json"
CHECKPOINT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PretrainResult:
    """Outcome of `pretrain`.

    Attributes:
        output_dir: Run folder (checkpoints, metrics.csv, previews, export).
        step: Optimisation steps finished, counting steps of resumed runs.
        finished: True when `step` reached `config.steps` (False after `stop_at_step`).
        metrics: Last validation: task -> {"dice/<class>": value, "dice/mean": value}.
        checkpoint_path: The last checkpoint written (None on ranks other than 0).
        export: The encoder export (rank 0, finished runs with export enabled), else None.
        push: The Hub upload when `push_to_hub` was set, else None.
        wall_time_s: Training time in seconds, summed over resumed runs.
        world_size: Number of processes that trained.
        model: The trained HydraNet (this rank's copy, on the training device).
    """

    output_dir: Path
    step: int
    finished: bool
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    checkpoint_path: Path | None = None
    export: Any | None = None
    push: Any | None = None
    wall_time_s: float = 0.0
    world_size: int = 1
    model: HydraNet | None = None


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrain a HydraNet encoder on several segmentation tasks at once.

    Runs as one process, or as one rank of a `torchrun` job (DistributedDataParallel, gloo on
    CPU and NCCL on GPU). Rank 0 alone writes checkpoints, logs, previews and the export.

    Args:
        config: Run settings.

    Returns:
        The result; see PretrainResult.

    Raises:
        RunLockedError: When another live run holds the output folder.
        CheckpointError: When the checkpoint to resume from is missing or corrupted.
        ValueError: For invalid data selections or settings found at run time, or an output
            folder that has checkpoints when `resume` is not set.
        FloatingPointError: When the loss becomes NaN or infinite.
    """
    context = init_distributed(config.device)
    lock = RunLock(config.output_dir)
    try:
        # Rank 0 checks the folder and every rank raises the same error, so none waits forever.
        claim_error = _claim_output_dir(config, lock) if context.is_main else None
        claim_error = broadcast_object(context, claim_error)
        if claim_error is not None:
            error_type = RunLockedError if claim_error[0] == "locked" else ValueError
            raise error_type(claim_error[1])
        return _Run(config, context).execute()
    finally:
        lock.release()
        cleanup_distributed(context)


def _claim_output_dir(config: PretrainConfig, lock: RunLock) -> tuple[str, str] | None:
    """Lock the run folder; return (kind, message) of the problem, or None when the run may start."""
    try:
        lock.acquire()
    except RunLockedError as error:
        return "locked", str(error)

    existing = ckpt.list_checkpoints(config.output_dir)
    if existing and not config.resume:
        lock.release()
        return "exists", (
            f"Output folder {config.output_dir} already has checkpoints up to step {existing[-1][0]}. Pass "
            "--resume to continue that run, or choose another --output-dir for a new one."
        )
    return None


class _Run:
    """State of one training process between setup and the end of the run."""

    def __init__(self, config: PretrainConfig, context: DistContext) -> None:
        self.config = config
        self.context = context
        self.output_dir = Path(config.output_dir)
        self.amp = resolve_amp(config.amp, context.device)
        self.autocast = autocast_factory(self.amp, context.device)
        self.metrics: dict[str, dict[str, float]] = {}
        self.last_checkpoint: Path | None = None

    def execute(self) -> PretrainResult:
        config, context = self.config, self.context
        started = time.monotonic()
        seed_everything(config.seed, config.deterministic)

        self.tasks = open_task_data(config, context)
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
        export = push = None
        if finished and config.export and context.is_main:
            export = export_run(self, wall_time_s)
            if export is not None and config.push_to_hub:
                push = push_export(export, config)
        return PretrainResult(
            output_dir=self.output_dir, step=self.step, finished=finished, metrics=self.metrics,
            checkpoint_path=self.last_checkpoint if context.is_main else None, export=export, push=push,
            wall_time_s=wall_time_s, world_size=context.world_size, model=self.model,
        )

    def _build_model(self) -> None:
        config, context = self.config, self.context
        first = next(iter(self.tasks.values()))
        self.in_channels = first.config.in_channels(config.context_slices)
        check_exportable(config, self.in_channels)

        # Only rank 0 reads pretrained weights; DDP copies its parameters to every rank.
        self.model = HydraNet(
            encoder_name=config.encoder,
            tasks={name: task.num_classes for name, task in self.tasks.items()},
            in_channels=self.in_channels,
            encoder_depth=len(config.decoder_channels),
            encoder_weights=config.encoder_weights if context.is_main else None,
            decoder_channels=config.decoder_channels,
        ).to(context.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

        self.criterion = MultiTaskLoss(config.task_weights, config.dice_weight, config.ce_weight)
        unknown = sorted(set(config.task_weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"task_weights names unknown task(s) {unknown}; tasks are {sorted(self.tasks)}.")
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, config.warmup_steps, config.steps, config.min_lr_ratio)
        self.scaler = make_grad_scaler(self.amp, context.device)

        self.trained_model: torch.nn.Module = self.model
        if context.is_distributed:
            # Every decoder runs every step, so no parameter goes unused in the backward pass.
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
        progress = tqdm(total=config.steps, initial=self.step, desc="pretrain", unit="step",
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
        # Every rank's random states go into the checkpoint, so each rank resumes its own streams.
        rng_states = all_gather_objects(self.context, capture_rng_state())
        if not self.context.is_main:
            return
        state = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "step": self.step,
            "config": self.config.to_dict(),
            "tasks": {name: task.num_classes for name, task in self.tasks.items()},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states,
            "data": {"sampler": "step-indexed", "seed": self.config.seed, "world_size": self.context.world_size,
                     "batch_size_per_task": self.config.batch_size_per_task, "next_step": self.step},
            "metrics": self.metrics,
            "wall_time_s": wall_time_s,
        }
        path = ckpt.checkpoint_path(self.output_dir, self.step)
        ckpt.save_checkpoint(path, state)
        ckpt.prune_checkpoints(self.output_dir, self.config.keep_checkpoints)
        self.last_checkpoint = path

    def _load_resume_state(self) -> dict[str, Any] | None:
        if not self.config.resume:
            return None
        path = ckpt.resolve_resume_path(self.output_dir, self.config.resume)
        state = ckpt.load_checkpoint(path)
        if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise ckpt.CheckpointError(
                f"Checkpoint {path} has format_version {state.get('format_version')!r}; this version of "
                f"hydranet-hub reads {CHECKPOINT_FORMAT_VERSION}."
            )
        saved_tasks = dict(state["tasks"])
        current_tasks = {name: task.num_classes for name, task in self.tasks.items()}
        if saved_tasks != current_tasks:
            raise ckpt.CheckpointError(
                f"Checkpoint {path} was trained on tasks {saved_tasks} but this run selects "
                f"{current_tasks}; resume with the same tasks and --label-mode."
            )
        self._warn_changed_settings(state["config"], path)
        _logger.info("Resuming from %s at step %d", path, state["step"])
        return state

    def _warn_changed_settings(self, saved: Mapping[str, Any], path: Path) -> None:
        current = self.config.to_dict()
        for name in ("steps", "batch_size_per_task", "lr", "weight_decay", "warmup_steps", "seed",
                     "slice_size", "context_slices", "encoder", "amp", "augment", "task_weights"):
            if saved.get(name) != current.get(name):
                _logger.warning("Resuming %s with %s=%r (checkpoint has %r); the run will not match an "
                                "uninterrupted one", path, name, current.get(name), saved.get(name))

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.metrics = dict(state.get("metrics") or {})

        rng_states = state["rng"]
        if len(rng_states) == self.context.world_size:
            restore_rng_state(rng_states[self.context.rank])
        else:
            _logger.warning("Checkpoint has random states of %d ranks but the run has %d; using rank 0's",
                            len(rng_states), self.context.world_size)
            restore_rng_state(rng_states[0])

    def _write_run_config(self) -> None:
        path = self.output_dir / RUN_CONFIG_NAME
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
