"""Weight releases as typed records.

A release is one `model.safetensors` file (with its `config.json`) in a Hugging
Face Hub repository, pinned by commit and sha256. The records here are the
only place that lists which weights exist; everything that loads weights reads
them through :func:`get_release`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Mapping, Optional

from ._constants import ENV_REPO_ID, ENV_SHA256
from .errors import UnknownReleaseError, UnpublishedReleaseError

_logger = logging.getLogger(__name__)

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

DEFAULT_TAG = "msd7"

# smp asks every encoder for "imagenet" weights by default. The HydraNet encoder
# started from ImageNet weights before its medical pretraining, so this alias
# serves the default HydraNet release.
IMAGENET_ALIAS = "imagenet"


@dataclass(frozen=True)
class Release:
    """One published (or planned) set of HydraNet encoder weights.

    Attributes:
        tag: Short name used as smp ``encoder_weights`` and as the timm pretrained
            tag, e.g. ``"msd7"`` in ``hydranet_resnet34.msd7``.
        architecture: Backbone the tensors belong to (``"resnet34"``). Tensor names
            follow smp's and timm's ResNet of that name.
        repo_id: Hugging Face Hub repository that holds the files.
        revision: Full 40-character commit of that repository, or None while unpublished.
        sha256: sha256 of ``model.safetensors`` at that commit, or None while unpublished.
        in_channels: Number of input channels the stem was trained with.
        channel_semantics: What each input channel holds.
        normalization: How intensities were normalised, per modality.
        input_range: Range of the normalised intensities, as smp's preprocessing expects.
        slice_size: In-plane size (height, width) in pixels that training slices were resized to.
        license: Licence of the weights.
        training_data: Data the encoder was trained on, with its licence.
        metrics: Validation metrics per task, e.g. ``{"Task02_Heart": {"dice": 0.9}}``.
        notes: Free text shown in error messages and the README.
    """

    tag: str
    architecture: str
    repo_id: str
    revision: Optional[str] = None
    sha256: Optional[str] = None
    in_channels: int = 3
    channel_semantics: str = (
        "2.5D input: channels are slices z-1, z and z+1 of one modality, axial, after reorientation to RAS"
    )
    normalization: Mapping[str, str] = field(
        default_factory=lambda: {
            "CT": "clip to the task's window in HU, z-score, clip to [-5, 5]",
            "MRI": "z-score over the foreground of each volume, clip to [-5, 5]",
        }
    )
    input_range: tuple = (-5.0, 5.0)
    slice_size: tuple = (384, 384)
    license: str = "unknown"
    training_data: str = ""
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.revision is not None and not _COMMIT_RE.match(self.revision):
            raise ValueError(
                f"Release {self.tag!r}: revision {self.revision!r} is not a full 40-character commit hash. "
                "Pin releases by commit, not by branch or tag, so that the bytes cannot change."
            )
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise ValueError(
                f"Release {self.tag!r}: sha256 {self.sha256!r} is not 64 lowercase hex characters."
            )
        if (self.revision is None) != (self.sha256 is None):
            raise ValueError(
                f"Release {self.tag!r}: set both revision and sha256 to publish it, or neither while it is planned."
            )

    @property
    def published(self) -> bool:
        return self.revision is not None and self.sha256 is not None

    def preprocessing(self) -> dict:
        """Return smp's preprocessing fields for this release (one mean and std per channel)."""
        return {
            "input_space": "RGB",
            "input_range": list(self.input_range),
            "mean": [0.0] * self.in_channels,
            "std": [1.0] * self.in_channels,
        }

    def config(self) -> dict:
        """Return the `config.json` content this release implies: smp's fields and the medical preprocessing."""
        return {
            **self.preprocessing(),
            "hydranet": {
                "format_version": 1,
                "architecture": self.architecture,
                "smp_encoder_name": "hydranet",
                "timm_model_name": f"hydranet_{self.architecture}",
                "in_channels": self.in_channels,
                "channel_semantics": self.channel_semantics,
                "slice_size": list(self.slice_size),
                "normalization": dict(self.normalization),
                "release_tag": self.tag,
            },
        }


_RELEASES: dict[str, Release] = {}
_LOCK = threading.Lock()


def register_release(release: Release, *, overwrite: bool = False) -> Release:
    """Add a release to the registry, so its tag works as smp ``encoder_weights`` and as a timm tag.

    Args:
        release: The record to add.
        overwrite: Replace an existing record with the same tag (for mirrors or a private
            re-publication). Defaults to False.

    Returns:
        The registered release.

    Raises:
        ValueError: If the tag exists and ``overwrite`` is False, or the tag is reserved.

    Example:
        >>> register_release(Release(tag="mylab", architecture="resnet34", repo_id="mylab/hydranet",
        ...                          revision="0123...", sha256="abcd..."))  # doctest: +SKIP
    """
    if release.tag == IMAGENET_ALIAS:
        raise ValueError(f"Release tag {IMAGENET_ALIAS!r} is reserved as the alias of the default release.")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$", release.tag):
        raise ValueError(
            f"Release tag {release.tag!r} is invalid: use letters, digits, '_' and '-' "
            "(it becomes a timm tag after a dot and an smp encoder_weights value)."
        )
    with _LOCK:
        if release.tag in _RELEASES and not overwrite:
            raise ValueError(
                f"Release {release.tag!r} is already registered (repo {_RELEASES[release.tag].repo_id!r}). "
                "Pass overwrite=True to replace it."
            )
        _RELEASES[release.tag] = release

    _notify_timm(release)
    return release


def _notify_timm(release: Release) -> None:
    # Releases registered after timm was set up become timm tags as well.
    import sys

    if "timm" in sys.modules and "hydranet_hub._timm" in sys.modules:
        sys.modules["hydranet_hub._timm"].register_release_tag(release)


def list_releases() -> list[Release]:
    """Return every registered release, published or not, in registration order."""
    with _LOCK:
        return list(_RELEASES.values())


def get_release(tag: str) -> Release:
    """Return the release record for ``tag``; ``"imagenet"`` means the default release.

    Raises:
        UnknownReleaseError: If no release has this tag.
    """
    if tag == IMAGENET_ALIAS:
        tag = DEFAULT_TAG
    with _LOCK:
        release = _RELEASES.get(tag)
        known = sorted(_RELEASES)
    if release is None:
        raise UnknownReleaseError(
            f"Unknown HydraNet release {tag!r}. Registered releases: {known}. "
            "Pass a release tag, a local path to a model.safetensors file, 'hf-hub:org/repo@revision', "
            "or None for random initialisation."
        )
    return release


@dataclass(frozen=True)
class HubSource:
    """Download location of a release's files, after environment overrides.

    Attributes:
        repo_id: Hub repository.
        revision: Commit, branch or tag to download.
        sha256: Expected sha256 of ``model.safetensors``, or None when nothing pins it.
        tag: Tag of the release this source serves, for messages.
    """

    repo_id: str
    revision: str
    sha256: Optional[str]
    tag: str


def release_source(release: Release) -> HubSource:
    """Return where to download ``release`` from.

    ``HYDRANET_HUB_REPO_ID`` (``org/repo`` or ``org/repo@revision``) redirects the
    default release to another repository, such as a copy in your organisation or
    your own export of ``hydranet-pretrain``. ``HYDRANET_HUB_SHA256`` gives the hash
    to check there when the record has none.

    Raises:
        UnpublishedReleaseError: If the release has no published files and no redirect is set.
        ValueError: If ``HYDRANET_HUB_REPO_ID`` is malformed.
    """
    override = os.environ.get(ENV_REPO_ID, "").strip() if release.tag == DEFAULT_TAG else ""
    if not override:
        if not release.published:
            raise UnpublishedReleaseError(unpublished_message(release))
        return HubSource(release.repo_id, release.revision, release.sha256, release.tag)

    repo_id, _, revision = override.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(
            f"{ENV_REPO_ID}={override!r} is invalid: expected 'org/repo' or 'org/repo@revision'."
        )
    # A copy of a published release serves the same bytes, so its hash stays
    # pinned; the commit differs between repositories, so take the one given.
    sha256 = os.environ.get(ENV_SHA256, "").strip().lower() or release.sha256
    if not revision:
        revision = release.revision if repo_id == release.repo_id and release.revision else "main"
    _logger.info("Release %r redirected by %s to %s@%s", release.tag, ENV_REPO_ID, repo_id, revision)
    return HubSource(repo_id, revision, sha256, release.tag)


def unpublished_message(release: Release) -> str:
    return (
        f"HydraNet release {release.tag!r} ({release.architecture}, planned repo {release.repo_id!r}) "
        "is not published: no weights exist for it yet. To load weights you trained with "
        "`hydranet-pretrain`, pass encoder_weights='/path/to/model.safetensors' or "
        "'hf-hub:org/repo@revision', or set HYDRANET_HUB_REPO_ID=org/repo[@revision] "
        "(and HYDRANET_HUB_SHA256 to pin the file). Use encoder_weights=None for random initialisation."
    )


register_release(
    Release(
        tag=DEFAULT_TAG,
        architecture="resnet34",
        repo_id="hydranet-hub/hydranet-resnet34-msd7",
        license="CC-BY-SA-4.0",
        training_data=(
            "Medical Segmentation Decathlon tasks 01 BrainTumour, 02 Heart, 03 Liver, 05 Prostate, "
            "07 Pancreas, 08 HepaticVessel, 09 Spleen (CC-BY-SA 4.0)"
        ),
        notes=(
            "Not published yet: training it needs the MSD data and GPUs. Run `hydranet-pretrain` on MSD and "
            "load your export by path, by 'hf-hub:org/repo@revision', or by setting HYDRANET_HUB_REPO_ID."
        ),
    )
)
