"""Batched 2.5D model evaluation over the axial slices of one volume, with optional flip TTA."""

import logging
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hydranet_hub.data.slices import stack_context

from .errors import InferenceError

_logger = logging.getLogger(__name__)

# Flip test-time augmentation: identity, left-right (width axis) and up-down (height axis).
_TTA_FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,))


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse a device name and check that torch can use it.

    Args:
        device: "cpu", "cuda", "cuda:1", "mps" or a torch.device.

    Returns:
        The torch device.

    Raises:
        InferenceError: If the name is invalid or the device is not available.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise InferenceError(f"device={device!r} is invalid ({error}); expected e.g. 'cpu', 'cuda' or 'cuda:0'.") from None

    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(f"device={device!r} requested but torch finds no CUDA GPU; use device='cpu'.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InferenceError(
                f"device={device!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) exist; "
                "use 'cuda:0' or a smaller index."
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InferenceError(f"device={device!r} requested but MPS is not available; use device='cpu'.")
    return resolved


def check_run_options(device: str | torch.device, batch_size: int, amp: bool) -> torch.device:
    """Validate the options of a prediction run before any work starts.

    Returns:
        The resolved torch device.

    Raises:
        InferenceError: If the device is invalid or unavailable, `batch_size` < 1, or `amp` is
            set for a device other than CUDA.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InferenceError(f"batch_size={batch_size!r} is invalid; expected 1 or more slices per forward pass.")
    resolved = resolve_device(device)
    if amp and resolved.type != "cuda":
        raise InferenceError(f"amp=True needs a CUDA device, got device={device!r}; drop amp or use device='cuda'.")
    return resolved


def iter_slice_probabilities(
    model: torch.nn.Module,
    slices: np.ndarray,
    *,
    context_slices: int,
    num_classes: int,
    output_size: tuple[int, int],
    device: torch.device,
    batch_size: int,
    tta_flip: bool = False,
    amp: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Run a segmentation model over every axial slice of a volume, one batch at a time.

    The model must be in eval mode and on `device`. Slice z gets the 2.5D input of
    `hydranet_hub.data.stack_context`, edge slices replicated.

    Args:
        model: Maps [N, C * (2k + 1), H, W] inputs to [N, num_classes, H, W] logits, or to
            [N, 1, H, W] logits of the foreground when num_classes is 2 (sigmoid output).
        slices: Normalised, resized slices [Z, C, H, W] float32.
        context_slices: Neighbouring slices k on each side.
        num_classes: Classes of the model, background included.
        output_size: In-plane (height, width) in pixels that probabilities are resized to.
        device: Device the model is on.
        batch_size: Slices per forward pass.
        tta_flip: Average the probabilities of the input and its left-right and up-down flips,
            each flipped back before averaging (three forward passes per batch).
        amp: Run the model under float16 autocast (CUDA only).

    Yields:
        (first slice index, float32 probabilities [B, num_classes, *output_size]) per batch;
        probabilities sum to 1 over the class axis.

    Raises:
        InferenceError: If the model fails on a batch (wrong input channels, out of memory) or
            its output shape does not fit `num_classes` and the input size.
    """
    num_slices = slices.shape[0]
    flips = _TTA_FLIP_DIMS if tta_flip else _TTA_FLIP_DIMS[:1]

    for start in range(0, num_slices, batch_size):
        stop = min(start + batch_size, num_slices)
        batch = np.stack([stack_context(slices, z, context_slices) for z in range(start, stop)])
        inputs = torch.from_numpy(batch).to(device)

        probabilities = None
        for dims in flips:
            flipped = torch.flip(inputs, dims) if dims else inputs
            output = _forward(model, flipped, device, amp)
            output = _class_probabilities(output, num_classes, tuple(inputs.shape))
            output = torch.flip(output, dims) if dims else output
            probabilities = output if probabilities is None else probabilities + output
        probabilities = probabilities / len(flips)

        if tuple(probabilities.shape[-2:]) != tuple(output_size):
            # Bilinear weights sum to 1, so resized probabilities still sum to 1 per pixel.
            probabilities = F.interpolate(
                probabilities, size=tuple(output_size), mode="bilinear", align_corners=False, antialias=True
            )
        yield start, probabilities.cpu().numpy()


def _forward(model: torch.nn.Module, inputs: torch.Tensor, device: torch.device, amp: bool) -> object:
    # NOTE: the CUDA and autocast paths are covered by no test here; the test suite runs on CPU only.
    try:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            return model(inputs)
    except torch.OutOfMemoryError as error:
        raise InferenceError(
            f"{device} ran out of memory on a batch of shape {tuple(inputs.shape)}; lower batch_size "
            "(--batch-size) or run on another device."
        ) from error
    except RuntimeError as error:
        raise InferenceError(
            f"The model failed on an input batch of shape {tuple(inputs.shape)} [slices, channels, height, "
            f"width]: {error}. Check modalities, context_slices and slice_size in preprocessing.json."
        ) from error


def _class_probabilities(output: object, num_classes: int, input_shape: tuple[int, ...]) -> torch.Tensor:
    # smp models built with aux_params return (mask logits, class logits).
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise InferenceError(f"The model returned {type(output).__name__}; expected a tensor of logits [N, C, H, W].")

    batch, _, height, width = input_shape
    shape = tuple(output.shape)
    sigmoid_output = num_classes == 2 and shape == (batch, 1, height, width)
    if shape != (batch, num_classes, height, width) and not sigmoid_output:
        raise InferenceError(
            f"The model returned logits of shape {shape} for an input of shape {input_shape}; expected "
            f"[{batch}, {num_classes}, {height}, {width}] for num_classes={num_classes} in preprocessing.json. "
            "Check that preprocessing.json belongs to this model and that slice_size suits its encoder."
        )

    logits = output.float()
    if sigmoid_output:
        foreground = torch.sigmoid(logits)
        return torch.cat([1.0 - foreground, foreground], dim=1)
    return torch.softmax(logits, dim=1)
