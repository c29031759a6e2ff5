"""The config.json written next to exported encoder weights: build it and validate it.

The top level carries the keys that smp's ``get_preprocessing_params`` reads (``input_space``,
``input_range``, ``mean``, ``std``) and the keys timm reads for ``hf-hub:`` and ``local-dir:``
models (``architecture``, ``num_classes``, ``num_features``, ``pretrained_cfg``). Everything
hydranet-specific sits in the ``"hydranet"`` object, versioned by ``format_version``.
"""

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydranet_hub.export.errors import ConfigError
from hydranet_hub.export.records import TaskSummary

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

# Inputs are z-scores clipped to +-5 (ZSCORE_CLIP in hydranet_hub.data.normalize), so they
# are already standardised: smp's preprocessing must leave them alone (mean 0, std 1).
INPUT_RANGE = (-5.0, 5.0)

CT_NORMALIZATION = "clip to window_hu then z-score, clipped to +-5"
MRI_NORMALIZATION = "z-score over foreground, clipped to +-5"

MODALITIES = ("CT", "MRI")

# Architecture -> (name registered in timm by hydranet_hub, width of the last feature map).
ARCHITECTURES: dict[str, tuple[str, int]] = {
    "resnet34": ("hydranet_resnet34", 512),
}

MEAN_KEY = "mean"


def channel_semantics(context_slices: int) -> str:
    """Describe in one sentence what each input channel contains.

    Args:
        context_slices: Number k of neighbouring slices on each side of the target slice.

    Returns:
        The sentence stored as ``hydranet.channel_semantics``.
    """
    if context_slices == 0:
        return "The single channel is the target axial slice z of one modality."
    return (
        f"Channel i (0-based) is axial slice z-{context_slices}+i of one modality, so the "
        f"{2 * context_slices + 1} channels are slices z-{context_slices} to z+{context_slices} "
        "around the target slice z; past the volume's first or last slice the edge slice repeats."
    )


def build_config(
    *,
    architecture: str,
    smp_encoder_name: str,
    in_channels: int,
    context_slices: int,
    slice_size: Sequence[int],
    tasks: Sequence[TaskSummary],
    metrics: Mapping[str, Mapping[str, float]],
    training: Mapping[str, Any],
    normalization: Mapping[str, Any],
) -> dict[str, Any]:
    """Build and validate the config.json content for one export.

    Args:
        architecture: Encoder architecture, a key of ``ARCHITECTURES`` (e.g. "resnet34").
        smp_encoder_name: Encoder name registered in smp (e.g. "hydranet").
        in_channels: Input channels of the first convolution, 2 * context_slices + 1.
        context_slices: Neighbouring slices k on each side of the target slice.
        slice_size: In-plane size (height, width) in pixels that training slices were resized to.
        tasks: One summary per pretraining task.
        metrics: Per task, validation Dice per foreground class name plus "mean".
        training: Training settings (steps, batch sizes, seed, lr, ...), JSON-serialisable.
        normalization: Extra normalisation facts; ``"window_hu"`` maps each CT task to
            (low, high) in Hounsfield units. ``"CT"`` and ``"MRI"`` replace the default sentences.

    Returns:
        The config as a JSON-ready dict.

    Raises:
        ConfigError: An input is invalid; the message names it and the expected form.
    """
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"architecture {architecture!r} is not supported; expected one of "
            f"{sorted(ARCHITECTURES)}. Add a row to ARCHITECTURES in {__name__} to support it."
        )
    timm_model_name, num_features = ARCHITECTURES[architecture]

    for index, task in enumerate(tasks):
        if not isinstance(task, TaskSummary):
            raise ConfigError(
                f"tasks[{index}] is a {type(task).__name__}; expected a "
                "hydranet_hub.export.TaskSummary."
            )
    _check_int(in_channels, "in_channels", minimum=1)
    _check_int(context_slices, "context_slices", minimum=0)

    height, width = _as_size(slice_size)
    if not isinstance(normalization, Mapping):
        raise ConfigError(
            f"normalization is {normalization!r}; expected a dict such as {{'window_hu': {{task: (low, high)}}}}."
        )
    normalization_out = {"CT": CT_NORMALIZATION, "MRI": MRI_NORMALIZATION, "zscore_clip": INPUT_RANGE[1]}
    normalization_out.update(_to_json_ready(normalization, "normalization"))
    normalization_out.setdefault("window_hu", {})

    config = {
        "input_space": "RGB",
        "input_range": list(INPUT_RANGE),
        "mean": [0.0] * in_channels,
        "std": [1.0] * in_channels,
        # timm builds its own model of this name, so "hf-hub:" and "local-dir:" loading works
        # without hydranet-hub installed.
        "architecture": architecture,
        "num_classes": 0,
        "num_features": num_features,
        "global_pool": "avg",
        "model_args": {"in_chans": in_channels},
        "pretrained_cfg": {
            "input_size": [in_channels, height, width],
            "fixed_input_size": False,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "mean": [0.0] * in_channels,
            "std": [1.0] * in_channels,
            "num_classes": 0,
            "first_conv": "conv1",
            "classifier": "fc",
        },
        "hydranet": {
            "format_version": FORMAT_VERSION,
            "architecture": architecture,
            "smp_encoder_name": smp_encoder_name,
            "timm_model_name": timm_model_name,
            "in_channels": in_channels,
            "context_slices": context_slices,
            "channel_semantics": channel_semantics(context_slices),
            "slice_size": [height, width],
            "normalization": normalization_out,
            "tasks": [_task_entry(task) for task in tasks],
            "training": _to_json_ready(training, "training"),
            "metrics": _to_json_ready(metrics, "metrics"),
        },
    }
    validate_config(config, source="export inputs")
    return config


def read_config(path: str | Path) -> dict[str, Any]:
    """Read an exported config.json and validate it against the schema.

    Args:
        path: The config.json file.

    Returns:
        The parsed config.

    Raises:
        ConfigError: The file is missing, is not JSON or breaks the schema; the message names
            the file, the key and the expected form.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; pass the config.json of an export folder.") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); re-export the weights to rewrite it.") from None
    validate_config(config, source=str(path))
    return config


def validate_config(config: Any, *, source: str = "config") -> None:
    """Raise ConfigError unless ``config`` follows the export schema (format_version 1).

    Checks smp's preprocessing keys, and in ``"hydranet"`` the architecture, channel layout,
    slice size, normalisation (a window in HU for every CT task), tasks, training and metrics
    (Dice in [0, 1] per foreground class and "mean", for known tasks only).

    Args:
        config: The parsed config.json.
        source: Where the config came from, used as the start of every message.

    Raises:
        ConfigError: The first violation found, naming the key path and the expected form.
    """
    def fail(where: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: {where} {problem}")

    if not isinstance(config, dict):
        raise fail("top level", f"is a {type(config).__name__}; expected a JSON object.")
    hydranet = _require(config, "hydranet", dict, "", fail)

    version = _require(hydranet, "format_version", int, "hydranet.", fail)
    if version > FORMAT_VERSION:
        raise fail(
            "hydranet.format_version",
            f"is {version}, newer than this hydranet-hub reads ({FORMAT_VERSION}); upgrade hydranet-hub.",
        )
    if version != FORMAT_VERSION:
        raise fail("hydranet.format_version", f"is {version}; expected {FORMAT_VERSION}.")

    for key in ("architecture", "smp_encoder_name", "timm_model_name", "channel_semantics"):
        if not _require(hydranet, key, str, "hydranet.", fail).strip():
            raise fail(f"hydranet.{key}", "is empty; expected a non-empty string.")

    in_channels = _require(hydranet, "in_channels", int, "hydranet.", fail)
    context_slices = _require(hydranet, "context_slices", int, "hydranet.", fail)
    if context_slices < 0:
        raise fail("hydranet.context_slices", f"is {context_slices}; expected an integer >= 0.")
    if in_channels != 2 * context_slices + 1:
        raise fail(
            "hydranet.in_channels",
            f"is {in_channels} but context_slices is {context_slices}; expected in_channels = "
            f"2 * context_slices + 1 = {2 * context_slices + 1} (slices z-k..z+k of one modality).",
        )

    slice_size = _require(hydranet, "slice_size", list, "hydranet.", fail)
    if len(slice_size) != 2 or not all(_is_int(side) and side > 0 for side in slice_size):
        raise fail("hydranet.slice_size", f"is {slice_size!r}; expected [height, width] in pixels, both > 0.")

    _validate_preprocessing(config, in_channels, fail)
    tasks = _validate_tasks(_require(hydranet, "tasks", list, "hydranet.", fail), fail)
    _validate_normalization(_require(hydranet, "normalization", dict, "hydranet.", fail), tasks, fail)
    _require(hydranet, "training", dict, "hydranet.", fail)
    _validate_metrics(_require(hydranet, "metrics", dict, "hydranet.", fail), tasks, fail)


def _validate_preprocessing(config: dict, in_channels: int, fail) -> None:
    if not isinstance(config.get("input_space"), str):
        raise fail("input_space", f"is {config.get('input_space')!r}; expected a string such as \"RGB\".")

    input_range = config.get("input_range")
    if not (isinstance(input_range, list) and len(input_range) == 2 and all(map(_is_number, input_range))
            and input_range[0] < input_range[1]):
        raise fail("input_range", f"is {input_range!r}; expected [low, high] with low < high.")

    for key in ("mean", "std"):
        values = config.get(key)
        if not (isinstance(values, list) and len(values) == in_channels and all(map(_is_number, values))):
            raise fail(key, f"is {values!r}; expected {in_channels} numbers, one per input channel.")
    if any(value <= 0 for value in config["std"]):
        raise fail("std", f"is {config['std']!r}; every value must be > 0.")


def _validate_tasks(tasks: list, fail) -> dict[str, dict]:
    if not tasks:
        raise fail("hydranet.tasks", "is empty; expected at least one task.")

    by_name: dict[str, dict] = {}
    for index, task in enumerate(tasks):
        where = f"hydranet.tasks[{index}]."
        if not isinstance(task, dict):
            raise fail(where[:-1], f"is a {type(task).__name__}; expected an object.")
        name = _require(task, "name", str, where, fail)
        if not name.strip() or name in by_name:
            raise fail(f"{where}name", f"is {name!r}; expected a non-empty name used by no other task.")

        modality = _require(task, "modality", str, where, fail)
        if modality not in MODALITIES:
            raise fail(f"{where}modality", f"is {modality!r}; expected one of {list(MODALITIES)}.")

        classes = _require(task, "classes", list, where, fail)
        names_valid = all(isinstance(name, str) and name.strip() for name in classes)
        if len(classes) < 2 or not names_valid or len(set(classes)) != len(classes):
            raise fail(
                f"{where}classes",
                f"is {classes!r}; expected at least two distinct class names, background first.",
            )

        if _require(task, "num_training_cases", int, where, fail) < 1:
            raise fail(f"{where}num_training_cases", f"is {task['num_training_cases']}; expected >= 1.")
        _require(task, "source", str, where, fail)
        _require(task, "license", str, where, fail)
        by_name[name] = task
    return by_name


def _validate_normalization(normalization: dict, tasks: dict[str, dict], fail) -> None:
    for modality in MODALITIES:
        _require(normalization, modality, str, "hydranet.normalization.", fail)

    windows = _require(normalization, "window_hu", dict, "hydranet.normalization.", fail)
    for name, window in windows.items():
        where = f"hydranet.normalization.window_hu.{name}"
        if name not in tasks:
            raise fail(where, f"names no task; expected one of {sorted(tasks)}.")
        if not (isinstance(window, list) and len(window) == 2 and all(map(_is_number, window))
                and window[0] < window[1]):
            raise fail(where, f"is {window!r}; expected [low, high] in HU with low < high.")

    missing = [name for name, task in tasks.items() if task["modality"] == "CT" and name not in windows]
    if missing:
        raise fail(
            "hydranet.normalization.window_hu",
            f"has no window for the CT task(s) {missing}; pass normalization={{'window_hu': "
            "{task: (low_hu, high_hu)}} with the window used in training.",
        )


def _validate_metrics(metrics: dict, tasks: dict[str, dict], fail) -> None:
    for name, dice_by_class in metrics.items():
        where = f"hydranet.metrics.{name}"
        if name not in tasks:
            raise fail(where, f"names no task; expected one of {sorted(tasks)}.")
        if not isinstance(dice_by_class, dict) or MEAN_KEY not in dice_by_class:
            raise fail(where, f"is {dice_by_class!r}; expected {{class name: dice, ..., \"mean\": dice}}.")

        allowed = set(tasks[name]["classes"][1:]) | {MEAN_KEY}
        for key, value in dice_by_class.items():
            if key not in allowed:
                raise fail(f"{where}.{key}", f"is not a foreground class; expected one of {sorted(allowed)}.")
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise fail(f"{where}.{key}", f"is {value!r}; expected a Dice score in [0, 1].")


def _task_entry(task: TaskSummary) -> dict[str, Any]:
    return {
        "name": task.name,
        "modality": task.modality,
        "classes": list(task.classes),
        "num_training_cases": task.num_training_cases,
        "source": task.source,
        "license": task.license,
    }


def _to_json_ready(value: Any, name: str) -> Any:
    """Round-trip through JSON so tuples become lists and anything unserialisable fails here."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{name} cannot be written to config.json ({error}); use only str, int, finite float, bool, "
            "None, lists and dicts with string keys."
        ) from None


def _as_size(slice_size: Sequence[int]) -> tuple[int, int]:
    valid = isinstance(slice_size, (list, tuple)) and len(slice_size) == 2
    if not valid or not all(_is_int(side) and side > 0 for side in slice_size):
        raise ConfigError(f"slice_size is {slice_size!r}; expected (height, width) in pixels, both > 0.")
    return int(slice_size[0]), int(slice_size[1])


def _check_int(value: Any, name: str, *, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{name} is {value!r}; expected an integer >= {minimum}.")


def _require(container: dict, key: str, kind: type, prefix: str, fail) -> Any:
    if key not in container:
        raise fail(f"{prefix}{key}", "is missing; re-export the weights with this hydranet-hub version.")
    value = container[key]
    valid = _is_int(value) if kind is int else isinstance(value, kind)
    if not valid:
        raise fail(f"{prefix}{key}", f"is {value!r}; expected a JSON {_JSON_NAMES[kind]}.")
    return value


_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "integer"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)
