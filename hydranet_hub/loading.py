"""Check and load HydraNet weights into modules the user already built."""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Union

import torch
from torch import nn

from .errors import WeightsMismatchError
from .hub import ResolvedWeights, load_safetensors, resolve_weights

_logger = logging.getLogger(__name__)

# Classifier tensors of an ImageNet ResNet; an encoder has no classifier.
_CLASSIFIER_PREFIXES = ("fc.",)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a pretrained stem convolution to ``in_channels`` inputs, as smp does for its own encoders.

    One channel sums the pretrained channels; any other count cycles through them
    and rescales so the expected activation size stays the same.
    """
    pretrained_in = weight.shape[1]
    if in_channels == pretrained_in:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)

    index = torch.arange(in_channels) % pretrained_in
    return weight[:, index] * (pretrained_in / in_channels)


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    source: str,
    stem_key: Optional[str] = None,
) -> None:
    """Raise WeightsMismatchError unless ``state_dict`` fits a module whose state is ``expected``.

    Args:
        state_dict: Tensors from the weights file (classifier tensors ignored).
        expected: The module's own ``state_dict()`` (only names, shapes and dtypes are read).
        source: Where the weights came from, for the message.
        stem_key: Name of the stem convolution weight, whose input-channel size may differ
            because it is adapted afterwards.
    """
    for name, target in expected.items():
        if name not in state_dict:
            continue
        tensor = state_dict[name]
        shape, target_shape = tuple(tensor.shape), tuple(target.shape)
        if name == stem_key and len(shape) == 4 and shape[:1] + shape[2:] == target_shape[:1] + target_shape[2:]:
            continue
        if shape != target_shape:
            raise WeightsMismatchError(
                f"Weights from {source} do not fit this encoder: tensor {name!r} has shape {shape} in the file "
                f"but {target_shape} in the model. The file belongs to another backbone; pick the encoder "
                "named in its config.json ('hydranet.architecture')."
            )
        if target.is_floating_point() and not tensor.is_floating_point():
            raise WeightsMismatchError(
                f"Weights from {source}: tensor {name!r} has dtype {tensor.dtype} but the model expects "
                f"floating point ({target.dtype}). The file is not an encoder export."
            )

    file_names = {name for name in state_dict if not name.startswith(_CLASSIFIER_PREFIXES)}
    missing = [name for name in expected if name not in file_names]
    unexpected = sorted(file_names - set(expected))
    if missing or unexpected:
        first = (
            f"first missing tensor {missing[0]!r} (shape {tuple(expected[missing[0]].shape)} in the model)"
            if missing
            else f"first unexpected tensor {unexpected[0]!r} (shape {tuple(state_dict[unexpected[0]].shape)})"
        )
        raise WeightsMismatchError(
            f"Weights from {source} do not fit this encoder: {len(missing)} tensors missing and "
            f"{len(unexpected)} unexpected; {first}. "
            "The file belongs to another backbone or is not an encoder export."
        )


def find_stem_key(module: nn.Module) -> Optional[str]:
    """Return the state-dict name of the first convolution's weight, or None."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            return f"{name}.weight" if name else "weight"
    return None


def prepare_state_dict(
    state_dict: Mapping[str, torch.Tensor], module: nn.Module, *, source: str
) -> dict:
    """Check ``state_dict`` against ``module`` and return it ready for ``load_state_dict(strict=True)``.

    Classifier tensors are dropped, the stem is adapted to the module's input channels,
    and tensors are cast to the module's dtype (a float16 file loads into a float32 model).
    """
    expected = module.state_dict()
    stem_key = find_stem_key(module)
    check_state_dict(state_dict, expected, source=source, stem_key=stem_key)

    prepared = {}
    for name, target in expected.items():
        tensor = state_dict[name]
        if name == stem_key:
            tensor = adapt_first_conv(tensor, target.shape[1])
        if tensor.dtype != target.dtype:
            tensor = tensor.to(target.dtype)
        prepared[name] = tensor
    return prepared


def load_encoder_weights(
    model: nn.Module,
    weights: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
) -> ResolvedWeights | None:
    """Load HydraNet encoder weights into a model you already built.

    Works on an smp model (its ``.encoder`` is loaded), on an smp encoder, or on a
    timm ResNet built with ``num_classes=0``. The stem is adapted to the model's
    input channels the way smp adapts ImageNet weights.

    Args:
        model: The model or encoder to load into (changed in place).
        weights: A release tag, a local ``.safetensors`` path or folder, an
            ``"hf-hub:org/repo@revision"`` id, or a state dict.

    Returns:
        The resolved weights (path, sha256, config), or None when a state dict was passed.

    Raises:
        WeightsMismatchError: The tensors do not fit the encoder; the message names the first
            mismatched tensor and both shapes.
        See :func:`hydranet_hub.hub.resolve_weights` for download and checksum errors.

    Example:
        >>> model = smp.FPN("resnet34", encoder_weights=None, in_channels=1)  # doctest: +SKIP
        >>> load_encoder_weights(model, "/runs/demo/export/model.safetensors")  # doctest: +SKIP
    """
    target = model.encoder if hasattr(model, "encoder") and isinstance(model.encoder, nn.Module) else model

    resolved = None
    if isinstance(weights, Mapping):
        state_dict, source = dict(weights), "the given state dict"
    else:
        resolved = resolve_weights(weights)
        state_dict, source = load_safetensors(resolved.weights_path), resolved.description

    prepared = prepare_state_dict(state_dict, target, source=source)
    target.load_state_dict(prepared, strict=True)
    _logger.info("Loaded encoder weights from %s", source)
    return resolved
