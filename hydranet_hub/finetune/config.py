"""Typed settings of one fine-tuning run: the target task, the labelled-data budget, the model and the transfer schedule."""

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

from hydranet_hub.training.config import AMP_CHOICES, LABEL_MODES, PretrainConfig

_logger = logging.getLogger(__name__)

# `hydranet-pretrain --demo` exports its encoder here (its default output folder + "/export").
DEMO_PRETRAIN_EXPORT = "hydranet-demo-output/export"

# Settings of `--demo`: the held-out demo task at the slice size the demo pretraining used,
# sized to run on 2 CPU cores in minutes. With 5 cases and val_fraction 0.4, 2 cases are held
# out and at most 3 are labelled for training. Explicit settings override them.
DEMO_SETTINGS: dict[str, object] = {
    "demo": True,
    "slice_size": (64, 64),
    "val_fraction": 0.4,
    "encoder_weights": DEMO_PRETRAIN_EXPORT,
    "steps": 150,
    "batch_size": 8,
    "lr": 1e-3,
    "warmup_steps": 15,
    "val_every": 50,
    "checkpoint_every": 50,
    "num_workers": 0,
    "output_dir": "hydranet-demo-finetune",
}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run. Field docs give units and meaning.

    Create with keyword arguments, `FinetuneConfig.from_mapping` (keys with '_' or '-') or
    `FinetuneConfig.for_demo`. Every value is validated on construction, and a ValueError
    names the field, the value and the expected form.
    """

    # Data: one MSD-format task folder (a name under data_root, or a path), or the demo task.
    task: str | None = None
    data_root: str | None = None
    demo: bool = False
    label_mode: str = "all"
    modalities: tuple[int, ...] = (0,)
    slice_size: tuple[int, int] = (256, 256)
    context_slices: int = 1
    # Share of the task's cases (volumes) held out for validation, split by `split_seed` so
    # that every seed and budget is scored on the same cases.
    val_fraction: float = 0.2
    split_seed: int = 0
    # Labelled-data budget: train on `train_cases` volumes of the train split (None: all),
    # then on a `slice_fraction` share (0 < F <= 1; None: all) of their axial slices.
    train_cases: int | None = None
    slice_fraction: float | None = None
    cache_dir: str | None = None
    augment: bool = True

    # Model: smp.create_model(arch, encoder_name=encoder, encoder_weights=..., **model_kwargs).
    # encoder_weights is a HydraNet release tag, "imagenet" (for hydranet: the default release),
    # a .safetensors path or its folder, "hf-hub:org/repo@revision", or None (random).
    arch: str = "Unet"
    encoder: str = "hydranet"
    encoder_weights: str | None = "imagenet"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    # Transfer: the encoder is frozen (weights and batch-norm statistics) for the first
    # `freeze_encoder_steps` steps and trains at lr * encoder_lr_mult afterwards.
    freeze_encoder_steps: int = 0
    encoder_lr_mult: float = 1.0

    # Optimisation (AdamW, linear warmup then cosine decay; loss = Dice + cross-entropy).
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.01
    warmup_steps: int = 100
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    grad_clip_norm: float = 1.0
    amp: str = "auto"
    channels_last: bool = False
    seed: int = 0
    deterministic: bool = True

    # Bookkeeping.
    val_every: int = 250
    val_at_start: bool = False
    val_max_batches: int | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 2
    output_dir: str = "runs/hydranet-finetune"
    resume: str | None = None
    stop_at_step: int | None = None
    device: str = "auto"
    save_model: bool = True

    def __post_init__(self) -> None:
        _normalise(self)
        _validate(self)
        # The shared training settings are validated by PretrainConfig; their names match.
        self.training_config()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "FinetuneConfig":
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
    def for_demo(cls, **overrides: Any) -> "FinetuneConfig":
        """Build the `--demo` config (DEMO_SETTINGS) with `overrides` applied on top."""
        return cls.from_mapping({**DEMO_SETTINGS, **overrides}, source="demo settings")

    def replace(self, **changes: Any) -> "FinetuneConfig":
        """Return a copy with `changes` applied and validated."""
        return dataclasses.replace(self, **_check_keys(changes, "overrides"))

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-serialisable values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def in_channels(self) -> int:
        """Model input channels: len(modalities) * (2 * context_slices + 1)."""
        return len(self.modalities) * (2 * self.context_slices + 1)

    @property
    def model_path(self) -> Path:
        """Folder of the saved model: `<output_dir>/model`."""
        return Path(self.output_dir) / "model"

    def task_path(self) -> str:
        """Return the task as `hydranet_hub.training` resolves it: a name under data_root or a path."""
        if self.demo:
            from hydranet_hub.demo import DEMO_HELDOUT_TASK, demo_data_dir

            return str(demo_data_dir() / DEMO_HELDOUT_TASK)
        return str(self.task)

    def training_config(self) -> PretrainConfig:
        """Translate the shared settings into the PretrainConfig that drives the training engine.

        Returns:
            A one-task PretrainConfig without export; `batch_size` becomes `batch_size_per_task`
            and `train_cases` becomes `max_cases`.
        """
        return PretrainConfig(
            data_root=self.data_root, tasks=(self.task_path(),), label_mode=self.label_mode,
            modalities=self.modalities, slice_size=self.slice_size, context_slices=self.context_slices,
            val_fraction=self.val_fraction, max_cases=self.train_cases, cache_dir=self.cache_dir,
            augment=self.augment, encoder=self.encoder, encoder_weights=self.encoder_weights,
            steps=self.steps, batch_size_per_task=self.batch_size, lr=self.lr, min_lr_ratio=self.min_lr_ratio,
            weight_decay=self.weight_decay, warmup_steps=self.warmup_steps, dice_weight=self.dice_weight,
            ce_weight=self.ce_weight, grad_clip_norm=self.grad_clip_norm, amp=self.amp,
            channels_last=self.channels_last, seed=self.seed, deterministic=self.deterministic,
            val_every=self.val_every, val_max_batches=self.val_max_batches, checkpoint_every=self.checkpoint_every,
            keep_checkpoints=self.keep_checkpoints, log_every=self.log_every, num_workers=self.num_workers,
            output_dir=self.output_dir, resume=self.resume, stop_at_step=self.stop_at_step, device=self.device,
            export=False,
        )


def finetune_field_names() -> tuple[str, ...]:
    """Return the names of every FinetuneConfig field."""
    return tuple(f.name for f in dataclasses.fields(FinetuneConfig))


def _check_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    names = finetune_field_names()
    checked = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"Unknown setting {key!r} in {source}.{hint}")
        checked[name] = value
    return checked


def _normalise(config: FinetuneConfig) -> None:
    # YAML and JSON give lists; a frozen config keeps tuples so it compares and prints stably.
    def put(name: str, value: Any) -> None:
        object.__setattr__(config, name, value)

    size = config.slice_size
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"slice_size={config.slice_size!r} is invalid: expected H W, e.g. 256 256, or one int.")
    put("slice_size", tuple(size))
    modalities = config.modalities
    put("modalities", (modalities,) if isinstance(modalities, int) else tuple(modalities))

    if config.model_kwargs is None:
        put("model_kwargs", {})
    if not isinstance(config.model_kwargs, Mapping):
        raise ValueError(
            f"model_kwargs={config.model_kwargs!r} is invalid: expected a mapping of smp.create_model "
            "keyword arguments, e.g. {decoder_channels: [128, 64, 32, 16, 8]}."
        )
    put("model_kwargs", {str(key): value for key, value in config.model_kwargs.items()})

    for name in ("task", "data_root", "cache_dir", "output_dir", "resume", "encoder_weights"):
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            put(name, os.fspath(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(config: FinetuneConfig) -> None:
    if config.demo == bool(config.task):
        raise ValueError(
            f"task={config.task!r} with demo={config.demo} is invalid: give exactly one of a task "
            "(a folder name under data_root, or a path to an MSD task folder) or demo=True."
        )
    if not _is_int(config.batch_size) or config.batch_size < 1:
        raise ValueError(f"batch_size={config.batch_size!r} is invalid: expected an integer >= 1.")
    if config.train_cases is not None and (not _is_int(config.train_cases) or config.train_cases < 1):
        raise ValueError(
            f"train_cases={config.train_cases!r} is invalid: expected an integer >= 1 (volumes), or None for all."
        )
    fraction = config.slice_fraction
    if fraction is not None and (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
                                 or not 0.0 < fraction <= 1.0):
        raise ValueError(f"slice_fraction={fraction!r} is invalid: expected a number in (0, 1], or None for all.")
    for name in ("freeze_encoder_steps", "split_seed"):
        value = getattr(config, name)
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name}={value!r} is invalid: expected an integer >= 0.")
    multiplier = config.encoder_lr_mult
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier < 0:
        raise ValueError(f"encoder_lr_mult={multiplier!r} is invalid: expected a number >= 0 (1 trains at --lr).")
    if config.amp not in AMP_CHOICES:
        raise ValueError(f"amp={config.amp!r} is invalid: expected one of {', '.join(AMP_CHOICES)}.")
    if config.label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode={config.label_mode!r} is invalid: expected one of {', '.join(LABEL_MODES)}.")
    _validate_arch(config.arch)


def _validate_arch(arch: Any) -> None:
    import segmentation_models_pytorch as smp

    known = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
    if not isinstance(arch, str) or arch.lower() not in known:
        close = difflib.get_close_matches(str(arch).lower(), known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"arch={arch!r} is not a segmentation_models_pytorch {smp.__version__} architecture; expected one "
            f"of {', '.join(known)} (any case).{hint}"
        )
