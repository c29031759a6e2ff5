"""Writers of tiny Medical Segmentation Decathlon task folders, as real .nii.gz files.

The folders carry the quirks of the distributed archives: "./" prefixed paths in dataset.json,
4D multi-modal images, multi-class labels, anisotropic voxels, non-canonical storage
orientations, int16 data with scl_slope/scl_inter next to float32 data, AppleDouble `._*` files
and an imagesTs/ folder. Volumes are nested spheres inside an ellipsoidal body, one sphere per
class with its own intensity, so a model can learn them.

Import from test modules as `from msd_fixtures import make_msd_task, msd_root`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# Orientations the writer cycles through: canonical, LPS (DICOM order) and a permuted one.
DEFAULT_ORIENTATIONS = (("R", "A", "S"), ("L", "P", "S"), ("A", "I", "L"))

APPLEDOUBLE_BYTES = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


@dataclass(frozen=True)
class TaskKind:
    """Shape of one MSD task: names, channels, classes and on-disk storage."""

    task_name: str
    case_prefix: str
    modalities: tuple[str, ...]
    labels: tuple[str, ...]
    storage: str  # "float32" or "int16" (scaled with slope/inter)
    slope: float = 1.0
    inter: float = 0.0

    @property
    def is_ct(self) -> bool:
        return self.modalities == ("CT",)


KINDS = {
    "brain_tumour": TaskKind(
        "Task01_BrainTumour", "BRATS", ("FLAIR", "T1w", "t1gd", "T2w"),
        ("background", "edema", "non-enhancing tumor", "enhancing tumour"), "float32",
    ),
    "heart": TaskKind("Task02_Heart", "la", ("MRI",), ("background", "left atrium"), "float32"),
    "liver": TaskKind("Task03_Liver", "liver", ("CT",), ("background", "liver", "cancer"), "int16", 1.0, -1024.0),
    "hippocampus": TaskKind("Task04_Hippocampus", "hippocampus", ("MRI",), ("background", "Anterior", "Posterior"), "float32"),
    "prostate": TaskKind("Task05_Prostate", "prostate", ("T2", "ADC"), ("background", "PZ", "TZ"), "int16", 0.5, 0.0),
    "lung": TaskKind("Task06_Lung", "lung", ("CT",), ("background", "cancer"), "int16", 1.0, -1024.0),
    "pancreas": TaskKind("Task07_Pancreas", "pancreas", ("CT",), ("background", "pancreas", "cancer"), "int16", 2.0, -1024.0),
    "hepatic_vessel": TaskKind(
        "Task08_HepaticVessel", "hepaticvessel", ("CT",), ("background", "Vessel", "Tumour"), "float32",
    ),
    "spleen": TaskKind("Task09_Spleen", "spleen", ("CT",), ("background", "spleen"), "int16", 1.0, -1024.0),
    "colon": TaskKind("Task10_Colon", "colon", ("CT",), ("background", "colon cancer primaries"), "float32"),
}


def write_nifti(
    path: Path,
    data_ras: np.ndarray,
    zooms_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    orientation: tuple[str, str, str] = ("R", "A", "S"),
    storage: str = "float32",
    slope: float = 1.0,
    inter: float = 0.0,
) -> Path:
    """Write an array given in RAS+ voxel order to disk in another storage orientation.

    Args:
        path: Output .nii.gz file.
        data_ras: [X, Y, Z] or [X, Y, Z, C] array in RAS+ order; world values (e.g. HU).
        zooms_mm: Voxel size along the RAS axes in mm.
        orientation: Axis codes of the stored array, e.g. ("L", "P", "S").
        storage: "float32", "int16" (raw = (value - inter) / slope, with scl_slope/scl_inter set)
            or "uint8" (labels).
        slope: scl_slope for int16 storage.
        inter: scl_inter for int16 storage.

    Returns:
        The written path.
    """
    origin = -np.asarray(zooms_mm) * np.asarray(data_ras.shape[:3]) / 2
    affine = np.diag([*zooms_mm, 1.0])
    affine[:3, 3] = origin
    canonical = nib.Nifti1Image(np.asarray(data_ras), affine)
    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(orientation)
    )
    stored = canonical.as_reoriented(transform)
    stored_data = np.asarray(stored.dataobj)

    if storage == "int16":
        raw = np.round((stored_data - inter) / slope).astype(np.int16)
        image = nib.Nifti1Image(raw, stored.affine)
        image.header.set_slope_inter(slope, inter)
    elif storage == "uint8":
        image = nib.Nifti1Image(stored_data.astype(np.uint8), stored.affine)
    else:
        image = nib.Nifti1Image(stored_data.astype(np.float32), stored.affine)
    image.header.set_xyzt_units("mm")

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def phantom(kind: TaskKind, shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one case in RAS+ order: image [X, Y, Z] (CT, HU) or [X, Y, Z, C] (MRI), label [X, Y, Z].

    Int16-stored kinds get values on their slope grid, so what is written equals what is returned.
    """
    grid = np.stack(np.meshgrid(*(np.arange(size) for size in shape), indexing="ij"), axis=-1).astype(np.float32)
    extent = np.asarray(shape, dtype=np.float32)
    centre = extent / 2 + rng.uniform(-0.1, 0.1, 3) * extent * np.array([1, 1, 0])

    # Radii are relative to the extent of each axis, so the first and last slices stay label-free.
    radius = np.linalg.norm((grid - centre) / extent, axis=-1)
    body = np.linalg.norm((grid - extent / 2) / extent * np.array([1.0, 1.0, 0.0]), axis=-1) < 0.45

    label = np.zeros(shape, dtype=np.uint8)
    num_classes = len(kind.labels)
    for value in range(1, num_classes):
        label[radius < 0.32 * (1 - (value - 1) / num_classes)] = value

    channels = []
    for channel in range(len(kind.modalities)):
        if kind.is_ct:
            values = np.where(body, 40.0, -1000.0)
            class_values = [40.0 + 70.0 * value for value in range(num_classes)]
        else:
            values = np.where(body, 100.0 + 10.0 * channel, 0.0)
            class_values = [100.0 + (60.0 + 20.0 * channel) * value for value in range(num_classes)]
        for value in range(1, num_classes):
            values = np.where(label == value, class_values[value], values)
        noise = rng.normal(0.0, 5.0, shape) * (body if not kind.is_ct else 1.0)
        channels.append(values + noise)

    image = np.stack(channels, axis=-1) if len(channels) > 1 else channels[0]
    if kind.storage == "int16":
        image = np.round((image - kind.inter) / kind.slope) * kind.slope + kind.inter
    return image.astype(np.float32), label


def make_msd_task(
    root: Path,
    kind: str = "heart",
    n_cases: int = 3,
    shape: tuple[int, int, int] = (32, 32, 6),
    zooms_mm: tuple[float, float, float] = (0.8, 0.8, 5.0),
    n_test: int = 1,
    orientations: tuple[tuple[str, str, str], ...] = DEFAULT_ORIENTATIONS,
    seed: int = 0,
) -> Path:
    """Write an MSD-format task folder under `root` and return its path.

    Case i is stored in orientations[i % len(orientations)]; every case gets an AppleDouble
    twin (`._<name>`) in imagesTr/ and labelsTr/, and the folder gets a `._dataset.json`.

    Args:
        root: Parent folder; the task folder is root / KINDS[kind].task_name.
        kind: One of KINDS, e.g. "brain_tumour", "prostate", "liver".
        n_cases: Training cases.
        shape: Volume shape (X, Y, Z) in RAS+ order.
        zooms_mm: Voxel size (x, y, z) in mm.
        n_test: Unlabelled images in imagesTs/.
        orientations: Storage orientations to cycle through.
        seed: Seed of the phantom geometry and noise.

    Returns:
        The task folder.
    """
    task_kind = KINDS[kind]
    task_root = Path(root) / task_kind.task_name
    rng = np.random.default_rng(seed)

    training = []
    for index in range(n_cases):
        name = f"{task_kind.case_prefix}_{index:03d}.nii.gz"
        orientation = orientations[index % len(orientations)]
        image, label = phantom(task_kind, shape, rng)
        write_nifti(task_root / "imagesTr" / name, image, zooms_mm, orientation,
                    task_kind.storage, task_kind.slope, task_kind.inter)
        write_nifti(task_root / "labelsTr" / name, label, zooms_mm, orientation, "uint8")
        (task_root / "imagesTr" / f"._{name}").write_bytes(APPLEDOUBLE_BYTES)
        (task_root / "labelsTr" / f"._{name}").write_bytes(APPLEDOUBLE_BYTES)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})

    test = []
    for index in range(n_test):
        name = f"{task_kind.case_prefix}_{n_cases + index:03d}.nii.gz"
        image, _ = phantom(task_kind, shape, rng)
        write_nifti(task_root / "imagesTs" / name, image, zooms_mm, orientations[0],
                    task_kind.storage, task_kind.slope, task_kind.inter)
        (task_root / "imagesTs" / f"._{name}").write_bytes(APPLEDOUBLE_BYTES)
        test.append(f"./imagesTs/{name}")

    metadata = {
        "name": task_kind.task_name.split("_", 1)[1],
        "description": f"Synthetic {kind} phantom for tests",
        "reference": "hydranet-hub test fixtures",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "4D" if len(task_kind.modalities) > 1 else "3D",
        "modality": {str(index): name for index, name in enumerate(task_kind.modalities)},
        "labels": {str(index): name for index, name in enumerate(task_kind.labels)},
        "numTraining": n_cases,
        "numTest": n_test,
        "training": training,
        "test": test,
    }
    (task_root / "dataset.json").write_text(json.dumps(metadata, indent=4))
    (task_root / "._dataset.json").write_bytes(APPLEDOUBLE_BYTES)
    return task_root


@pytest.fixture(scope="session")
def msd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with four small MSD tasks: heart (MRI), brain_tumour (4-channel MRI), prostate
    (2-channel int16 MRI) and liver (int16 CT). Session-scoped: tests must not modify it."""
    root = tmp_path_factory.mktemp("msd")
    for seed, kind in enumerate(("heart", "brain_tumour", "prostate", "liver")):
        make_msd_task(root, kind, n_cases=3, seed=seed)
    return root
