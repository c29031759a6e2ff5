"""Intensity normalisation for CT and MRI volumes.

Both paths end in a z-score clipped to [-ZSCORE_CLIP, ZSCORE_CLIP]. The encoder's config.json
declares this input range, so training and inference inputs share one scale.
"""

import logging

import numpy as np

from .config import TaskConfig

_logger = logging.getLogger(__name__)

ZSCORE_CLIP = 5.0

# Below this standard deviation a volume is treated as constant and only centred.
_MIN_STD = 1e-6


def normalize_ct(
    volume_hu: np.ndarray,
    window_hu: tuple[float, float],
    stats_hu: tuple[float, float] | None = None,
) -> np.ndarray:
    """Clip a CT volume to an HU window, then standardise it.

    Without fixed statistics, mean and standard deviation come from the voxels that lie inside
    the window, so the share of air or bone in the field of view does not shift the scale. If no
    voxel lies inside, all clipped voxels are used.

    Args:
        volume_hu: CT intensities in Hounsfield units, any shape.
        window_hu: (low, high) window in HU.
        stats_hu: Optional fixed (mean, std) in HU, e.g. data set statistics.

    Returns:
        float32 z-scores of the same shape, clipped to [-ZSCORE_CLIP, ZSCORE_CLIP].
    """
    low, high = window_hu
    clipped = np.clip(volume_hu, low, high).astype(np.float32, copy=False)

    if stats_hu is not None:
        mean, std = stats_hu
    else:
        inside = (volume_hu >= low) & (volume_hu <= high)
        sample = clipped[inside] if inside.any() else clipped
        mean, std = _mean_std(sample)
    return _standardise(clipped, mean, std)


def normalize_mri(volume: np.ndarray) -> np.ndarray:
    """Standardise one MRI channel with statistics of its foreground (nonzero voxels).

    MSD MRI volumes are zero outside the scanned anatomy (BrainTumour is skull-stripped), so
    nonzero voxels are the foreground. The z-score is applied to every voxel, background included,
    which keeps the background darker than tissue. A volume without nonzero voxels becomes zeros.

    Args:
        volume: One MRI channel, any shape, arbitrary units.

    Returns:
        float32 z-scores of the same shape, clipped to [-ZSCORE_CLIP, ZSCORE_CLIP].
    """
    foreground = volume != 0
    if not foreground.any():
        return np.zeros(volume.shape, dtype=np.float32)

    mean, std = _mean_std(volume[foreground])
    return _standardise(volume.astype(np.float32, copy=False), mean, std)


def normalize_image(image: np.ndarray, config: TaskConfig) -> np.ndarray:
    """Normalise a multi-channel volume [C, ...] channel by channel according to a task config.

    Args:
        image: Volume with the channel axis first, CT in HU.
        config: Supplies modality_kind, window_hu and ct_stats_hu.

    Returns:
        float32 array of the same shape, clipped to [-ZSCORE_CLIP, ZSCORE_CLIP].
    """
    normalised = np.empty(image.shape, dtype=np.float32)
    for channel in range(image.shape[0]):
        if config.modality_kind == "CT":
            normalised[channel] = normalize_ct(image[channel], config.window_hu, config.ct_stats_hu)
        else:
            normalised[channel] = normalize_mri(image[channel])
    return normalised


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    # float64 accumulation keeps the statistics exact for volumes of hundreds of millions of voxels.
    return float(np.mean(values, dtype=np.float64)), float(np.std(values, dtype=np.float64))


def _standardise(volume: np.ndarray, mean: float, std: float) -> np.ndarray:
    if std < _MIN_STD:
        _logger.debug("Volume is constant (std %.3g); centring without scaling", std)
        std = 1.0
    standardised = (volume - np.float32(mean)) / np.float32(std)
    return np.clip(standardised, -ZSCORE_CLIP, ZSCORE_CLIP).astype(np.float32, copy=False)
