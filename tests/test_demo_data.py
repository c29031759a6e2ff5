"""Checks of the embedded demo dataset (hydranet_hub/demo/data), read with nibabel only."""

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PACKAGE_DIR = REPO_ROOT / "hydranet_hub" / "demo"
DATA_DIR = DEMO_PACKAGE_DIR / "data"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_demo_data.py"
MAX_TOTAL_BYTES = 6 * 1024 * 1024
MIN_CASES_PER_TASK = 4
MSD_KEYS = {
    "name", "description", "reference", "licence", "tensorImageSize", "modality", "labels",
    "numTraining", "numTest", "training", "test",
}
MRICRON_CH2 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def load_demo_module(init_path: Path = DEMO_PACKAGE_DIR / "__init__.py"):
    # Loaded from its file so that the hydranet_hub package, which imports torch, stays unloaded.
    spec = importlib.util.spec_from_file_location("hydranet_demo_under_test", init_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO = load_demo_module()


def read_dataset(task: str) -> dict:
    return json.loads((DATA_DIR / task / "dataset.json").read_text())


def load_cases(task: str):
    """Yield (entry, image, label) for every training case of a task."""
    for entry in read_dataset(task)["training"]:
        yield entry, nib.load(DATA_DIR / task / entry["image"]), nib.load(DATA_DIR / task / entry["label"])


def label_array(label_img) -> np.ndarray:
    return np.asarray(label_img.dataobj)


def world_centroid(img, mask: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(img.affine, np.argwhere(mask).mean(axis=0))


def test_task_constants_match_folders():
    folders = sorted(path.name for path in DATA_DIR.glob("Task*") if path.is_dir())
    assert sorted(DEMO.DEMO_TASKS) == folders
    assert len(DEMO.DEMO_TASKS) >= 6
    assert DEMO.DEMO_HELDOUT_TASK not in DEMO.DEMO_PRETRAIN_TASKS
    assert len(set(DEMO.DEMO_TASKS)) == len(DEMO.DEMO_TASKS)


def test_demo_data_dir_points_to_data():
    assert DEMO.demo_data_dir() == DATA_DIR


def test_demo_data_dir_missing_raises(tmp_path):
    shutil.copy(DEMO_PACKAGE_DIR / "__init__.py", tmp_path / "__init__.py")
    orphan = load_demo_module(tmp_path / "__init__.py")
    with pytest.raises(FileNotFoundError, match="build_demo_data.py"):
        orphan.demo_data_dir()


def test_demo_module_imports_without_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('demo', {str(DEMO_PACKAGE_DIR / '__init__.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(name for name in ('torch', 'nibabel', 'numpy') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("task", DEMO.DEMO_TASKS)
def test_dataset_json_schema(task):
    dataset = read_dataset(task)
    assert MSD_KEYS <= dataset.keys()
    assert dataset["name"] == task.split("_", 1)[1]
    assert dataset["tensorImageSize"] == "3D"
    assert dataset["modality"] == {"0": "T1"}
    assert dataset["labels"]["0"] == "background"
    assert sorted(dataset["labels"], key=int) == [str(value) for value in range(len(dataset["labels"]))]
    assert len(dataset["labels"]) >= 2
    assert dataset["numTraining"] == len(dataset["training"])
    assert dataset["numTest"] == len(dataset["test"]) == 0
    assert "slabs" in dataset["description"]
    assert "check upstream" in dataset["licence"]


@pytest.mark.parametrize("task", DEMO.DEMO_TASKS)
def test_listed_files_match_folders(task):
    training = read_dataset(task)["training"]
    images = [entry["image"] for entry in training]
    labels = [entry["label"] for entry in training]
    assert all(path.startswith("./imagesTr/") and path.endswith(".nii.gz") for path in images)
    assert [Path(path).name for path in images] == [Path(path).name for path in labels]
    image_files = sorted(path.name for path in (DATA_DIR / task / "imagesTr").iterdir())
    label_files = sorted(path.name for path in (DATA_DIR / task / "labelsTr").iterdir())
    assert sorted(Path(path).name for path in images) == image_files
    assert sorted(Path(path).name for path in labels) == label_files


@pytest.mark.parametrize("task", DEMO.DEMO_TASKS)
def test_image_label_geometry(task):
    for entry, image, label in load_cases(task):
        assert image.ndim == 3, entry["image"]
        assert image.shape == label.shape, entry["image"]
        np.testing.assert_array_equal(image.affine, label.affine, err_msg=entry["image"])
        assert image.header.get_zooms() == label.header.get_zooms(), entry["image"]
        assert image.get_data_dtype() in (np.dtype(np.int16), np.dtype(np.float32)), entry["image"]
        assert label.get_data_dtype() == np.uint8, entry["label"]
        assert np.ptp(image.get_fdata()) > 0, f"{entry['image']} is constant"


@pytest.mark.parametrize("task", DEMO.DEMO_TASKS)
def test_label_values_declared(task):
    declared = {int(value) for value in read_dataset(task)["labels"]}
    seen = set()
    for entry, _, label in load_cases(task):
        values = set(np.unique(label_array(label)).tolist())
        assert values <= declared, f"{entry['label']} has undeclared values {values - declared}"
        seen |= values
    assert seen == declared, f"classes {declared - seen} never appear"


@pytest.mark.parametrize("task", DEMO.DEMO_TASKS)
def test_cases_have_foreground(task):
    foreground = [np.count_nonzero(label_array(label)) for _, _, label in load_cases(task)]
    assert len(foreground) >= MIN_CASES_PER_TASK
    assert min(foreground) > 0


@pytest.mark.parametrize("task", DEMO.DEMO_TASKS)
def test_cases_do_not_overlap(task):
    # Cases of one scan must cover disjoint parts of it, or a split by case leaks voxels.
    occupied = {}
    for entry, image, _ in load_cases(task):
        scan = Path(entry["image"]).name.split("_")[0]
        corners = nib.affines.apply_affine(image.affine, [[0, 0, 0], np.array(image.shape) - 1])
        box = (corners.min(axis=0), corners.max(axis=0))
        for other_name, (low, high) in occupied.get(scan, {}).items():
            overlap = np.all(box[0] <= high) and np.all(low <= box[1])
            assert not overlap, f"{entry['image']} overlaps {other_name}"
        occupied.setdefault(scan, {})[entry["image"]] = box


def test_hippocampus_sides_in_world_space():
    dataset = read_dataset(DEMO.DEMO_HELDOUT_TASK)
    side_of = {value: name.split()[0] for value, name in dataset["labels"].items() if value != "0"}
    for entry, _, label in load_cases(DEMO.DEMO_HELDOUT_TASK):
        data = label_array(label)
        for value, side in side_of.items():
            if np.any(data == int(value)):
                x_mm = world_centroid(label, data == int(value))[0]
                # Left is negative x in the RAS world space that NIfTI affines map to.
                assert (x_mm < 0) == (side == "left"), f"{entry['label']} {side} at x = {x_mm:.1f} mm"


def test_one_task_not_canonical():
    orientations = {
        nib.aff2axcodes(image.affine) for task in DEMO.DEMO_TASKS for _, image, _ in load_cases(task)
    }
    assert ("R", "A", "S") in orientations
    assert len(orientations) >= 2


def test_gyri_order_in_world_space():
    # The precentral gyrus lies in front of the postcentral gyrus, whatever the storage order.
    labels = {name: int(value) for value, name in read_dataset("Task15_CorticalGyri")["labels"].items()}
    front, back = [], []
    for _, _, label in load_cases("Task15_CorticalGyri"):
        data = label_array(label)
        if np.any(data == labels["precentral gyrus"]) and np.any(data == labels["postcentral gyrus"]):
            front.append(world_centroid(label, data == labels["precentral gyrus"])[1])
            back.append(world_centroid(label, data == labels["postcentral gyrus"])[1])
    assert front
    assert all(y_front > y_back for y_front, y_back in zip(front, back))


def test_two_source_scans():
    # Tasks that share any image come from one scan, and at least two such groups must exist.
    image_hashes = {}
    for task in DEMO.DEMO_TASKS:
        for _, image, _ in load_cases(task):
            raw = np.asanyarray(image.dataobj.get_unscaled())
            world_origin = tuple(np.round(nib.affines.apply_affine(image.affine, [0, 0, 0]), 3))
            key = hashlib.sha256(raw.tobytes() + repr(world_origin).encode()).hexdigest()
            image_hashes.setdefault(task, set()).add(key)
    groups = []
    for hashes in image_hashes.values():
        merged = [group for group in groups if group & hashes]
        groups = [group for group in groups if not group & hashes] + [set().union(hashes, *merged)]
    assert len(groups) >= 2


def test_total_size_below_limit():
    total = sum(path.stat().st_size for path in DATA_DIR.rglob("*") if path.is_file())
    assert total < MAX_TOTAL_BYTES


def test_licence_files_shipped():
    licence_files = sorted((DATA_DIR / "licences").glob("*.txt"))
    assert len(licence_files) >= 2
    assert all("Redistribution" in path.read_text() for path in licence_files)


def sources_missing_reason() -> str | None:
    if not MRICRON_CH2.is_file():
        return f"Debian mricron-data is not installed ({MRICRON_CH2} missing)"
    if importlib.util.find_spec("nilearn") is None:
        return "nilearn is not installed"
    return None


@pytest.mark.skipif(sources_missing_reason() is not None, reason=str(sources_missing_reason()))
def test_rebuild_reproduces_committed_data(tmp_path):
    subprocess.run([sys.executable, str(BUILD_SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)

    committed = sorted(path.relative_to(DATA_DIR) for path in DATA_DIR.rglob("*") if path.is_file())
    rebuilt = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    assert rebuilt == committed
    for relative in committed:
        if relative.name.endswith(".nii.gz"):
            old, new = nib.load(DATA_DIR / relative), nib.load(tmp_path / relative)
            np.testing.assert_array_equal(new.affine, old.affine, err_msg=str(relative))
            assert new.get_data_dtype() == old.get_data_dtype(), relative
            assert new.dataobj.slope == old.dataobj.slope, relative
            new_raw = np.asanyarray(new.dataobj.get_unscaled())
            old_raw = np.asanyarray(old.dataobj.get_unscaled())
            np.testing.assert_array_equal(new_raw, old_raw, err_msg=str(relative))
        else:
            assert (tmp_path / relative).read_bytes() == (DATA_DIR / relative).read_bytes(), relative
