"""Description of the machine a benchmark ran on, and its measured matrix-multiply throughput."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

# CPU flags that decide whether bf16 autocast can beat float32 on a CPU.
_REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown", []
    model, flags = "unknown", []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = value.split()
    return model, flags


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _git_commit(repo_root: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root, capture_output=True,
                                text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def describe_machine(repo_root: Path) -> dict[str, Any]:
    """Return the CPU model, cores, memory, software versions and load of this machine.

    Args:
        repo_root: Checkout whose commit is recorded.

    Returns:
        JSON-ready fields; the load averages show how busy the shared machine was at the start.
    """
    model, flags = _cpuinfo()
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()

    import segmentation_models_pytorch as smp
    import timm

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": model,
        "cpu_flags": [flag for flag in _REPORTED_FLAGS if flag in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "smp": smp.__version__,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(repo_root),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *sys.argv[1:]]),
    }


def matmul_flops_per_s(dtype: torch.dtype, size: int, repetitions: int) -> float:
    """Measure a square matrix product's throughput in FLOP/s (median of `repetitions` products).

    Args:
        dtype: torch.float32 or torch.bfloat16 (bf16 runs on AMX or AVX512-BF16 units where present).
        size: Matrix side n; one product counts 2 * n**3 FLOP.
        repetitions: Timed products after one untimed product.

    Returns:
        FLOP per second with the current torch thread count: per second of this process's CPU time
        with one thread, as the benchmarks' ratios are, else per second of wall-clock time.
    """
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(dtype)
    right = torch.randn(size, size, generator=generator).to(dtype)
    torch.matmul(left, right)

    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    seconds = []
    for _ in range(repetitions):
        start = clock()
        torch.matmul(left, right)
        seconds.append(clock() - start)
    return 2.0 * size**3 / statistics.median(seconds)


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15 minute load averages, or None where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None
