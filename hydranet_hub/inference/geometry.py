"""The way back from the training layout to a file's own voxel grid.

Training reads every volume in RAS+ order (`hydranet_hub.data.nifti.read_canonical`) and cuts
it into axial slices (`hydranet_hub.data.slices.to_axial_slices`). Predictions come out in that
slice layout. The functions here undo both steps, so a label map lines up voxel for voxel with
the file it was predicted from.
"""

import logging
from typing import Any

import numpy as np

from hydranet_hub.data.nifti import nibabel_module

from .errors import InferenceError

_logger = logging.getLogger(__name__)

# NIfTI intent code NIFTI_INTENT_LABEL: voxel values are indices into a list of labels.
_LABEL_INTENT = "label"


def stored_orientation(affine: np.ndarray, source: str) -> np.ndarray:
    """Compute the orientation (nibabel "ornt" array) of a file's voxel axes relative to RAS+.

    Args:
        affine: The file's 4x4 voxel-to-world affine.
        source: The file name, for error messages.

    Returns:
        A [3, 2] array: for each stored axis, the RAS+ axis it runs along and its direction (+1/-1).

    Raises:
        InferenceError: If the affine is singular, so its axes have no world direction.
    """
    nib = nibabel_module()
    orientation = nib.orientations.io_orientation(affine)
    if np.isnan(orientation).any():
        raise InferenceError(
            f"{source} has a singular affine (a voxel axis with no world direction):\n{np.asarray(affine)}\n"
            "Fix its qform/sform, e.g. re-export the file from the scanner or conversion tool."
        )
    return orientation


def canonical_to_stored(data: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Reorder an RAS+ array back into the voxel order of the file it was read from.

    This inverts `read_canonical`: the first three axes are permuted and flipped, trailing axes
    (e.g. classes) stay where they are.

    Args:
        data: Array [X, Y, Z, ...] in RAS+ order.
        orientation: The file's orientation from `stored_orientation`.

    Returns:
        A contiguous array whose first three axes are the file's stored voxel axes.
    """
    nib = nibabel_module()
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ras, orientation)
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, transform))


def from_axial_slices(slices: np.ndarray) -> np.ndarray:
    """Rearrange axial slices [Z, ..., H, W] into an RAS+ volume [..., X, Y, Z].

    This inverts `hydranet_hub.data.to_axial_slices`, whose rows run anterior to posterior and
    whose columns run from the patient's right to left.

    Args:
        slices: Array [Z, ..., Y, X] in the slice layout of training.

    Returns:
        A contiguous array [..., X, Y, Z].
    """
    volume = slices[..., ::-1, ::-1]
    volume = np.swapaxes(volume, -1, -2)
    return np.ascontiguousarray(np.moveaxis(volume, 0, -1))


def image_like(data: np.ndarray, reference: Any, *, is_label: bool) -> Any:
    """Wrap a prediction in a NIfTI image with the reference's affine and a copy of its header.

    The header keeps the reference's qform, sform, their codes and units, so viewers place the
    prediction exactly over the reference. Its intensity scaling (scl_slope, scl_inter) is reset
    because predictions are stored unscaled.

    Args:
        data: uint8 class indices [X, Y, Z] or float32 probabilities [X, Y, Z, C], in the
            reference's stored voxel order.
        reference: The NIfTI image the prediction was made from.
        is_label: Whether `data` is a label map; sets the header intent to "label".

    Returns:
        An image of the reference's class (Nifti1Image or Nifti2Image).
    """
    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(None, None)
    header.set_intent(_LABEL_INTENT if is_label else "none", ())

    # nibabel 5 keeps the header's qform, sform and codes when the affine equals the header's own.
    return type(reference)(data, reference.affine, header)
