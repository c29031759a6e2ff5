"""Segmentation losses: soft Dice over foreground classes plus cross-entropy, summed over tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Compute 1 - mean soft Dice over the foreground classes of a batch.

    Dice is computed per class over the whole batch (all pixels of all samples), so a slice
    without foreground does not produce an undefined score. A class absent from both target
    and prediction scores Dice 1 through `smooth`.

    Args:
        logits: [N, K, H, W] raw scores, K >= 2 (class 0 is background).
        target: [N, H, W] integer labels in [0, K).
        smooth: Added to numerator and denominator.

    Returns:
        Scalar loss in [0, 1], float32.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)[:, 1:]
    one_hot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2)[:, 1:].float()

    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


@dataclass(frozen=True)
class TaskLoss:
    """Loss terms of one task for one step (detached scalars for logging)."""

    total: float
    dice: float
    cross_entropy: float


class MultiTaskLoss(torch.nn.Module):
    """Weighted sum over tasks of `dice_weight * soft Dice + ce_weight * cross-entropy`.

    Args:
        task_weights: Task name -> weight; tasks left out weigh 1.0.
        dice_weight: Weight of the Dice term within each task.
        ce_weight: Weight of the cross-entropy term within each task.
    """

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.task_weights = dict(task_weights or {})
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight

    def forward(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, TaskLoss]]:
        """Compute the weighted loss.

        Args:
            logits: Task -> [N, K, H, W] logits.
            targets: Task -> [N, H, W] integer labels; must contain every task in `logits`.

        Returns:
            The scalar loss to back-propagate, and per-task detached terms.

        Raises:
            KeyError: When a task in `logits` has no target.
        """
        total = torch.zeros((), device=next(iter(logits.values())).device)
        terms: dict[str, TaskLoss] = {}
        for task, task_logits in logits.items():
            if task not in targets:
                raise KeyError(f"No target for task {task!r}; targets has {sorted(targets)}.")
            target = targets[task].long()

            # Losses in float32 even under autocast, since the softmax sums are sensitive.
            dice = soft_dice_loss(task_logits, target)
            cross_entropy = F.cross_entropy(task_logits.float(), target)
            task_total = self.dice_weight * dice + self.ce_weight * cross_entropy
            total = total + self.task_weights.get(task, 1.0) * task_total
            terms[task] = TaskLoss(
                total=float(task_total.detach()),
                dice=float(dice.detach()),
                cross_entropy=float(cross_entropy.detach()),
            )
        return total, terms
