"""The fine-tuned model: built with smp, adapted to the training engine, saved as a model folder for inference."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from hydranet_hub.errors import HydraNetHubError
from hydranet_hub.finetune.config import FinetuneConfig
from hydranet_hub.inference.preprocessing import InferencePreprocessing

_logger = logging.getLogger(__name__)

# Prefix of the encoder's parameter names inside TaskModel, for per-group learning rates.
ENCODER_PREFIX = "net.encoder."


def create_segmentation_model(
    config: FinetuneConfig, in_channels: int, num_classes: int, load_weights: bool = True
) -> nn.Module:
    """Build the smp model that `config` describes.

    Args:
        config: Fine-tuning settings (arch, encoder, encoder_weights, model_kwargs).
        in_channels: Input channels of the model.
        num_classes: Output classes, background included.
        load_weights: Load `config.encoder_weights`; False builds the same model with a random
            encoder (DDP ranks other than 0 receive rank 0's weights instead).

    Returns:
        The model, on the CPU.

    Raises:
        ValueError: When smp rejects the architecture, encoder or keyword arguments.
    """
    import segmentation_models_pytorch as smp

    weights = config.encoder_weights if load_weights else None
    try:
        return smp.create_model(
            config.arch, encoder_name=config.encoder, encoder_weights=weights,
            in_channels=in_channels, classes=num_classes, **dict(config.model_kwargs),
        )
    except HydraNetHubError:
        # These already name the weights and the fix.
        raise
    except (KeyError, TypeError, ValueError, AssertionError) as error:
        raise ValueError(
            f"segmentation_models_pytorch {smp.__version__} could not build arch={config.arch!r} with "
            f"encoder={config.encoder!r}, in_channels={in_channels}, classes={num_classes} and model_kwargs="
            f"{dict(config.model_kwargs)}: {type(error).__name__}: {error}. Check the architecture's "
            "encoder requirements and keyword arguments in the smp documentation."
        ) from error


class TaskModel(nn.Module):
    """A one-task segmentation model in the {task: images} -> {task: logits} form of TrainingRun.

    Args:
        net: Maps images [N, C, H, W] to logits [N, K, H, W]; smp models with `aux_params` return
            (logits, class logits), of which the logits are used.
        task: The name of the task the model segments.
    """

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__()
        self.net = net
        self.task = task

    def forward(self, batches: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {task: self.forward_task(images, task) for task, images in batches.items()}

    def forward_task(self, images: torch.Tensor, task: str) -> torch.Tensor:
        """Return the logits of `task` (the only task of this model) for `images`."""
        if task != self.task:
            raise KeyError(f"Task {task!r} is unknown to this model, which segments {self.task!r}.")
        output = self.net(images)
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output

    @property
    def encoder(self) -> nn.Module | None:
        """The wrapped model's `encoder` (every smp model has one), or None."""
        encoder = getattr(self.net, "encoder", None)
        return encoder if isinstance(encoder, nn.Module) else None


def check_model_fits(model: nn.Module, in_channels: int, num_classes: int) -> None:
    """Check a model given by the caller against the task before any training step.

    Only models that record their settings (smp's `model.config`) are checked.

    Raises:
        ValueError: When the model's recorded in_channels or classes differ from the task's.
    """
    recorded = getattr(model, "config", None)
    if not isinstance(recorded, Mapping):
        return
    if recorded.get("in_channels") not in (None, in_channels):
        raise ValueError(
            f"The model was built with in_channels={recorded['in_channels']} but the task gives {in_channels} "
            "(modalities x (2 * context_slices + 1)); build it with that many input channels."
        )
    if recorded.get("classes") not in (None, num_classes):
        raise ValueError(
            f"The model was built with classes={recorded['classes']} but the task has {num_classes} classes "
            f"(background included); build it with classes={num_classes}."
        )


def save_model_folder(net: nn.Module, folder: Path, preprocessing: InferencePreprocessing) -> Path:
    """Save a model with smp's `save_pretrained` and write preprocessing.json beside it.

    The saved config.json records encoder_weights=None, because model.safetensors already contains
    every weight: `smp.from_pretrained(folder)` then reads no other file.

    Args:
        net: An smp model (or any model with `save_pretrained` and a `config` dict).
        folder: Output folder; created when missing, files in it are replaced.
        preprocessing: The input settings the model was trained with.

    Returns:
        The folder.

    Raises:
        ValueError: When the model has no `save_pretrained`.
    """
    if not hasattr(net, "save_pretrained"):
        raise ValueError(
            f"{type(net).__name__} has no save_pretrained, so no model folder can be written; use an smp "
            "model or set save_model=False."
        )

    # A CPU copy in contiguous memory, because safetensors rejects channels_last tensors.
    saved = copy.deepcopy(net).cpu().to(memory_format=torch.contiguous_format)
    recorded = getattr(saved, "config", None)
    if isinstance(recorded, dict) and "encoder_weights" in recorded:
        recorded["encoder_weights"] = None

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved.save_pretrained(str(folder))
    preprocessing.save(folder)
    _logger.info("Saved the fine-tuned model to %s", folder)
    return folder
