"""Where the multi-task step spends its time beyond the cost floor, phase by phase.

A diagnostic beside `benchmarks.train_step`. It times forward, loss, backward, gradient clipping
and the optimiser step of the HydraNet and of the single-decoder smp.Unet separately, interleaved
round by round. Both are built from the library pieces the trainer uses (HydraNet, MultiTaskLoss,
build_optimizer, the trainer's autocast). It explains a ratio and sets no target.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.records import Figure
from benchmarks.timing import primary_clock
from benchmarks.train_step import CPU, StepSettings, random_batch

_logger = logging.getLogger(__name__)

PHASES = ("forward", "loss", "backward", "clip", "optimizer")


def _phase_timer(model: torch.nn.Module, forward: Callable[[], dict], labels: dict, amp: str
                 ) -> Callable[[], dict[str, float]]:
    """Return a callable that runs one step and returns the seconds of each phase on the primary clock."""
    from hydranet_hub.training.losses import MultiTaskLoss
    from hydranet_hub.training.optim import build_optimizer
    from hydranet_hub.training.precision import autocast_factory

    criterion = MultiTaskLoss()
    optimizer = build_optimizer(model, 1e-3, 0.01)
    autocast = autocast_factory(amp, CPU)
    clock = time.process_time if primary_clock(torch.get_num_threads()) == "cpu" else time.perf_counter

    def step() -> dict[str, float]:
        marks = [clock()]
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = forward()
        marks.append(clock())
        loss, _ = criterion(logits, labels)
        marks.append(clock())
        loss.backward()
        marks.append(clock())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(clock())
        optimizer.step()
        marks.append(clock())
        return {phase: marks[index + 1] - marks[index] for index, phase in enumerate(PHASES)}

    return step


def _optimizer_step_s(model: torch.nn.Module, fused: bool, repetitions: int) -> float:
    """Return the median seconds of one AdamW step over `model`'s parameters, built like build_optimizer's."""
    clock = time.process_time if primary_clock(torch.get_num_threads()) == "cpu" else time.perf_counter
    decay = [parameter for parameter in model.parameters() if parameter.ndim > 1]
    no_decay = [parameter for parameter in model.parameters() if parameter.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, fused=fused)
    optimizer.step()

    seconds = []
    for _ in range(repetitions):
        start = clock()
        optimizer.step()
        seconds.append(clock() - start)
    return statistics.median(seconds)


def run(settings: StepSettings) -> dict[str, Any]:
    """Time each phase of the multi-task step and of the cost floor, in float32 and bf16 autocast.

    Returns:
        {"settings", "clock", "median_phase_s", "parameters", "figures"}.
    """
    import hydranet_hub  # noqa: F401 - registers the "hydranet" encoder in smp
    import segmentation_models_pytorch as smp

    from hydranet_hub.models import HydraNet

    batch = random_batch(settings)
    images = {name: task_batch["image"] for name, task_batch in batch.items()}
    labels = {name: task_batch["label"] for name, task_batch in batch.items()}
    joined_images = torch.cat(list(images.values()))
    joined_labels = {"all": torch.cat(list(labels.values()))}

    steps = {}
    parameters = {}
    for amp in ("none", "bf16"):
        multitask = HydraNet(encoder_name="hydranet", tasks={name: settings.classes for name in images},
                             in_channels=3, decoder_channels=settings.decoder_channels).train()
        floor = smp.Unet(encoder_name="hydranet", encoder_weights=None, in_channels=3, classes=settings.classes,
                         decoder_channels=settings.decoder_channels).train()
        steps[f"multitask_{amp}"] = _phase_timer(multitask, lambda model=multitask: model(images), labels, amp)
        steps[f"floor_{amp}"] = _phase_timer(floor, lambda model=floor: {"all": model(joined_images)},
                                             joined_labels, amp)
        parameters = {"multitask": sum(p.numel() for p in multitask.parameters()),
                      "floor": sum(p.numel() for p in floor.parameters())}

    for step in steps.values():
        step()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(settings.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            samples[name].append(steps[name]())

    medians = {name: {phase: statistics.median(sample[phase] for sample in runs) for phase in PHASES}
               for name, runs in samples.items()}
    figures = []
    for amp, label in (("none", "float32"), ("bf16", "bf16 autocast")):
        multitask, floor = medians[f"multitask_{amp}"], medians[f"floor_{amp}"]
        extra_ms = {phase: (multitask[phase] - floor[phase]) * 1000 for phase in PHASES}
        detail = ", ".join(f"{phase} {multitask[phase] * 1000:.0f} vs {floor[phase] * 1000:.0f}" for phase in PHASES)
        figures.append(Figure(
            f"step_phases.extra_{amp}", f"time the multi-task step adds to the cost floor, {label}",
            "single-decoder smp.Unet, same total batch", sum(extra_ms.values()), "ms", None,
            f"ms per phase, multi-task vs floor: {detail}",
        ))

    # build_optimizer leaves AdamW's implementation to torch, whose default on CPU updates one tensor at a time.
    model = HydraNet(encoder_name="hydranet", tasks={name: settings.classes for name in images}, in_channels=3,
                     decoder_channels=settings.decoder_channels)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    default_s = _optimizer_step_s(model, fused=False, repetitions=2 * settings.rounds + 1)
    fused_s = _optimizer_step_s(model, fused=True, repetitions=2 * settings.rounds + 1)
    figures.append(Figure(
        "step_phases.adamw_fused", "AdamW step over the multi-task model's parameters with fused=True",
        "AdamW as build_optimizer creates it (torch's default implementation)", default_s / fused_s, "x", None,
        f"{fused_s * 1000:.0f} vs {default_s * 1000:.0f} ms for {parameters['multitask'] / 1e6:.1f}M parameters",
    ))
    return {
        "settings": {**settings.__dict__, "decoder_channels": list(settings.decoder_channels)},
        "clock": primary_clock(torch.get_num_threads()),
        "median_phase_s": medians,
        "optimizer_step_s": {"default": default_s, "fused": fused_s},
        "parameters": parameters,
        "figures": [figure.to_dict() for figure in figures],
    }
