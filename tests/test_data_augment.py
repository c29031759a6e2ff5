"""Tests of augment_sample and AugmentConfig."""

import pytest
import torch

from hydranet_hub.data import ZSCORE_CLIP, AugmentConfig, augment_sample

GEOMETRY_ONLY = {"scale_probability": 0.0, "shift_probability": 0.0, "gamma_probability": 0.0}


def _sample(height=16, width=16):
    label = torch.zeros(height, width, dtype=torch.int64)
    label[2:7, 3:12] = 1
    label[9:14, 5:8] = 2
    # Channel 0 copies the label and channel 1 a gradient, so geometric changes are traceable.
    gradient = torch.arange(height * width, dtype=torch.float32).reshape(height, width) / (height * width)
    image = torch.stack([label.float(), gradient])
    return image, label


def test_disabled_is_identity():
    image, label = _sample()

    augmented_image, augmented_label = augment_sample(image, label, AugmentConfig.disabled(), torch.Generator().manual_seed(0))

    assert torch.equal(augmented_image, image)
    assert torch.equal(augmented_label, label)


@pytest.mark.parametrize("seed", range(8))
def test_flips_and_rot90_move_label_with_image(seed):
    image, label = _sample()
    config = AugmentConfig(flip_probability=0.5, rotate90_probability=1.0, rotate_probability=0.0, **GEOMETRY_ONLY)

    augmented_image, augmented_label = augment_sample(image, label, config, torch.Generator().manual_seed(seed))

    assert augmented_label.dtype == torch.int64
    assert torch.equal(augmented_image[0].long(), augmented_label)
    assert not torch.equal(augmented_label, label)


def test_small_rotation_moves_label_with_image():
    image, label = _sample(32, 32)
    config = AugmentConfig(flip_probability=0.0, rotate90_probability=0.0, rotate_probability=1.0,
                           rotate_max_degrees=20.0, **GEOMETRY_ONLY)

    # Seed 1 draws an angle of about -19 degrees, enough to move label pixels.
    augmented_image, augmented_label = augment_sample(image, label, config, torch.Generator().manual_seed(1))

    assert set(augmented_label.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(augmented_label, label)
    # Bilinear image and nearest label agree away from class borders.
    agreement = (augmented_image[0].round().long() == augmented_label).float().mean()
    assert agreement > 0.95


def test_rot90_non_square_keeps_shape():
    image, label = _sample(12, 20)
    config = AugmentConfig(flip_probability=0.0, rotate90_probability=1.0, rotate_probability=0.0, **GEOMETRY_ONLY)

    augmented_image, augmented_label = augment_sample(image, label, config, torch.Generator().manual_seed(0))

    assert augmented_image.shape == image.shape
    assert torch.equal(augmented_label, torch.rot90(label, 2))


def test_intensity_changes_leave_label():
    image, label = _sample()
    image = image * 4.0
    config = AugmentConfig(flip_probability=0.0, rotate90_probability=0.0, rotate_probability=0.0,
                           scale_probability=1.0, scale_range=(1.5, 2.0), shift_probability=1.0,
                           gamma_probability=1.0)

    augmented_image, augmented_label = augment_sample(image, label, config, torch.Generator().manual_seed(0))

    assert torch.equal(augmented_label, label)
    assert not torch.allclose(augmented_image, image)
    assert augmented_image.abs().max() <= ZSCORE_CLIP


def test_same_seed_same_result():
    image, label = _sample()
    config = AugmentConfig(rotate_probability=0.5)

    first = augment_sample(image, label, config, torch.Generator().manual_seed(11))
    second = augment_sample(image, label, config, torch.Generator().manual_seed(11))

    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


@pytest.mark.parametrize(
    "settings",
    [{"flip_probability": 1.5}, {"gamma_range": (2.0, 1.0)}, {"scale_range": (0.0, 1.0)}, {"rotate_max_degrees": -1.0}],
)
def test_config_invalid(settings):
    with pytest.raises(ValueError):
        AugmentConfig(**settings)
