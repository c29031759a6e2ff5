"""Publish a folder of files all at once: stage next to the target, fsync, then rename.

Readers of the target folder see either the old export or the new one, never a half-written
file. The exception is overwriting a folder that also contains other files of the user. Those
files must stay, so the export files are then replaced one by one (see ``_publish``).
"""

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path

from hydranet_hub._fs import left_by_dead_process, os_error_naming
from hydranet_hub.export.errors import ExportError, ExportExistsError

_logger = logging.getLogger(__name__)


def check_destination(out_dir: Path, *, overwrite: bool) -> None:
    """Raise before any work when ``out_dir`` cannot receive an export.

    Args:
        out_dir: Target folder; it may be missing or empty.
        overwrite: Whether existing files may be replaced.

    Raises:
        ExportError: ``out_dir`` exists and is not a folder.
        ExportExistsError: ``out_dir`` contains files and ``overwrite`` is False.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"out_dir {out_dir} exists and is not a folder; choose a folder path.")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(
                    f"out_dir {out_dir} cannot be created because {parent} is a file, not a folder; "
                    "choose an out_dir under a folder."
                )
            break
    if not overwrite and _entries(out_dir):
        raise ExportExistsError(
            f"out_dir {out_dir} already contains files; choose a new or empty folder, "
            "or pass overwrite=True to replace the export files in it."
        )


@contextlib.contextmanager
def staged_folder(out_dir: Path, *, overwrite: bool, managed_names: Collection[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out_dir`` and publish its files on success.

    The staging folder is a hidden sibling of ``out_dir`` on the same file system, so the final
    rename is atomic. If the body raises, the staging folder is removed and ``out_dir`` is left
    exactly as it was (missing, if it was missing).

    Args:
        out_dir: Target folder.
        overwrite: Whether existing files in ``out_dir`` may be replaced.
        managed_names: File names an export writes. With ``overwrite``, a folder that holds only
            these names is swapped whole; any other entry is kept and never deleted.

    Yields:
        The staging folder to write the files into.

    Raises:
        ExportError, ExportExistsError: As ``check_destination``, checked again before publishing.
        OSError: A file or folder could not be written (disk full, folder not writable); the
            message names ``out_dir``, which is left as it was.
    """
    check_destination(out_dir, overwrite=overwrite)

    # os.mkdir (not tempfile.mkdtemp) so the folder gets the usual umask permissions, not 0700,
    # because on success this very folder becomes out_dir. The process id in the name lets a
    # later export recognise the folder as a leftover once this process is gone.
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_leftovers(out_dir)
        os.mkdir(staging)
    except OSError as error:
        raise _write_error(error, out_dir) from error
    try:
        yield staging
        _publish(staging, out_dir, overwrite=overwrite, managed_names=set(managed_names))
    except ExportExistsError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _write_error(error, out_dir) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_error(error: OSError, out_dir: Path) -> OSError:
    return os_error_naming(
        error,
        f"Could not write the export to {out_dir} ({error}); {out_dir} was left as it was. The disk may "
        "be full or the folder not writable: free space or choose another folder, then export again.",
    )


def _remove_dead_leftovers(out_dir: Path) -> None:
    # An export killed before its final rename leaves ".<name>.tmp-<pid>-<id>" (staging) or, when
    # killed between the two renames of a swap, ".<name>.old-<pid>-<id>" (the previous export).
    # Neither is ever read as an export; they are deleted once their process is gone.
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for leftover in out_dir.parent.glob(pattern):
            if leftover.is_dir() and left_by_dead_process(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)
                _logger.info("Removed %s, left by an export that was interrupted", leftover)


def _publish(staging: Path, out_dir: Path, *, overwrite: bool, managed_names: set[str]) -> None:
    for path in staging.iterdir():
        fsync_path(path)
    fsync_path(staging)

    check_destination(out_dir, overwrite=overwrite)
    existing = _entries(out_dir)

    if not existing:
        # rename() replaces an empty folder atomically, and fails if another process has just
        # filled it, in which case that process's files win.
        try:
            os.rename(staging, out_dir)
        except OSError as error:
            raise ExportExistsError(
                f"out_dir {out_dir} was filled by another process during the export ({error}); "
                "choose another folder or pass overwrite=True."
            ) from None
    elif set(existing) <= managed_names:
        _swap_folders(staging, out_dir)
    else:
        # NOTE: other entries must survive, so each export file is replaced on its own. A crash
        # between two replacements leaves a card whose sha256 does not match the weights, which
        # validate_export reports.
        _logger.info("Keeping %d other entries in %s; replacing the export files one by one.",
                     len(set(existing) - managed_names), out_dir)
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
        staging.rmdir()

    fsync_path(out_dir)
    fsync_path(out_dir.parent)


def _swap_folders(staging: Path, out_dir: Path) -> None:
    backup = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.rename(out_dir, backup)
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(backup, out_dir)
        raise
    shutil.rmtree(backup)


def _entries(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir())


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk.

    Args:
        path: A regular file or a folder.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
