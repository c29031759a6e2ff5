"""`preprocessing.json`: the settings a trained model needs to turn a NIfTI volume into its input.

A fine-tuned model folder contains smp's `config.json` and `model.safetensors` (written by
`model.save_pretrained(dir)`) and this file beside them. Example for a CT task::

    {
      "format_version": 1,
      "task": "Task09_Spleen",
      "modality_kind": "CT",
      "window_hu": [-160.0, 240.0],
      "ct_stats_hu": null,
      "modalities": [0],
      "context_slices": 1,
      "slice_size": [256, 256],
      "num_classes": 2,
      "label_names": ["background", "spleen"],
      "nonfinite": "raise",
      "hydranet_hub_version": "0.1.0"
    }

The model's input has len(modalities) * (2 * context_slices + 1) channels and its output has
num_classes channels. Label maps written by inference contain class indices 0..num_classes-1,
named by label_names.
"""

import json
import logging
import os
import uuid
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hydranet_hub._version import __version__
from hydranet_hub.data.config import TaskConfig, default_window_hu
from hydranet_hub.data.volume import NONFINITE_POLICIES

from .errors import InferenceError

_logger = logging.getLogger(__name__)

PREPROCESSING_NAME = "preprocessing.json"
FORMAT_VERSION = 1
MAX_CLASSES = 256

_MODALITY_KINDS = ("CT", "MRI")


@dataclass(frozen=True)
class InferencePreprocessing:
    """Preprocessing settings of a trained model, which inference repeats exactly.

    The field names of the intensity settings match `TaskConfig`, so
    `hydranet_hub.data.normalize_image` accepts an instance in place of a task config.

    Attributes:
        task: Task name, e.g. "Task09_Spleen".
        modality_kind: "CT" (clip to window_hu, then z-score) or "MRI" (z-score over nonzero voxels).
        modalities: Indices into the last axis of a 4D image that become input channels, in
            order; (0,) for a 3D image.
        context_slices: Neighbouring axial slices k on each side of the target slice (2.5D input).
        slice_size: In-plane (height, width) in pixels that each axial slice is resized to.
        num_classes: Output classes of the model, background included.
        label_names: Class names by class index, background first.
        window_hu: CT intensity window (low, high) in HU; None for MRI. For CT, None is replaced
            by the task's default window (see `hydranet_hub.data.default_window_hu`).
        ct_stats_hu: Fixed CT (mean, std) in HU used for the z-score; None computes them per volume.
        nonfinite: NaN/Inf voxel policy: "raise" rejects the volume, "fill_min" replaces such
            voxels with their channel's smallest finite value.
        hydranet_hub_version: Version of hydranet-hub that wrote the settings.
    """

    task: str
    modality_kind: str
    modalities: tuple[int, ...]
    context_slices: int
    slice_size: tuple[int, int]
    num_classes: int
    label_names: tuple[str, ...]
    window_hu: tuple[float, float] | None = None
    ct_stats_hu: tuple[float, float] | None = None
    nonfinite: str = "raise"
    hydranet_hub_version: str = __version__

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise InferenceError(f"task={self.task!r} is invalid; expected a task name such as 'Task09_Spleen'.")
        if self.modality_kind not in _MODALITY_KINDS:
            raise InferenceError(f"modality_kind={self.modality_kind!r} is invalid; expected 'CT' or 'MRI'.")

        modalities = _as_int_tuple(self.modalities, "modalities")
        if not modalities or len(set(modalities)) != len(modalities) or min(modalities) < 0:
            raise InferenceError(
                f"modalities={self.modalities!r} is invalid; expected distinct indices >= 0, e.g. [0] or [0, 1]."
            )
        object.__setattr__(self, "modalities", modalities)

        context_slices = _as_int(self.context_slices, "context_slices")
        if context_slices < 0:
            raise InferenceError(f"context_slices={self.context_slices!r} is invalid; expected 0 or more.")
        object.__setattr__(self, "context_slices", context_slices)

        slice_size = _as_int_tuple(self.slice_size, "slice_size")
        if len(slice_size) != 2 or min(slice_size) < 1:
            raise InferenceError(
                f"slice_size={self.slice_size!r} is invalid; expected (height, width) in pixels, e.g. [256, 256]."
            )
        object.__setattr__(self, "slice_size", slice_size)

        self._check_classes()
        self._check_intensity_settings()
        if self.nonfinite not in NONFINITE_POLICIES:
            raise InferenceError(f"nonfinite={self.nonfinite!r} is invalid; expected one of {NONFINITE_POLICIES}.")

    def _check_classes(self) -> None:
        num_classes = _as_int(self.num_classes, "num_classes")
        if not 2 <= num_classes <= MAX_CLASSES:
            raise InferenceError(
                f"num_classes={self.num_classes!r} is invalid; expected 2 to {MAX_CLASSES} (background "
                "included), because label maps are written as uint8."
            )
        object.__setattr__(self, "num_classes", num_classes)

        if isinstance(self.label_names, str):
            raise InferenceError(f"label_names={self.label_names!r} is invalid; expected a list of class names.")
        label_names = tuple(str(name) for name in self.label_names)
        if len(label_names) != num_classes:
            raise InferenceError(
                f"label_names has {len(label_names)} name(s) {list(label_names)} but num_classes is "
                f"{num_classes}; give one name per class, background first."
            )
        object.__setattr__(self, "label_names", label_names)

    def _check_intensity_settings(self) -> None:
        if self.modality_kind == "MRI":
            if self.window_hu is not None or self.ct_stats_hu is not None:
                raise InferenceError(
                    f"Task {self.task} is MRI; window_hu and ct_stats_hu apply to CT only. Set them to null."
                )
            return

        window = default_window_hu(self.task) if self.window_hu is None else self.window_hu
        low, high = _as_pair(window, "window_hu")
        if not low < high:
            raise InferenceError(f"window_hu={window!r} is invalid; expected (low, high) in HU with low < high.")
        object.__setattr__(self, "window_hu", (low, high))

        if self.ct_stats_hu is not None:
            mean, std = _as_pair(self.ct_stats_hu, "ct_stats_hu")
            if not std > 0:
                raise InferenceError(f"ct_stats_hu={self.ct_stats_hu!r} is invalid; expected (mean, std) with std > 0.")
            object.__setattr__(self, "ct_stats_hu", (mean, std))

    @property
    def in_channels(self) -> int:
        """Input channels of the model: len(modalities) * (2 * context_slices + 1)."""
        return len(self.modalities) * (2 * self.context_slices + 1)

    @classmethod
    def from_task_config(
        cls, task: TaskConfig, slice_size: tuple[int, int], context_slices: int
    ) -> "InferencePreprocessing":
        """Build the settings of a model trained on one task of the data pipeline.

        Args:
            task: The task's preprocessing settings, as used to build the training slices.
            slice_size: In-plane (height, width) in pixels of the training slices.
            context_slices: Neighbouring slices k on each side used for the 2.5D input.

        Returns:
            The inference settings, with classes and names after the task's label mode.

        Raises:
            InferenceError: If `slice_size` or `context_slices` is invalid.
        """
        return cls(
            task=task.name,
            modality_kind=task.modality_kind,
            modalities=task.modalities,
            context_slices=context_slices,
            slice_size=tuple(slice_size),
            num_classes=task.num_classes,
            label_names=task.class_names,
            window_hu=task.window_hu,
            ct_stats_hu=task.ct_stats_hu,
            nonfinite=task.nonfinite,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, `format_version` first."""
        document: dict[str, Any] = {"format_version": FORMAT_VERSION}
        for name, value in asdict(self).items():
            document[name] = list(value) if isinstance(value, tuple) else value
        return document

    def save(self, directory: Path | str) -> Path:
        """Write `preprocessing.json` into a model folder, replacing an earlier one atomically.

        Args:
            directory: The model folder; it must exist.

        Returns:
            The path of the written file.

        Raises:
            InferenceError: If `directory` is not an existing folder.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise InferenceError(f"Model folder {directory} does not exist; create it (e.g. with save_pretrained) first.")

        path = directory / PREPROCESSING_NAME
        temporary = directory / f".{PREPROCESSING_NAME}.{uuid.uuid4().hex}.tmp"
        try:
            temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, directory: Path | str) -> "InferencePreprocessing":
        """Read `preprocessing.json` from a model folder.

        Args:
            directory: The model folder (or the JSON file itself).

        Returns:
            The validated settings.

        Raises:
            InferenceError: If the file is missing, not JSON, of another format version, or has
                missing, unknown or invalid fields. The message names the file.
        """
        directory = Path(directory)
        path = directory if directory.suffix == ".json" else directory / PREPROCESSING_NAME
        if not path.is_file():
            raise InferenceError(
                f"{path} does not exist. A model folder needs {PREPROCESSING_NAME} next to config.json; "
                "write it with InferencePreprocessing.save(folder)."
            )

        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InferenceError(f"{path} is not a readable JSON file: {error}.") from error
        if not isinstance(document, dict):
            raise InferenceError(f"{path} must contain a JSON object, got {type(document).__name__}.")

        version = document.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise InferenceError(
                f"{path} has format_version {version!r}; this hydranet-hub ({__version__}) reads "
                f"format_version {FORMAT_VERSION}. Install the hydranet-hub version that wrote it."
            )

        known = {field.name for field in fields(cls)}
        required = {field.name for field in fields(cls) if field.default is MISSING}
        unknown = sorted(set(document) - known)
        missing = sorted(required - set(document))
        if unknown or missing:
            raise InferenceError(f"{path}: missing field(s) {missing}, unknown field(s) {unknown}.")

        try:
            settings = cls(**document)
        except InferenceError as error:
            raise InferenceError(f"{path}: {error}") from error
        if settings.hydranet_hub_version != __version__:
            _logger.info("%s was written by hydranet-hub %s; running %s", path, settings.hydranet_hub_version, __version__)
        return settings


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InferenceError(f"{name} value {value!r} is invalid; expected an integer.")
    return int(value)


def _as_int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InferenceError(f"{name}={value!r} is invalid; expected a list of integers.")
    return tuple(_as_int(item, name) for item in value)


def _as_pair(value: Any, name: str) -> tuple[float, float]:
    try:
        low, high = (float(item) for item in value)
    except (TypeError, ValueError):
        raise InferenceError(f"{name}={value!r} is invalid; expected two numbers.") from None
    return low, high
