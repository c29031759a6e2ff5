"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

import pytest
import torch

from hydranet_hub.training.optim import build_optimizer, build_scheduler, warmup_cosine_factor


def test_schedule_warms_up_then_decays():
    factors = [warmup_cosine_factor(step, warmup_steps=10, total_steps=100, min_factor=0.1) for step in range(100)]

    assert all(a < b for a, b in zip(factors[:10], factors[1:11]))
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert warmup_cosine_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_schedule_without_warmup_starts_at_peak():
    assert warmup_cosine_factor(0, warmup_steps=0, total_steps=50) == pytest.approx(1.0)


def test_optimizer_skips_decay_for_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))

    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)

    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05
    assert [p.ndim for p in decayed["params"]] == [4]
    assert plain["weight_decay"] == 0.0
    assert len(plain["params"]) == 3


def test_scheduler_state_round_trips():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, lr=1.0, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, warmup_steps=3, total_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()

    restored = build_scheduler(build_optimizer(model, lr=1.0, weight_decay=0.0), warmup_steps=3, total_steps=10)
    restored.load_state_dict(scheduler.state_dict())

    assert restored.last_epoch == 5
    assert restored.get_last_lr() == scheduler.get_last_lr()
