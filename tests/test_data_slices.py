"""Tests of axial slicing, in-plane resizing and 2.5D context stacking."""

import numpy as np

from hydranet_hub.data import stack_context, to_axial_slices
from hydranet_hub.data.slices import context_indices, resize_slices


def test_axial_slices_layout():
    volume = np.zeros((2, 5, 4, 3))  # [C, X, Y, Z]
    volume[1, 4, 3, 2] = 1.0  # most right (x max), most anterior (y max), top slice

    slices = to_axial_slices(volume)

    assert slices.shape == (3, 2, 4, 5)
    assert np.argwhere(slices).tolist() == [[2, 1, 0, 0]]


def test_resize_image_bilinear():
    slices = np.linspace(0.0, 1.0, 16, dtype=np.float32).reshape(1, 1, 4, 4)

    resized = resize_slices(slices, (8, 8))

    assert resized.shape == (1, 1, 8, 8)
    assert resized.dtype == np.float32
    assert resized.min() >= 0.0
    assert resized.max() <= 1.0
    # Bilinear upsampling creates values between the source pixels.
    assert len(np.unique(resized)) > 16


def test_resize_label_nearest():
    label = np.zeros((2, 6, 6), dtype=np.uint8)
    label[0, :3] = 2
    label[1, :, 3:] = 1

    resized = resize_slices(label, (12, 9), is_label=True)

    assert resized.shape == (2, 12, 9)
    assert resized.dtype == np.uint8
    assert set(np.unique(resized).tolist()) == {0, 1, 2}
    assert np.all(resized[0, :6] == 2)
    assert np.all(resized[0, 6:] == 0)


def test_resize_same_size_unchanged():
    slices = np.random.default_rng(0).normal(size=(2, 1, 5, 5)).astype(np.float16)

    resized = resize_slices(slices, (5, 5))

    np.testing.assert_array_equal(resized, slices.astype(np.float32))


def test_context_indices_replicate_edges():
    assert context_indices(0, 5, 1).tolist() == [0, 0, 1]
    assert context_indices(4, 5, 2).tolist() == [2, 3, 4, 4, 4]
    assert context_indices(2, 5, 0).tolist() == [2]


def test_stack_context_modality_major():
    volume = np.zeros((4, 2, 3, 3), dtype=np.float32)
    for z in range(4):
        for channel in range(2):
            volume[z, channel] = 10 * channel + z

    stacked = stack_context(volume, 3, 1)

    assert stacked.shape == (6, 3, 3)
    assert stacked[:, 0, 0].tolist() == [2, 3, 3, 12, 13, 13]
