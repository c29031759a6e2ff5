"""Slice-fraction budgets: size, nesting and seeds."""

import pytest
import torch
from torch.utils.data import TensorDataset

from hydranet_hub.finetune import select_slice_fraction


def _dataset(size):
    return TensorDataset(torch.arange(size))


def test_fraction_keeps_rounded_up_share():
    assert len(select_slice_fraction(_dataset(10), 0.25, seed=0, task="t")) == 3
    assert len(select_slice_fraction(_dataset(10), 1.0, seed=0, task="t")) == 10
    assert len(select_slice_fraction(_dataset(10), 0.01, seed=0, task="t")) == 1


def test_fractions_nested_for_one_seed():
    small = select_slice_fraction(_dataset(50), 0.1, seed=4, task="t").indices
    large = select_slice_fraction(_dataset(50), 0.3, seed=4, task="t").indices

    assert set(small) <= set(large)


def test_seeds_draw_different_slices():
    first = select_slice_fraction(_dataset(50), 0.2, seed=0, task="t").indices
    second = select_slice_fraction(_dataset(50), 0.2, seed=1, task="t").indices

    assert first != second


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_invalid_fraction_rejected(fraction):
    with pytest.raises(ValueError, match="slice_fraction"):
        select_slice_fraction(_dataset(5), fraction, seed=0, task="t")
