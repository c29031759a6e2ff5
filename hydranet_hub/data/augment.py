"""2D data augmentation applied identically to a slice and its label."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .normalize import ZSCORE_CLIP


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentations of a 2.5D slice; every probability is per sample.

    Geometric transforms move image and label together, with nearest-neighbour sampling for
    labels. Intensity transforms change the image only, and their result is clipped back to
    [-ZSCORE_CLIP, ZSCORE_CLIP].

    Attributes:
        flip_probability: Chance of a left-right flip, and independently of an up-down flip.
        rotate90_probability: Chance of a rotation by a random multiple of 90 degrees. On
            non-square slices only 180 degrees is used, so batch shapes stay fixed.
        rotate_probability: Chance of a small rotation.
        rotate_max_degrees: Largest small-rotation angle in degrees, either direction.
        scale_probability: Chance of multiplying intensities by a factor from `scale_range`.
        scale_range: (low, high) intensity factor.
        shift_probability: Chance of adding an offset from `shift_range`.
        shift_range: (low, high) offset in z-score units (standard deviations).
        gamma_probability: Chance of a gamma curve on intensities rescaled to [0, 1] per channel.
        gamma_range: (low, high) gamma exponent.
    """

    flip_probability: float = 0.5
    rotate90_probability: float = 0.5
    rotate_probability: float = 0.2
    rotate_max_degrees: float = 15.0
    scale_probability: float = 0.3
    scale_range: tuple[float, float] = (0.9, 1.1)
    shift_probability: float = 0.3
    shift_range: tuple[float, float] = (-0.1, 0.1)
    gamma_probability: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        for name in ("flip", "rotate90", "rotate", "scale", "shift", "gamma"):
            value = getattr(self, f"{name}_probability")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}_probability={value} is invalid; expected a probability in [0, 1].")
        for name in ("scale_range", "shift_range", "gamma_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}=({low}, {high}) is invalid; expected (low, high) with low <= high.")
        if self.scale_range[0] <= 0 or self.gamma_range[0] <= 0:
            raise ValueError("scale_range and gamma_range must be positive; their lower bounds are <= 0.")
        if not 0.0 <= self.rotate_max_degrees <= 180.0:
            raise ValueError(f"rotate_max_degrees={self.rotate_max_degrees} is invalid; expected 0 to 180.")

    @classmethod
    def disabled(cls) -> "AugmentConfig":
        """Return a configuration whose transforms never fire."""
        return cls(
            flip_probability=0.0,
            rotate90_probability=0.0,
            rotate_probability=0.0,
            scale_probability=0.0,
            shift_probability=0.0,
            gamma_probability=0.0,
        )


def augment_sample(
    image: torch.Tensor,
    label: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply random geometric and intensity transforms to one sample.

    Args:
        image: float32 [C, H, W] z-scored slice stack.
        label: int64 [H, W] class indices.
        config: Which transforms may fire, and how strongly.
        generator: Source of randomness; the same generator state gives the same result.

    Returns:
        The transformed (image, label), with the input shapes and dtypes.
    """
    if _chance(config.flip_probability, generator):
        image, label = image.flip(-1), label.flip(-1)
    if _chance(config.flip_probability, generator):
        image, label = image.flip(-2), label.flip(-2)

    if _chance(config.rotate90_probability, generator):
        square = image.shape[-1] == image.shape[-2]
        turns = int(torch.randint(1, 4, (1,), generator=generator)) if square else 2
        image, label = torch.rot90(image, turns, dims=(-2, -1)), torch.rot90(label, turns, dims=(-2, -1))

    if _chance(config.rotate_probability, generator):
        degrees = _uniform(-config.rotate_max_degrees, config.rotate_max_degrees, generator)
        image, label = _rotate(image, label, degrees)

    intensity_changed = False
    if _chance(config.scale_probability, generator):
        image = image * _uniform(*config.scale_range, generator)
        intensity_changed = True
    if _chance(config.shift_probability, generator):
        image = image + _uniform(*config.shift_range, generator)
        intensity_changed = True
    if _chance(config.gamma_probability, generator):
        image = _gamma(image, _uniform(*config.gamma_range, generator))
        intensity_changed = True
    if intensity_changed:
        image = image.clamp(-ZSCORE_CLIP, ZSCORE_CLIP)

    return image.contiguous(), label.contiguous()


def _chance(probability: float, generator: torch.Generator) -> bool:
    # Draw even when the probability is 0 or 1, so the random stream does not depend on the config.
    draw = float(torch.rand((), generator=generator))
    return draw < probability


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _rotate(image: torch.Tensor, label: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    radians = math.radians(degrees)
    cosine, sine = math.cos(radians), math.sin(radians)
    height, width = image.shape[-2:]

    # affine_grid works in normalised [-1, 1] coordinates, so the aspect ratio is undone around the rotation.
    theta = torch.tensor(
        [[cosine, -sine * height / width, 0.0], [sine * width / height, cosine, 0.0]],
        dtype=torch.float32,
    ).unsqueeze(0)
    grid = F.affine_grid(theta, [1, image.shape[0], height, width], align_corners=False)

    # Border padding repeats edge intensities instead of inventing a 0 (= mean) rim; labels pad with background.
    rotated_image = F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)
    rotated_label = F.grid_sample(
        label[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return rotated_image[0], rotated_label[0, 0].to(label.dtype)


def _gamma(image: torch.Tensor, gamma: float) -> torch.Tensor:
    low = image.amin(dim=(-2, -1), keepdim=True)
    high = image.amax(dim=(-2, -1), keepdim=True)
    span = (high - low).clamp_min(1e-6)
    unit = (image - low) / span
    return unit.pow(gamma) * span + low
