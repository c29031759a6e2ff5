"""Segmenting one NIfTI volume with a 2.5D model, the result on the input's own voxel grid."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hydranet_hub.data._optional import require
from hydranet_hub.data.errors import DatasetError
from hydranet_hub.data.nifti import nibabel_module, open_nifti, read_canonical
from hydranet_hub.data.normalize import normalize_image
from hydranet_hub.data.slices import resize_slices, to_axial_slices
from hydranet_hub.data.volume import _handle_nonfinite

from .errors import InferenceError
from .geometry import canonical_to_stored, from_axial_slices, image_like, stored_orientation
from .preprocessing import PREPROCESSING_NAME, InferencePreprocessing
from .runner import check_run_options, iter_slice_probabilities

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PredictionResult:
    """The prediction for one volume, on the input's voxel grid.

    Attributes:
        source: The input file, or "<in-memory image>".
        labels: NIfTI image of uint8 class indices [X, Y, Z] with the input's spatial shape,
            affine and header (intent "label", no intensity scaling).
        probabilities: NIfTI image of float32 class probabilities [X, Y, Z, C] on the same grid,
            summing to 1 over C; None unless requested.
    """

    source: str
    labels: Any
    probabilities: Any | None = None


def predict_volume(
    model: torch.nn.Module,
    preprocessing: InferencePreprocessing,
    image_path_or_nifti: str | os.PathLike | Any,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    tta_flip: bool = False,
    return_probabilities: bool = False,
    amp: bool = False,
    progress: bool = False,
) -> PredictionResult:
    """Segment a 3D or 4D NIfTI volume slice by slice, as the model was trained.

    The volume is reoriented to RAS+, normalised, cut into axial 2.5D slices and resized to
    `preprocessing.slice_size` exactly as the training data pipeline does. Probabilities are
    resized back to the canonical in-plane size (bilinear), the label map is their argmax, and
    both are reordered into the input's stored voxel order, so they overlay the input exactly
    even for oblique or non-RAS files.

    The model is moved to `device` and run in eval mode; its train/eval mode is restored after.

    Args:
        model: A segmentation model, e.g. from `smp.from_pretrained`, taking
            `preprocessing.in_channels` input channels.
        preprocessing: The settings the model was trained with.
        image_path_or_nifti: A `.nii`/`.nii.gz` path or a loaded nibabel NIfTI image. 4D images
            contain modalities in their last axis.
        device: Torch device to run the model on, e.g. "cpu" or "cuda".
        batch_size: Slices per forward pass.
        tta_flip: Average softmax outputs over the identity, left-right and up-down flips of
            each slice (three forward passes per slice).
        return_probabilities: Also return the float32 probability map.
        amp: Run the model under float16 autocast; CUDA devices only.
        progress: Show a tqdm progress bar over the slices.

    Returns:
        The label map, and the probability map when requested.

    Raises:
        InferenceError: If the file is missing, has the wrong number of modalities, a singular
            affine or NaN/Inf voxels (with nonfinite="raise"), the model output does not fit,
            `batch_size` < 1, the device is unavailable, or `amp` is set for a non-CUDA device.
        DatasetError: If the file is not a readable NIfTI image.
    """
    torch_device = check_run_options(device, batch_size, amp)

    nifti, source = _open_input(image_path_or_nifti)
    orientation = stored_orientation(nifti.affine, source)
    image = _read_modalities(nifti, source, preprocessing)

    normalised = normalize_image(image, preprocessing)
    slices = to_axial_slices(normalised)
    canonical_size = tuple(int(side) for side in slices.shape[-2:])
    slices = resize_slices(slices, preprocessing.slice_size)
    _logger.debug("Predicting %s: %d axial slices of %s pixels", source, slices.shape[0], canonical_size)

    # Probabilities [Z, C, Y, X] when requested, else class indices [Z, Y, X].
    slice_output = _run_model(
        model, preprocessing, slices, canonical_size, torch_device,
        batch_size=batch_size, tta_flip=tta_flip, amp=amp, keep_probabilities=return_probabilities,
        progress=progress, source=source,
    )

    if return_probabilities:
        label_slices = slice_output.argmax(axis=1).astype(np.uint8)
        probability_volume = np.moveaxis(from_axial_slices(slice_output), 0, -1)
        probability_image = image_like(canonical_to_stored(probability_volume, orientation), nifti, is_label=False)
    else:
        label_slices = slice_output
        probability_image = None

    labels = canonical_to_stored(from_axial_slices(label_slices), orientation)
    return PredictionResult(
        source=source,
        labels=image_like(labels, nifti, is_label=True),
        probabilities=probability_image,
    )


def _open_input(image_path_or_nifti: Any) -> tuple[Any, str]:
    nib = nibabel_module()
    if isinstance(image_path_or_nifti, (str, os.PathLike)):
        path = Path(image_path_or_nifti)
        if not path.is_file():
            raise InferenceError(f"Input volume {path} does not exist; pass an existing .nii or .nii.gz file.")
        return open_nifti(path), str(path)

    if isinstance(image_path_or_nifti, (nib.Nifti1Image, nib.Nifti2Image)):
        return image_path_or_nifti, "<in-memory image>"
    raise TypeError(
        f"image_path_or_nifti is a {type(image_path_or_nifti).__name__}; expected a path or a nibabel NIfTI image."
    )


def _read_modalities(nifti: Any, source: str, preprocessing: InferencePreprocessing) -> np.ndarray:
    """Read the model's modalities as float32 [C, X, Y, Z] in RAS+ order, NaN/Inf handled."""
    shape = tuple(int(size) for size in nifti.shape)
    if len(shape) not in (3, 4):
        raise InferenceError(
            f"{source} has shape {shape}; expected a 3D volume [X, Y, Z] or a 4D volume [X, Y, Z, modality]."
        )

    available = shape[3] if len(shape) == 4 else 1
    if max(preprocessing.modalities) >= available:
        raise InferenceError(
            f"{source} has {available} modality channel(s) (shape {shape}) but the model reads modality "
            f"indices {list(preprocessing.modalities)}; pass a 4D image with at least "
            f"{max(preprocessing.modalities) + 1} channels in its last axis, in the training order."
        )

    data, _ = read_canonical(nifti, Path(source), dtype=np.float32)
    if data.ndim == 3:
        data = data[..., np.newaxis]
    image = np.ascontiguousarray(np.moveaxis(data, -1, 0)[list(preprocessing.modalities)])

    try:
        _handle_nonfinite(image, Path(source), preprocessing.nonfinite)
    except DatasetError as error:
        raise InferenceError(f"{error} For a trained model, the setting is 'nonfinite' in {PREPROCESSING_NAME}.") from None
    return image


def _run_model(
    model: torch.nn.Module,
    preprocessing: InferencePreprocessing,
    slices: np.ndarray,
    canonical_size: tuple[int, int],
    device: torch.device,
    *,
    batch_size: int,
    tta_flip: bool,
    amp: bool,
    keep_probabilities: bool,
    progress: bool,
    source: str,
) -> np.ndarray:
    """Return probabilities [Z, C, Y, X] float32 if `keep_probabilities`, else class indices [Z, Y, X] uint8."""
    tqdm = require("tqdm", "progress bars during inference").tqdm
    num_slices = slices.shape[0]
    if keep_probabilities:
        output = np.empty((num_slices, preprocessing.num_classes, *canonical_size), dtype=np.float32)
    else:
        output = np.empty((num_slices, *canonical_size), dtype=np.uint8)

    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode(), tqdm(
            total=num_slices, desc=Path(source).name, unit="slice", leave=False, disable=not progress
        ) as bar:
            batches = iter_slice_probabilities(
                model, slices,
                context_slices=preprocessing.context_slices,
                num_classes=preprocessing.num_classes,
                output_size=canonical_size,
                device=device,
                batch_size=batch_size,
                tta_flip=tta_flip,
                amp=amp,
            )
            for start, probabilities in batches:
                stop = start + probabilities.shape[0]
                output[start:stop] = probabilities if keep_probabilities else probabilities.argmax(axis=1)
                bar.update(stop - start)
    finally:
        model.train(was_training)
    return output
