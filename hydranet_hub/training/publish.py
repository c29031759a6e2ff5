"""Hand a finished run to hydranet_hub.export: the encoder weights, config.json, model card and Hub upload."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hydranet_hub._fs import os_error_naming
from hydranet_hub._version import __version__
from hydranet_hub.training.config import PretrainConfig

if TYPE_CHECKING:
    from hydranet_hub.training.loop import PretrainRun

_logger = logging.getLogger(__name__)

# smp encoder name -> architecture key of hydranet_hub.export (the "hydranet" encoder is a ResNet-34).
_EXPORT_ARCHITECTURES = {"hydranet": "resnet34", "resnet34": "resnet34"}
_MSD_TASK_NAME = re.compile(r"^Task\d{2}_")


def check_exportable(config: PretrainConfig, in_channels: int) -> None:
    """Fail before training when the finished run could not be exported.

    Raises:
        ValueError: For an encoder without an export architecture, or input channels other than
            2 * context_slices + 1 (one modality), which config.json cannot describe.
    """
    if not config.export:
        return
    if config.encoder not in _EXPORT_ARCHITECTURES:
        raise ValueError(
            f"--encoder {config.encoder} cannot be exported; export supports "
            f"{sorted(_EXPORT_ARCHITECTURES)}. Use one of them or pass --no-export."
        )
    expected = 2 * config.context_slices + 1
    if in_channels != expected:
        raise ValueError(
            f"The tasks give {in_channels} input channels but an export describes one modality "
            f"({expected} channels for --context-slices {config.context_slices}). Pass one index "
            "to --modalities, or --no-export."
        )


def _dataset_json(task_config: Any) -> dict[str, Any]:
    try:
        return json.loads((task_config.root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def task_summaries(run: "PretrainRun") -> list[Any]:
    """Describe every task for the export: modality, class names, training cases, source, licence."""
    from hydranet_hub import export

    summaries = []
    for name, task in run.tasks.items():
        described = _dataset_json(task.config)
        if run.config.demo and task.config.root.parent == _demo_root():
            source = export.DEMO_SOURCE
            # dataset.json licence notes of the demo tasks run to paragraphs; the card links the document.
            license_ = "see docs/demo-data.md"
        elif _MSD_TASK_NAME.match(name):
            source = export.MSD_SOURCE
            license_ = export.MSD_LICENSE
        else:
            source = str(described.get("reference") or "user-provided data")
            license_ = str(described.get("licence") or "unknown")
        summaries.append(export.TaskSummary(
            name=name,
            modality=task.config.modality_kind,
            classes=tuple(task.config.class_names),
            num_training_cases=task.num_train_cases,
            source=source,
            license=license_,
        ))
    return summaries


def _demo_root() -> Any:
    from hydranet_hub.demo import demo_data_dir

    return demo_data_dir()


def export_metrics(run: "PretrainRun") -> dict[str, dict[str, float]]:
    """Convert validation metrics to the export's {task: {class name: Dice, "mean": Dice}} form.

    Classes absent from a task's validation split (NaN Dice) are left out, and so are tasks
    without any measured class.
    """
    converted: dict[str, dict[str, float]] = {}
    for task, values in run.metrics.items():
        scores = {key.removeprefix("dice/"): float(value) for key, value in values.items()
                  if key.startswith("dice/") and value == value}
        if "mean" in scores:
            converted[task] = scores
    return converted


def training_record(run: "PretrainRun", wall_time_s: float) -> dict[str, Any]:
    """Collect the training settings written into config.json and the model card."""
    config = run.config
    return {
        "steps": run.step,
        "batch_size_per_task": config.batch_size_per_task,
        "world_size": run.context.world_size,
        "global_batch_size_per_task": config.batch_size_per_task * run.context.world_size,
        "optimizer": "AdamW",
        "lr": config.lr,
        "min_lr_ratio": config.min_lr_ratio,
        "weight_decay": config.weight_decay,
        "warmup_steps": config.warmup_steps,
        "schedule": "linear warmup then cosine decay",
        "loss": f"{config.dice_weight} x soft Dice (foreground) + {config.ce_weight} x cross-entropy",
        "task_weights": dict(config.task_weights),
        "amp": run.amp,
        "channels_last": config.channels_last,
        "augment": config.augment,
        "seed": config.seed,
        "label_mode": config.label_mode,
        "encoder_init": config.encoder_weights or "random",
        "wall_time_s": round(wall_time_s, 1),
        "hydranet_hub_version": __version__,
    }


def export_run(run: "PretrainRun", wall_time_s: float) -> Any:
    """Export the encoder of a finished run to `<output_dir>/export` (replacing an earlier export).

    Returns:
        hydranet_hub.export.ExportResult.

    Raises:
        OSError: The export could not be written; the message says how to export again.
    """
    from hydranet_hub import export

    config = run.config
    window_hu: Mapping[str, Any] = {
        name: list(task.config.window_hu) for name, task in run.tasks.items() if task.config.window_hu is not None
    }
    try:
        result = export.export_encoder(
            run.model.encoder_state_dict(),
            config.export_path,
            architecture=_EXPORT_ARCHITECTURES[config.encoder],
            smp_encoder_name="hydranet",
            in_channels=run.in_channels,
            context_slices=config.context_slices,
            slice_size=config.slice_size,
            tasks=task_summaries(run),
            metrics=export_metrics(run),
            training=training_record(run, wall_time_s),
            normalization={"window_hu": window_hu},
            overwrite=True,
            repo_id=config.push_to_hub,
        )
    except export.ExportError:
        raise
    except OSError as error:
        # The last checkpoint was written before the export, so nothing needs training again.
        raise os_error_naming(
            error,
            f"{error} The final checkpoint is saved: run hydranet-pretrain again with the same "
            "--output-dir and --resume to export without training.",
        ) from error
    _logger.info("Exported encoder to %s", result.dir)
    return result


def push_export(export_result: Any, config: PretrainConfig) -> Any:
    """Upload an export folder to the Hub repository `config.push_to_hub`.

    Returns:
        hydranet_hub.export.PushResult.
    """
    from hydranet_hub import export

    pushed = export.push_to_hub(export_result.dir, config.push_to_hub, private=config.hub_private)
    _logger.info("Pushed %s to %s at commit %s", export_result.dir, pushed.repo_id, pushed.commit_sha)
    return pushed
