"""The slice cache manifest: file layout, hashing and crash-safe JSON writes.

The manifest is the only thing that makes cached arrays trusted. Arrays are written to a
temporary name and renamed into place before their manifest entry exists, and the manifest itself
is replaced atomically, so a build killed at any point leaves either a complete entry or none.
"""

import contextlib
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import os_error_naming
from .errors import CacheError

try:
    import fcntl
except ImportError:  # Windows: builds are not locked against each other
    fcntl = None

_logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
TEMPORARY_MARKER = ".tmp-"
_LOCK_NAME = ".build.lock"


def settings_digest(settings: Any) -> str:
    """SHA-256 hex digest of a JSON-ready value, independent of dict key order."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_seed(*parts: str) -> list[int]:
    """Seed material for numpy from strings; unlike hash(), CRC-32 does not change between runs."""
    return [zlib.crc32(part.encode("utf-8")) for part in parts]


def case_file_names(task: str, case_id: str) -> tuple[str, str]:
    """Relative paths (image, label) of a case's arrays inside the cache folder."""
    return f"{task}/{case_id}.image.npy", f"{task}/{case_id}.label.npy"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, flush it to disk, then rename it over `path`.

    Raises:
        OSError: If the file cannot be written (disk full, folder not writable). The message
            names `path`, the temporary file is removed and `path` keeps its previous content.
    """
    temporary = path.with_name(f"{path.name}{TEMPORARY_MARKER}{os.getpid()}")
    with _removed_on_failure(temporary, path):
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)


def save_array_atomic(path: Path, array: np.ndarray) -> None:
    """Save a .npy file under a temporary name, flush it to disk, then rename it into place.

    Raises:
        OSError: As `write_json_atomic`.
    """
    temporary = path.with_name(f"{path.name}{TEMPORARY_MARKER}{os.getpid()}")
    with _removed_on_failure(temporary, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as stream:
            np.save(stream, array, allow_pickle=False)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)


@contextlib.contextmanager
def _removed_on_failure(temporary: Path, path: Path) -> Iterator[None]:
    # numpy reports a short write as "N requested and M written" without a path, so the
    # message is rebuilt around the file the cache could not write.
    try:
        yield
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise os_error_naming(
            error,
            f"Could not write the slice cache file {path} ({error}). The disk may be full or the "
            "folder not writable: free space or choose another cache folder, then build again. "
            "Cases finished before this one stay cached.",
        ) from error


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """Read and structurally check a cache manifest.

    Raises:
        CacheError: If the manifest is missing, not JSON, or from another format version.
    """
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CacheError(f"No slice cache at {cache_dir}: {MANIFEST_NAME} is missing. Build it with build_slice_cache.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CacheError(f"{path} is not valid JSON ({error}); rebuild the cache with build_slice_cache.") from error

    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise CacheError(
            f"{path} has format version {found!r}, expected {FORMAT_VERSION}; rebuild the cache with build_slice_cache."
        )
    for key in ("settings", "settings_hash", "split", "sampling", "tasks"):
        if key not in manifest:
            raise CacheError(f"{path} lacks the '{key}' section; rebuild the cache with build_slice_cache.")
    return manifest


def remove_temporary_files(cache_dir: Path) -> int:
    """Delete leftovers of interrupted writes (names containing TEMPORARY_MARKER); return the count."""
    removed = 0
    for path in Path(cache_dir).rglob(f"*{TEMPORARY_MARKER}*"):
        if path.is_file():
            path.unlink()
            removed += 1
    if removed:
        _logger.info("Removed %d temporary file(s) left by an interrupted build in %s", removed, cache_dir)
    return removed


def remove_case_files(cache_dir: Path, entry: dict[str, Any]) -> None:
    """Delete a manifest entry's arrays, ignoring files that are already gone."""
    for key in ("image_file", "label_file"):
        with contextlib.suppress(FileNotFoundError):
            (Path(cache_dir) / entry[key]).unlink()


@contextlib.contextmanager
def build_lock(cache_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache folder so concurrent builds (e.g. DDP ranks) run one at a time."""
    if fcntl is None:
        yield
        return
    with open(Path(cache_dir) / _LOCK_NAME, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
