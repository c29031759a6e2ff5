"""Process-group setup for single-process and `torchrun` (DistributedDataParallel) training."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and device of this process in a (possibly one-process) training job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes checkpoints, logs and exports."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when a process group with more than one rank is active."""
        return self.backend is not None


def _read_int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"Environment variable {name}={value!r} is not an integer; it is set by torchrun."
        ) from None


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """Turn a device request into a torch.device.

    Args:
        request: "auto" (CUDA when available, else CPU), "cpu", "cuda" (the GPU of this
            process's local rank) or "cuda:N".
        local_rank: Rank of this process on its node.

    Returns:
        The device.

    Raises:
        ValueError: When the request is malformed or requests CUDA on a machine without it.
    """
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request == "cpu":
        return torch.device("cpu")

    if request == "cuda" or request.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {request} requested but CUDA is not available; use --device cpu or auto."
            )
        if request == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        try:
            return torch.device(request)
        except RuntimeError:
            raise ValueError(f"--device {request!r} is invalid; expected cuda:N, e.g. cuda:0.") from None

    raise ValueError(f"--device {request!r} is invalid; expected auto, cpu, cuda or cuda:N.")


def init_distributed(device_request: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun, else describe a single process.

    torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. With WORLD_SIZE > 1 this initialises the
    default process group from the environment: NCCL for CUDA devices, gloo for CPU.

    Args:
        device_request: See `resolve_device`.

    Returns:
        The context of this process.
    """
    world_size = _read_int_env("WORLD_SIZE", 1)
    rank = _read_int_env("RANK", 0)
    local_rank = _read_int_env("LOCAL_RANK", 0)
    device = resolve_device(device_request, local_rank)

    if world_size <= 1:
        return DistContext(rank=0, local_rank=0, world_size=1, device=device, backend=None)

    # NOTE: the NCCL (GPU) path has not been run by the tests, which cover gloo on CPU only.
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=backend)
    else:
        backend = dist.get_backend()
    _logger.info("Joined process group: rank %d of %d, backend %s, device %s",
                 rank, world_size, backend, device)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size,
                       device=device, backend=backend, owns_process_group=owns_group)


def cleanup_distributed(context: DistContext) -> None:
    """Leave the process group if `init_distributed` created it (a caller's group stays)."""
    if context.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    """Wait for every rank; a no-op for one process."""
    if context.is_distributed:
        dist.barrier()


def all_gather_objects(context: DistContext, value: Any) -> list[Any]:
    """Collect one picklable value from every rank, in rank order."""
    if not context.is_distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(context: DistContext, value: Any) -> Any:
    """Send rank 0's value to every rank and return it."""
    if not context.is_distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_sum(context: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place and return it."""
    if context.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
