"""Peak memory (max RSS) of the whole `hydranet-pretrain --demo` process, an absolute figure.

The run builds its slice cache, trains, validates, writes checkpoints and exports the encoder in
a temporary folder. The peak is the ru_maxrss of the process (see `benchmarks.peak_rss`), which
covers the children it waited for (DataLoader workers, cache-building workers) as well.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.peak_rss import run_with_peak_rss
from benchmarks.records import Figure, Target

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """Options of the measured demo run.

    Attributes:
        extra_args: Options after `--demo`; empty runs the demo exactly as documented.
    """

    extra_args: tuple[str, ...] = field(default_factory=tuple)


def _command(output_dir: Path, settings: DemoSettings) -> list[str]:
    script = Path(sys.executable).with_name("hydranet-pretrain")
    program = [str(script)] if script.is_file() else [sys.executable, "-m", "hydranet_hub.cli.pretrain"]
    return [*program, "--demo", "--output-dir", str(output_dir), *settings.extra_args]


def run(settings: DemoSettings) -> dict[str, Any]:
    """Run the demo once and read its peak memory.

    Returns:
        {"settings", "command", "wall_s", "peak_rss_gib", "figures"}.

    Raises:
        RuntimeError: If the demo run fails; the message contains the end of its output.
    """
    with tempfile.TemporaryDirectory(prefix="hydranet-bench-demo-") as folder, \
            tempfile.TemporaryFile("w+") as log:
        command = _command(Path(folder) / "run", settings)
        environment = dict(os.environ, TQDM_DISABLE="1")
        _logger.info("Running %s", " ".join(command))
        start = time.perf_counter()
        outcome = run_with_peak_rss(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        wall_s = time.perf_counter() - start
        if outcome.exit_code != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed (exit {outcome.exit_code}): {log.read()[-4000:]}")

    peak_gib = outcome.max_rss_mib / 1024
    shown = ["hydranet-pretrain", "--demo", *settings.extra_args]
    figure = Figure("demo_memory.peak_rss", f"peak memory of `{' '.join(shown)}` (whole process)", "absolute",
                    peak_gib, "GiB", Target("<=", 4.0), f"run took {wall_s:.0f} s")
    return {
        "settings": {"extra_args": list(settings.extra_args)},
        "command": shown,
        "wall_s": wall_s,
        "peak_rss_gib": peak_gib,
        "figures": [figure.to_dict()],
    }
