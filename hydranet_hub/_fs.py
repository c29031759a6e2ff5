"""Helpers for crash-safe writes: OSError messages that name the file, and leftovers of dead writers.

Atomic writers in this package write to a temporary name that carries the writer's process id,
then rename. A process killed before the rename leaves that temporary behind. It is never read,
but it can be as large as a checkpoint, so later writers delete the ones whose process is gone.
"""

from __future__ import annotations

import os
import re

# Process id embedded in a temporary name such as ".step_00000004.pt.tmp-12345" or ".export.tmp-12345-ab12cd".
_PID_PATTERN = re.compile(r"\.(?:tmp|old)-(\d+)(?:-[0-9a-f]+)?$")


def process_alive(pid: int) -> bool:
    """Tell whether a process with this id runs on this host (True when it exists but belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def left_by_dead_process(name: str) -> bool:
    """Tell whether a temporary file or folder name carries the id of a process that no longer runs.

    Names without an embedded process id return False, so they are never taken for leftovers.

    NOTE: the check covers only processes on this host. A temporary written by a live process on
    another machine sharing the folder counts as dead; the run lock keeps a second writer out.
    """
    match = _PID_PATTERN.search(name)
    if match is None:
        return False
    pid = int(match.group(1))
    return pid != os.getpid() and not process_alive(pid)


def os_error_naming(error: OSError, message: str) -> OSError:
    """Return an OSError of the same errno (hence the same subclass) whose text is `message`.

    Some writers raise OSError without a path or errno (numpy reports a short write as
    "N requested and M written"). The returned error names the file that failed and the fix.
    """
    if error.errno is None:
        return OSError(message)
    return OSError(error.errno, message)
