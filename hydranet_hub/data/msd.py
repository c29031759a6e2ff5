"""Reading Medical Segmentation Decathlon task folders: dataset.json and the case list it declares.

An MSD task folder looks like `TaskXX_Name/{dataset.json, imagesTr/, labelsTr/, imagesTs/}`.
dataset.json lists training pairs with "./" prefixed paths, declares the modalities (the channels
of the 4th image axis) and the label values. The archives also leave AppleDouble `._*` files next
to the real ones; those are never treated as cases.
"""

import errno
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import DatasetError
from .nifti import grids_match, open_nifti

_logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class MSDCase:
    """One training case: an image file and its label file, both inside the task folder."""

    case_id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class MSDTask:
    """A parsed MSD task folder.

    Attributes:
        name: Folder name, e.g. "Task02_Heart".
        root: The task folder.
        modalities: Modality names by channel index, e.g. ("FLAIR", "T1w", "t1gd", "T2w").
        labels: Declared (value, name) pairs sorted by value, background (0) first.
        cases: Training cases sorted by case id.
        test_images: Unlabelled test images (imagesTs), sorted.
        description: The free-text "description" of dataset.json, or "".
    """

    name: str
    root: Path
    modalities: tuple[str, ...]
    labels: tuple[tuple[int, str], ...]
    cases: tuple[MSDCase, ...]
    test_images: tuple[Path, ...]
    description: str = ""

    @property
    def label_values(self) -> tuple[int, ...]:
        """Declared label values, sorted."""
        return tuple(value for value, _ in self.labels)

    @property
    def modality_kind(self) -> str:
        """"CT" when every modality is CT, otherwise "MRI"."""
        return infer_modality_kind(self.modalities, self.root / "dataset.json")

    def case(self, case_id: str) -> MSDCase:
        """Return the case with this id.

        Raises:
            KeyError: If no case has this id; the message lists the first few ids.
        """
        for case in self.cases:
            if case.case_id == case_id:
                return case
        known = ", ".join(case.case_id for case in self.cases[:5])
        raise KeyError(f"Case {case_id!r} is not in task {self.name}; known cases start with: {known}.")


def infer_modality_kind(modalities: tuple[str, ...], source: Path) -> str:
    """Classify a modality list as "CT" or "MRI".

    Raises:
        DatasetError: If CT is mixed with other modalities, which no single normalisation fits.
    """
    is_ct = [name.strip().upper() == "CT" for name in modalities]
    if all(is_ct):
        return "CT"
    if any(is_ct):
        raise DatasetError(
            f"{source} mixes CT with other modalities {modalities}; split the channels into separate tasks."
        )
    return "MRI"


def read_msd_task(root: Path | str, check_headers: bool = True) -> MSDTask:
    """Parse and validate an MSD task folder.

    Validation covers dataset.json itself and every listed path, which must exist inside the
    folder. With `check_headers`, each case's NIfTI headers are checked too: the image must be 3D,
    or 4D with one channel per declared modality, the label 3D, and both must cover the same voxel
    grid. Voxel-level checks (NaN/Inf, undeclared label values, truncated data) need the full data.
    They run in `load_case`, which the slice cache build calls for every case.

    When dataset.json has no "training" list, cases are found by pairing `imagesTr/` and
    `labelsTr/` files of the same name, skipping hidden and AppleDouble (`._*`) files.

    Args:
        root: The task folder, e.g. "/data/msd/Task01_BrainTumour".
        check_headers: Read every NIfTI header (fast: no voxel data is decompressed).

    Returns:
        The parsed task.

    Raises:
        DatasetError: For every invalid input; the message names the file and the fix.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"MSD task folder {root} does not exist or is not a folder.")

    json_path = root / "dataset.json"
    metadata = _load_dataset_json(json_path)
    modalities = _parse_modalities(metadata.get("modality"), json_path)
    labels = _parse_labels(metadata.get("labels"), json_path)
    infer_modality_kind(modalities, json_path)  # raises early when CT is mixed with MRI

    if "training" in metadata:
        cases = _parse_training(root, metadata["training"], json_path)
    else:
        _logger.info("%s has no 'training' list; pairing imagesTr/ and labelsTr/ by file name", json_path)
        cases = _discover_training(root)
    if not cases:
        raise DatasetError(f"{json_path} lists no training cases; add pairs to its 'training' list.")

    declared_count = metadata.get("numTraining")
    if isinstance(declared_count, int) and declared_count != len(cases):
        _logger.warning("%s declares numTraining=%d but lists %d cases", json_path, declared_count, len(cases))

    if "test" in metadata:
        test_images = _parse_test(root, metadata["test"], json_path)
    else:
        test_images = tuple(_list_nifti(root / "imagesTs"))

    task = MSDTask(
        name=root.name,
        root=root,
        modalities=modalities,
        labels=labels,
        cases=cases,
        test_images=test_images,
        description=str(metadata.get("description", "")),
    )

    if check_headers:
        for case in cases:
            check_case_headers(case, len(modalities))
    return task


def check_case_headers(case: MSDCase, num_modalities: int) -> None:
    """Check one case's image and label headers against each other and the declared modalities.

    Raises:
        DatasetError: If a header is unreadable, the image has the wrong number of channels, the
            label is not 3D, or image and label do not share a voxel grid.
    """
    image = open_nifti(case.image)
    label = open_nifti(case.label)

    if image.ndim == 3:
        channels = 1
    elif image.ndim == 4:
        channels = image.shape[3]
    else:
        raise DatasetError(f"Image {case.image} has shape {image.shape}; expected 3D or 4D (x, y, z, modality).")
    if channels != num_modalities:
        raise DatasetError(
            f"Image {case.image} has {channels} channel(s) but dataset.json declares {num_modalities} "
            "modalities; fix the 'modality' entry or the image."
        )

    if label.ndim == 4 and label.shape[3] == 1:
        pass  # a trailing singleton axis is harmless; load_case drops it
    elif label.ndim != 3:
        raise DatasetError(
            f"Label {case.label} has shape {label.shape}; expected a 3D volume of class values "
            "(one-hot or 4D labels are not supported; convert them with argmax over the 4th axis)."
        )

    if not grids_match(image, label):
        raise DatasetError(
            f"Label {case.label} (shape {label.shape[:3]}) does not cover the same voxel grid as image "
            f"{case.image} (shape {image.shape[:3]}); shapes or affines differ. Resample the label onto "
            "the image grid, e.g. nibabel.processing.resample_from_to(label, image, order=0)."
        )


def _load_dataset_json(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise DatasetError(
            f"{json_path} not found. Point root at the TaskXX_Name folder that contains dataset.json, "
            "imagesTr/ and labelsTr/ (as extracted from the MSD archive)."
        )
    try:
        metadata = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{json_path} is not valid JSON: {error}. Fix the syntax or re-extract it.") from error
    if not isinstance(metadata, dict):
        raise DatasetError(f"{json_path} contains a {type(metadata).__name__}; expected a JSON object.")
    return metadata


def _parse_index_mapping(raw: Any, key: str, json_path: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{json_path} has no '{key}' object; expected e.g. {{\"0\": \"...\"}}.")
    parsed: dict[int, str] = {}
    for index_text, name in raw.items():
        try:
            index = int(index_text)
        except (TypeError, ValueError):
            raise DatasetError(
                f"{json_path} '{key}' key {index_text!r} is not an integer; keys must be \"0\", \"1\", ..."
            ) from None
        if index < 0:
            raise DatasetError(f"{json_path} '{key}' key {index} is negative; keys must be 0 or more.")
        parsed[index] = str(name)
    return dict(sorted(parsed.items()))


def _parse_modalities(raw: Any, json_path: Path) -> tuple[str, ...]:
    modalities = _parse_index_mapping(raw, "modality", json_path)
    if list(modalities) != list(range(len(modalities))):
        raise DatasetError(
            f"{json_path} 'modality' keys {list(modalities)} are not 0..{len(modalities) - 1}; "
            "number the channels consecutively from 0."
        )
    return tuple(modalities.values())


def _parse_labels(raw: Any, json_path: Path) -> tuple[tuple[int, str], ...]:
    labels = _parse_index_mapping(raw, "labels", json_path)
    if 0 not in labels:
        raise DatasetError(f"{json_path} 'labels' has no background value 0; add \"0\": \"background\".")
    if max(labels) > 255:
        raise DatasetError(f"{json_path} declares label value {max(labels)}; values above 255 are not supported.")
    return tuple(labels.items())


def _resolve_inside(root: Path, listed: Any, json_path: Path) -> Path:
    """Resolve a dataset.json path (e.g. "./imagesTr/x.nii.gz") lexically, rejecting escapes.

    The check is lexical rather than through `Path.resolve` so that symlinked imagesTr/ folders,
    a common way to keep data on another disk, stay valid.
    """
    if not isinstance(listed, str) or not listed.strip():
        raise DatasetError(f"{json_path} lists {listed!r} where a relative file path was expected.")
    relative = PurePosixPath(listed.strip().replace("\\", "/"))
    normalized = PurePosixPath(os.path.normpath(relative.as_posix()))
    if relative.is_absolute() or normalized.parts[:1] == ("..",):
        raise DatasetError(
            f"{json_path} lists {listed!r}, which points outside the task folder {root}; "
            "use paths relative to the folder such as ./imagesTr/case.nii.gz."
        )
    return root / Path(*normalized.parts)


def _check_listed_file(path: Path, listed: str, json_path: Path) -> None:
    problem = _not_a_file_reason(path)
    if problem is not None:
        raise DatasetError(f"{json_path} lists {listed!r} but {path} {problem}")


def _not_a_file_reason(path: Path) -> str | None:
    """Say why `path` cannot be read as a file (with the fix), or return None when it can."""
    # Path.is_file() returns False for a link loop as for a missing file; stat() tells them apart.
    try:
        status = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return (
                "cannot be opened: its path runs into a symbolic link loop. Point the link (or a "
                "linked folder above it) at the real NIfTI file."
            )
        if path.is_symlink():
            return "is a symbolic link to a missing target; restore the target or replace the link with the file."
        return "does not exist; restore the file or remove its entry."
    if stat.S_ISDIR(status.st_mode):
        return "is a folder, not a NIfTI file; list the file inside it instead."
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file; list a .nii or .nii.gz file."
    return None


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_hidden(path: Path) -> bool:
    # AppleDouble files ("._BRATS_001.nii.gz") start with a dot like every other hidden file.
    return path.name.startswith(".")


def _parse_training(root: Path, raw: Any, json_path: Path) -> tuple[MSDCase, ...]:
    if not isinstance(raw, list):
        raise DatasetError(f"{json_path} 'training' is a {type(raw).__name__}; expected a list of objects.")

    cases: dict[str, MSDCase] = {}
    for entry in raw:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(
                f"{json_path} 'training' entry {entry!r} is invalid; expected "
                '{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}.'
            )
        image = _resolve_inside(root, entry["image"], json_path)
        label = _resolve_inside(root, entry["label"], json_path)
        if _is_hidden(image) or _is_hidden(label):
            _logger.warning("Skipping hidden file entry %s in %s", entry, json_path)
            continue
        _check_listed_file(image, entry["image"], json_path)
        _check_listed_file(label, entry["label"], json_path)

        case_id = _case_id(image)
        if case_id in cases:
            raise DatasetError(f"{json_path} lists case {case_id!r} twice; remove the duplicate entry.")
        cases[case_id] = MSDCase(case_id=case_id, image=image, label=label)
    return tuple(cases[case_id] for case_id in sorted(cases))


def _parse_test(root: Path, raw: Any, json_path: Path) -> tuple[Path, ...]:
    if not isinstance(raw, list):
        raise DatasetError(f"{json_path} 'test' is a {type(raw).__name__}; expected a list of paths.")

    images = []
    for entry in raw:
        # MSD lists test images as plain strings; some converted datasets use {"image": ...}.
        listed = entry.get("image") if isinstance(entry, dict) else entry
        path = _resolve_inside(root, listed, json_path)
        if _is_hidden(path):
            continue
        if not path.is_file():
            _logger.warning("%s lists test image %s, which does not exist", json_path, path)
            continue
        images.append(path)
    return tuple(sorted(images))


def _list_nifti(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if _is_hidden(path) or not path.name.endswith(_NIFTI_SUFFIXES):
            continue
        if path.is_symlink() and not path.exists():
            # A broken link or link loop would otherwise drop its case without a trace.
            raise DatasetError(f"{path} {_not_a_file_reason(path)}")
        if path.is_file():
            found.append(path)
    return sorted(found)


def _discover_training(root: Path) -> tuple[MSDCase, ...]:
    images = _list_nifti(root / "imagesTr")
    cases = []
    for image in images:
        label = root / "labelsTr" / image.name
        if not label.is_file():
            raise DatasetError(
                f"Image {image} has no label {label}; add the label or move the image out of imagesTr/."
            )
        cases.append(MSDCase(case_id=_case_id(image), image=image, label=label))
    return tuple(cases)
