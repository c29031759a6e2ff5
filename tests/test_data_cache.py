"""Tests of build_slice_cache and SliceCache: contents, reuse, rebuild triggers and crash safety."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hydranet_hub.data import (
    CacheError,
    DatasetError,
    SliceCache,
    build_slice_cache,
    load_case,
    msd_task_config,
    read_msd_task,
    to_axial_slices,
)
from hydranet_hub.data.slices import resize_slices
from msd_fixtures import make_msd_task

SLICE_SIZE = (24, 24)


@pytest.fixture
def task_roots(tmp_path) -> dict[str, Path]:
    """Writable copies of a 4-case heart task and a 3-case liver task."""
    return {
        "heart": make_msd_task(tmp_path / "msd", "heart", n_cases=4, seed=1),
        "liver": make_msd_task(tmp_path / "msd", "liver", n_cases=3, seed=2),
    }


def _configs(task_roots, **liver_overrides):
    return [msd_task_config(task_roots["heart"]), msd_task_config(task_roots["liver"], **liver_overrides)]


def _array_mtimes(cache_dir: Path) -> dict[str, int]:
    return {str(path.relative_to(cache_dir)): path.stat().st_mtime_ns for path in cache_dir.rglob("*.npy")}


def _manifest(cache_dir: Path) -> dict:
    return json.loads((cache_dir / "manifest.json").read_text())


def test_build_contents(task_roots, tmp_path):
    cache = build_slice_cache(_configs(task_roots), tmp_path / "cache", slice_size=SLICE_SIZE, val_fraction=0.25)

    assert sorted(cache.tasks) == ["Task02_Heart", "Task03_Liver"]
    image, label = cache.load_arrays("Task03_Liver", "liver_001")
    assert image.shape == (6, 1, *SLICE_SIZE)
    assert image.dtype == np.float16
    assert label.shape == (6, *SLICE_SIZE)
    assert label.dtype == np.uint8
    assert np.abs(image.astype(np.float32)).max() <= 5.0
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert cache.num_classes("Task03_Liver") == 3
    assert cache.in_channels("Task03_Liver") == 3
    assert cache.task("Task03_Liver").case("liver_001").spacing_mm == pytest.approx((0.8, 0.8, 5.0))


def test_build_matches_source_labels(task_roots, tmp_path):
    cache = build_slice_cache(_configs(task_roots), tmp_path / "cache", slice_size=SLICE_SIZE)
    task = read_msd_task(task_roots["heart"])

    # Case 2 is stored in a permuted orientation; its cached slices must still follow RAS+.
    volume = load_case(task.case("la_002"), 1, task.label_values)
    expected = resize_slices(to_axial_slices(volume.label), SLICE_SIZE, is_label=True)
    _, label = cache.load_arrays("Task02_Heart", "la_002")
    np.testing.assert_array_equal(label, expected)
    assert cache.task("Task02_Heart").case("la_002").foreground_slices == tuple(
        int(z) for z in np.flatnonzero(expected.any(axis=(1, 2)))
    )


def test_build_split_by_case(task_roots, tmp_path):
    cache = build_slice_cache(_configs(task_roots), tmp_path / "cache", slice_size=SLICE_SIZE, val_fraction=0.5, seed=3)

    train, val = cache.cases("Task02_Heart", "train"), cache.cases("Task02_Heart", "val")
    assert len(train) == 2
    assert len(val) == 2
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(cache.cases("Task02_Heart"))
    train_cases = {case_id for case_id, _ in cache.slice_index("Task02_Heart", "train")}
    assert train_cases == set(train)


def test_build_split_deterministic(task_roots, tmp_path):
    configs = _configs(task_roots)
    first = build_slice_cache(configs, tmp_path / "a", slice_size=SLICE_SIZE, val_fraction=0.5, seed=7)
    second = build_slice_cache(configs, tmp_path / "b", slice_size=SLICE_SIZE, val_fraction=0.5, seed=7)

    assert first.cases("Task02_Heart", "val") == second.cases("Task02_Heart", "val")
    splits = {
        build_slice_cache(configs, tmp_path / "a", slice_size=SLICE_SIZE, val_fraction=0.5, seed=seed).cases(
            "Task02_Heart", "val"
        )
        for seed in range(6)
    }
    assert len(splits) > 1


def test_rebuild_reuses_cases(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)
    before = _array_mtimes(cache_dir)

    cache = build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE, val_fraction=0.5, seed=1)

    assert _array_mtimes(cache_dir) == before
    assert cache.val_fraction == 0.5
    assert len(cache.cases("Task02_Heart", "val")) == 2


def test_rebuild_on_slice_size_change(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)
    before = _array_mtimes(cache_dir)

    cache = build_slice_cache(_configs(task_roots), cache_dir, slice_size=(16, 20))

    after = _array_mtimes(cache_dir)
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before)
    image, _ = cache.load_arrays("Task02_Heart", "la_000")
    assert image.shape[-2:] == (16, 20)


def test_rebuild_on_task_config_change(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)
    before = _array_mtimes(cache_dir)
    old_image, _ = SliceCache.open(cache_dir).load_arrays("Task03_Liver", "liver_000")
    old_image = np.array(old_image)

    cache = build_slice_cache(_configs(task_roots, window_hu=(-500, 500)), cache_dir, slice_size=SLICE_SIZE)

    after = _array_mtimes(cache_dir)
    assert all(after[name] == before[name] for name in before if name.startswith("Task02_Heart"))
    assert all(after[name] != before[name] for name in before if name.startswith("Task03_Liver"))
    new_image, _ = cache.load_arrays("Task03_Liver", "liver_000")
    assert not np.array_equal(old_image, new_image)


def test_rebuild_on_source_change(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)
    before = _array_mtimes(cache_dir)
    changed = task_roots["heart"] / "imagesTr" / "la_001.nii.gz"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))

    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)

    after = _array_mtimes(cache_dir)
    rebuilt = sorted(name for name in before if after[name] != before[name])
    assert rebuilt == ["Task02_Heart/la_001.image.npy", "Task02_Heart/la_001.label.npy"]


def test_rebuild_drops_removed_case(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)
    json_path = task_roots["heart"] / "dataset.json"
    metadata = json.loads(json_path.read_text())
    metadata["training"] = metadata["training"][1:]
    json_path.write_text(json.dumps(metadata))

    cache = build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)

    assert "la_000" not in cache.cases("Task02_Heart")
    assert not (cache_dir / "Task02_Heart" / "la_000.image.npy").exists()


def test_rebuild_keeps_unlisted_task(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)

    cache = build_slice_cache(_configs(task_roots)[:1], cache_dir, slice_size=SLICE_SIZE)

    assert sorted(cache.tasks) == ["Task02_Heart", "Task03_Liver"]


def test_build_error_leaves_incomplete_cache(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    broken = task_roots["liver"] / "imagesTr" / "liver_002.nii.gz"
    original = broken.read_bytes()
    broken.write_bytes(original[: len(original) // 2])

    with pytest.raises(DatasetError, match="liver_002"):
        build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)

    assert "liver_002" not in _manifest(cache_dir)["tasks"]["Task03_Liver"]["cases"]
    with pytest.raises(CacheError, match="Task03_Liver .*incomplete"):
        SliceCache.open(cache_dir)
    partial = SliceCache.open(cache_dir, allow_incomplete=True)
    assert partial.cases("Task03_Liver") == ("liver_000", "liver_001")

    before = _array_mtimes(cache_dir)
    broken.write_bytes(original)
    cache = build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)

    assert cache.cases("Task03_Liver") == ("liver_000", "liver_001", "liver_002")
    assert all(_array_mtimes(cache_dir)[name] == mtime for name, mtime in before.items())


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from hydranet_hub.data import build_slice_cache, msd_task_config

    real_replace = os.replace

    def replace_then_die(source, target):
        # Simulate a crash between the image and the label of the second case.
        if str(target).endswith("la_001.label.npy"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, target)

    os.replace = replace_then_die
    build_slice_cache([msd_task_config(sys.argv[1])], sys.argv[2], slice_size=(24, 24))
    """
)


def test_killed_build_resumes(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}

    result = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(task_roots["heart"]), str(cache_dir)],
        env=environment, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == -signal.SIGKILL, result.stderr
    assert list(cache_dir.rglob("*.tmp-*")), "the kill should leave a temporary label file behind"
    entries = _manifest(cache_dir)["tasks"]["Task02_Heart"]["cases"]
    assert "la_001" not in entries
    with pytest.raises(CacheError, match="incomplete"):
        SliceCache.open(cache_dir)

    cache = build_slice_cache([msd_task_config(task_roots["heart"])], cache_dir, slice_size=SLICE_SIZE)

    assert not list(cache_dir.rglob("*.tmp-*"))
    assert cache.cases("Task02_Heart") == ("la_000", "la_001", "la_002", "la_003")
    clean = build_slice_cache([msd_task_config(task_roots["heart"])], tmp_path / "clean", slice_size=SLICE_SIZE)
    for case_id in clean.cases("Task02_Heart"):
        for resumed, fresh in zip(cache.load_arrays("Task02_Heart", case_id), clean.load_arrays("Task02_Heart", case_id)):
            np.testing.assert_array_equal(resumed, fresh)


def test_build_with_workers_matches_serial(task_roots, tmp_path):
    serial = build_slice_cache(_configs(task_roots), tmp_path / "serial", slice_size=SLICE_SIZE)
    parallel = build_slice_cache(_configs(task_roots), tmp_path / "parallel", slice_size=SLICE_SIZE, num_workers=2)

    for task in serial.tasks:
        assert parallel.cases(task, "val") == serial.cases(task, "val")
        for case_id in serial.cases(task):
            for first, second in zip(serial.load_arrays(task, case_id), parallel.load_arrays(task, case_id)):
                np.testing.assert_array_equal(first, second)


def test_build_float32_images(task_roots, tmp_path):
    cache = build_slice_cache(_configs(task_roots)[:1], tmp_path / "cache", slice_size=SLICE_SIZE, image_dtype="float32")

    image, _ = cache.load_arrays("Task02_Heart", "la_000")
    assert image.dtype == np.float32


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"slice_size": (0, 24)}, "slice_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"skip_empty_fraction": 1.5}, "skip_empty_fraction"),
        ({"image_dtype": "int8"}, "image_dtype"),
        ({"context_slices": -1}, "context_slices"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_build_invalid_arguments(task_roots, tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        build_slice_cache(_configs(task_roots), tmp_path / "cache", **arguments)


def test_skip_empty_slices(task_roots, tmp_path):
    cache = build_slice_cache(_configs(task_roots), tmp_path / "cache", slice_size=SLICE_SIZE, skip_empty_fraction=1.0)

    task = cache.task("Task02_Heart")
    train_index = cache.slice_index("Task02_Heart", "train")
    expected_train = [(case.case_id, z) for case in task.cases if case.split == "train" for z in case.foreground_slices]
    assert train_index == expected_train
    assert len(expected_train) < sum(case.num_slices for case in task.cases if case.split == "train")
    val_index = cache.slice_index("Task02_Heart", "val")
    assert len(val_index) == sum(case.num_slices for case in task.cases if case.split == "val")


def test_skip_half_of_empty_slices(task_roots, tmp_path):
    cache = build_slice_cache(_configs(task_roots), tmp_path / "cache", slice_size=SLICE_SIZE, skip_empty_fraction=0.5)

    for case in cache.task("Task02_Heart").cases:
        kept = [z for case_id, z in cache.slice_index("Task02_Heart", "train", (case.case_id,))]
        empty_count = case.num_slices - len(case.foreground_slices)
        assert set(case.foreground_slices) <= set(kept)
        assert len(kept) == case.num_slices - empty_count // 2


def test_open_missing_manifest(tmp_path):
    with pytest.raises(CacheError, match="manifest.json is missing"):
        SliceCache.open(tmp_path)


def test_open_missing_array(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)
    missing = cache_dir / "Task03_Liver" / "liver_001.label.npy"
    missing.unlink()

    with pytest.raises(CacheError, match="liver_001.label.npy"):
        SliceCache.open(cache_dir)
    cache = build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)
    assert missing.is_file()
    assert "liver_001" in cache.cases("Task03_Liver")


def test_open_wrong_format_version(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)
    manifest = _manifest(cache_dir)
    manifest["format_version"] = 99
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(CacheError, match="format version 99"):
        SliceCache.open(cache_dir)


def test_build_removes_stale_temporary_files(task_roots, tmp_path):
    cache_dir = tmp_path / "cache"
    leftover = cache_dir / "Task02_Heart" / "la_000.image.npy.tmp-12345"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")

    build_slice_cache(_configs(task_roots), cache_dir, slice_size=SLICE_SIZE)

    assert not leftover.exists()


def test_build_config_labels_must_match(task_roots, tmp_path):
    config = msd_task_config(task_roots["heart"])
    json_path = task_roots["heart"] / "dataset.json"
    metadata = json.loads(json_path.read_text())
    metadata["labels"]["2"] = "extra"
    json_path.write_text(json.dumps(metadata))

    with pytest.raises(DatasetError, match="differ from those in"):
        build_slice_cache([config], tmp_path / "cache", slice_size=SLICE_SIZE)
