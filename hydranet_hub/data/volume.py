"""Loading one MSD case into canonical (RAS+) arrays with voxel-level validation."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .msd import MSDCase, MSDTask, check_case_headers
from .nifti import open_nifti, read_canonical, spacing_from_affine

_logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("raise", "fill_min")


@dataclass(frozen=True, eq=False)
class CaseVolume:
    """One case in RAS+ orientation.

    Attributes:
        case_id: The case id, e.g. "BRATS_001".
        image: float32 array [C, X, Y, Z], one channel per modality in dataset.json order, with
            scl_slope/scl_inter applied (CT in HU).
        label: uint8 array [X, Y, Z] of the raw label values declared in dataset.json.
        spacing_mm: Voxel spacing (x, y, z) in mm.
        affine: The canonical 4x4 voxel-to-world affine.
    """

    case_id: str
    image: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray = field(repr=False)


def load_case(
    case: MSDCase,
    num_modalities: int,
    label_values: tuple[int, ...],
    nonfinite: str = "raise",
) -> CaseVolume:
    """Load, reorient to RAS+ and validate one case's image and label.

    Args:
        case: The case to load.
        num_modalities: Channels the image must have (the modalities of dataset.json).
        label_values: Label values dataset.json declares; any other value is an error.
        nonfinite: What to do with NaN/Inf image voxels. "raise" (default) rejects the file,
            because non-finite voxels usually mean a broken conversion. "fill_min" replaces them
            with the smallest finite value of their channel and logs a warning.

    Returns:
        The validated case volume.

    Raises:
        DatasetError: If a file is unreadable or truncated, the grids differ, image voxels are
            NaN/Inf (with nonfinite="raise"), or the label holds non-integer or undeclared values.
        ValueError: If `nonfinite` is not one of NONFINITE_POLICIES.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite={nonfinite!r} is invalid; expected one of {NONFINITE_POLICIES}.")
    check_case_headers(case, num_modalities)

    image_nifti = open_nifti(case.image)
    image, affine = read_canonical(image_nifti, case.image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., np.newaxis]
    image = np.ascontiguousarray(np.moveaxis(image, -1, 0))
    _handle_nonfinite(image, case.image, nonfinite)

    label_nifti = open_nifti(case.label)
    label, _ = read_canonical(label_nifti, case.label)
    if label.ndim == 4:
        label = label[..., 0]
    label = _validate_label(label, case.label, label_values)

    return CaseVolume(
        case_id=case.case_id,
        image=image,
        label=label,
        spacing_mm=spacing_from_affine(affine),
        affine=affine,
    )


def check_msd_task(task: MSDTask, nonfinite: str = "raise") -> None:
    """Load every case of a task once to run the voxel-level checks of `load_case`.

    This decompresses the whole task, so it takes as long as reading the data set once.

    Raises:
        DatasetError: For the first case that fails validation.
    """
    for case in task.cases:
        load_case(case, len(task.modalities), task.label_values, nonfinite)


def _handle_nonfinite(image: np.ndarray, path: Path, policy: str) -> None:
    finite = np.isfinite(image)
    if finite.all():
        return

    bad_count = int(finite.size - np.count_nonzero(finite))
    if policy == "raise":
        raise DatasetError(
            f"Image {path} contains {bad_count} NaN/Inf voxel(s). Repair the file, or set "
            "nonfinite='fill_min' in the task config to replace them with the channel minimum."
        )

    _logger.warning("Replacing %d NaN/Inf voxel(s) in %s with the channel minimum", bad_count, path)
    for channel, channel_finite in zip(image, finite):
        fill = channel[channel_finite].min() if channel_finite.any() else 0.0
        channel[~channel_finite] = fill


def _validate_label(label: np.ndarray, path: Path, label_values: tuple[int, ...]) -> np.ndarray:
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            raise DatasetError(f"Label {path} contains NaN/Inf voxels; labels must be integer class values.")
        rounded = np.rint(label)
        if not np.array_equal(rounded, label):
            raise DatasetError(
                f"Label {path} contains non-integer values; it may be an interpolated label map. "
                "Re-export it with nearest-neighbour interpolation."
            )
        label = rounded

    present = np.unique(label)
    undeclared = sorted({int(value) for value in present.tolist()} - set(label_values))
    if undeclared:
        raise DatasetError(
            f"Label {path} contains value(s) {undeclared} that dataset.json does not declare "
            f"(declared: {list(label_values)}). Add them to 'labels' in dataset.json or fix the label file."
        )
    return label.astype(np.uint8)
