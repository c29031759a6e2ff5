"""Soft Dice and the multi-task loss."""

import pytest
import torch

from hydranet_hub.training.losses import MultiTaskLoss, soft_dice_loss


def _confident_logits(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(label, num_classes).permute(0, 3, 1, 2).float() * 50.0


def test_dice_loss_perfect_prediction_near_zero():
    label = torch.zeros(2, 8, 8, dtype=torch.long)
    label[:, 2:5, 2:5] = 1
    label[:, 6:, 6:] = 2

    loss = soft_dice_loss(_confident_logits(label, 3), label)

    assert loss.item() < 1e-4


def test_dice_loss_wrong_prediction_near_one():
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[:, :4] = 1
    wrong = torch.zeros_like(label)
    wrong[:, 4:] = 1

    loss = soft_dice_loss(_confident_logits(wrong, 2), label)

    assert loss.item() > 0.99


def test_dice_loss_absent_class_counts_as_match():
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[:, :4] = 1  # class 2 absent from reference and prediction

    loss = soft_dice_loss(_confident_logits(label, 3), label)

    assert loss.item() < 1e-4


def test_dice_loss_float32_under_bfloat16_logits():
    label = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8).to(torch.bfloat16)

    assert soft_dice_loss(logits, label).dtype == torch.float32


def test_multitask_loss_sums_weighted_tasks():
    torch.manual_seed(0)
    logits = {"a": torch.randn(2, 2, 8, 8), "b": torch.randn(2, 3, 8, 8)}
    targets = {"a": torch.randint(0, 2, (2, 8, 8)), "b": torch.randint(0, 3, (2, 8, 8))}

    total, terms = MultiTaskLoss({"b": 0.5})(logits, targets)

    expected = terms["a"].total + 0.5 * terms["b"].total
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert terms["a"].total == pytest.approx(terms["a"].dice + terms["a"].cross_entropy, rel=1e-5)


def test_multitask_loss_zero_weight_drops_gradient():
    logits = {"a": torch.randn(1, 2, 8, 8, requires_grad=True), "b": torch.randn(1, 2, 8, 8, requires_grad=True)}
    targets = {"a": torch.randint(0, 2, (1, 8, 8)), "b": torch.randint(0, 2, (1, 8, 8))}

    total, _ = MultiTaskLoss({"b": 0.0})(logits, targets)
    total.backward()

    assert logits["a"].grad.abs().sum() > 0
    assert logits["b"].grad.abs().sum() == 0


def test_multitask_loss_missing_target_raises():
    with pytest.raises(KeyError, match="'b'"):
        MultiTaskLoss()({"b": torch.randn(1, 2, 4, 4)}, {"a": torch.zeros(1, 4, 4, dtype=torch.long)})
