"""Export encoder weights with config.json and a model card, and validate an export folder."""

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard

from hydranet_hub._constants import CONFIG_NAME, WEIGHTS_NAME
from hydranet_hub._version import __version__
from hydranet_hub.errors import ChecksumMismatchError
from hydranet_hub.export.atomic import check_destination, staged_folder
from hydranet_hub.export.card import card_weights_sha256, render_card
from hydranet_hub.export.config import ARCHITECTURES, build_config, read_config
from hydranet_hub.export.errors import ExportError
from hydranet_hub.export.records import ExportResult, TaskSummary
from hydranet_hub.export.weights import (
    check_names_and_shapes,
    expected_shapes,
    load_weights,
    prepare_state_dict,
    save_weights,
)
from hydranet_hub.hub import sha256_of_file

_logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)


def export_encoder(
    encoder_state_dict: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    *,
    architecture: str = "resnet34",
    smp_encoder_name: str = "hydranet",
    in_channels: int = 3,
    context_slices: int = 1,
    slice_size: Sequence[int],
    tasks: Sequence[TaskSummary],
    metrics: Mapping[str, Mapping[str, float]],
    training: Mapping[str, Any],
    normalization: Mapping[str, Any],
    overwrite: bool = False,
    repo_id: str | None = None,
    weights_license: str | None = None,
) -> ExportResult:
    """Write model.safetensors, config.json and README.md (the model card) into ``out_dir``.

    All inputs are checked before anything is written. The files are written into a hidden
    folder beside ``out_dir``, flushed to disk, then renamed into place, so an interrupted export
    leaves ``out_dir`` as it was. With ``overwrite=True`` a folder holding only export files is
    swapped whole; other files of yours in it are kept, and only the three export files are
    replaced, one rename each.

    Args:
        encoder_state_dict: Encoder tensors named as smp's and timm's ``architecture`` name them
            (conv1.weight, bn1.weight, layer1.0.conv1.weight, ...), without a head.
        out_dir: Folder to create, or an empty folder.
        architecture: Encoder architecture; "resnet34" is supported.
        smp_encoder_name: smp encoder name shown in the card's loading example.
        in_channels: Input channels of the first convolution; must be 2 * context_slices + 1.
        context_slices: Neighbouring slices k on each side of the target slice.
        slice_size: (height, width) in pixels that training slices were resized to.
        tasks: One summary per pretraining task.
        metrics: Per task name, validation Dice per foreground class name and under "mean".
            Tasks without validation may be left out.
        training: Training settings such as steps, batch sizes, seed, lr, amp, world size and
            wall time in seconds. ``hydranet_hub_version`` is added when missing.
        normalization: ``{"window_hu": {task: (low, high)}}`` for every CT task, in HU, plus any
            other JSON-serialisable facts about preprocessing.
        overwrite: Replace the export files in a non-empty ``out_dir``.
        repo_id: Hub repository the export is meant for, used in the card's loading examples.
        weights_license: Licence id for the card metadata; defaults to the data licence shared by
            all tasks, or "other".

    Returns:
        The paths written and the sha256 of model.safetensors.

    Raises:
        ExportError: An input is invalid (subclass ConfigError for config fields), the state
            dict does not match the architecture, or ``out_dir`` is not a folder.
        ExportExistsError: ``out_dir`` has files and ``overwrite`` is False.
        OSError: A file could not be written (disk full, folder not writable); ``out_dir`` is
            left as it was.

    Example:
        >>> export_encoder(model.encoder_state_dict(), "runs/exp1/export", slice_size=(256, 256),
        ...                tasks=[TaskSummary("Task02_Heart", "MRI", ("background", "left atrium"), 16)],
        ...                metrics={"Task02_Heart": {"left atrium": 0.91, "mean": 0.91}},
        ...                training={"steps": 20000, "seed": 0}, normalization={})  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    training = {**training}
    training.setdefault("hydranet_hub_version", __version__)

    config = build_config(
        architecture=architecture,
        smp_encoder_name=smp_encoder_name,
        in_channels=in_channels,
        context_slices=context_slices,
        slice_size=slice_size,
        tasks=tasks,
        metrics=metrics,
        training=training,
        normalization=normalization,
    )
    check_destination(out_dir, overwrite=overwrite)
    tensors = prepare_state_dict(encoder_state_dict, architecture=architecture, in_channels=in_channels)

    with staged_folder(out_dir, overwrite=overwrite, managed_names=EXPORT_FILES) as staging:
        save_weights(tensors, staging / WEIGHTS_NAME)
        sha256 = sha256_of_file(staging / WEIGHTS_NAME)

        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

        card = render_card(config, sha256=sha256, repo_id=repo_id, weights_license=weights_license)
        (staging / CARD_NAME).write_text(str(card), encoding="utf-8")

    _logger.info("Exported %s encoder to %s (model.safetensors sha256 %s)", architecture, out_dir, sha256)
    return _result(out_dir, sha256)


def validate_export(export_dir: str | Path) -> ExportResult:
    """Check that a folder is a complete, consistent export, as push_to_hub requires.

    The checks: model.safetensors, config.json and README.md exist, and config.json passes
    ``read_config``. The weights load with the names and shapes of the configured architecture.
    The sha256 recorded in the card matches the weights file.

    Args:
        export_dir: Folder written by ``export_encoder``.

    Returns:
        The export's paths and the sha256 of its weights.

    Raises:
        ExportError: A file is missing or invalid (ConfigError for config.json).
        ChecksumMismatchError: The card records another sha256 than the weights file has.
    """
    export_dir = Path(export_dir)
    missing = [name for name in EXPORT_FILES if not (export_dir / name).is_file()]
    if missing:
        raise ExportError(
            f"{export_dir} is not a complete export: {missing} missing. Run export_encoder "
            "(or hydranet-pretrain) to write all of " + ", ".join(EXPORT_FILES) + "."
        )

    config = read_config(export_dir / CONFIG_NAME)
    hydranet = config["hydranet"]
    if hydranet["architecture"] not in ARCHITECTURES:
        raise ExportError(
            f"{export_dir / CONFIG_NAME}: hydranet.architecture {hydranet['architecture']!r} is not "
            f"supported; expected one of {sorted(ARCHITECTURES)}."
        )
    weights_path = export_dir / WEIGHTS_NAME
    tensors = load_weights(weights_path)
    check_names_and_shapes(
        {name: tuple(tensor.shape) for name, tensor in tensors.items()},
        expected_shapes(hydranet["architecture"], hydranet["in_channels"]),
        what=str(weights_path),
    )

    try:
        card = ModelCard.load(export_dir / CARD_NAME)
    except ValueError as error:
        raise ExportError(f"{export_dir / CARD_NAME}: invalid model card metadata ({error}); re-export.") from None
    recorded = card_weights_sha256(card)
    actual = sha256_of_file(weights_path)
    if recorded != actual:
        raise ChecksumMismatchError(
            f"{weights_path} has sha256 {actual}, but {CARD_NAME} records {recorded}. The folder mixes "
            "files of two exports (or a file was edited); export again into an empty folder."
        )
    return _result(export_dir, actual)


def _result(folder: Path, sha256: str) -> ExportResult:
    return ExportResult(
        dir=folder,
        weights_path=folder / WEIGHTS_NAME,
        config_path=folder / CONFIG_NAME,
        card_path=folder / CARD_NAME,
        sha256=sha256,
    )
