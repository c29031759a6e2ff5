"""Seeding and capture/restore of the Python, NumPy and torch random states."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

_logger = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    Args:
        seed: The seed.
        deterministic: Also ask cuDNN and torch for deterministic kernels. Kernels without a
            deterministic version only warn instead of raising.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
        # cuBLAS needs this for deterministic matrix products on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def capture_rng_state() -> dict[str, Any]:
    """Return the current random states as tensors and plain types (checkpoint-safe)."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore random states captured by `capture_rng_state`.

    CUDA states are restored only when this machine has the same number of devices.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))

    saved = state["numpy"]
    np.random.set_state({
        "bit_generator": saved["bit_generator"],
        "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
        "has_gauss": saved["has_gauss"],
        "gauss": saved["gauss"],
    })
    torch.set_rng_state(state["torch"])

    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            _logger.warning(
                "Checkpoint has CUDA random states of %d devices but this machine has %d; "
                "CUDA random streams will differ from the original run.",
                len(cuda_states), torch.cuda.device_count(),
            )
