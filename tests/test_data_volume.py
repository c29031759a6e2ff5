"""Tests of load_case: reorientation, intensity scaling and voxel-level validation."""

import numpy as np
import pytest

from hydranet_hub.data import DatasetError, MSDCase, check_msd_task, load_case, read_msd_task, to_axial_slices
from msd_fixtures import make_msd_task, write_nifti

SHAPE = (12, 10, 4)
ZOOMS_MM = (0.7, 0.7, 5.0)
MARKER_RAS = (2, 7, 1)  # near the patient's left (low x), anterior (high y), inferior (low z)


def _marker_case(tmp_path, orientation, label_orientation=None):
    image = np.zeros(SHAPE, dtype=np.float32)
    image[MARKER_RAS] = 100.0
    label = (image > 0).astype(np.uint8)
    image_path = write_nifti(tmp_path / f"image_{''.join(orientation)}.nii.gz", image, ZOOMS_MM, orientation)
    label_path = write_nifti(
        tmp_path / f"label_{''.join(orientation)}.nii.gz", label, ZOOMS_MM, label_orientation or orientation, "uint8"
    )
    return MSDCase(case_id="marker", image=image_path, label=label_path)


@pytest.mark.parametrize("orientation", [("R", "A", "S"), ("L", "P", "S"), ("A", "I", "L"), ("S", "L", "P")])
def test_load_reorients_marker(tmp_path, orientation):
    case = _marker_case(tmp_path, orientation)

    volume = load_case(case, num_modalities=1, label_values=(0, 1))

    assert volume.image.shape == (1, *SHAPE)
    assert np.argwhere(volume.image[0] > 0).tolist() == [list(MARKER_RAS)]
    assert np.argwhere(volume.label).tolist() == [list(MARKER_RAS)]
    assert volume.spacing_mm == pytest.approx(ZOOMS_MM)
    world = volume.affine @ np.array([*MARKER_RAS, 1.0])
    expected_world = np.array(MARKER_RAS) * ZOOMS_MM - np.array(ZOOMS_MM) * np.array(SHAPE) / 2
    assert world[:3] == pytest.approx(expected_world)


def test_load_marker_slice_position(tmp_path):
    volume = load_case(_marker_case(tmp_path, ("P", "I", "R")), 1, (0, 1))

    slices = to_axial_slices(volume.image)

    # Radiological view: row 0 is anterior, column 0 is the patient's right.
    x, y, z = MARKER_RAS
    assert np.argwhere(slices[:, 0] > 0).tolist() == [[z, SHAPE[1] - 1 - y, SHAPE[0] - 1 - x]]


def test_load_label_stored_differently(tmp_path):
    case = _marker_case(tmp_path, ("L", "P", "S"), label_orientation=("I", "R", "A"))

    volume = load_case(case, 1, (0, 1))

    assert np.array_equal(volume.label > 0, volume.image[0] > 0)


def test_load_int16_scaling(tmp_path):
    values = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) * 0.5 - 1024.0
    image_path = write_nifti(tmp_path / "ct.nii.gz", values, ZOOMS_MM, ("L", "P", "S"), "int16", 0.5, -1024.0)
    label_path = write_nifti(tmp_path / "label.nii.gz", np.zeros(SHAPE), ZOOMS_MM, ("L", "P", "S"), "uint8")

    volume = load_case(MSDCase("ct", image_path, label_path), 1, (0,))

    assert volume.image.dtype == np.float32
    np.testing.assert_array_equal(volume.image[0], values)


def test_load_multimodal_channels_first(tmp_path):
    task = read_msd_task(make_msd_task(tmp_path, "brain_tumour", n_cases=2, shape=(16, 16, 6)))

    volume = load_case(task.cases[1], len(task.modalities), task.label_values)

    assert volume.image.shape == (4, 16, 16, 6)
    assert volume.label.shape == (16, 16, 6)
    assert volume.label.dtype == np.uint8
    assert set(np.unique(volume.label).tolist()) == {0, 1, 2, 3}
    # Channels carry different contrasts, so they must not be copies of one another.
    assert not np.allclose(volume.image[0], volume.image[3])


def test_load_nan_raises(tmp_path):
    image = np.ones(SHAPE, dtype=np.float32)
    image[0, 0, 0] = np.nan
    image[1, 0, 0] = np.inf
    image_path = write_nifti(tmp_path / "nan.nii.gz", image, ZOOMS_MM)
    label_path = write_nifti(tmp_path / "label.nii.gz", np.zeros(SHAPE), ZOOMS_MM, storage="uint8")

    with pytest.raises(DatasetError, match="2 NaN/Inf") as error:
        load_case(MSDCase("nan", image_path, label_path), 1, (0,))
    assert "nan.nii.gz" in str(error.value)


def test_load_nan_fill_min(tmp_path):
    image = np.full(SHAPE, 7.0, dtype=np.float32)
    image[0, 0, 0] = 3.0
    image[1, 0, 0] = np.nan
    image_path = write_nifti(tmp_path / "nan.nii.gz", image, ZOOMS_MM)
    label_path = write_nifti(tmp_path / "label.nii.gz", np.zeros(SHAPE), ZOOMS_MM, storage="uint8")

    volume = load_case(MSDCase("nan", image_path, label_path), 1, (0,), nonfinite="fill_min")

    assert volume.image[0, 1, 0, 0] == 3.0
    assert np.isfinite(volume.image).all()


def test_load_undeclared_label_value(tmp_path):
    label = np.zeros(SHAPE)
    label[3, 3, 1] = 5
    image_path = write_nifti(tmp_path / "image.nii.gz", np.ones(SHAPE), ZOOMS_MM)
    label_path = write_nifti(tmp_path / "label.nii.gz", label, ZOOMS_MM, storage="uint8")

    with pytest.raises(DatasetError, match=r"value\(s\) \[5\]") as error:
        load_case(MSDCase("bad", image_path, label_path), 1, (0, 1, 2))
    assert "label.nii.gz" in str(error.value)


def test_load_fractional_label(tmp_path):
    label = np.zeros(SHAPE, dtype=np.float32)
    label[3, 3, 1] = 0.5
    image_path = write_nifti(tmp_path / "image.nii.gz", np.ones(SHAPE), ZOOMS_MM)
    label_path = write_nifti(tmp_path / "label.nii.gz", label, ZOOMS_MM)

    with pytest.raises(DatasetError, match="non-integer"):
        load_case(MSDCase("bad", image_path, label_path), 1, (0, 1))


def test_load_float_label_accepted(tmp_path):
    label = np.zeros(SHAPE, dtype=np.float32)
    label[3, 3, 1] = 2.0
    image_path = write_nifti(tmp_path / "image.nii.gz", np.ones(SHAPE), ZOOMS_MM)
    label_path = write_nifti(tmp_path / "label.nii.gz", label, ZOOMS_MM)

    volume = load_case(MSDCase("float_label", image_path, label_path), 1, (0, 1, 2))

    assert volume.label.dtype == np.uint8
    assert volume.label[3, 3, 1] == 2


def test_load_truncated_data(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1, shape=(32, 32, 8))
    path = task_root / "imagesTr" / "la_000.nii.gz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])
    task = read_msd_task(task_root)

    with pytest.raises(DatasetError, match="truncated") as error:
        check_msd_task(task)
    assert str(path) in str(error.value)


def test_load_invalid_policy(tmp_path):
    case = _marker_case(tmp_path, ("R", "A", "S"))

    with pytest.raises(ValueError, match="nonfinite"):
        load_case(case, 1, (0, 1), nonfinite="ignore")
