"""Per-task preprocessing settings (`TaskConfig`) and the readers that build them.

A `TaskConfig` fixes everything that decides the cached arrays of one task: which modalities
become channels, the CT intensity window, how label values map to classes and how NaN/Inf voxels
are handled. Build one from a task folder with `msd_task_config`, or several from a YAML/JSON
file with `load_task_configs`.
"""

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ._optional import require
from .errors import DatasetError
from .msd import infer_modality_kind, read_msd_task
from .volume import NONFINITE_POLICIES

_logger = logging.getLogger(__name__)

LABEL_MODES = ("all", "merge", "map")

# CT windows (low, high) in HU keyed by the MSD task name after "TaskXX_", lower case.
DEFAULT_CT_WINDOWS_HU: dict[str, tuple[float, float]] = {
    "liver": (-100.0, 250.0),  # W350/L75: contrast-enhanced liver and its lesions
    "hepaticvessel": (-100.0, 300.0),  # W400/L100: keeps enhanced vessels (150-300 HU) unclipped
    "lung": (-1350.0, 150.0),  # W1500/L-600: the standard lung window, nodules and masses included
    "pancreas": (-160.0, 240.0),  # W400/L40: abdominal soft tissue
    "spleen": (-160.0, 240.0),
    "colon": (-160.0, 240.0),
}
# Any other CT task uses the abdominal soft-tissue window W400/L40.
FALLBACK_CT_WINDOW_HU = (-160.0, 240.0)

_TASK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_window_hu(task_name: str) -> tuple[float, float]:
    """Return the documented CT window for an MSD task name such as "Task03_Liver"."""
    key = task_name.split("_", 1)[-1].lower()
    return DEFAULT_CT_WINDOWS_HU.get(key, FALLBACK_CT_WINDOW_HU)


@dataclass(frozen=True)
class TaskConfig:
    """Preprocessing settings for one segmentation task.

    Attributes:
        name: Task name, also the cache subfolder, e.g. "Task02_Heart".
        root: The MSD task folder.
        modality_kind: "CT" (window then z-score) or "MRI" (z-score over nonzero voxels).
        modalities: Indices of the dataset.json modalities used as channels, e.g. (0,) or (0, 1, 2, 3).
        labels: Label values and names declared in dataset.json, background (0) first.
        window_hu: CT intensity window (low, high) in HU; None for MRI. When None for CT, the
            per-task default from `default_window_hu` is filled in.
        label_mode: "all" keeps every declared class (value order), "merge" maps every foreground
            class to 1 as the original HydraNet did, "map" applies `label_map`.
        label_map: For label_mode "map": (raw value, class index) pairs covering every declared
            value; a missing background 0 maps to 0. A dict is accepted and converted.
        ct_stats_hu: Fixed (mean, std) in HU for CT standardisation; None computes them per volume.
        nonfinite: NaN/Inf voxel policy, "raise" or "fill_min" (see `load_case`).
    """

    name: str
    root: Path
    modality_kind: str
    modalities: tuple[int, ...]
    labels: tuple[tuple[int, str], ...]
    window_hu: tuple[float, float] | None = None
    label_mode: str = "all"
    label_map: tuple[tuple[int, int], ...] | None = None
    ct_stats_hu: tuple[float, float] | None = None
    nonfinite: str = "raise"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TASK_NAME_PATTERN.match(self.name):
            raise ValueError(
                f"Task name {self.name!r} is invalid; use letters, digits, '_', '.' or '-' (e.g. Task02_Heart)."
            )
        object.__setattr__(self, "root", Path(self.root))
        if self.modality_kind not in ("CT", "MRI"):
            raise ValueError(f"Task {self.name}: modality_kind={self.modality_kind!r} is invalid; expected 'CT' or 'MRI'.")

        modalities = tuple(int(index) for index in self.modalities)
        if not modalities or len(set(modalities)) != len(modalities) or min(modalities) < 0:
            raise ValueError(
                f"Task {self.name}: modalities={self.modalities!r} is invalid; expected distinct indices >= 0, e.g. (0,)."
            )
        object.__setattr__(self, "modalities", modalities)

        labels = tuple(sorted((int(value), str(name)) for value, name in self.labels))
        if not labels or labels[0][0] != 0:
            raise ValueError(f"Task {self.name}: labels={self.labels!r} must declare the background value 0.")
        object.__setattr__(self, "labels", labels)

        self._check_intensity_settings()
        self._check_label_settings()
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"Task {self.name}: nonfinite={self.nonfinite!r} is invalid; expected one of {NONFINITE_POLICIES}.")

    def _check_intensity_settings(self) -> None:
        if self.modality_kind == "MRI":
            if self.window_hu is not None or self.ct_stats_hu is not None:
                raise ValueError(f"Task {self.name} is MRI; window_hu and ct_stats_hu apply to CT only. Remove them.")
            return

        window = default_window_hu(self.name) if self.window_hu is None else self.window_hu
        low, high = (float(value) for value in window)
        if not low < high:
            raise ValueError(f"Task {self.name}: window_hu={window!r} is invalid; expected (low, high) with low < high.")
        object.__setattr__(self, "window_hu", (low, high))

        if self.ct_stats_hu is not None:
            mean, std = (float(value) for value in self.ct_stats_hu)
            if not std > 0:
                raise ValueError(f"Task {self.name}: ct_stats_hu={self.ct_stats_hu!r} needs a positive std.")
            object.__setattr__(self, "ct_stats_hu", (mean, std))

    def _check_label_settings(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"Task {self.name}: label_mode={self.label_mode!r} is invalid; expected one of {LABEL_MODES}.")
        if self.label_mode != "map":
            if self.label_map is not None:
                raise ValueError(f"Task {self.name}: label_map is set but label_mode is {self.label_mode!r}; set label_mode='map'.")
            return
        if self.label_map is None:
            raise ValueError(f"Task {self.name}: label_mode='map' needs label_map, e.g. {{1: 1, 2: 1}}.")

        pairs = self.label_map.items() if isinstance(self.label_map, Mapping) else self.label_map
        mapping = {int(source): int(target) for source, target in pairs}
        mapping.setdefault(0, 0)
        declared = {value for value, _ in self.labels}
        unknown = sorted(set(mapping) - declared)
        missing = sorted(declared - set(mapping))
        if unknown or missing:
            raise ValueError(
                f"Task {self.name}: label_map must cover exactly the declared values {sorted(declared)}; "
                f"unknown keys {unknown}, unmapped values {missing}."
            )
        if min(mapping.values()) < 0 or max(mapping.values()) > 255:
            raise ValueError(f"Task {self.name}: label_map targets must lie in 0..255, got {sorted(set(mapping.values()))}.")
        object.__setattr__(self, "label_map", tuple(sorted(mapping.items())))

    @property
    def num_classes(self) -> int:
        """Number of output classes, background included."""
        return int(self.class_lookup().max()) + 1

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names by class index; classes merged by a label map are joined with '+'."""
        names: dict[int, list[str]] = {}
        lookup = self.class_lookup()
        for value, name in self.labels:
            names.setdefault(int(lookup[value]), []).append(name)
        if self.label_mode == "merge":
            return (names[0][0], "foreground")
        return tuple("+".join(names.get(index, [f"class_{index}"])) for index in range(int(lookup.max()) + 1))

    def class_lookup(self) -> np.ndarray:
        """Build a uint8 table that maps each raw label value (index) to its class index."""
        lookup = np.zeros(max(value for value, _ in self.labels) + 1, dtype=np.uint8)
        for position, (value, _) in enumerate(self.labels):
            if self.label_mode == "all":
                lookup[value] = position
            elif self.label_mode == "merge":
                lookup[value] = 1 if value != 0 else 0
        if self.label_mode == "map":
            for value, target in self.label_map:
                lookup[value] = target
        return lookup

    def in_channels(self, context_slices: int = 1) -> int:
        """Network input channels for a 2.5D context of +-context_slices neighbouring slices."""
        return len(self.modalities) * (2 * context_slices + 1)

    def cache_key(self) -> dict[str, Any]:
        """JSON-ready settings that decide the cached arrays; `root` is left out so moved data stays valid."""
        return {
            "name": self.name,
            "modality_kind": self.modality_kind,
            "modalities": list(self.modalities),
            "labels": [list(pair) for pair in self.labels],
            "window_hu": None if self.window_hu is None else list(self.window_hu),
            "label_mode": self.label_mode,
            "label_map": None if self.label_map is None else [list(pair) for pair in self.label_map],
            "ct_stats_hu": None if self.ct_stats_hu is None else list(self.ct_stats_hu),
            "nonfinite": self.nonfinite,
        }


_OVERRIDABLE = tuple(f.name for f in fields(TaskConfig) if f.name not in ("root", "labels"))


def msd_task_config(root: Path | str, **overrides: Any) -> TaskConfig:
    """Build a `TaskConfig` from an MSD task folder's dataset.json.

    The modality kind and label list come from dataset.json, every modality is used and CT tasks
    get their default window, unless `overrides` set other values.

    Args:
        root: The task folder, e.g. "/data/msd/Task03_Liver".
        **overrides: Any of name, modality_kind, modalities, window_hu, label_mode, label_map,
            ct_stats_hu, nonfinite. Giving label_map alone implies label_mode="map".

    Returns:
        The task configuration.

    Raises:
        DatasetError: If the folder or dataset.json is invalid.
        TypeError: If an override name is unknown.
        ValueError: If an override value is invalid (e.g. a modality index the task lacks).
    """
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise TypeError(f"Unknown TaskConfig override(s) {unknown}; expected some of {list(_OVERRIDABLE)}.")

    task = read_msd_task(root, check_headers=False)
    settings: dict[str, Any] = {
        "name": task.name,
        "modality_kind": infer_modality_kind(task.modalities, task.root / "dataset.json"),
        "modalities": tuple(range(len(task.modalities))),
    }
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if "label_map" in settings and "label_mode" not in settings:
        settings["label_mode"] = "map"

    for index in settings["modalities"]:
        if not 0 <= int(index) < len(task.modalities):
            raise ValueError(
                f"Task {task.name}: modality index {index} is out of range; dataset.json declares "
                f"{len(task.modalities)} modalities {task.modalities}."
            )
    for key in ("modalities", "window_hu", "ct_stats_hu"):
        if settings.get(key) is not None:
            settings[key] = tuple(settings[key])

    return TaskConfig(root=task.root, labels=task.labels, **settings)


def load_task_configs(path: Path | str) -> tuple[TaskConfig, ...]:
    """Read task configurations from a YAML (.yaml/.yml) or JSON file.

    The file contains either a list of task entries or an object with "tasks" (that list) and an
    optional "data_root". Each entry has "root" (a task folder, relative paths resolved against
    the file's folder) or "name" (resolved as data_root/name), plus any `msd_task_config`
    override. Example::

        data_root: /data/msd
        tasks:
          - name: Task04_Hippocampus
          - name: Task06_Lung
            window_hu: [-1000, 400]
          - root: ./my_task
            label_mode: merge

    Args:
        path: The YAML or JSON file.

    Returns:
        One `TaskConfig` per entry, in file order.

    Raises:
        DatasetError: If the file is missing or malformed, an entry is invalid or names repeat;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Task configuration file {path} does not exist.")
    document = _parse_config_document(path)

    if isinstance(document, dict):
        entries = document.get("tasks")
        data_root = document.get("data_root")
    else:
        entries, data_root = document, None
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path} must contain a non-empty list of tasks (top level or under 'tasks').")

    base = path.parent
    data_root_path = None if data_root is None else base / Path(str(data_root)).expanduser()
    configs = [_config_from_entry(entry, base, data_root_path, path) for entry in entries]

    names = [config.name for config in configs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"{path} lists task(s) {repeated} more than once; give each entry a distinct name.")
    return tuple(configs)


def _parse_config_document(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path} is not valid JSON: {error}.") from error
    if suffix in (".yaml", ".yml"):
        yaml = require("yaml", "reading YAML task configuration files")
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise DatasetError(f"{path} is not valid YAML: {error}.") from error
    raise DatasetError(f"Task configuration file {path} must end in .yaml, .yml or .json.")


def _config_from_entry(entry: Any, base: Path, data_root: Path | None, source: Path) -> TaskConfig:
    if not isinstance(entry, dict):
        raise DatasetError(f"{source}: task entry {entry!r} is not a mapping; expected e.g. {{name: Task02_Heart}}.")
    entry = dict(entry)

    root_text = entry.pop("root", None)
    if root_text is not None:
        root = base / Path(str(root_text)).expanduser()
    elif "name" in entry and data_root is not None:
        root = data_root / str(entry["name"])
    else:
        raise DatasetError(f"{source}: task entry {entry!r} needs 'root', or 'name' together with a top-level 'data_root'.")

    try:
        return msd_task_config(root, **entry)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{source}: invalid task entry for {root}: {error}") from error
