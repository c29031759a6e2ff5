"""Encoder tensors in and out of model.safetensors, checked against the architecture.

The expected names and shapes come from timm's model of the same architecture, built with
``num_classes=0`` on the meta device, which allocates no memory. smp's ResNet encoders use
the same names (conv1.weight, bn1.*, layer1.0.conv1.weight, ...), with no ``fc`` head.
"""

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from hydranet_hub.export.errors import ExportError

_logger = logging.getLogger(__name__)

SAFETENSORS_METADATA = {"format": "pt"}

_NAMES_SHOWN = 5


def expected_shapes(architecture: str, in_channels: int) -> dict[str, tuple[int, ...]]:
    """Return the tensor names and shapes of the headless timm model ``architecture``.

    Args:
        architecture: A timm model name such as "resnet34".
        in_channels: Input channels of the first convolution.

    Returns:
        Name -> shape for every parameter and buffer.
    """
    import timm

    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False, num_classes=0, in_chans=in_channels)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def prepare_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, architecture: str, in_channels: int
) -> dict[str, torch.Tensor]:
    """Check an encoder state dict and copy it to contiguous CPU tensors ready to save.

    Floating-point tensors become float32, so weights trained under bf16 or fp16 autocast
    are stored at full precision. Integer buffers (BatchNorm's ``num_batches_tracked``)
    keep their dtype. Names are kept exactly as given.

    Args:
        state_dict: Encoder tensors by name.
        architecture: A timm model name such as "resnet34".
        in_channels: Input channels of the first convolution.

    Returns:
        A new dict of cloned tensors in the same order.

    Raises:
        ExportError: A value is not a tensor, names or shapes differ from the architecture,
            or a tensor contains NaN or infinity.
    """
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ExportError(
            f"encoder_state_dict is {type(state_dict).__name__} with no tensors; pass the "
            "encoder's state_dict(), e.g. model.encoder_state_dict()."
        )
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ExportError(f"encoder_state_dict[{name!r}] is a {type(tensor).__name__}; expected a torch.Tensor.")

    check_names_and_shapes(
        {name: tuple(tensor.shape) for name, tensor in state_dict.items()},
        expected_shapes(architecture, in_channels),
        what="encoder_state_dict",
    )

    prepared = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = tensor.to(dtype=torch.float32)
            if not torch.isfinite(tensor).all():
                raise ExportError(
                    f"encoder_state_dict[{name!r}] contains NaN or infinity; training diverged. "
                    "Export an earlier checkpoint or lower the learning rate."
                )
        # clone() gives each tensor its own compact storage, which safetensors requires.
        prepared[name] = tensor.to(device="cpu").clone(memory_format=torch.contiguous_format)
    return prepared


def check_names_and_shapes(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], *, what: str
) -> None:
    """Raise ExportError unless ``found`` has exactly the names and shapes of ``expected``.

    Args:
        found: Name -> shape of the tensors at hand.
        expected: Name -> shape required by the architecture.
        what: Name of the tensor collection, used in the message.

    Raises:
        ExportError: Lists the first missing, unexpected and mis-shaped names.
    """
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    misshaped = [
        f"{name} {list(found[name])} (expected {list(shape)})"
        for name, shape in expected.items()
        if name in found and tuple(found[name]) != tuple(shape)
    ]
    if not (missing or unexpected or misshaped):
        return

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[:_NAMES_SHOWN]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:_NAMES_SHOWN]}")
    if misshaped:
        problems.append(f"{len(misshaped)} with other shapes, e.g. {misshaped[:_NAMES_SHOWN]}")
    raise ExportError(
        f"{what} does not match the encoder architecture: {'; '.join(problems)}. Pass the "
        "encoder's own tensors without a head, with names such as 'conv1.weight' and "
        "'layer1.0.conv1.weight' (strip prefixes like 'module.' or 'encoder.')."
    )


def save_weights(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write tensors to a safetensors file with metadata {"format": "pt"}.

    Args:
        tensors: Contiguous CPU tensors from ``prepare_state_dict``.
        path: Destination file.
    """
    # safetensors' save_file creates files readable by the owner only (0600); writing the bytes
    # here gives the usual umask permissions, as for config.json and README.md.
    path.write_bytes(save(dict(tensors), metadata=SAFETENSORS_METADATA))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto the CPU and check its metadata.

    Args:
        path: A model.safetensors file.

    Returns:
        Name -> tensor, in file order.

    Raises:
        ExportError: The file cannot be parsed as safetensors or lacks {"format": "pt"}.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as weights:
            metadata = weights.metadata() or {}
            tensors = {name: weights.get_tensor(name) for name in weights.keys()}
    except (SafetensorError, OSError) as error:
        raise ExportError(f"{path}: not a readable safetensors file ({error}); re-export the weights.") from None

    if metadata.get("format") != SAFETENSORS_METADATA["format"]:
        raise ExportError(
            f"{path}: safetensors metadata is {metadata!r}; expected {SAFETENSORS_METADATA!r}. Re-export the weights."
        )
    return tensors
