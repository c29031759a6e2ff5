"""Axial slicing, in-plane resizing and 2.5D context stacking.

Slice layout (radiological convention): given an RAS+ volume, axial slice z is shown as seen from
the feet, so row 0 is the most anterior row and column 0 lies at the patient's right.
"""

import numpy as np
import torch
import torch.nn.functional as F

# Slices resized per torch call; bounds the temporary float32 copy for volumes of ~1000 slices.
_RESIZE_CHUNK = 64


def to_axial_slices(volume: np.ndarray) -> np.ndarray:
    """Rearrange an RAS+ volume [..., X, Y, Z] into axial slices [Z, ..., H, W].

    H runs from anterior to posterior (rows) and W from the patient's right to left (columns).

    Args:
        volume: Array whose last three axes are the canonical x, y, z axes.

    Returns:
        A contiguous array [Z, ..., Y, X] with both in-plane axes reversed.
    """
    slices = np.moveaxis(volume, -1, 0)
    slices = np.swapaxes(slices, -1, -2)
    return np.ascontiguousarray(slices[..., ::-1, ::-1])


def resize_slices(slices: np.ndarray, size: tuple[int, int], is_label: bool = False) -> np.ndarray:
    """Resize slices in-plane to `size` (height, width).

    Images use antialiased bilinear interpolation, labels nearest-neighbour ("nearest-exact",
    which samples pixel centres), so no new label values appear.

    Args:
        slices: Images [Z, C, H, W] (any float dtype) or labels [Z, H, W] (uint8).
        size: Target (height, width) in pixels.
        is_label: Resize as a label map.

    Returns:
        float32 images [Z, C, height, width] or uint8 labels [Z, height, width].
    """
    height, width = size
    if is_label:
        if slices.shape[-2:] == (height, width):
            return slices.astype(np.uint8, copy=False)
        stacked = torch.from_numpy(np.ascontiguousarray(slices)).unsqueeze(1)
        chunks = [
            F.interpolate(chunk, size=(height, width), mode="nearest-exact")
            for chunk in stacked.split(_RESIZE_CHUNK)
        ]
        return torch.cat(chunks)[:, 0].numpy().astype(np.uint8, copy=False)

    if slices.shape[-2:] == (height, width):
        return slices.astype(np.float32, copy=False)
    stacked = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    chunks = [
        F.interpolate(chunk, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        for chunk in stacked.split(_RESIZE_CHUNK)
    ]
    return torch.cat(chunks).numpy()


def context_indices(z: int, num_slices: int, context_slices: int) -> np.ndarray:
    """Slice indices z-k..z+k for a 2.5D input, replicating the first and last slice at the edges."""
    offsets = np.arange(-context_slices, context_slices + 1)
    return np.clip(z + offsets, 0, num_slices - 1)


def stack_context(volume: np.ndarray, z: int, context_slices: int) -> np.ndarray:
    """Build the 2.5D input of slice z from a case's cached slices.

    Channels are grouped by modality: for modalities (m0, m1) and k=1 the order is
    m0[z-1], m0[z], m0[z+1], m1[z-1], m1[z], m1[z+1].

    Args:
        volume: Cached slices [Z, C, H, W].
        z: The centre slice.
        context_slices: Neighbours k on each side; 0 gives plain 2D slices.

    Returns:
        Array [C * (2k + 1), H, W] in the dtype of `volume`.
    """
    num_slices, channels, height, width = volume.shape
    indices = context_indices(z, num_slices, context_slices)
    stacked = np.asarray(volume[indices])  # [2k+1, C, H, W]
    return stacked.transpose(1, 0, 2, 3).reshape(channels * len(indices), height, width)
