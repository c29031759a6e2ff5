"""Peak resident memory of a command, measured from a small launcher process.

On Linux a child's ru_maxrss also records the memory of the process that forked it, up to the
moment it executes the command: after fork the child maps all of its parent's resident pages.
A benchmark runner with gigabytes of models in memory would therefore inflate every child's peak.
A fresh interpreter started with -S -I (about 10 MB) starts the command instead and reports
the peak from `os.wait4`, which covers the command and the children it waited for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Runs in the launcher: start argv[2:], wait for it, write its exit code and max RSS to argv[1].
_LAUNCHER = (
    "import json, os, subprocess, sys\n"
    "process = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(process.pid, 0)\n"
    "process.returncode = os.waitstatus_to_exitcode(status)\n"
    "with open(sys.argv[1], 'w') as handle:\n"
    "    json.dump({'exit_code': process.returncode, 'max_rss_kib': usage.ru_maxrss}, handle)\n"
)


@dataclass(frozen=True)
class PeakRss:
    """Outcome of a command: its exit code and its peak resident memory in MiB."""

    exit_code: int
    max_rss_mib: float


def run_with_peak_rss(command: Sequence[str], stdout: IO, stderr: IO | int, cwd: Path | None = None,
                      env: Mapping[str, str] | None = None) -> PeakRss:
    """Run `command` to completion through the launcher and return its peak memory.

    Args:
        command: Program and arguments.
        stdout: File that receives the command's standard output.
        stderr: File, or subprocess.STDOUT, for its standard error.
        cwd: Working folder of the command.
        env: Environment of the command (default: this process's).

    Returns:
        The exit code and max RSS (ru_maxrss, KiB on Linux, converted to MiB).

    Raises:
        RuntimeError: If the launcher itself fails.
    """
    with tempfile.TemporaryDirectory(prefix="hydranet-bench-rss-") as folder:
        report = Path(folder) / "rss.json"
        launcher = [sys.executable, "-S", "-I", "-c", _LAUNCHER, str(report), *command]
        completed = subprocess.run(launcher, stdout=stdout, stderr=stderr, cwd=cwd,
                                   env=dict(env) if env is not None else dict(os.environ))
        if not report.is_file():
            raise RuntimeError(f"The memory launcher exited with {completed.returncode} before reporting on {command}.")
        values = json.loads(report.read_text(encoding="utf-8"))
    return PeakRss(exit_code=int(values["exit_code"]), max_rss_mib=values["max_rss_kib"] / 1024)
