"""`finetune`: train an smp model with a pretrained encoder on one target task, on the pretraining engine."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hydranet_hub._version import __version__
from hydranet_hub.finetune.config import FinetuneConfig
from hydranet_hub.finetune.data import select_slice_fraction
from hydranet_hub.finetune.model import (
    ENCODER_PREFIX, TaskModel, check_model_fits, create_segmentation_model, save_model_folder,
)
from hydranet_hub.inference.preprocessing import InferencePreprocessing
from hydranet_hub.training.config import PretrainConfig
from hydranet_hub.training.distributed import DistContext
from hydranet_hub.training.optim import build_optimizer
from hydranet_hub.training.run import TrainingRun, run_exclusive
from hydranet_hub.training.task_data import TaskData, open_task_data

_logger = logging.getLogger(__name__)

RESULT_NAME = "result.json"


@dataclass(frozen=True)
class FinetuneResult:
    """Outcome of `finetune`.

    Attributes:
        output_dir: Run folder (checkpoints, metrics.csv, previews, result.json, model/).
        task: Name of the target task.
        step: Optimisation steps finished, counting steps of resumed runs.
        finished: True when `step` reached `config.steps` (False after `stop_at_step`).
        metrics: Last validation on the held-out cases: "dice/<class>" per foreground class and
            "dice/mean" over the classes present. Dice pools every voxel of every validation
            slice, at the training slice size. Empty when the task has no validation cases.
        initial_metrics: The same metrics before the first step, when `val_at_start` was set in
            a run that started at step 0; otherwise None.
        train_cases: Ids of the labelled cases (volumes) trained on, after the budget.
        val_cases: Ids of the held-out validation cases.
        num_train_slices: Training slices after the budget.
        num_val_slices: Validation slices.
        model_dir: The saved model folder (rank 0, finished runs with save_model), else None.
        checkpoint_path: The last checkpoint written (None on ranks other than 0).
        wall_time_s: Training time in seconds, summed over resumed runs.
        world_size: Number of processes that trained.
        model: The trained smp model (this rank's copy, on the training device).
    """

    output_dir: Path
    task: str
    step: int
    finished: bool
    metrics: Mapping[str, float] = field(default_factory=dict)
    initial_metrics: Mapping[str, float] | None = None
    train_cases: tuple[str, ...] = ()
    val_cases: tuple[str, ...] = ()
    num_train_slices: int = 0
    num_val_slices: int = 0
    model_dir: Path | None = None
    checkpoint_path: Path | None = None
    wall_time_s: float = 0.0
    world_size: int = 1
    model: nn.Module | None = None

    @property
    def dice_mean(self) -> float:
        """Mean validation Dice over the foreground classes present; NaN without validation."""
        return float(self.metrics.get("dice/mean", float("nan")))

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-ready values (NaN becomes None); the model is left out."""
        return {
            "output_dir": str(self.output_dir),
            "task": self.task,
            "step": self.step,
            "finished": self.finished,
            "metrics": _json_numbers(self.metrics),
            "initial_metrics": None if self.initial_metrics is None else _json_numbers(self.initial_metrics),
            "train_cases": list(self.train_cases),
            "val_cases": list(self.val_cases),
            "num_train_slices": self.num_train_slices,
            "num_val_slices": self.num_val_slices,
            "model_dir": None if self.model_dir is None else str(self.model_dir),
            "wall_time_s": round(self.wall_time_s, 3),
            "world_size": self.world_size,
        }


def _json_numbers(values: Mapping[str, float]) -> dict[str, float | None]:
    return {name: (float(value) if math.isfinite(value) else None) for name, value in values.items()}


def finetune(config: FinetuneConfig, model: nn.Module | None = None) -> FinetuneResult:
    """Fine-tune a segmentation model on one MSD-format task and save it for `hydranet-predict`.

    The run shares pretraining's data pipeline, augmentation, checkpoints, resume, logging and
    progress bar. It runs as one process or as one rank of a `torchrun` job. Rank 0 writes
    `<output_dir>/result.json` and, for finished runs with `save_model`, the model folder
    `<output_dir>/model` (smp's `save_pretrained` files plus preprocessing.json).

    Args:
        config: Run settings.
        model: A model to fine-tune instead of building one from `config.arch`, `config.encoder`
            and `config.encoder_weights`, e.g. `smp.Unet(encoder_name="hydranet", in_channels=3,
            classes=3)`. It must take config.in_channels channels and return one channel per
            class of the task. Resuming needs the same model again.

    Returns:
        The result; see FinetuneResult.

    Raises:
        RunLockedError: When another live run holds the output folder.
        CheckpointError: When the checkpoint to resume from is missing, corrupted or from another task.
        ValueError: For an invalid task, budget or model, or an output folder that has
            checkpoints when `resume` is not set.
        HydraNetHubError: When the encoder weights cannot be found, downloaded or verified.
        FloatingPointError: When the loss becomes NaN or infinite.
    """
    training = config.training_config()
    runs: list[FinetuneRun] = []

    def make_run(context: DistContext) -> FinetuneRun:
        runs.append(FinetuneRun(config, training, context, model))
        return runs[-1]

    outcome = run_exclusive(training, make_run)
    run = runs[-1]
    task = run.tasks[run.task_name]
    metrics = dict(outcome.metrics.get(run.task_name, {}))
    initial = None if run.initial_metrics is None else dict(run.initial_metrics.get(run.task_name, {}))
    result = FinetuneResult(
        output_dir=outcome.output_dir, task=run.task_name, step=outcome.step, finished=outcome.finished,
        metrics=metrics, initial_metrics=initial, train_cases=run.train_cases,
        val_cases=tuple(task.val.cases) if task.val is not None else (), num_train_slices=len(task.train),
        num_val_slices=len(task.val) if task.val is not None else 0, model_dir=outcome.artifacts,
        checkpoint_path=outcome.checkpoint_path, wall_time_s=outcome.wall_time_s, world_size=outcome.world_size,
        model=outcome.model.net if outcome.model is not None else None,
    )
    if run.context.is_main:
        _write_result(result, config)
    return result


def _write_result(result: FinetuneResult, config: FinetuneConfig) -> None:
    document = {**result.to_dict(), "config": config.to_dict(), "hydranet_hub_version": __version__}
    path = Path(result.output_dir) / RESULT_NAME
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


class FinetuneRun(TrainingRun):
    """One smp model on one task, with encoder freezing and an encoder learning-rate factor.

    Args:
        settings: The fine-tuning settings.
        config: `settings.training_config()`, which drives the shared engine.
        context: This process's rank, world size and device.
        model: A model given by the caller, or None to build one from `settings`.
    """

    progress_label = "finetune"
    resume_checked_settings = (
        "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "seed", "split_seed", "slice_size",
        "context_slices", "arch", "encoder", "encoder_weights", "model_kwargs", "amp", "augment",
        "train_cases", "slice_fraction", "freeze_encoder_steps", "encoder_lr_mult",
    )

    def __init__(self, settings: FinetuneConfig, config: PretrainConfig, context: DistContext,
                 model: nn.Module | None = None) -> None:
        super().__init__(config, context)
        self.settings = settings
        self.given_model = model
        self.validate_at_start = settings.val_at_start
        self.encoder_frozen = False

    def open_data(self) -> dict[str, TaskData]:
        # A split seed apart from the run seed keeps the held-out cases fixed across seeds.
        try:
            tasks = open_task_data(self.config, self.context, split_seed=self.settings.split_seed)
        except ValueError as error:
            # The data layer names the budget max_cases; the caller set train_cases.
            if self.settings.train_cases is None or "max_cases" not in str(error):
                raise
            raise ValueError(
                f"train_cases={self.settings.train_cases} is invalid: {error} Lower train_cases, or lower "
                "val_fraction to leave more cases for training."
            ) from error
        (name, task), = tasks.items()
        self.task_name = name
        self.train_cases = tuple(task.train.cases)

        if self.settings.slice_fraction is not None:
            subset = select_slice_fraction(task.train, self.settings.slice_fraction, self.config.seed, name)
            self.train_cases = tuple(sorted({task.train.index[position][0] for position in subset.indices}))
            task = dataclasses.replace(task, train=subset, num_train_cases=len(self.train_cases))

        _logger.info("Task %s: %d training case(s) %s, %d validation case(s)", name, len(self.train_cases),
                     list(self.train_cases), len(task.val.cases) if task.val is not None else 0)
        return {name: task}

    def create_model(self) -> TaskModel:
        settings = self.settings
        num_classes = self.tasks[self.task_name].num_classes
        if self.given_model is not None:
            check_model_fits(self.given_model, self.in_channels, num_classes)
            net = self.given_model
        else:
            # Only rank 0 reads the encoder weights; DDP copies its parameters to every rank.
            net = create_segmentation_model(settings, self.in_channels, num_classes, load_weights=self.context.is_main)

        model = TaskModel(net, self.task_name)
        if model.encoder is None and (settings.freeze_encoder_steps or settings.encoder_lr_mult != 1):
            raise ValueError(
                f"freeze_encoder_steps={settings.freeze_encoder_steps} and encoder_lr_mult="
                f"{settings.encoder_lr_mult} need a model with an `encoder` module, which "
                f"{type(net).__name__} lacks; use an smp model or leave both at their defaults."
            )
        if settings.save_model and not hasattr(net, "save_pretrained"):
            raise ValueError(
                f"{type(net).__name__} has no save_pretrained, so the model folder cannot be written; "
                "use an smp model or set save_model=False."
            )
        return model

    def create_optimizer(self):
        multiplier = float(self.settings.encoder_lr_mult)
        multipliers = {ENCODER_PREFIX: multiplier} if multiplier != 1.0 else None
        return build_optimizer(self.model, self.config.lr, self.config.weight_decay, multipliers)

    def on_step_start(self) -> None:
        if not self.settings.freeze_encoder_steps:
            return
        frozen = self.step < self.settings.freeze_encoder_steps
        if frozen != self.encoder_frozen:
            if frozen:
                _logger.info("Encoder frozen for steps %d to %d", self.step + 1, self.settings.freeze_encoder_steps)
            else:
                _logger.info("Encoder trains from step %d on", self.step + 1)
        self.encoder_frozen = frozen
        # Eval mode keeps the batch-norm running statistics of a frozen encoder unchanged too.
        self.model.encoder.train(not frozen)

    def on_gradients(self) -> None:
        # Dropping the gradients, rather than switching requires_grad, keeps every parameter in
        # DDP's gradient reduction; AdamW leaves parameters without a gradient untouched.
        if self.encoder_frozen:
            for parameter in self.model.encoder.parameters():
                parameter.grad = None

    def run_settings(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def finish(self, wall_time_s: float) -> Path | None:
        if not self.settings.save_model:
            return None
        task = self.tasks[self.task_name]
        preprocessing = InferencePreprocessing.from_task_config(
            task.config, self.settings.slice_size, self.settings.context_slices
        )
        return save_model_folder(self.model.net, self.settings.model_path, preprocessing)
