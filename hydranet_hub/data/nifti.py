"""NIfTI file access: guarded opening, canonical (RAS+) grids and reoriented voxel arrays.

Every array this module returns is in the closest canonical orientation of its file's affine,
so axis 0 runs towards the patient's right, axis 1 towards anterior and axis 2 towards superior,
whatever the storage order on disk.
"""

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError
from ._optional import require

_logger = logging.getLogger(__name__)

# Image and label grids count as equal when every affine entry agrees within this tolerance.
# Translations are in mm, so 1e-3 mm is far below any voxel size yet above float32 rounding.
AFFINE_ATOL_MM = 1e-3

# Largest ratio of uncompressed to compressed size that deflate (gzip) can reach.
_MAX_DEFLATE_RATIO = 1032

_REPAIR_HINT = "Re-extract the file from the MSD archive or re-export it as NIfTI-1 (.nii.gz)."


def nibabel_module() -> Any:
    """Import nibabel, raising an ImportError that names the `train` extra when it is missing."""
    return require("nibabel", "reading MSD NIfTI files")


def open_nifti(path: Path) -> Any:
    """Open a NIfTI file lazily, reading only its header.

    Args:
        path: A `.nii` or `.nii.gz` file.

    Returns:
        A `nibabel.Nifti1Image` (or `Nifti2Image`) whose voxel data is not loaded yet.

    Raises:
        DatasetError: If the file is missing, empty, not gzip or NIfTI, its header is truncated,
            or the header declares more voxel data than the file can hold.
    """
    nib = nibabel_module()
    path = Path(path)

    if not path.is_file():
        raise DatasetError(f"NIfTI file {path} does not exist. Restore it or remove it from dataset.json.")
    if path.stat().st_size == 0:
        raise DatasetError(f"NIfTI file {path} is empty (0 bytes). {_REPAIR_HINT}")

    try:
        image = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as error:
        raise DatasetError(f"Could not read a NIfTI header from {path}: {error}. {_REPAIR_HINT}") from error

    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DatasetError(
            f"{path} is a {type(image).__name__}, expected a NIfTI image. {_REPAIR_HINT}"
        )
    _check_declared_size(image, path)
    return image


def _check_declared_size(image: Any, path: Path) -> None:
    # nibabel allocates the whole array the header declares before reading, so a damaged header
    # (dims of 4000^3 in a 1 kB file) would ask for hundreds of GB. Deflate cannot compress by
    # more than 1032:1 (zlib's documented limit), which bounds what a .nii.gz can hold.
    header = image.header
    voxel_count = int(np.prod([int(size) for size in header.get_data_shape()], dtype=object))
    # The header of a loaded image is a copy whose vox_offset nibabel resets; the proxy keeps the file's.
    offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))
    declared_bytes = offset + voxel_count * header.get_data_dtype().itemsize
    file_bytes = path.stat().st_size
    compressed = path.name.endswith(".gz")
    capacity = file_bytes * _MAX_DEFLATE_RATIO if compressed else file_bytes
    if declared_bytes > capacity:
        raise DatasetError(
            f"NIfTI file {path} declares shape {header.get_data_shape()} of {header.get_data_dtype()} "
            f"({declared_bytes} bytes), more than its {file_bytes} bytes{' of gzip data' if compressed else ''} "
            f"can hold: the file is truncated or its header is damaged. {_REPAIR_HINT}"
        )


def canonical_grid(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Compute the affine and spatial shape a grid has after reorientation to RAS+.

    Args:
        affine: The 4x4 voxel-to-world affine of the stored grid.
        shape: The stored array shape; only the first three (spatial) axes are used.

    Returns:
        The canonical 4x4 affine and the canonical spatial shape, without touching voxel data.
    """
    nib = nibabel_module()
    orientation = nib.orientations.io_orientation(affine)
    spatial_shape = tuple(int(size) for size in shape[:3])
    transform = nib.orientations.inv_ornt_aff(orientation, spatial_shape)
    # Row i of the orientation gives the canonical axis that stored axis i becomes.
    canonical_shape = [0, 0, 0]
    for stored_axis, canonical_axis in enumerate(orientation[:, 0]):
        canonical_shape[int(canonical_axis)] = spatial_shape[stored_axis]
    return affine @ transform, tuple(canonical_shape)


def grids_match(image: Any, label: Any) -> bool:
    """Tell whether two NIfTI images cover the same voxel grid once both are reoriented to RAS+.

    Files stored in different axis orders (e.g. the image LPS, the label RAS) still match when they
    describe the same voxels in world space.
    """
    image_affine, image_shape = canonical_grid(image.affine, image.shape)
    label_affine, label_shape = canonical_grid(label.affine, label.shape)
    return image_shape == label_shape and bool(np.allclose(image_affine, label_affine, rtol=0.0, atol=AFFINE_ATOL_MM))


def read_canonical(image: Any, path: Path, dtype: np.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load voxel data, apply scl_slope/scl_inter and reorient the spatial axes to RAS+.

    Args:
        image: An image from `open_nifti`.
        path: The file the image came from, for error messages.
        dtype: Floating dtype to load scaled data as (e.g. np.float32). None keeps the stored
            integer type when the header has no scaling, which labels need.

    Returns:
        The reoriented array (trailing non-spatial axes kept) and its canonical affine.

    Raises:
        DatasetError: If the voxel data is truncated or cannot be decompressed.
    """
    nib = nibabel_module()

    try:
        if dtype is None:
            data = np.asanyarray(image.dataobj)
        else:
            data = image.get_fdata(dtype=dtype)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise DatasetError(
            f"Could not read voxel data from {path} (truncated or damaged file?): {error}. {_REPAIR_HINT}"
        ) from error

    orientation = nib.orientations.io_orientation(image.affine)
    data = np.ascontiguousarray(nib.orientations.apply_orientation(data, orientation))
    affine, _ = canonical_grid(image.affine, image.shape)
    return data, affine


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm along each axis of a grid, from the column norms of its affine."""
    return tuple(float(value) for value in np.linalg.norm(affine[:3, :3], axis=0))
