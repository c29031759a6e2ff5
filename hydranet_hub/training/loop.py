"""Multi-task pretraining: every step serves one batch of every task through one HydraNet encoder pass."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydranet_hub.models import HydraNet
from hydranet_hub.training.config import PretrainConfig
from hydranet_hub.training.publish import check_exportable, export_run, push_export
from hydranet_hub.training.run import RUN_CONFIG_NAME, TrainingRun, run_exclusive
from hydranet_hub.training.run_state import CHECKPOINT_FORMAT_VERSION

_logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT_VERSION", "PretrainResult", "PretrainRun", "RUN_CONFIG_NAME", "pretrain"]


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
    outcome = run_exclusive(config, lambda context: PretrainRun(config, context))
    export, push = outcome.artifacts if outcome.artifacts is not None else (None, None)
    return PretrainResult(
        output_dir=outcome.output_dir, step=outcome.step, finished=outcome.finished, metrics=outcome.metrics,
        checkpoint_path=outcome.checkpoint_path, export=export, push=push, wall_time_s=outcome.wall_time_s,
        world_size=outcome.world_size, model=outcome.model,
    )


class PretrainRun(TrainingRun):
    """A HydraNet with one decoder per task; a finished run exports its encoder and may push it to the Hub."""

    progress_label = "pretrain"

    def create_model(self) -> HydraNet:
        config = self.config
        check_exportable(config, self.in_channels)

        # Only rank 0 reads pretrained weights; DDP copies its parameters to every rank.
        return HydraNet(
            encoder_name=config.encoder,
            tasks={name: task.num_classes for name, task in self.tasks.items()},
            in_channels=self.in_channels,
            encoder_depth=len(config.decoder_channels),
            encoder_weights=config.encoder_weights if self.context.is_main else None,
            decoder_channels=config.decoder_channels,
        )

    def finish(self, wall_time_s: float) -> tuple[Any, Any] | None:
        config = self.config
        if not config.export:
            return None
        export = export_run(self, wall_time_s)
        push = None
        if export is not None and config.push_to_hub:
            push = push_export(export, config)
        return export, push
