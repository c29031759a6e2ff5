"""The training-step benchmark drives the trainer's real step; a small size checks that it still can."""

import math

from benchmarks import train_step

# 64 pixels is the smallest size whose deepest feature map keeps more than one value per channel for batch norm.
SMALL = train_step.StepSettings(slice_size_px=64, tasks=2, batch_size_per_task=1, rounds=1, matmul_size=64,
                                decoder_channels=(16, 16, 16, 16, 16))


def test_trainer_step_returns_losses():
    step = train_step.build_trainer_step(SMALL, "none")

    scalars = step(train_step.random_batch(SMALL))

    assert math.isfinite(scalars["loss"])
    assert "loss/Task01_Bench" in scalars
    assert "loss/Task02_Bench" in scalars


def test_flops_match_floor_model():
    batch = train_step.random_batch(SMALL)

    multitask = train_step.count_step_flops(train_step.build_trainer_step(SMALL, "none"), batch)
    floor = train_step.count_step_flops(train_step.FloorStep(SMALL, "none"), batch)

    # One encoder pass over all slices and one decoder pass per slice in both: the same convolutions.
    assert multitask > 0
    assert multitask == floor
