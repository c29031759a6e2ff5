"""Tests of InfiniteShardedSampler and make_task_loaders."""

from itertools import islice

import pytest
import torch

from hydranet_hub.data import AugmentConfig, InfiniteShardedSampler, build_slice_cache, make_task_loaders, msd_task_config
from msd_fixtures import make_msd_task

SLICE_SIZE = (16, 16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    configs = [
        msd_task_config(make_msd_task(root / "msd", "heart", n_cases=3, seed=1)),
        msd_task_config(make_msd_task(root / "msd", "liver", n_cases=3, seed=2)),
    ]
    return build_slice_cache(configs, root / "cache", slice_size=SLICE_SIZE, val_fraction=0.0)


def test_sampler_shards_cover_pass():
    shards = [list(islice(iter(InfiniteShardedSampler(10, seed=3, rank=rank, world_size=3)), 4)) for rank in range(3)]

    assert all(len(shard) == 4 for shard in shards)
    combined = [index for shard in shards for index in shard]
    assert set(combined) == set(range(10))
    # 12 slots for 10 items: the permutation wraps around by exactly two.
    assert len(combined) - len(set(combined)) == 2


def test_sampler_reshuffles_each_pass():
    stream = list(islice(iter(InfiniteShardedSampler(8, seed=0)), 24))

    passes = [stream[start:start + 8] for start in (0, 8, 16)]
    assert all(sorted(one_pass) == list(range(8)) for one_pass in passes)
    assert len({tuple(one_pass) for one_pass in passes}) == 3


def test_sampler_seeded():
    first = list(islice(iter(InfiniteShardedSampler(8, seed=5)), 16))
    second = list(islice(iter(InfiniteShardedSampler(8, seed=5)), 16))
    other = list(islice(iter(InfiniteShardedSampler(8, seed=6)), 16))

    assert first == second
    assert first != other


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0)])
def test_sampler_invalid_rank(rank, world_size):
    with pytest.raises(ValueError, match="rank"):
        InfiniteShardedSampler(8, rank=rank, world_size=world_size)


def test_loader_batches_per_task(cache):
    loader = make_task_loaders(cache, ["Task02_Heart", "Task03_Liver"], batch_size_per_task=4, augment=AugmentConfig())

    # 18 slices per task: 10 steps of 4 run past the end of a pass, which an infinite loader must survive.
    steps = list(islice(iter(loader), 10))

    assert len(steps) == 10
    for batches in steps:
        assert sorted(batches) == ["Task02_Heart", "Task03_Liver"]
        for task, batch in batches.items():
            assert batch["image"].shape == (4, 3, *SLICE_SIZE)
            assert batch["label"].shape == (4, *SLICE_SIZE)
            assert batch["task"] == [task] * 4


def test_loader_ranks_disjoint(cache):
    per_rank_pass = 9  # 18 slices over 2 ranks

    seen = []
    for rank in range(2):
        loader = make_task_loaders(cache, ["Task02_Heart"], batch_size_per_task=3, seed=1, rank=rank, world_size=2)
        batches = [step["Task02_Heart"] for step in islice(iter(loader), per_rank_pass // 3)]
        seen.append({(case, int(z)) for batch in batches for case, z in zip(batch["case"], batch["slice"])})

    assert len(seen[0]) == len(seen[1]) == per_rank_pass
    assert seen[0].isdisjoint(seen[1])


def test_loader_seeded(cache):
    def first_step(seed):
        loader = make_task_loaders(cache, ["Task03_Liver"], batch_size_per_task=4, seed=seed, augment=AugmentConfig())
        return next(iter(loader))["Task03_Liver"]

    one, two, other = first_step(0), first_step(0), first_step(1)

    assert torch.equal(one["image"], two["image"])
    assert one["case"] == two["case"]
    assert torch.equal(one["slice"], two["slice"])
    assert not torch.equal(one["image"], other["image"])


def test_loader_budget_per_task(cache):
    loader = make_task_loaders(cache, ["Task02_Heart", "Task03_Liver"], 2, max_cases={"Task02_Heart": 1})

    assert len(loader.datasets["Task02_Heart"].cases) == 1
    assert len(loader.datasets["Task03_Liver"].cases) == 3


def test_loader_batch_too_large(cache):
    with pytest.raises(ValueError, match="batch_size_per_task=50"):
        make_task_loaders(cache, ["Task02_Heart"], batch_size_per_task=50)


def test_loader_with_workers(cache):
    loader = make_task_loaders(cache, ["Task02_Heart"], batch_size_per_task=2, num_workers=1, augment=AugmentConfig())

    steps = list(islice(iter(loader), 3))

    assert [step["Task02_Heart"]["image"].shape for step in steps] == [(2, 3, *SLICE_SIZE)] * 3
