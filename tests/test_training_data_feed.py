"""Step-indexed batches: resumable order, rank sharding and per-sample augmentation seeds."""

import itertools

import torch
from torch.utils.data import Dataset

from hydranet_hub.data import AugmentConfig
from hydranet_hub.training.data_feed import SeededSamples, StepBatchSampler, TaskBatches, make_train_loader


class _Ramp(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        image = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8) + 1000 * index
        label = (torch.arange(64).reshape(8, 8) % 3 == 0).long()
        return {"image": image, "label": label}


def _take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_sampler_started_late_continues_stream():
    full = _take(StepBatchSampler(10, 3, seed=1, task="a"), 12)
    late = _take(StepBatchSampler(10, 3, seed=1, task="a", start_step=7), 5)

    assert late == full[7:]


def test_sampler_covers_dataset_each_epoch():
    batches = _take(StepBatchSampler(10, 5, seed=0, task="a"), 2)

    indices = sorted(index for batch in batches for index, _ in batch)
    assert indices == list(range(10))


def test_sampler_ranks_disjoint_within_epoch():
    rank0 = _take(StepBatchSampler(10, 5, seed=0, task="a", rank=0, world_size=2), 1)[0]
    rank1 = _take(StepBatchSampler(10, 5, seed=0, task="a", rank=1, world_size=2), 1)[0]

    assert not {i for i, _ in rank0} & {i for i, _ in rank1}
    assert len({i for i, _ in rank0} | {i for i, _ in rank1}) == 10


def test_sampler_tasks_draw_different_orders():
    first = _take(StepBatchSampler(10, 10, seed=0, task="a"), 1)[0]
    second = _take(StepBatchSampler(10, 10, seed=0, task="b"), 1)[0]

    assert [i for i, _ in first] != [i for i, _ in second]


def test_seeded_samples_repeat_for_same_key():
    view = SeededSamples(_Ramp(), AugmentConfig(flip_probability=0.5, rotate90_probability=0.5))

    first, again = view[(3, 1234)], view[(3, 1234)]

    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["label"], again["label"])


def test_seeded_samples_differ_across_seeds():
    view = SeededSamples(_Ramp(), AugmentConfig(flip_probability=0.5, rotate90_probability=0.5))

    images = {tuple(view[(3, seed)]["image"].flatten()[:8].tolist()) for seed in range(20)}

    assert len(images) > 1


def test_seeded_samples_leave_global_rng_alone():
    view = SeededSamples(_Ramp(), AugmentConfig())
    torch.manual_seed(5)
    expected = torch.rand(1)

    torch.manual_seed(5)
    view[(0, 99)]
    assert torch.equal(torch.rand(1), expected)


def test_loader_with_workers_matches_in_process():
    def first_batches(num_workers):
        loader = make_train_loader(_Ramp(), AugmentConfig(), "a", batch_size=4, seed=0, rank=0, world_size=1,
                                   start_step=2, num_workers=num_workers, pin_memory=False)
        batches = TaskBatches({"a": loader})
        return [next(batches)["a"]["image"] for _ in range(3)]

    for in_process, in_worker in zip(first_batches(0), first_batches(1)):
        assert torch.equal(in_process, in_worker)
