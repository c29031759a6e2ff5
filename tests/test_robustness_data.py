"""Messy MSD data: link loops, damaged and hostile NIfTI files, bad voxels and background-only labels.

Cases already covered elsewhere (missing dataset.json, missing listed files, ../ paths, shape and
affine mismatches, 4D labels, empty files) are listed in docs/robustness.md with their tests.
"""

import gzip
import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hydranet_hub.data import (
    CacheError,
    DatasetError,
    MSDCase,
    SliceCache,
    build_slice_cache,
    load_case,
    msd_task_config,
    read_msd_task,
)
from hydranet_hub.training import PretrainConfig, pretrain
from hydranet_hub.training.run_log import read_metrics
from msd_fixtures import make_msd_task, write_nifti

torch.set_num_threads(1)

SHAPE = (16, 16, 4)
ZOOMS_MM = (0.8, 0.8, 5.0)
SLICE_SIZE = (16, 16)


def _manifest_cases(cache_dir: Path, task: str) -> dict:
    return json.loads((cache_dir / "manifest.json").read_text())["tasks"][task]["cases"]


# --- links ----------------------------------------------------------------------------------------------------------


def _link_self(task_root: Path) -> Path:
    path = task_root / "imagesTr" / "la_001.nii.gz"
    path.unlink()
    path.symlink_to(path.name)
    return path


def _link_cycle(task_root: Path) -> Path:
    path = task_root / "imagesTr" / "la_001.nii.gz"
    path.unlink()
    path.symlink_to("other.nii.gz")
    (task_root / "imagesTr" / "other.nii.gz").symlink_to(path.name)
    return path


def _link_dangling(task_root: Path) -> Path:
    path = task_root / "imagesTr" / "la_001.nii.gz"
    path.unlink()
    path.symlink_to("moved_away.nii.gz")
    return path


def _folder_loop(task_root: Path) -> Path:
    folder = task_root / "labelsTr"
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    folder.symlink_to("labelsTr")
    return folder / "la_000.nii.gz"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_link_self, "symbolic link loop"),
        (_link_cycle, "symbolic link loop"),
        (_link_dangling, "link to a missing target"),
        (_folder_loop, "symbolic link loop"),
    ],
)
def test_listed_link_loop_named(tmp_path, damage, message):
    task_root = make_msd_task(tmp_path, "heart", n_cases=2, shape=SHAPE)
    broken = damage(task_root)

    with pytest.raises(DatasetError, match=message) as caught:
        read_msd_task(task_root)

    assert str(broken) in str(caught.value)
    assert "dataset.json" in str(caught.value)


def test_listed_folder_named(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1, shape=SHAPE)
    metadata = json.loads((task_root / "dataset.json").read_text())
    metadata["training"][0]["image"] = "./imagesTr"
    (task_root / "dataset.json").write_text(json.dumps(metadata))

    with pytest.raises(DatasetError, match="is a folder, not a NIfTI file"):
        read_msd_task(task_root)


def test_discovered_link_loop_named(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=2, shape=SHAPE)
    metadata = json.loads((task_root / "dataset.json").read_text())
    del metadata["training"]
    (task_root / "dataset.json").write_text(json.dumps(metadata))
    broken = _link_self(task_root)

    # Without a training list the folder listing finds cases, and must not drop this one silently.
    with pytest.raises(DatasetError, match="symbolic link loop") as caught:
        read_msd_task(task_root)

    assert str(broken) in str(caught.value)


# --- damaged and hostile files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kept_bytes", [10, 100, 300])
def test_truncated_gzip_header_named(tmp_path, kept_bytes):
    task_root = make_msd_task(tmp_path, "heart", n_cases=2, shape=SHAPE)
    path = task_root / "imagesTr" / "la_001.nii.gz"
    path.write_bytes(path.read_bytes()[:kept_bytes])

    with pytest.raises(DatasetError, match="Could not read a NIfTI header") as caught:
        read_msd_task(task_root)

    assert str(path) in str(caught.value)
    assert "Re-extract" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        gzip.compress(bytes(range(256)) * 2),
        b"<html><body>Rate limit exceeded</body></html>",
    ],
    ids=["png", "gzip-of-noise", "html"],
)
def test_non_nifti_under_nifti_name(tmp_path, content):
    task_root = make_msd_task(tmp_path, "heart", n_cases=2, shape=SHAPE)
    path = task_root / "labelsTr" / "la_000.nii.gz"
    path.write_bytes(content)

    with pytest.raises(DatasetError, match="Could not read a NIfTI header") as caught:
        read_msd_task(task_root)

    assert str(path) in str(caught.value)


def test_header_larger_than_file_rejected(tmp_path):
    task_root = make_msd_task(tmp_path, "heart", n_cases=1, shape=SHAPE)
    # A header claiming 4000^3 float32 voxels (256 GB) in a file of a few hundred bytes: loading
    # it would allocate the declared array before reading a single voxel.
    for path in (task_root / "imagesTr" / "la_000.nii.gz", task_root / "labelsTr" / "la_000.nii.gz"):
        header = nib.load(str(path)).header.copy()
        header.set_data_shape((4000, 4000, 4000))
        path.write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(64)))

    with pytest.raises(DatasetError, match=r"declares shape \(4000, 4000, 4000\)") as caught:
        read_msd_task(task_root)

    assert "la_000.nii.gz" in str(caught.value)
    assert "truncated or its header is damaged" in str(caught.value)


def test_uncompressed_nifti_truncated_rejected(tmp_path):
    image_path = write_nifti(tmp_path / "image.nii", np.ones(SHAPE), ZOOMS_MM)
    label_path = write_nifti(tmp_path / "label.nii.gz", np.zeros(SHAPE), ZOOMS_MM, storage="uint8")
    image_path.write_bytes(image_path.read_bytes()[:-100])

    with pytest.raises(DatasetError, match="declares shape") as caught:
        load_case(MSDCase("short", image_path, label_path), 1, (0,))

    assert str(image_path) in str(caught.value)


def test_label_4d_singleton_accepted(tmp_path):
    image_path = write_nifti(tmp_path / "image.nii.gz", np.ones(SHAPE), ZOOMS_MM)
    label = np.zeros((*SHAPE, 1))
    label[4, 5, 2, 0] = 1
    label_path = write_nifti(tmp_path / "label.nii.gz", label, ZOOMS_MM, storage="uint8")

    volume = load_case(MSDCase("singleton", image_path, label_path), 1, (0, 1))

    assert volume.label.shape == SHAPE
    assert np.argwhere(volume.label).tolist() == [[4, 5, 2]]


def test_inf_only_channel_fill_min(tmp_path):
    image_path = write_nifti(tmp_path / "image.nii.gz", np.full(SHAPE, np.inf, dtype=np.float32), ZOOMS_MM)
    label_path = write_nifti(tmp_path / "label.nii.gz", np.zeros(SHAPE), ZOOMS_MM, storage="uint8")

    with pytest.raises(DatasetError, match=f"{int(np.prod(SHAPE))} NaN/Inf"):
        load_case(MSDCase("inf", image_path, label_path), 1, (0,))
    volume = load_case(MSDCase("inf", image_path, label_path), 1, (0,), nonfinite="fill_min")

    # No finite voxel is left to take a minimum from, so the channel becomes zeros, not NaN.
    assert np.array_equal(volume.image, np.zeros((1, *SHAPE), dtype=np.float32))


# --- bad voxels during the cache build ------------------------------------------------------------------------------


def _nan_image(task_root: Path) -> Path:
    path = task_root / "imagesTr" / "la_002.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, nib.load(str(path)).affine), str(path))
    return path


def _undeclared_label(task_root: Path) -> Path:
    path = task_root / "labelsTr" / "la_002.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj).astype(np.uint8)
    data[1, 2, 3] = 7
    nib.save(nib.Nifti1Image(data, nib.load(str(path)).affine), str(path))
    return path


def _oversized_header(task_root: Path) -> Path:
    path = task_root / "imagesTr" / "la_002.nii.gz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 3])
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_nan_image, "NaN/Inf"), (_undeclared_label, r"value\(s\) \[7\]"), (_oversized_header, "truncated")],
    ids=["nan", "undeclared-label", "truncated"],
)
def test_build_stops_at_bad_case(tmp_path, damage, message):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=3, shape=SHAPE)
    original = {path: path.read_bytes() for path in task_root.rglob("la_002.nii.gz")}
    broken = damage(task_root)
    cache_dir = tmp_path / "cache"

    with pytest.raises(DatasetError, match=message) as caught:
        build_slice_cache([msd_task_config(task_root)], cache_dir, slice_size=SLICE_SIZE)

    assert str(broken) in str(caught.value)
    assert sorted(_manifest_cases(cache_dir, "Task02_Heart")) == ["la_000", "la_001"]
    assert not list(cache_dir.rglob("*.tmp-*"))
    with pytest.raises(CacheError, match="incomplete"):
        SliceCache.open(cache_dir)

    for path, content in original.items():
        path.write_bytes(content)
    cache = build_slice_cache([msd_task_config(task_root)], cache_dir, slice_size=SLICE_SIZE)

    assert cache.cases("Task02_Heart") == ("la_000", "la_001", "la_002")


def test_build_nan_fill_min_policy(tmp_path):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=3, shape=SHAPE)
    _nan_image(task_root)

    cache = build_slice_cache([msd_task_config(task_root, nonfinite="fill_min")], tmp_path / "cache",
                              slice_size=SLICE_SIZE)

    image, _ = cache.load_arrays("Task02_Heart", "la_002")
    assert np.isfinite(image.astype(np.float32)).all()


# --- background-only labels -----------------------------------------------------------------------------------------


def _clear_labels(task_root: Path, case_ids: list[str]) -> None:
    for case_id in case_ids:
        path = task_root / "labelsTr" / f"{case_id}.nii.gz"
        image = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.zeros(image.shape, dtype=np.uint8), image.affine), str(path))


def test_background_only_case_cached(tmp_path, caplog):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=3, shape=SHAPE)
    _clear_labels(task_root, ["la_001"])

    with caplog.at_level(logging.WARNING, logger="hydranet_hub"):
        cache = build_slice_cache([msd_task_config(task_root)], tmp_path / "cache", slice_size=SLICE_SIZE,
                                  skip_empty_fraction=1.0)

    empty_case = cache.task("Task02_Heart").case("la_001")
    assert empty_case.foreground_slices == ()
    assert cache.task("Task02_Heart").case("la_000").foreground_slices != ()
    _, label = cache.load_arrays("Task02_Heart", "la_001")
    assert not label.any()
    # Skipping every empty slice in training leaves the case out of the train index but keeps it whole in "all".
    assert all(case_id != "la_001" for case_id, _ in cache.slice_index("Task02_Heart", "train"))
    assert sum(case_id == "la_001" for case_id, _ in cache.slice_index("Task02_Heart", "all")) == SHAPE[2]
    assert "Task02_Heart" not in caplog.text


def test_background_only_task_warns(tmp_path, caplog):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=2, shape=SHAPE)
    _clear_labels(task_root, ["la_000", "la_001"])

    with caplog.at_level(logging.WARNING, logger="hydranet_hub"):
        build_slice_cache([msd_task_config(task_root)], tmp_path / "cache", slice_size=SLICE_SIZE)

    assert "Task02_Heart: none of its 2 cached case(s) has a label value other than 0" in caplog.text
    assert "labelsTr" in caplog.text


def test_background_only_task_trains(tmp_path):
    data_root = tmp_path / "data"
    make_msd_task(data_root, "heart", n_cases=3, shape=(32, 32, 6))
    hippocampus = make_msd_task(data_root, "hippocampus", n_cases=3, shape=(32, 32, 6), seed=1)
    _clear_labels(hippocampus, ["hippocampus_000", "hippocampus_001", "hippocampus_002"])
    config = PretrainConfig(
        data_root=str(data_root), output_dir=str(tmp_path / "run"), encoder="resnet18", slice_size=(32, 32),
        decoder_channels=(32, 16, 16, 8, 8), batch_size_per_task=2, steps=2, val_fraction=0.34, val_every=2,
        checkpoint_every=0, log_every=1, num_workers=0, export=False,
    )

    result = pretrain(config)

    losses = [value for _, split, name, value in read_metrics(tmp_path / "run" / "metrics.csv")
              if split == "train" and name == "loss"]
    assert result.finished
    assert len(losses) == 2
    assert all(np.isfinite(losses))
    # With no reference voxel, a class scores 0 when predicted anywhere and is left out (NaN) when not.
    for value in result.metrics["Task04_Hippocampus"].values():
        assert np.isnan(value) or value == 0.0
    assert os.path.isfile(result.checkpoint_path)
