"""Tests of CT and MRI intensity normalisation."""

import numpy as np
import pytest

from hydranet_hub.data import ZSCORE_CLIP, TaskConfig, normalize_ct, normalize_image, normalize_mri


def test_zscore_clip_contract():
    assert ZSCORE_CLIP == 5.0


def test_ct_stats_over_window_voxels():
    rng = np.random.default_rng(0)
    tissue = rng.uniform(-50.0, 200.0, 5000)
    air = np.full(5000, -1000.0)
    volume_hu = np.concatenate([tissue, air]).astype(np.float32)

    normalised = normalize_ct(volume_hu, (-100.0, 250.0))

    inside = normalised[:5000]
    assert normalised.dtype == np.float32
    assert inside.mean() == pytest.approx(0.0, abs=1e-4)
    assert inside.std() == pytest.approx(1.0, abs=1e-3)
    # Air is clipped to the window floor before standardising: (-100 - mean) / std.
    expected_air = (-100.0 - tissue.mean()) / tissue.std()
    assert normalised[5000] == pytest.approx(expected_air, rel=1e-3)
    assert np.all(normalised[5000:] == normalised[5000])


def test_ct_fixed_stats():
    volume_hu = np.array([-500.0, 0.0, 100.0, 1000.0], dtype=np.float32)

    normalised = normalize_ct(volume_hu, (-100.0, 250.0), stats_hu=(50.0, 50.0))

    np.testing.assert_allclose(normalised, [-3.0, -1.0, 1.0, 4.0])


def test_ct_output_clipped():
    volume_hu = np.concatenate([np.zeros(1000), [240.0]]).astype(np.float32)

    normalised = normalize_ct(volume_hu, (-100.0, 250.0), stats_hu=(0.0, 10.0))

    assert normalised.max() == ZSCORE_CLIP


def test_ct_all_outside_window():
    volume_hu = np.full((4, 4), -1000.0, dtype=np.float32)

    normalised = normalize_ct(volume_hu, (-100.0, 250.0))

    np.testing.assert_array_equal(normalised, 0.0)


def test_mri_stats_over_nonzero():
    rng = np.random.default_rng(1)
    volume = np.zeros(10000, dtype=np.float32)
    volume[:4000] = rng.normal(500.0, 80.0, 4000)

    normalised = normalize_mri(volume)

    assert normalised[:4000].mean() == pytest.approx(0.0, abs=1e-4)
    assert normalised[:4000].std() == pytest.approx(1.0, abs=1e-3)
    assert np.all(normalised[4000:] == -ZSCORE_CLIP)


def test_mri_empty_volume():
    normalised = normalize_mri(np.zeros((3, 3), dtype=np.int16))

    assert normalised.dtype == np.float32
    np.testing.assert_array_equal(normalised, 0.0)


def test_image_per_channel():
    rng = np.random.default_rng(2)
    image = np.stack([rng.normal(100.0, 10.0, 500), rng.normal(3000.0, 400.0, 500)]).astype(np.float32)
    config = TaskConfig("Task05_Prostate", "/data", "MRI", (0, 1), ((0, "background"), (1, "PZ")))

    normalised = normalize_image(image, config)

    assert normalised.shape == image.shape
    np.testing.assert_allclose(normalised.mean(axis=1), [0.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(normalised.std(axis=1), [1.0, 1.0], atol=1e-3)


def test_image_ct_uses_config_window():
    image = np.array([[-1000.0, 0.0, 100.0, 3000.0]], dtype=np.float32)
    config = TaskConfig("Task03_Liver", "/data", "CT", (0,), ((0, "background"),), window_hu=(0.0, 100.0),
                        ct_stats_hu=(50.0, 25.0))

    normalised = normalize_image(image, config)

    np.testing.assert_allclose(normalised, [[-2.0, -2.0, 2.0, 2.0]])
