"""Tests of SliceDataset and select_case_budget."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hydranet_hub.data import AugmentConfig, SliceDataset, build_slice_cache, msd_task_config, select_case_budget
from msd_fixtures import make_msd_task

SLICE_SIZE = (24, 24)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    configs = [
        msd_task_config(make_msd_task(root / "msd", "heart", n_cases=5, seed=1)),
        msd_task_config(make_msd_task(root / "msd", "prostate", n_cases=3, seed=2)),
    ]
    return build_slice_cache(configs, root / "cache", slice_size=SLICE_SIZE, val_fraction=0.2)


def test_item_layout(cache):
    dataset = SliceDataset(cache, "Task05_Prostate", split="all")

    item = dataset[0]

    assert item["image"].shape == (6, *SLICE_SIZE)
    assert item["image"].dtype == torch.float32
    assert item["label"].shape == SLICE_SIZE
    assert item["label"].dtype == torch.int64
    assert item["task"] == "Task05_Prostate"
    assert (item["case"], item["slice"]) == dataset.index[0]
    assert dataset.in_channels == 6
    assert dataset.num_classes == 3


def test_item_stacks_neighbours(cache):
    dataset = SliceDataset(cache, "Task05_Prostate", split="all")
    image_volume, label_volume = cache.load_arrays("Task05_Prostate", "prostate_001")

    for z in (0, 3, len(label_volume) - 1):
        item = dataset[dataset.index.index(("prostate_001", z))]
        neighbours = np.clip([z - 1, z, z + 1], 0, len(label_volume) - 1)
        expected = np.concatenate([image_volume[neighbours, channel] for channel in range(2)]).astype(np.float32)
        np.testing.assert_array_equal(item["image"].numpy(), expected)
        np.testing.assert_array_equal(item["label"].numpy(), label_volume[z])


def test_context_override(cache):
    dataset = SliceDataset(cache, "Task02_Heart", context_slices=2)

    assert dataset[0]["image"].shape == (5, *SLICE_SIZE)
    assert SliceDataset(cache, "Task02_Heart", context_slices=0)[0]["image"].shape == (1, *SLICE_SIZE)


def test_split_lengths(cache):
    train = SliceDataset(cache, "Task02_Heart", split="train")
    val = SliceDataset(cache, "Task02_Heart", split="val")

    assert len(train.cases) == 4
    assert len(val.cases) == 1
    assert set(train.cases).isdisjoint(val.cases)
    assert len(val) == sum(cache.task("Task02_Heart").case(case_id).num_slices for case_id in val.cases)
    assert {item_case for item_case, _ in train.index} == set(train.cases)


def test_budget_nested():
    case_ids = tuple(f"case_{index:02d}" for index in range(20))

    budgets = [set(select_case_budget(case_ids, size, seed=4, task="Task02_Heart")) for size in (1, 5, 10, 20)]

    assert [len(budget) for budget in budgets] == [1, 5, 10, 20]
    assert budgets[0] <= budgets[1] <= budgets[2] <= budgets[3]
    assert select_case_budget(case_ids, 5, seed=5, task="Task02_Heart") != tuple(sorted(budgets[1]))


def test_budget_dataset(cache):
    dataset = SliceDataset(cache, "Task02_Heart", max_cases=2)

    assert len(dataset.cases) == 2
    assert set(dataset.cases) <= set(cache.cases("Task02_Heart", "train"))
    assert {case_id for case_id, _ in dataset.index} == set(dataset.cases)


def test_budget_out_of_range(cache):
    with pytest.raises(ValueError, match="max_cases=5"):
        SliceDataset(cache, "Task02_Heart", max_cases=5)


def test_unknown_task_and_split(cache):
    with pytest.raises(KeyError, match="Task99"):
        SliceDataset(cache, "Task99_None")
    with pytest.raises(ValueError, match="split='test'"):
        SliceDataset(cache, "Task02_Heart", split="test")


def test_augment_seeded(cache):
    config = AugmentConfig(flip_probability=0.5, rotate_probability=0.5)
    first = SliceDataset(cache, "Task02_Heart", augment=config, seed=1)
    second = SliceDataset(cache, "Task02_Heart", augment=config, seed=1)
    plain = SliceDataset(cache, "Task02_Heart")

    first_items = [first[index] for index in range(6)]
    second_items = [second[index] for index in range(6)]

    for one, two in zip(first_items, second_items):
        assert torch.equal(one["image"], two["image"])
        assert torch.equal(one["label"], two["label"])
    assert any(not torch.equal(item["image"], plain[index]["image"]) for index, item in enumerate(first_items))


def test_loader_workers_reproducible(cache):
    dataset = SliceDataset(cache, "Task02_Heart", augment=AugmentConfig())

    def first_batch():
        loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(9))
        return next(iter(loader))

    one, two = first_batch(), first_batch()

    assert one["case"] == two["case"]
    assert torch.equal(one["image"], two["image"])
    assert torch.equal(one["label"], two["label"])


def test_pickle_drops_memory_maps(cache):
    dataset = SliceDataset(cache, "Task02_Heart")
    dataset[0]

    restored = pickle.loads(pickle.dumps(dataset))

    assert restored._arrays == {}
    assert torch.equal(restored[0]["image"], dataset[0]["image"])
