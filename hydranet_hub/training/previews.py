"""PNG previews: per task one row of image, reference label and predicted label."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

_logger = logging.getLogger(__name__)

# Distinct colours for classes 1..N (class 0, background, stays black); repeats past the end.
_PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)],
    dtype=np.uint8,
)
_TITLE_HEIGHT_PX = 14


@dataclass(frozen=True)
class PreviewSample:
    """One slice to draw: the centre input channel, the reference and the predicted labels."""

    image: np.ndarray  # [H, W] float, any range
    label: np.ndarray  # [H, W] integer classes
    prediction: np.ndarray  # [H, W] integer classes


def preview_sample(image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor) -> PreviewSample:
    """Build a preview from one sample's tensors.

    Args:
        image: [C, H, W] input; the middle channel (the slice itself in 2.5D input) is drawn.
        label: [H, W] reference classes.
        logits: [K, H, W] model output.
    """
    centre = image.shape[0] // 2
    return PreviewSample(
        image=image[centre].detach().float().cpu().numpy(),
        label=label.detach().cpu().numpy().astype(np.int64),
        prediction=logits.detach().float().argmax(dim=0).cpu().numpy().astype(np.int64),
    )


def _grey(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (1, 99))
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=2)


def _colour(classes: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*classes.shape, 3), dtype=np.uint8)
    foreground = classes > 0
    rgb[foreground] = _PALETTE[(classes[foreground] - 1) % len(_PALETTE)]
    return rgb


def render_previews(samples: Mapping[str, PreviewSample], scale: int = 2) -> Image.Image:
    """Draw one row per task: image | reference label | prediction, with the task name above.

    Args:
        samples: Task name -> sample; all images have the same size.
        scale: Integer upscaling factor (nearest neighbour) so small slices stay visible.

    Returns:
        An RGB image.
    """
    rows = []
    for task, sample in samples.items():
        tiles = [_grey(sample.image), _colour(sample.label), _colour(sample.prediction)]
        row = np.concatenate(tiles, axis=1)
        row = row.repeat(scale, axis=0).repeat(scale, axis=1)
        title = Image.new("RGB", (row.shape[1], _TITLE_HEIGHT_PX))
        ImageDraw.Draw(title).text((2, 1), f"{task}: image | label | prediction", fill=(255, 255, 255))
        rows.append(np.concatenate([np.asarray(title), row], axis=0))
    return Image.fromarray(np.concatenate(rows, axis=0))


def save_previews(samples: Mapping[str, PreviewSample], folder: str | os.PathLike[str], step: int) -> Path:
    """Render previews and write them to `<folder>/step_<step>.png`.

    Returns:
        The PNG path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.png"
    render_previews(samples).save(path)
    _logger.debug("Saved previews %s", path)
    return path
