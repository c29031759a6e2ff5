"""The multi-task pretraining step against a single-decoder U-Net and the original float64 recipe.

Three steps run interleaved on the same random 2.5D batches (128x128 pixels, 3 channels,
2 classes per task by default):

- the trainer's own step (`TrainingRun._train_step` of `hydranet_hub.training.loop.PretrainRun`,
  with the model, optimiser and schedule that its `_build_model` builds), in float32 and under
  bf16 autocast;
- the cost floor: one `smp.Unet` with the same encoder and decoder widths, trained with the
  same loss, AdamW, clipping and schedule on the concatenated batch of every task;
- the original study's recipe: the HydraNet in float64, one slice of one task per step.

FLOPs of the forward and backward pass come from `torch.utils.flop_counter.FlopCounterMode`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.machine import matmul_flops_per_s
from benchmarks.records import Figure, Target
from benchmarks.timing import paired_speedup, primary_clock, throughput, time_interleaved

_logger = logging.getLogger(__name__)

CPU = torch.device("cpu")
DECODER_CHANNELS = (256, 128, 64, 32, 16)


@dataclass(frozen=True)
class StepSettings:
    """Size of the benchmarked step.

    Attributes:
        slice_size_px: Height and width of each slice in pixels.
        tasks: Number of tasks, each with its own decoder.
        batch_size_per_task: Slices per task per step; the cost floor gets tasks * this many.
        classes: Output classes of every task, background included.
        rounds: Timed interleaved rounds.
        matmul_size: Side of the square matrices whose product measures peak throughput.
        decoder_channels: Output channels of each decoder block, deepest first (the trainer's default).
    """

    slice_size_px: int = 128
    tasks: int = 7
    batch_size_per_task: int = 1
    classes: int = 2
    rounds: int = 3
    matmul_size: int = 2048
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS

    @property
    def slices_per_step(self) -> int:
        return self.tasks * self.batch_size_per_task

    def task_names(self) -> list[str]:
        return [f"Task{index + 1:02d}_Bench" for index in range(self.tasks)]


def random_batch(settings: StepSettings, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Return {task: {"image": [B, 3, H, W] float32, "label": [B, H, W] int64}}, as the loader yields."""
    generator = torch.Generator().manual_seed(seed)
    size = settings.slice_size_px
    shape = (settings.batch_size_per_task, size, size)
    return {
        name: {
            "image": torch.randn(settings.batch_size_per_task, 3, size, size, generator=generator),
            "label": torch.randint(0, settings.classes, shape, generator=generator),
        }
        for name in settings.task_names()
    }


def build_trainer_step(settings: StepSettings, amp: str) -> Callable[[dict], dict[str, float]]:
    """Build the trainer's step function with the trainer's own model, optimiser and schedule.

    Args:
        settings: Step size.
        amp: "none" (the CPU default of --amp auto) or "bf16".

    Returns:
        A callable taking one {task: batch} mapping and returning the step's logged scalars.
    """
    from hydranet_hub.data import TaskConfig
    from hydranet_hub.training.config import PretrainConfig
    from hydranet_hub.training.distributed import DistContext
    from hydranet_hub.training.loop import PretrainRun
    from hydranet_hub.training.task_data import TaskData

    config = PretrainConfig(
        slice_size=(settings.slice_size_px, settings.slice_size_px),
        batch_size_per_task=settings.batch_size_per_task,
        decoder_channels=settings.decoder_channels,
        amp=amp,
        steps=1_000_000,
        warmup_steps=10,
        device="cpu",
    )
    context = DistContext(rank=0, local_rank=0, world_size=1, device=CPU, backend=None)
    # NOTE: this drives private methods of the training engine, so a rename there breaks this benchmark.
    run = PretrainRun(config, context)

    labels = tuple((value, f"class{value}") for value in range(settings.classes))
    run.tasks = {}
    for name in settings.task_names():
        # Only the channel count and class count of a task config matter to the model; no file is read.
        task_config = TaskConfig(name=name, root=".", modality_kind="MRI", modalities=(0,), labels=labels)
        run.tasks[name] = TaskData(name=name, num_classes=settings.classes, class_names=dict(labels), train=None,
                                   augment=None, val=None, num_train_cases=0, config=task_config)
    run._build_model()
    run.step = 0
    run.trained_model.train()
    return run._train_step


class FloorStep:
    """One smp.Unet with the HydraNet encoder and one decoder, trained like the trainer trains.

    Its step takes every task's slices as one batch, so it does the same convolutions as the
    multi-task step without the per-task split, decoders and losses. It is the cost floor.
    """

    def __init__(self, settings: StepSettings, amp: str) -> None:
        import hydranet_hub  # noqa: F401 - registers the "hydranet" encoder in smp
        import segmentation_models_pytorch as smp
        from hydranet_hub.training.losses import MultiTaskLoss
        from hydranet_hub.training.optim import build_optimizer, build_scheduler
        from hydranet_hub.training.precision import autocast_factory

        self.model = smp.Unet(encoder_name="hydranet", encoder_weights=None, in_channels=3,
                              classes=settings.classes, decoder_channels=settings.decoder_channels).train()
        self.criterion = MultiTaskLoss()
        self.optimizer = build_optimizer(self.model, 1e-3, 0.01)
        self.scheduler = build_scheduler(self.optimizer, 10, 1_000_000, 0.01)
        self.autocast = autocast_factory(amp, CPU)

    def __call__(self, batch: dict[str, dict[str, torch.Tensor]]) -> float:
        images = torch.cat([task_batch["image"] for task_batch in batch.values()])
        labels = torch.cat([task_batch["label"] for task_batch in batch.values()])

        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.model(images)
        loss, _ = self.criterion({"all": logits}, {"all": labels})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())


class OriginalRecipeStep:
    """The original study's recipe: the multi-task model in float64, one slice of one task per step.

    One call runs one step per task, so it processes `tasks` slices like a trainer step with a
    batch of one per task.
    """

    def __init__(self, settings: StepSettings) -> None:
        from hydranet_hub.models import HydraNet
        from hydranet_hub.training.losses import MultiTaskLoss
        from hydranet_hub.training.optim import build_optimizer

        self.model = HydraNet(encoder_name="hydranet", tasks={name: settings.classes for name in settings.task_names()},
                              in_channels=3, decoder_channels=settings.decoder_channels).double().train()
        self.criterion = MultiTaskLoss()
        self.optimizer = build_optimizer(self.model, 1e-3, 0.01)

    def __call__(self, batch: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, task_batch in batch.items():
            image = task_batch["image"][:1].double()
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model({name: image})
            loss, _ = self.criterion(logits, {name: task_batch["label"][:1]})
            loss.backward()
            self.optimizer.step()


def count_step_flops(step: Callable[[dict], Any], batch: dict) -> int:
    """Count the FLOPs of one step's forward and backward passes (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return int(counter.get_total_flops())


def run(settings: StepSettings) -> dict[str, Any]:
    """Time the multi-task step against the cost floor and the original recipe.

    Returns:
        {"settings", "timings", "throughput_slices_per_s", "flops", "figures"}.
    """
    batch = random_batch(settings)
    original_batch = {name: {key: value[:1] for key, value in task_batch.items()} for name, task_batch in batch.items()}
    steps = {
        "multitask_fp32": build_trainer_step(settings, "none"),
        "floor_fp32": FloorStep(settings, "none"),
        "multitask_bf16": build_trainer_step(settings, "bf16"),
        "floor_bf16": FloorStep(settings, "bf16"),
    }
    original = OriginalRecipeStep(settings)

    flops_per_step = count_step_flops(steps["multitask_fp32"], batch)
    cases = {name: (lambda step=step: step(batch)) for name, step in steps.items()}
    cases["original_fp64_batch1"] = lambda: original(original_batch)
    _logger.info("Timing %d rounds of %s", settings.rounds, ", ".join(cases))
    timings = time_interleaved(cases, settings.rounds)

    slices = {name: float(settings.slices_per_step) for name in steps}
    slices["original_fp64_batch1"] = float(settings.tasks)
    clock = primary_clock(torch.get_num_threads())
    rates = {name: throughput(timings[name], slices[name], clock) for name in timings}

    def ratio(fast: str, slow: str, ratio_clock: str = clock) -> float:
        return paired_speedup(timings[fast], timings[slow], slices[fast], slices[slow], ratio_clock)

    matmul_fp32 = matmul_flops_per_s(torch.float32, settings.matmul_size, 5)
    matmul_bf16 = matmul_flops_per_s(torch.bfloat16, settings.matmul_size, 5)
    flops_per_slice = flops_per_step / settings.slices_per_step
    achieved_fp32 = flops_per_slice * rates["multitask_fp32"]
    achieved_bf16 = flops_per_slice * rates["multitask_bf16"]

    size = f"{settings.slice_size_px}x{settings.slice_size_px}"
    batch_text = f"{settings.tasks} tasks x {settings.batch_size_per_task} slices"

    def rate_detail(fast: str, slow: str) -> str:
        return (f"{rates[fast]:.2f} vs {rates[slow]:.2f} slices/s ({clock} time); wall-clock ratio "
                f"{ratio(fast, slow, 'wall'):.2f}")

    figures = [
        Figure("train_step.vs_floor_fp32", f"multi-task step, float32, {size}, {batch_text}",
               "single-decoder smp.Unet, same encoder, same total batch", ratio("multitask_fp32", "floor_fp32"),
               "x", Target(">=", 0.9), rate_detail("multitask_fp32", "floor_fp32")),
        Figure("train_step.vs_floor_bf16", "the same step under bf16 autocast",
               "the single-decoder smp.Unet under bf16 autocast", ratio("multitask_bf16", "floor_bf16"), "x",
               Target(">=", 0.9), rate_detail("multitask_bf16", "floor_bf16")),
        Figure("train_step.vs_original_fp32", "multi-task step, float32 (the trainer's CPU default, --amp auto)",
               "original recipe: float64, one slice per step", ratio("multitask_fp32", "original_fp64_batch1"),
               "x", Target(">=", 10.0), rate_detail("multitask_fp32", "original_fp64_batch1")),
        Figure("train_step.vs_original_bf16", "multi-task step, bf16 autocast (--amp bf16)",
               "original recipe: float64, one slice per step", ratio("multitask_bf16", "original_fp64_batch1"),
               "x", Target(">=", 10.0), rate_detail("multitask_bf16", "original_fp64_batch1")),
        Figure("train_step.flops_fp32", "multi-task step, float32: achieved FLOP/s",
               "float32 matrix product on this machine", achieved_fp32 / matmul_fp32, "x", None,
               f"{achieved_fp32 / 1e9:.1f} of {matmul_fp32 / 1e9:.1f} GFLOP/s"),
        Figure("train_step.flops_bf16", "multi-task step, bf16 autocast: achieved FLOP/s",
               "bf16 matrix product on this machine", achieved_bf16 / matmul_bf16, "x", None,
               f"{achieved_bf16 / 1e9:.1f} of {matmul_bf16 / 1e9:.1f} GFLOP/s"),
    ]
    return {
        "settings": {**settings.__dict__, "decoder_channels": list(settings.decoder_channels)},
        "clock": clock,
        "timings": {name: timing.to_dict() for name, timing in timings.items()},
        "throughput_slices_per_s": rates,
        "flops": {
            "forward_backward_per_slice": flops_per_slice,
            "achieved_fp32_per_s": achieved_fp32,
            "achieved_bf16_per_s": achieved_bf16,
            "matmul_fp32_per_s": matmul_fp32,
            "matmul_bf16_per_s": matmul_bf16,
            "matmul_size": settings.matmul_size,
        },
        "figures": [figure.to_dict() for figure in figures],
    }
