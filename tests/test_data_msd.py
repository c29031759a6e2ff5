"""Tests of read_msd_task: dataset.json parsing, MSD quirks and header-level errors."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hydranet_hub.data import DatasetError, read_msd_task
from msd_fixtures import make_msd_task, write_nifti


def _edit_dataset_json(task_root: Path, **changes) -> None:
    path = task_root / "dataset.json"
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def test_read_brain_tumour_quirks(tmp_path):
    task_root = make_msd_task(tmp_path, "brain_tumour", n_cases=3, n_test=2)

    task = read_msd_task(task_root)

    assert task.name == "Task01_BrainTumour"
    assert task.modalities == ("FLAIR", "T1w", "t1gd", "T2w")
    assert task.modality_kind == "MRI"
    assert task.label_values == (0, 1, 2, 3)
    assert [case.case_id for case in task.cases] == ["BRATS_000", "BRATS_001", "BRATS_002"]
    assert task.cases[0].image == task_root / "imagesTr" / "BRATS_000.nii.gz"
    assert task.cases[0].label == task_root / "labelsTr" / "BRATS_000.nii.gz"
    assert [path.name for path in task.test_images] == ["BRATS_003.nii.gz", "BRATS_004.nii.gz"]


def test_read_ignores_appledouble_files(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=2)
    # Without the lists, cases come from the folder listing, where the AppleDouble files sit.
    metadata = json.loads((task_root / "dataset.json").read_text())
    del metadata["training"], metadata["test"]
    (task_root / "dataset.json").write_text(json.dumps(metadata))

    task = read_msd_task(task_root)

    assert (task_root / "imagesTr" / "._la_000.nii.gz").is_file()
    assert [case.case_id for case in task.cases] == ["la_000", "la_001"]
    assert [path.name for path in task.test_images] == ["la_002.nii.gz"]


def test_read_ct_int16_task(tmp_path):
    task = read_msd_task(make_msd_task(tmp_path, "liver", n_cases=2))

    assert task.modality_kind == "CT"
    assert task.labels == ((0, "background"), (1, "liver"), (2, "cancer"))


def test_read_case_lookup(tmp_path):
    task = read_msd_task(make_msd_task(tmp_path, "heart", n_cases=2))

    assert task.case("la_001").case_id == "la_001"
    with pytest.raises(KeyError, match="la_999"):
        task.case("la_999")


def test_missing_dataset_json(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1)
    (task_root / "dataset.json").unlink()

    with pytest.raises(DatasetError, match="dataset.json not found") as error:
        read_msd_task(task_root)
    assert str(task_root) in str(error.value)


def test_missing_task_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_msd_task(tmp_path / "Task99_Nothing")


def test_invalid_json_syntax(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1)
    (task_root / "dataset.json").write_text('{"modality": {"0": "MRI"},')

    with pytest.raises(DatasetError, match="not valid JSON"):
        read_msd_task(task_root)


def test_listed_file_missing(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=2)
    (task_root / "labelsTr" / "la_001.nii.gz").unlink()

    with pytest.raises(DatasetError, match="la_001.nii.gz") as error:
        read_msd_task(task_root)
    assert "does not exist" in str(error.value)


@pytest.mark.parametrize("listed", ["../outside.nii.gz", "./imagesTr/../../outside.nii.gz", "/etc/passwd"])
def test_path_escaping_folder(tmp_path, listed):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1)
    (tmp_path / "outside.nii.gz").write_bytes(b"x")
    _edit_dataset_json(task_root, training=[{"image": listed, "label": "./labelsTr/la_000.nii.gz"}])

    with pytest.raises(DatasetError, match="outside the task folder") as error:
        read_msd_task(task_root)
    assert listed in str(error.value)


def test_symlinked_images_folder(tmp_path):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=1)
    moved = tmp_path / "other_disk" / "imagesTr"
    shutil.move(task_root / "imagesTr", moved)
    (task_root / "imagesTr").symlink_to(moved)

    task = read_msd_task(task_root)

    assert task.cases[0].image == task_root / "imagesTr" / "la_000.nii.gz"


def test_duplicate_case(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1)
    entry = {"image": "./imagesTr/la_000.nii.gz", "label": "./labelsTr/la_000.nii.gz"}
    _edit_dataset_json(task_root, training=[entry, entry])

    with pytest.raises(DatasetError, match="twice"):
        read_msd_task(task_root)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("modality", {"1": "CT"}, "consecutively"),
        ("modality", {"0": "CT", "1": "T2"}, "mixes CT"),
        ("labels", {"1": "liver"}, "background value 0"),
        ("labels", {"0": "background", "x": "liver"}, "not an integer"),
        ("training", {"image": "a"}, "list of objects"),
        ("training", [{"image": "./imagesTr/la_000.nii.gz"}], "invalid"),
    ],
)
def test_invalid_dataset_json_fields(tmp_path, key, value, message):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1)
    _edit_dataset_json(task_root, **{key: value})

    with pytest.raises(DatasetError, match=message) as error:
        read_msd_task(task_root)
    assert "dataset.json" in str(error.value)


def test_label_shape_mismatch(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1, shape=(16, 16, 4))
    write_nifti(task_root / "labelsTr" / "la_000.nii.gz", np.zeros((16, 14, 4)), (0.8, 0.8, 5.0), storage="uint8")

    with pytest.raises(DatasetError, match="same voxel grid") as error:
        read_msd_task(task_root)
    assert "labelsTr/la_000.nii.gz" in str(error.value)


def test_label_affine_mismatch(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1, shape=(16, 16, 4))
    write_nifti(task_root / "labelsTr" / "la_000.nii.gz", np.zeros((16, 16, 4)), (0.8, 0.8, 2.5), storage="uint8")

    with pytest.raises(DatasetError, match="resample_from_to"):
        read_msd_task(task_root)


def test_label_other_orientation_accepted(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1, shape=(16, 16, 4), orientations=(("L", "P", "S"),))
    write_nifti(task_root / "labelsTr" / "la_000.nii.gz", np.zeros((16, 16, 4)), (0.8, 0.8, 5.0), ("S", "R", "A"), "uint8")

    task = read_msd_task(task_root)

    assert len(task.cases) == 1


def test_label_4d(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1, shape=(16, 16, 4))
    write_nifti(task_root / "labelsTr" / "la_000.nii.gz", np.zeros((16, 16, 4, 2)), (0.8, 0.8, 5.0), storage="uint8")

    with pytest.raises(DatasetError, match="4D labels are not supported|expected a 3D volume") as error:
        read_msd_task(task_root)
    assert "la_000" in str(error.value)


def test_image_channel_count(tmp_path):
    task_root = make_msd_task(tmp_path, "prostate", n_cases=1, shape=(16, 16, 4))
    write_nifti(task_root / "imagesTr" / "prostate_000.nii.gz", np.zeros((16, 16, 4, 3)), (0.8, 0.8, 5.0))

    with pytest.raises(DatasetError, match="3 channel") as error:
        read_msd_task(task_root)
    assert "prostate_000.nii.gz" in str(error.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"this is not a NIfTI file", "Could not read a NIfTI header"),
        (gzip.compress(b"not a nifti header at all, just text"), "Could not read a NIfTI header"),
    ],
)
def test_broken_image_file(tmp_path, content, message):
    task_root = make_msd_task(tmp_path, "heart", n_cases=2)
    broken = task_root / "imagesTr" / "la_001.nii.gz"
    broken.write_bytes(content)

    with pytest.raises(DatasetError, match=message) as error:
        read_msd_task(task_root)
    assert str(broken) in str(error.value)


def test_headers_check_optional(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1)
    (task_root / "imagesTr" / "la_000.nii.gz").write_bytes(b"")

    task = read_msd_task(task_root, check_headers=False)

    assert task.cases[0].case_id == "la_000"
