"""Resolve a weights specification to a verified local safetensors file.

A specification is what users pass as smp ``encoder_weights``: a release tag
(``"msd7"``, or ``"imagenet"`` for the default release), a local path to a
``.safetensors`` file or to a folder holding ``model.safetensors``, or
``"hf-hub:org/repo@revision"``. Downloads go through huggingface_hub, so its
cache, ``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and tokens apply.
Only safetensors files are read: nothing downloaded is ever unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ._constants import CONFIG_NAME, HF_HUB_PREFIX, WEIGHTS_NAME
from .errors import (
    ChecksumMismatchError,
    UnknownReleaseError,
    WeightsDownloadError,
    WeightsFormatError,
    WeightsNotFoundError,
)
from .releases import IMAGENET_ALIAS, HubSource, Release, get_release, list_releases, release_source

_logger = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file on local disk that passed every check its source allows.

    Attributes:
        weights_path: Local ``model.safetensors``.
        config: Parsed ``config.json`` that came with it, or the release record's config, or None.
        sha256: sha256 of the file as read.
        description: Where it came from, for logs and errors.
        release: The release record, when the specification named one.
    """

    weights_path: Path
    config: Optional[dict]
    sha256: str
    description: str
    release: Optional[Release] = None


def sha256_of_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(spec: Union[str, os.PathLike]) -> ResolvedWeights:
    """Find, download if needed, and verify the weights that ``spec`` names.

    Args:
        spec: A release tag (``"msd7"``; ``"imagenet"`` means the default release), a path to a
            ``.safetensors`` file or to a folder with ``model.safetensors``, or
            ``"hf-hub:org/repo"`` / ``"hf-hub:org/repo@revision"``.

    Returns:
        The verified local file with its config.

    Raises:
        UnpublishedReleaseError: The tag names a release whose weights are not published.
        UnknownReleaseError: ``spec`` is neither a tag, an existing path nor an ``hf-hub:`` id.
        WeightsNotFoundError: A local path or a Hub file that does not exist.
        WeightsDownloadError: The Hub or mirror could not be reached and the file is not cached.
        ChecksumMismatchError: The file's sha256 differs from the release's.
    """
    text = os.fspath(spec)
    if text.startswith(HF_HUB_PREFIX):
        return _resolve_hub_id(text[len(HF_HUB_PREFIX):])
    if _looks_like_path(text):
        return _resolve_local(Path(text).expanduser())

    try:
        release = get_release(text)
    except UnknownReleaseError:
        raise UnknownReleaseError(
            f"encoder weights {text!r} are neither a registered HydraNet release "
            f"({[r.tag for r in list_releases()] + [IMAGENET_ALIAS]}), an existing local file, "
            "nor an 'hf-hub:org/repo@revision' id. If it is a file, check the path; "
            "use None for random initialisation."
        ) from None
    return _resolve_release(release)


def _looks_like_path(text: str) -> bool:
    return (
        os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith("~")
        or text.endswith(".safetensors")
        or os.path.exists(text)
    )


def _resolve_local(path: Path) -> ResolvedWeights:
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Weights file {str(path)!r} does not exist. Pass the path of a model.safetensors file "
            "(or of the folder that holds it), e.g. the export folder printed by hydranet-pretrain."
        )
    if path.suffix != ".safetensors":
        raise WeightsFormatError(
            f"Weights file {str(path)!r} is not a .safetensors file. hydranet-hub reads only safetensors, "
            "so that no file is ever unpickled; convert it with safetensors.torch.save_file."
        )
    check_safetensors(path)
    config_path = path.with_name(CONFIG_NAME)
    config = _read_json(config_path) if config_path.is_file() else None
    return ResolvedWeights(path, config, sha256_of_file(path), f"local file {str(path)!r}")


def _resolve_release(release: Release) -> ResolvedWeights:
    source = release_source(release)
    resolved = _download_and_verify(source)
    config = resolved.config or release.config()
    return ResolvedWeights(resolved.weights_path, config, resolved.sha256, resolved.description, release)


def _resolve_hub_id(hub_id: str) -> ResolvedWeights:
    repo_id, _, revision = hub_id.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UnknownReleaseError(
            f"Hub id {HF_HUB_PREFIX + hub_id!r} is invalid: expected 'hf-hub:org/repo' or 'hf-hub:org/repo@revision'."
        )
    revision = revision or "main"

    # A registered release with the same repo and commit pins the hash too.
    expected = None
    for release in list_releases():
        if release.repo_id == repo_id and release.revision == revision:
            expected = release.sha256
    source = HubSource(repo_id, revision, expected, tag=HF_HUB_PREFIX + hub_id)
    return _download_and_verify(source)


def _download_and_verify(source: HubSource) -> ResolvedWeights:
    weights_path = Path(_hub_download(source, WEIGHTS_NAME, required=True))
    actual = sha256_of_file(weights_path)
    if source.sha256 is not None and actual != source.sha256:
        raise ChecksumMismatchError(
            f"sha256 mismatch for {WEIGHTS_NAME} of {source.repo_id}@{source.revision} "
            f"(release {source.tag!r}): expected {source.sha256}, got {actual} from {str(weights_path)!r}. "
            "The cached file is corrupted or the repository serves other bytes; it was not loaded. "
            f"Delete the cached copy (`hf cache delete`, or remove {str(weights_path.resolve())!r} and the "
            "link to it) and download again, or check the mirror set by HF_ENDPOINT."
        )
    if source.sha256 is None:
        _logger.warning(
            "%s of %s@%s is not pinned by a sha256 (sha256 of this copy: %s). Register a release or set "
            "HYDRANET_HUB_SHA256 to pin it.",
            WEIGHTS_NAME, source.repo_id, source.revision, actual,
        )

    check_safetensors(weights_path)
    config_path = _hub_download(source, CONFIG_NAME, required=False)
    config = _read_json(Path(config_path)) if config_path else None
    description = f"{source.repo_id}@{source.revision}"
    return ResolvedWeights(weights_path, config, actual, description)


def _hub_download(source: HubSource, filename: str, *, required: bool) -> Optional[str]:
    # Imported here: huggingface_hub is a dependency, but importing it costs
    # start-up time that smp-only users of the import hook should not pay.
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{source.repo_id}@{source.revision} (release {source.tag!r}, endpoint {constants.ENDPOINT})"
    try:
        return hf_hub_download(source.repo_id, filename, revision=source.revision)
    except RepositoryNotFoundError as error:
        raise WeightsNotFoundError(
            f"Hub repository {source.repo_id!r} was not found at {where}. Check the repo id, "
            "log in with `hf auth login` (or set HF_TOKEN) if it is private, or point HF_ENDPOINT at your mirror."
        ) from error
    except RevisionNotFoundError as error:
        raise WeightsNotFoundError(
            f"Revision {source.revision!r} was not found in {where}. Check the commit or branch name."
        ) from error
    except LocalEntryNotFoundError as error:
        # Raised when the Hub cannot be reached, refuses the request, or HF_HUB_OFFLINE=1, and the
        # file is not cached. The HTTP status, if any, sits in the chained errors.
        if not required:
            return None
        _raise_if_access_denied(error, filename, where)
        raise WeightsDownloadError(
            f"Could not download {filename} from {where} ({_failure_summary(error)}), and it is not in the "
            f"local cache ({constants.HF_HUB_CACHE}). Connect once to fill the cache and then work offline with "
            "HF_HUB_OFFLINE=1, set HF_ENDPOINT to a reachable mirror, or pass a local path as encoder_weights."
        ) from error
    except EntryNotFoundError as error:
        if not required:
            return None
        raise WeightsNotFoundError(
            f"{filename} was not found in {where}. The repository must hold an export of hydranet-pretrain."
        ) from error
    except (HfHubHTTPError, OSError) as error:
        _raise_if_access_denied(error, filename, where)
        raise WeightsDownloadError(
            f"Download of {filename} from {where} failed: {error}. Retry later, set HF_ENDPOINT to a mirror, "
            "or use HF_HUB_OFFLINE=1 if the file is already cached."
        ) from error
    except _transport_errors() as error:
        # huggingface_hub 2.4.0 lets time-outs and broken connections of the download itself through
        # as httpx2 errors, which are not OSError. httpx is listed too, for clients built on it.
        raise WeightsDownloadError(
            f"Download of {filename} from {where} failed: {_failure_summary(error)}. The Hub did not answer "
            "in time or the connection broke. Retry, raise HF_HUB_DOWNLOAD_TIMEOUT and HF_HUB_ETAG_TIMEOUT "
            "(seconds), set HF_ENDPOINT to a mirror, or use HF_HUB_OFFLINE=1 if the file is already cached."
        ) from error


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors.append(module.TransportError)
    return tuple(errors)


def _chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _http_status(error: BaseException) -> Optional[int]:
    for link in _chain(error):
        status = getattr(getattr(link, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _failure_summary(error: BaseException) -> str:
    """Name the root cause of a failed request in a few words: an HTTP status or the transport error."""
    status = _http_status(error)
    if status is not None:
        return f"the server answered HTTP {status}"
    root = _chain(error)[-1]
    return f"{type(root).__name__}: {root}" if str(root) else type(root).__name__


def _raise_if_access_denied(error: BaseException, filename: str, where: str) -> None:
    status = _http_status(error)
    if status in (401, 403):
        raise WeightsDownloadError(
            f"The Hub refused access to {filename} in {where} (HTTP {status}). If the repository is private "
            "or gated, log in with `hf auth login` or set HF_TOKEN to a token that can read it; otherwise "
            "check the repo id and HF_ENDPOINT."
        ) from error


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsFormatError(f"Config file {str(path)!r} is not valid JSON: {error}") from error


def check_safetensors(path: Union[str, Path]) -> None:
    """Raise WeightsFormatError unless ``path`` has a valid safetensors header whose tensors fit in the file.

    Only the header is parsed, so this is cheap even for large files.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsFormatError(_format_message(path, error)) from error


def _format_message(path, error) -> str:
    return (
        f"{str(path)!r} is not a readable safetensors file ({error}). It may be truncated or in another "
        "format (a pickled .pt/.bin file renamed to .safetensors is never loaded). Download or export it again."
    )


def load_safetensors(path: Union[str, Path]) -> dict:
    """Read a safetensors file into a dict of CPU tensors, with an error naming the file if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsFormatError(_format_message(path, error)) from error
