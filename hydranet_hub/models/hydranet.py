"""HydraNet: one shared smp encoder feeding one U-Net decoder and head per task."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base import initialization as smp_init
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from segmentation_models_pytorch.encoders import get_encoder

_logger = logging.getLogger(__name__)

# nn.ModuleDict keys may not contain "." and must be valid attribute-like names.
_TASK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


def _is_file_or_hub_weights(weights: str) -> bool:
    """Tell whether `weights` names a local file or folder or an `hf-hub:` id."""
    return weights.startswith("hf-hub:") or Path(weights).expanduser().exists()


def _validate_tasks(tasks: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(
            f"tasks={tasks!r} is invalid: expected a non-empty mapping of task name to number of "
            "classes including background, e.g. {'Task02_Heart': 2}."
        )

    checked: dict[str, int] = {}
    for name, num_classes in tasks.items():
        if not isinstance(name, str) or not _TASK_NAME_PATTERN.match(name):
            raise ValueError(
                f"Task name {name!r} is invalid: use letters, digits, '_' or '-' only "
                "(for example 'Task02_Heart')."
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"Task {name!r} has num_classes={num_classes!r}: expected an integer >= 2 "
                "(background plus at least one foreground class)."
            )
        checked[name] = num_classes
    return checked


class HydraNet(nn.Module):
    """Multi-task U-Net: a shared encoder, and per task an smp `UnetDecoder` and `SegmentationHead`.

    The encoder runs once per step on the concatenation of all task batches, so batch
    normalisation statistics and gradients in the encoder mix every task, as in the original
    HydraNet. Each decoder sees only the features of its own task's samples.

    Args:
        encoder_name: Any smp encoder name ("hydranet", "resnet34", "tu-...").
        tasks: Task name -> number of output classes including background.
        in_channels: Input channels (2.5D: modalities * (2 * context_slices + 1)).
        encoder_depth: Encoder stages, 3 to 5; must equal len(decoder_channels).
        encoder_weights: None (random), an smp weights name for the encoder ("imagenet" or a
            HydraNet release tag), a local weights file, or an `hf-hub:org/repo@revision` id.
        decoder_channels: Output channels of each decoder block, deepest first.

    Raises:
        ValueError: For an invalid task mapping or a decoder_channels length that does not
            match encoder_depth.
    """

    def __init__(
        self,
        encoder_name: str = "hydranet",
        tasks: Mapping[str, int] | None = None,
        in_channels: int = 3,
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        self.tasks = _validate_tasks(tasks if tasks is not None else {})
        if len(decoder_channels) != encoder_depth:
            raise ValueError(
                f"decoder_channels={tuple(decoder_channels)} has {len(decoder_channels)} entries but "
                f"encoder_depth={encoder_depth}: give one decoder width per encoder stage."
            )

        self.encoder_name = encoder_name
        self.in_channels = in_channels
        self.encoder = self._build_encoder(encoder_name, in_channels, encoder_depth, encoder_weights)

        self.decoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for name, num_classes in self.tasks.items():
            decoder = UnetDecoder(
                encoder_channels=self.encoder.out_channels,
                decoder_channels=decoder_channels,
                n_blocks=encoder_depth,
                use_norm="batchnorm",
                # smp's Unet adds a centre block only for VGG encoders; mirror it.
                add_center_block=encoder_name.startswith("vgg"),
            )
            head = SegmentationHead(
                in_channels=decoder_channels[-1], out_channels=num_classes, kernel_size=3
            )
            smp_init.initialize_decoder(decoder)
            smp_init.initialize_head(head)
            self.decoders[name] = decoder
            self.heads[name] = head

    @staticmethod
    def _build_encoder(
        encoder_name: str, in_channels: int, depth: int, weights: str | None
    ) -> nn.Module:
        # Importing the package registers the "hydranet" encoder with smp, whose get_encoder
        # then accepts every weights form; other encoders know only their own weights names.
        import hydranet_hub

        passthrough = weights is None or encoder_name == "hydranet" or not _is_file_or_hub_weights(weights)
        if passthrough:
            return get_encoder(encoder_name, in_channels=in_channels, depth=depth, weights=weights)

        encoder = get_encoder(encoder_name, in_channels=in_channels, depth=depth, weights=None)
        _logger.info("Loading encoder weights %s into %s", weights, encoder_name)
        hydranet_hub.load_encoder_weights(encoder, weights)
        return encoder

    @property
    def task_names(self) -> tuple[str, ...]:
        """Task names in decoder order."""
        return tuple(self.tasks)

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise KeyError(
                f"Unknown task {task!r}: this model has decoders for {sorted(self.tasks)}."
            )

    def forward(self, batches: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Segment one batch per task with a single encoder pass.

        Args:
            batches: Task name -> image batch [N_task, C, H, W]; every batch has the same
                C, H and W. Tasks may be any subset of the model's tasks.

        Returns:
            Task name -> logits [N_task, num_classes, H, W], in the order of `batches`.

        Raises:
            KeyError: For a task without a decoder.
            ValueError: For an empty mapping or batches whose C, H, W differ.
        """
        if not batches:
            raise ValueError("batches is empty: pass at least one task's image batch.")

        names = list(batches)
        for name in names:
            self._check_task(name)
        shapes = {name: tuple(batches[name].shape[1:]) for name in names}
        if len(set(shapes.values())) != 1:
            raise ValueError(
                f"Task batches differ in [C, H, W]: {shapes}. Resize every task to the same "
                "slice size and channel count."
            )

        sizes = [batches[name].shape[0] for name in names]
        features = self.encoder(torch.cat([batches[name] for name in names], dim=0))

        # Split every feature level back into per-task parts along the batch axis.
        per_task = zip(*(torch.split(level, sizes, dim=0) for level in features))
        logits: dict[str, torch.Tensor] = {}
        for name, task_features in zip(names, per_task):
            decoded = self.decoders[name](list(task_features))
            logits[name] = self.heads[name](decoded)
        return logits

    def forward_task(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """Segment a batch of one task.

        Args:
            x: Images [N, C, H, W].
            task: Task name with a decoder in this model.

        Returns:
            Logits [N, num_classes, H, W].

        Raises:
            KeyError: For a task without a decoder.
        """
        self._check_task(task)
        return self.heads[task](self.decoders[task](self.encoder(x)))

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Copy the encoder weights for export, as contiguous CPU tensors.

        For ResNet encoders ("hydranet", "resnet34") the names are those of smp's and timm's
        resnet34 (conv1.weight, bn1.running_mean, layer1.0.conv1.weight, ...), with no fc.*
        entries, so the result loads strictly into either.

        Returns:
            Parameter and buffer name -> tensor (floating tensors as float32).
        """
        exported: dict[str, torch.Tensor] = {}
        for name, tensor in self.encoder.state_dict().items():
            if name.startswith("fc."):
                continue
            tensor = tensor.detach().to("cpu")
            if tensor.is_floating_point():
                tensor = tensor.float()
            exported[name] = tensor.contiguous().clone()
        return exported
