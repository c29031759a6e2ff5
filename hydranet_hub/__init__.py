"""hydranet-hub: the HydraNet encoder as a backbone for segmentation_models_pytorch and timm.

Importing the package registers the ``hydranet`` encoder in smp and the
``hydranet_resnet34`` model in timm. After ``pip install`` an import hook does
the same when smp or timm is first imported, so no import is needed.
"""

import sys

from ._version import __version__
from .errors import (
    ChecksumMismatchError,
    HydraNetHubError,
    UnknownReleaseError,
    UnpublishedReleaseError,
    WeightsDownloadError,
    WeightsFormatError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from .hub import ResolvedWeights, resolve_weights
from .loading import load_encoder_weights
from .releases import DEFAULT_TAG, Release, get_release, list_releases, register_release


def register() -> None:
    """Register HydraNet in smp and timm (idempotent)."""
    from ._smp import register_smp_encoders
    from ._timm import register_timm_models

    register_timm_models()
    register_smp_encoders()


def _hook_is_registering() -> bool:
    hook = sys.modules.get("_hydranet_hub_hook")
    return bool(getattr(hook, "registering", False))


if not _hook_is_registering():
    register()

__all__ = [
    "ChecksumMismatchError",
    "DEFAULT_TAG",
    "HydraNetHubError",
    "Release",
    "ResolvedWeights",
    "UnknownReleaseError",
    "UnpublishedReleaseError",
    "WeightsDownloadError",
    "WeightsFormatError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "__version__",
    "get_release",
    "list_releases",
    "load_encoder_weights",
    "register",
    "register_release",
    "resolve_weights",
]
