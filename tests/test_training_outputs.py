"""Run outputs: metrics.csv rows across resumes, validation Dice, PNG previews."""

import math

import numpy as np
import torch
from PIL import Image

from hydranet_hub.training.evaluate import DiceAccumulator, summarise_dice
from hydranet_hub.training.previews import PreviewSample, save_previews
from hydranet_hub.training.run_log import RunLogger, read_metrics


def test_metrics_csv_truncated_on_resume(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3, 4):
        logger.log(step, "train", {"loss": 1.0 / step})
    logger.close()

    resumed = RunLogger(tmp_path, resume_step=2, tensorboard=False)
    resumed.log(3, "train", {"loss": 9.0})
    resumed.close()

    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(step, value) for step, _, _, value in rows] == [(1, 1.0), (2, 0.5), (3, 9.0)]


def test_dice_accumulates_over_batches():
    accumulator = DiceAccumulator(num_classes=3)
    label = torch.tensor([[[1, 1, 0, 2]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[1, 0, 0, 2]]]), 3).permute(0, 3, 1, 2).float()

    accumulator.update(logits, label)
    accumulator.update(logits, label)

    scores = accumulator.dice()
    assert math.isclose(scores[0], 2 * 2 / (2 + 4))
    assert math.isclose(scores[1], 1.0)


def test_dice_absent_class_skipped():
    accumulator = DiceAccumulator(num_classes=3)
    label = torch.tensor([[[1, 0]]])
    logits = torch.nn.functional.one_hot(label, 3).permute(0, 3, 1, 2).float()
    accumulator.update(logits, label)

    metrics = summarise_dice(accumulator.dice(), {1: "liver", 2: "cancer"})

    assert metrics["dice/liver"] == 1.0
    assert math.isnan(metrics["dice/cancer"])
    assert metrics["dice/mean"] == 1.0


def test_previews_png_has_row_per_task(tmp_path):
    sample = PreviewSample(image=np.random.rand(16, 16), label=np.eye(16, dtype=np.int64),
                           prediction=np.zeros((16, 16), dtype=np.int64))

    path = save_previews({"a": sample, "b": sample}, tmp_path, step=5)

    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert path.name == "step_00000005.png"
    assert width == 3 * 16 * 2
    assert height == 2 * (16 * 2 + 14)
    assert pixels[14:46, 32:64].any()
