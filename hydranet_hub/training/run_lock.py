"""A lock file that keeps two runs from writing into the same output folder."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from hydranet_hub._fs import os_error_naming, process_alive

_logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the output folder's lock."""


class RunLock:
    """Exclusive lock on a run folder, held as `<folder>/run.lock` containing the PID and host.

    The lock file is created with O_EXCL, so of two processes racing for it exactly one wins.
    A lock left by a process that no longer exists on this host is taken over with a warning;
    a lock from another host is never taken over, because its process cannot be checked.

    Args:
        folder: The run's output folder (created when missing).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._held = False

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            RunLockedError: When a live process (or one on another host) holds it.
            OSError: When the folder cannot be created; the message names it.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise os_error_naming(
                error,
                f"Could not create the output folder {self.folder} ({error}). Choose an --output-dir "
                "on a writable disk, under folders that exist or can be created.",
            ) from error
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})

        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing_lock()
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(record)
            self._held = True
            return
        raise RunLockedError(f"Could not take the lock {self.path}; another run took it first.")

    def _handle_existing_lock(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            raise RunLockedError(
                f"Output folder {self.folder} is locked by {self.path}, which is unreadable. If no "
                "run uses this folder, delete the lock file; otherwise choose another --output-dir."
            ) from None

        if host == socket.gethostname() and not process_alive(pid):
            _logger.warning("Removing stale lock %s of process %d, which no longer runs", self.path, pid)
            self.path.unlink(missing_ok=True)
            return

        raise RunLockedError(
            f"Output folder {self.folder} is in use by process {pid} on {host} (lock file "
            f"{self.path}). Wait for that run to finish or choose another --output-dir; delete the "
            "lock file only if that process no longer runs."
        )

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
