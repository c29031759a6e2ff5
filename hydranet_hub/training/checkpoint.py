"""Atomic, content-hashed training checkpoints.

A checkpoint is one file: a magic line, the SHA-256 of the payload as hex, a newline, then the
payload written by `torch.save`. Files are written to a temporary name, fsynced and renamed, so a
crash leaves either the previous file or the complete new one. On load the hash is checked before
unpickling, and the payload is read with `torch.load(weights_only=True)`, which accepts only
tensors and plain Python types.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hydranet_hub._fs import left_by_dead_process, os_error_naming

_logger = logging.getLogger(__name__)

CHECKPOINT_MAGIC = b"HYDRANET-CHECKPOINT-1\n"
CHECKPOINT_DIRNAME = "checkpoints"
_DIGEST_HEX_LENGTH = 64
_NAME_PATTERN = re.compile(r"^step_(\d{8,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or of an unknown format."""


def checkpoint_path(output_dir: str | os.PathLike[str], step: int) -> Path:
    """Return the path of the checkpoint written after `step` optimisation steps."""
    return Path(output_dir) / CHECKPOINT_DIRNAME / f"step_{step:08d}.pt"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """List (step, path) of the checkpoints in a run folder, oldest first."""
    folder = Path(output_dir) / CHECKPOINT_DIRNAME
    if not folder.is_dir():
        return []

    found = []
    for path in folder.iterdir():
        match = _NAME_PATTERN.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable; some platforms cannot open folders, which is harmless.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> str:
    """Write `state` atomically to `path` with an embedded SHA-256 of its content.

    Args:
        path: Destination file; its folder is created when missing.
        state: Tensors, nested dicts/lists/tuples and plain Python values only.

    Returns:
        The SHA-256 hex digest of the payload.

    Raises:
        OSError: When the file cannot be written (disk full, folder not writable). The message
            names the file; the destination and older checkpoints are left untouched.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()

    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(CHECKPOINT_MAGIC)
            handle.write(digest.encode("ascii") + b"\n")
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise os_error_naming(
            error,
            f"Could not write checkpoint {path} ({error}). The disk may be full or the folder not "
            "writable: free space (or pass another --output-dir), then continue with --resume from "
            "the previous checkpoint, which is kept.",
        ) from error
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_directory(path.parent)
    _remove_dead_temporaries(path.parent)

    _logger.info("Saved checkpoint %s (sha256 %s)", path, digest)
    return digest


def _remove_dead_temporaries(folder: Path) -> None:
    # A run killed while writing a checkpoint leaves ".step_*.pt.tmp-<pid>" behind, as large as a
    # checkpoint. It is never loaded; deleting it once a later checkpoint is safe frees the space.
    for leftover in folder.glob(".step_*.pt.tmp-*"):
        if left_by_dead_process(leftover.name):
            leftover.unlink(missing_ok=True)
            _logger.info("Removed %s, left by a run that was killed while writing it", leftover)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, after verifying its hash.

    Args:
        path: Checkpoint file.

    Returns:
        The saved state, with tensors on the CPU.

    Raises:
        CheckpointError: When the file is missing, not a checkpoint, truncated or its content
            does not match the stored SHA-256. The message names the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"Checkpoint {path} not found. Pass an existing file, or omit the path to resume from "
            f"the newest checkpoint in the run folder."
        ) from None

    header_length = len(CHECKPOINT_MAGIC) + _DIGEST_HEX_LENGTH + 1
    if not data.startswith(CHECKPOINT_MAGIC) or len(data) < header_length:
        raise CheckpointError(
            f"Checkpoint {path} is not a hydranet-hub checkpoint (missing header). It may be "
            "truncated or another file; delete it or resume from an older checkpoint."
        )

    stored = data[len(CHECKPOINT_MAGIC) : header_length - 1].decode("ascii", errors="replace")
    payload = data[header_length:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != stored:
        raise CheckpointError(
            f"Checkpoint {path} is corrupted: content SHA-256 {actual} does not match the stored "
            f"{stored}. Delete it or resume from an older checkpoint."
        )

    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unpickling error types
        raise CheckpointError(f"Checkpoint {path} could not be unpickled: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {path} holds {type(state).__name__}, expected a dict.")
    return state


def prune_checkpoints(output_dir: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints of a run folder.

    Args:
        output_dir: Run folder.
        keep: Number of newest checkpoints to keep; 0 or less keeps all.

    Returns:
        The deleted paths.
    """
    if keep <= 0:
        return []

    removed = []
    for _, path in list_checkpoints(output_dir)[:-keep]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def resolve_resume_path(output_dir: str | os.PathLike[str], resume: str | os.PathLike[str]) -> Path:
    """Find the checkpoint to resume from.

    Args:
        output_dir: Run folder.
        resume: "latest" for the newest checkpoint in `output_dir`, or a checkpoint path.

    Returns:
        The checkpoint path (not yet verified; `load_checkpoint` verifies it).

    Raises:
        CheckpointError: When "latest" is requested and the run folder has no checkpoint.
    """
    if str(resume) != "latest":
        return Path(resume)

    found = list_checkpoints(output_dir)
    if not found:
        raise CheckpointError(
            f"--resume found no checkpoint in {Path(output_dir) / CHECKPOINT_DIRNAME}. Start "
            "without --resume, or point --output-dir at the run to continue."
        )
    return found[-1][1]
