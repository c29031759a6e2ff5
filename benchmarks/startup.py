"""Interpreter start-up with the auto-registration hook against the same interpreter without it.

`hydranet_hub_autoregister.pth` imports `_hydranet_hub_hook` in every interpreter of the
environment. The alternative sets HYDRANET_HUB_DISABLE_AUTOREGISTER=1, so the hook module is
still imported but installs no import finder; `python -X importtime` gives the hook module's
own import time, which is all the .pth line adds over an environment without it.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.records import Figure, Target

_logger = logging.getLogger(__name__)

HOOK_MODULE = "_hydranet_hub_hook"
DISABLE_VARIABLE = "HYDRANET_HUB_DISABLE_AUTOREGISTER"
_IMPORTTIME_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\S+)")


@dataclass(frozen=True)
class StartupSettings:
    """Repetitions of the start-up benchmark.

    Attributes:
        runs: Interpreter starts per case (`python -c pass`).
        library_runs: Starts per case that import segmentation_models_pytorch, which fires the hook.
    """

    runs: int = 20
    library_runs: int = 3


def _environment(hook_enabled: bool) -> dict[str, str]:
    environment = dict(os.environ)
    environment.pop(DISABLE_VARIABLE, None)
    if not hook_enabled:
        environment[DISABLE_VARIABLE] = "1"
    # Offline mode, so that no start-up can reach the network.
    environment["HF_HUB_OFFLINE"] = "1"
    return environment


def _start(code: str, environment: dict[str, str], importtime: bool = False) -> tuple[float, float, str]:
    """Run `python -c code`; return its wall-clock seconds, its CPU seconds and its stderr.

    CPU seconds (user plus system, from the resource usage of waited-for children) count only
    the time the interpreter ran, so other processes on a shared machine barely move them.
    """
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=True, timeout=300)
    wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall_s, cpu_s, result.stderr


def hook_import_us(stderr: str) -> tuple[int, int] | None:
    """Return (self, cumulative) microseconds of the hook module from `-X importtime` output, or None."""
    for line in stderr.splitlines():
        match = _IMPORTTIME_LINE.match(line)
        if match and match.group(3) == HOOK_MODULE:
            return int(match.group(1)), int(match.group(2))
    return None


def _compare_starts(code: str, runs: int) -> dict[str, float]:
    """Start the interpreter `runs` times per case, alternating which case goes first.

    Returns:
        Medians in ms: "cpu_difference" and "wall_difference" (with hook minus without, paired
        by run), and "cpu_with_hook", "cpu_without_hook", "wall_with_hook", "wall_without_hook".
    """
    enabled, disabled = _environment(True), _environment(False)
    _start(code, enabled)
    _start(code, disabled)

    measured: dict[str, list[float]] = {key: [] for key in ("wall_with_hook", "wall_without_hook", "cpu_with_hook",
                                                            "cpu_without_hook", "wall_difference", "cpu_difference")}
    for index in range(runs):
        if index % 2 == 0:
            hook_wall, hook_cpu, _ = _start(code, enabled)
            plain_wall, plain_cpu, _ = _start(code, disabled)
        else:
            plain_wall, plain_cpu, _ = _start(code, disabled)
            hook_wall, hook_cpu, _ = _start(code, enabled)
        for key, seconds in (("wall_with_hook", hook_wall), ("wall_without_hook", plain_wall),
                             ("cpu_with_hook", hook_cpu), ("cpu_without_hook", plain_cpu),
                             ("wall_difference", hook_wall - plain_wall), ("cpu_difference", hook_cpu - plain_cpu)):
            measured[key].append(seconds * 1000)
    return {key: statistics.median(values) for key, values in measured.items()}


def run(settings: StartupSettings) -> dict[str, Any]:
    """Measure what the hook adds to interpreter start-up and to importing smp.

    Returns:
        {"settings", "hook_installed", "startup_ms", "hook_import_us", "smp_import_ms", "figures"},
        or only the first two and an empty figure list when the environment lacks the hook.
    """
    _, _, stderr = _start("pass", _environment(True), importtime=True)
    if hook_import_us(stderr) is None:
        _logger.warning("%s is not imported at start-up by %s; is hydranet-hub installed there?",
                        HOOK_MODULE, sys.executable)
        return {"settings": settings.__dict__, "hook_installed": False, "figures": []}

    starts = _compare_starts("pass", settings.runs)
    import_times = [hook_import_us(_start("pass", _environment(True), importtime=True)[2])
                    for _ in range(settings.runs)]
    self_us = statistics.median(times[0] for times in import_times if times)
    cumulative_us = statistics.median(times[1] for times in import_times if times)
    smp_imports = _compare_starts("import segmentation_models_pytorch", settings.library_runs)

    figures = [
        Figure("startup.hook_cpu", "interpreter start-up (python -c pass) with the hook, CPU time",
               f"the same interpreter with {DISABLE_VARIABLE}=1", starts["cpu_difference"], "ms", Target("<=", 5.0),
               f"medians {starts['cpu_with_hook']:.1f} vs {starts['cpu_without_hook']:.1f} ms CPU, wall-clock "
               f"difference {starts['wall_difference']:.2f} ms, over {settings.runs} starts each"),
        Figure("startup.hook_importtime", f"import of {HOOK_MODULE} at start-up (-X importtime, cumulative)",
               "an environment without the .pth file", cumulative_us / 1000, "ms", Target("<=", 5.0),
               f"self {self_us / 1000:.2f} ms, median of {settings.runs} starts"),
        Figure("startup.smp_import", "import segmentation_models_pytorch with the hook (registers HydraNet), CPU time",
               f"the same import with {DISABLE_VARIABLE}=1", smp_imports["cpu_difference"], "ms", None,
               f"medians {smp_imports['cpu_with_hook']:.0f} vs {smp_imports['cpu_without_hook']:.0f} ms CPU, "
               f"wall-clock difference {smp_imports['wall_difference']:.0f} ms, "
               f"over {settings.library_runs} starts each"),
    ]
    return {
        "settings": settings.__dict__,
        "hook_installed": True,
        "startup_ms": starts,
        "hook_import_us": {"self": self_us, "cumulative": cumulative_us},
        "smp_import_ms": smp_imports,
        "figures": [figure.to_dict() for figure in figures],
    }
