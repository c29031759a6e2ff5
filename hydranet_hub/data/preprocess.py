"""Turning one MSD case into cache-ready axial slice arrays."""

import logging
from dataclasses import dataclass, field

import numpy as np

from .config import TaskConfig
from .msd import MSDCase
from .normalize import normalize_image
from .slices import resize_slices, to_axial_slices
from .volume import load_case

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PreprocessedCase:
    """One case as normalised, resized axial slices.

    Attributes:
        case_id: The case id.
        image: float32 [Z, C, H, W]; channels are the config's modalities, z runs inferior to superior.
        label: uint8 class indices [Z, H, W] after the config's label mode.
        spacing_mm: Source voxel spacing (x, y, z) in mm, before in-plane resizing.
        source_shape: Canonical source grid (x, y, z) in voxels.
        foreground_slices: Indices z whose label contains any non-background class.
    """

    case_id: str
    image: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float, float]
    source_shape: tuple[int, int, int]
    foreground_slices: tuple[int, ...]


def preprocess_case(
    config: TaskConfig,
    case: MSDCase,
    num_modalities: int,
    slice_size: tuple[int, int],
) -> PreprocessedCase:
    """Load, reorient, normalise, slice and resize one case.

    Normalisation runs on the native voxel grid before resizing, so the statistics do not depend
    on `slice_size`.

    Args:
        config: Task settings (modalities, window, label mode).
        case: The case to process.
        num_modalities: Modalities declared in dataset.json (the image's channel count).
        slice_size: In-plane (height, width) of the cached slices in pixels.

    Returns:
        The cache-ready case.

    Raises:
        DatasetError: If the case fails validation in `load_case`.
    """
    volume = load_case(case, num_modalities, tuple(value for value, _ in config.labels), config.nonfinite)

    image = normalize_image(volume.image[list(config.modalities)], config)
    image_slices = resize_slices(to_axial_slices(image), slice_size)

    classes = config.class_lookup()[volume.label]
    label_slices = resize_slices(to_axial_slices(classes), slice_size, is_label=True)
    foreground = np.flatnonzero(label_slices.reshape(label_slices.shape[0], -1).any(axis=1))

    _logger.debug("Preprocessed %s: %d slices, %d with foreground", case.case_id, len(label_slices), len(foreground))
    return PreprocessedCase(
        case_id=case.case_id,
        image=image_slices,
        label=label_slices,
        spacing_mm=volume.spacing_mm,
        source_shape=tuple(int(size) for size in volume.label.shape),
        foreground_slices=tuple(int(z) for z in foreground),
    )
