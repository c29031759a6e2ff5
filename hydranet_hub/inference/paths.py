"""Predicting a file or a folder of NIfTI volumes into an output folder without overwriting by accident."""

import errno
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hydranet_hub.data._optional import require
from hydranet_hub.data.nifti import nibabel_module

from .errors import InferenceError, OutputExistsError
from .model_folder import load_model_folder
from .runner import check_run_options
from .volume import predict_volume

_logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABELS_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"


@dataclass(frozen=True)
class PredictedFiles:
    """The files written for one input volume.

    Attributes:
        source: The input volume.
        labels: The uint8 label map `<name>.nii.gz`.
        probabilities: The float32 probability map `<name>_probabilities.nii.gz`, or None.
    """

    source: Path
    labels: Path
    probabilities: Path | None = None


def find_volumes(inputs: Path | str) -> tuple[Path, ...]:
    """List the NIfTI volumes to predict: one file, or the `.nii`/`.nii.gz` files of a folder.

    Folders are not searched recursively. Hidden files (names starting with ".", such as the
    AppleDouble `._case.nii.gz` files macOS leaves on shared drives) are skipped.

    Args:
        inputs: A `.nii`/`.nii.gz` file or a folder.

    Returns:
        The volumes, sorted by name.

    Raises:
        InferenceError: If the path does not exist, a file is not NIfTI, or a folder contains none.
    """
    path = Path(inputs)
    if path.is_file():
        if _volume_name(path) is None:
            raise InferenceError(f"Input {path} is not a NIfTI file; expected a name ending in .nii or .nii.gz.")
        return (path,)
    if not path.is_dir():
        raise InferenceError(f"Input {path} does not exist; pass a .nii/.nii.gz file or a folder of them.")

    volumes = sorted(
        entry for entry in path.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and _volume_name(entry) is not None
    )
    if not volumes:
        raise InferenceError(f"Input folder {path} contains no .nii or .nii.gz files (hidden files are skipped).")
    return tuple(volumes)


def plan_outputs(volumes: tuple[Path, ...], output_dir: Path | str, *, probabilities: bool) -> tuple[PredictedFiles, ...]:
    """Name the output files of each volume and check that no two outputs and no input coincide.

    Raises:
        InferenceError: If two volumes map to the same output (e.g. case.nii and case.nii.gz), or
            an output would replace one of the inputs.
    """
    output_dir = Path(output_dir)
    plans = []
    for volume in volumes:
        name = _volume_name(volume)
        plans.append(PredictedFiles(
            source=volume,
            labels=output_dir / f"{name}{LABELS_SUFFIX}",
            probabilities=output_dir / f"{name}{PROBABILITIES_SUFFIX}" if probabilities else None,
        ))

    inputs = {_identity(volume): volume for volume in volumes}
    claimed: dict[Path, Path] = {}
    for plan in plans:
        for output in _outputs_of(plan):
            key = _identity(output)
            if key in inputs:
                raise InferenceError(
                    f"Output {output} would replace the input volume {inputs[key]}; choose another output folder."
                )
            if key in claimed:
                raise InferenceError(
                    f"Inputs {claimed[key]} and {plan.source} would both be written to {output}; rename one of them."
                )
            claimed[key] = plan.source
    return tuple(plans)


def predict_paths(
    model_dir: Path | str,
    inputs: Path | str,
    output_dir: Path | str,
    *,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    tta_flip: bool = False,
    probabilities: bool = False,
    amp: bool = False,
    progress: bool = True,
) -> tuple[PredictedFiles, ...]:
    """Segment one volume or a folder of volumes with a fine-tuned model folder.

    Every output path is checked before the model is loaded, so with `overwrite=False` an
    existing output stops the run before anything is written. Each file is written to a hidden
    temporary name in `output_dir` and then renamed, so an interrupted run leaves no partial
    `.nii.gz` behind.

    Args:
        model_dir: Folder with config.json, model.safetensors (smp `save_pretrained`) and
            preprocessing.json.
        inputs: A `.nii`/`.nii.gz` file or a folder of them (see `find_volumes`).
        output_dir: Folder for `<name>.nii.gz` label maps; created if missing.
        overwrite: Replace existing output files.
        device: Torch device, e.g. "cpu" or "cuda".
        batch_size: Slices per forward pass.
        tta_flip: Flip test-time augmentation (see `predict_volume`).
        probabilities: Also write `<name>_probabilities.nii.gz` (float32 [X, Y, Z, C]).
        amp: float16 autocast on CUDA.
        progress: Show tqdm progress bars over volumes and over slices.

    Returns:
        The files written, one record per input volume, in input order.

    Raises:
        InferenceError: For a missing or invalid model folder or input, outputs that collide, or
            invalid options (see `predict_volume`).
        OutputExistsError: If an output exists and `overwrite` is False; names the first one.
        DatasetError: If an input is not a readable NIfTI image.
    """
    check_run_options(device, batch_size, amp)
    volumes = find_volumes(inputs)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InferenceError(f"Output {output_dir} exists and is not a folder; choose a folder path.")
    plans = plan_outputs(volumes, output_dir, probabilities=probabilities)
    if not overwrite:
        _check_no_existing_outputs(plans)

    loaded = load_model_folder(model_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tqdm = require("tqdm", "progress bars during inference").tqdm

    for plan in tqdm(plans, desc="volumes", unit="volume", disable=not progress):
        result = predict_volume(
            loaded.model, loaded.preprocessing, plan.source,
            device=device, batch_size=batch_size, tta_flip=tta_flip,
            return_probabilities=probabilities, amp=amp, progress=progress,
        )
        write_nifti_atomically(result.labels, plan.labels, overwrite=overwrite)
        if plan.probabilities is not None:
            write_nifti_atomically(result.probabilities, plan.probabilities, overwrite=overwrite)
        _logger.info("Wrote %s", plan.labels)
    return plans


def write_nifti_atomically(image: Any, path: Path, *, overwrite: bool) -> None:
    """Save a NIfTI image to a temporary file beside `path`, then move it into place.

    Without `overwrite` the final step is a hard link, which fails if `path` appeared in the
    meantime, so a file created by another process is never replaced. On file systems without
    hard links, existence is checked right before the rename instead.

    Raises:
        OutputExistsError: If `path` exists and `overwrite` is False.
    """
    nib = nibabel_module()
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}")

    try:
        nib.save(image, str(temporary))
        if overwrite:
            os.replace(temporary, path)
            return
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise _exists_error(path) from None
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            if path.exists():
                raise _exists_error(path) from None
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _check_no_existing_outputs(plans: tuple[PredictedFiles, ...]) -> None:
    for plan in plans:
        for output in _outputs_of(plan):
            if output.exists():
                raise _exists_error(output)


def _exists_error(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"Output {path} already exists; nothing was overwritten. Pass --overwrite (overwrite=True) to "
        "replace existing outputs, or choose another output folder."
    )


def _outputs_of(plan: PredictedFiles) -> tuple[Path, ...]:
    return (plan.labels,) if plan.probabilities is None else (plan.labels, plan.probabilities)


def _volume_name(path: Path) -> str | None:
    lower = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _identity(path: Path) -> Path:
    # Resolving symlinks and ".." lets two spellings of one file compare equal.
    return path.resolve()
