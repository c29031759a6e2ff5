"""Validation: Dice per task and class, accumulated over the whole validation split."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from hydranet_hub.training.distributed import DistContext, all_reduce_sum

_logger = logging.getLogger(__name__)


@dataclass
class DiceAccumulator:
    """Sums of intersections and sizes per class, so Dice covers all slices, not a mean of slices.

    Args:
        num_classes: Classes including background; Dice is reported for classes 1..K-1.
    """

    num_classes: int

    def __post_init__(self) -> None:
        self.intersection = torch.zeros(self.num_classes - 1, dtype=torch.float64)
        self.predicted = torch.zeros(self.num_classes - 1, dtype=torch.float64)
        self.reference = torch.zeros(self.num_classes - 1, dtype=torch.float64)

    def update(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        """Add a batch: logits [N, K, H, W], label [N, H, W]."""
        prediction = logits.argmax(dim=1)
        for index, cls in enumerate(range(1, self.num_classes)):
            predicted = prediction == cls
            reference = label == cls
            self.intersection[index] += (predicted & reference).sum().item()
            self.predicted[index] += predicted.sum().item()
            self.reference[index] += reference.sum().item()

    def reduce(self, context: DistContext) -> None:
        """Sum the counts over ranks (each rank saw a disjoint part of the split)."""
        packed = torch.stack([self.intersection, self.predicted, self.reference])
        if context.device.type == "cuda":
            packed = packed.to(context.device)
        packed = all_reduce_sum(context, packed).cpu()
        self.intersection, self.predicted, self.reference = packed[0], packed[1], packed[2]

    def dice(self) -> list[float]:
        """Dice per foreground class; NaN for a class absent from both reference and prediction."""
        denominator = self.predicted + self.reference
        scores = torch.where(
            denominator > 0,
            2.0 * self.intersection / denominator.clamp_min(1.0),
            torch.full_like(denominator, float("nan")),
        )
        return [float(value) for value in scores]


def summarise_dice(scores: list[float], class_names: Mapping[int, str] | None = None) -> dict[str, float]:
    """Name per-class scores `dice/<class>` and add `dice/mean` over the classes that are present.

    Args:
        scores: Dice of classes 1..K-1.
        class_names: Class index -> name; indices are used when missing.

    Returns:
        Metric name -> value; `dice/mean` is NaN when no class is present.
    """
    names = class_names or {}
    metrics = {f"dice/{names.get(cls, str(cls))}": score for cls, score in enumerate(scores, start=1)}
    present = [score for score in scores if score == score]  # NaN != NaN
    metrics["dice/mean"] = sum(present) / len(present) if present else float("nan")
    return metrics


@torch.no_grad()
def validate(
    forward_task: Callable[[torch.Tensor, str], torch.Tensor],
    loaders: Mapping[str, Iterable[Mapping[str, torch.Tensor]]],
    num_classes: Mapping[str, int],
    context: DistContext,
    autocast: contextlib.AbstractContextManager | Callable[[], contextlib.AbstractContextManager],
    class_names: Mapping[str, Mapping[int, str]] | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    on_first_batch: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Run the model over each task's validation batches and compute Dice per class.

    The caller puts the model in eval mode. Under DDP every rank iterates its own shard, and
    the counts are summed over ranks, so all ranks return the same metrics.

    Args:
        forward_task: (images, task) -> logits.
        loaders: Task -> iterable of {"image": [N, C, H, W], "label": [N, H, W]} batches.
        num_classes: Task -> classes including background.
        context: Process context (device, ranks).
        autocast: Factory of the autocast context used in training.
        class_names: Task -> class index -> name, used in metric names.
        channels_last: Convert images to channels_last memory format.
        max_batches: Stop each task after this many batches (None: the whole split).
        on_first_batch: Called with (task, image, label, logits) of each task's first batch,
            e.g. to draw previews.

    Returns:
        Task -> {"dice/<class>": value, ..., "dice/mean": value}.
    """
    results: dict[str, dict[str, float]] = {}
    for task, loader in loaders.items():
        accumulator = DiceAccumulator(num_classes[task])
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            image = batch["image"].to(context.device, non_blocking=True)
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            label = batch["label"].to(context.device, non_blocking=True)

            with autocast():
                logits = forward_task(image, task)
            accumulator.update(logits.float(), label)
            if index == 0 and on_first_batch is not None:
                on_first_batch(task, image, label, logits)

        accumulator.reduce(context)
        results[task] = summarise_dice(accumulator.dice(), (class_names or {}).get(task))
    return results
