"""Typed settings of a pretraining run, read from defaults, a YAML/JSON file and overrides."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "none", "bf16", "fp16")

# Settings of `--demo`, sized so the embedded demo tasks train on 2 CPU cores in minutes. The
# narrower decoder only speeds up training: the export contains the encoder alone.
# Explicit settings (config file, flags, keyword arguments) override them.
DEMO_SETTINGS: dict[str, object] = {
    "demo": True,
    "slice_size": (64, 64),
    "decoder_channels": (128, 64, 32, 16, 16),
    "steps": 300,
    "batch_size_per_task": 4,
    "lr": 1e-3,
    "warmup_steps": 30,
    "val_every": 100,
    "checkpoint_every": 100,
    "num_workers": 0,
    "output_dir": "hydranet-demo-output",
}
LABEL_MODES = ("all", "merge")
MIN_SLICE_SIZE = 32


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one multi-task pretraining run. Field docs give units and meaning.

    Create with keyword arguments or `PretrainConfig.from_mapping`; every value is validated
    on construction and a ValueError names the field, the value and the expected form.
    """

    # Data: MSD task folders (names under data_root, or paths), plus extra tasks from a file.
    data_root: str | None = None
    tasks: tuple[str, ...] = ()
    tasks_config: str | None = None
    label_mode: str = "all"
    modalities: tuple[int, ...] = (0,)
    demo: bool = False
    slice_size: tuple[int, int] = (256, 256)
    context_slices: int = 1
    val_fraction: float = 0.2
    max_cases: int | None = None
    cache_dir: str | None = None
    augment: bool = True

    # Model.
    encoder: str = "hydranet"
    encoder_weights: str | None = None
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)

    # Optimisation.
    steps: int = 20000
    batch_size_per_task: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.01
    warmup_steps: int = 500
    task_weights: Mapping[str, float] = field(default_factory=dict)
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    grad_clip_norm: float = 1.0
    amp: str = "auto"
    channels_last: bool = False
    seed: int = 0
    deterministic: bool = True

    # Bookkeeping.
    val_every: int = 500
    val_max_batches: int | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    num_workers: int = 2
    output_dir: str = "runs/hydranet-pretrain"
    resume: str | None = None
    stop_at_step: int | None = None
    device: str = "auto"
    export: bool = True
    push_to_hub: str | None = None
    hub_private: bool = False

    def __post_init__(self) -> None:
        _normalise_sequences(self)
        _validate(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "PretrainConfig":
        """Build a config from a mapping whose keys use '_' or '-' (e.g. from YAML).

        Args:
            values: Field name -> value; unknown keys are rejected.
            source: Where the values come from, used in error messages.

        Returns:
            The validated config.

        Raises:
            ValueError: For an unknown key (with the closest valid names) or an invalid value.
        """
        return cls(**_check_keys(values, source))

    @classmethod
    def for_demo(cls, **overrides: Any) -> "PretrainConfig":
        """Build the `--demo` config (DEMO_SETTINGS) with `overrides` applied on top."""
        return cls.from_mapping({**DEMO_SETTINGS, **overrides}, source="demo settings")

    def replace(self, **changes: Any) -> "PretrainConfig":
        """Return a copy with `changes` applied and validated."""
        return dataclasses.replace(self, **_check_keys(changes, "overrides"))

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-serialisable values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def cache_path(self) -> Path:
        """Slice cache folder: `cache_dir`, or `<output_dir>/slice-cache`."""
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "slice-cache"

    @property
    def export_path(self) -> Path:
        """Folder of the exported encoder: `<output_dir>/export`."""
        return Path(self.output_dir) / "export"


def config_field_names() -> tuple[str, ...]:
    """Return the names of every PretrainConfig field."""
    return tuple(f.name for f in dataclasses.fields(PretrainConfig))


def _check_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    names = config_field_names()
    checked = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"Unknown setting {key!r} in {source}.{hint}")
        checked[name] = value
    return checked


def _normalise_sequences(config: PretrainConfig) -> None:
    # YAML and JSON give lists; a frozen config keeps tuples so it compares and prints stably.
    def put(name: str, value: Any) -> None:
        object.__setattr__(config, name, value)

    if isinstance(config.tasks, str):
        put("tasks", (config.tasks,))
    put("tasks", tuple(str(task) for task in config.tasks))

    size = config.slice_size
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"slice_size={config.slice_size!r} is invalid: expected H W, e.g. 256 256, or one int.")
    put("slice_size", tuple(size))
    put("decoder_channels", tuple(config.decoder_channels))
    modalities = config.modalities
    put("modalities", (modalities,) if isinstance(modalities, int) else tuple(modalities))

    if config.task_weights is None:
        put("task_weights", {})
    if not isinstance(config.task_weights, Mapping):
        raise ValueError(
            f"task_weights={config.task_weights!r} is invalid: expected a mapping of task name to "
            "weight, e.g. {Task02_Heart: 2.0}."
        )
    put("task_weights", {str(k): v for k, v in config.task_weights.items()})

    for name in ("data_root", "tasks_config", "cache_dir", "output_dir", "resume", "encoder_weights"):
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            put(name, os.fspath(value))


def _require_int(config: PretrainConfig, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(config, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: expected an integer >= {minimum}.")


def _require_number(config: PretrainConfig, name: str, minimum: float, strict: bool = False) -> None:
    value = getattr(config, name)
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    if valid:
        valid = value > minimum if strict else value >= minimum
    if not valid:
        relation = ">" if strict else ">="
        raise ValueError(f"{name}={value!r} is invalid: expected a number {relation} {minimum}.")


def _validate(config: PretrainConfig) -> None:
    for name in ("steps", "batch_size_per_task"):
        _require_int(config, name, 1)
    for name in ("context_slices", "warmup_steps", "val_every", "checkpoint_every",
                 "keep_checkpoints", "num_workers", "seed"):
        _require_int(config, name, 0)
    _require_int(config, "log_every", 1)
    _require_int(config, "max_cases", 1, optional=True)
    _require_int(config, "val_max_batches", 1, optional=True)
    _require_int(config, "stop_at_step", 1, optional=True)
    _require_number(config, "lr", 0.0, strict=True)
    for name in ("weight_decay", "dice_weight", "ce_weight", "grad_clip_norm", "min_lr_ratio"):
        _require_number(config, name, 0.0)

    if config.dice_weight == 0 and config.ce_weight == 0:
        raise ValueError("dice_weight and ce_weight are both 0, so the loss is 0; set at least one > 0.")
    if not 0.0 <= config.val_fraction < 1.0:
        raise ValueError(f"val_fraction={config.val_fraction!r} is invalid: expected 0 <= value < 1.")
    for side in config.slice_size:
        if isinstance(side, bool) or not isinstance(side, int) or side < MIN_SLICE_SIZE:
            raise ValueError(
                f"slice_size={config.slice_size!r} is invalid: expected two integers >= "
                f"{MIN_SLICE_SIZE} pixels, since the encoder halves the size five times."
            )
    if config.amp not in AMP_CHOICES:
        raise ValueError(f"amp={config.amp!r} is invalid: expected one of {', '.join(AMP_CHOICES)}.")
    if config.label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode={config.label_mode!r} is invalid: expected one of {', '.join(LABEL_MODES)}.")
    if not config.decoder_channels or not all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in config.decoder_channels
    ):
        raise ValueError(
            f"decoder_channels={config.decoder_channels!r} is invalid: expected positive integers, "
            "one per encoder stage, e.g. 256 128 64 32 16."
        )
    if not config.modalities or not all(
        isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in config.modalities
    ):
        raise ValueError(
            f"modalities={config.modalities!r} is invalid: expected dataset.json modality indices "
            ">= 0, e.g. 0 for the first modality."
        )
    for task, weight in config.task_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"task_weights[{task!r}]={weight!r} is invalid: expected a number >= 0.")


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON file of PretrainConfig settings.

    Args:
        path: The file; keys are field names with '_' or '-'.

    Returns:
        The raw mapping (validated when passed to `PretrainConfig.from_mapping`).

    Raises:
        ValueError: When the file is missing, unparsable or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {path} not found; pass an existing YAML or JSON file to --config.")

    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"Config file {path} is not valid JSON: {error}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"Config file {path} is YAML but PyYAML is not installed; run "
                "`pip install hydranet-hub[train]` or use a .json file."
            ) from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"Config file {path} is not valid YAML: {error}") from None

    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path} must contain a mapping of settings, found {type(values).__name__}.")
    return values
