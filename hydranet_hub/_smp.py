"""Registration of the HydraNet encoder in segmentation_models_pytorch.

smp 0.5 and 0.6 read an encoder's weights in ``get_encoder``: they look the
``encoder_weights`` value up in the encoder's ``pretrained_settings``, then call
``hf_hub_download`` (a name bound in ``segmentation_models_pytorch.encoders``)
for ``config.json`` and ``model.safetensors`` of the repo found there. smp has
no hook for other weight sources, so this module:

* gives ``hydranet`` a ``pretrained_settings`` mapping that accepts every weights
  specification (release tag, ``"imagenet"``, local path, ``hf-hub:`` id) and
  returns a private placeholder repo id for it;
* wraps that module's ``hf_hub_download`` so placeholder ids are served by
  :mod:`hydranet_hub.hub` (download, sha256 check) and every other call goes to
  huggingface_hub unchanged.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from ._constants import CONFIG_NAME, WEIGHTS_NAME
from .releases import DEFAULT_TAG, IMAGENET_ALIAS, get_release, list_releases

_logger = logging.getLogger(__name__)

SMP_ENCODER_NAME = "hydranet"

# Placeholder repo ids look like "hydranet-hub-spec/<n>"; the number indexes _SPECS.
_PLACEHOLDER_PREFIX = "hydranet-hub-spec/"
_SPECS: list[str] = []
_SPECS_LOCK = threading.Lock()
# Weights resolved while smp read config.json, by placeholder repo id.
_RESOLVED: dict = {}
_imagenet_logged = False

# Description of the weights most recently served to smp in this thread, so a
# mismatch found in load_state_dict can name the file.
_served = threading.local()


class _WeightsSettings(Mapping):
    """``pretrained_settings`` of the hydranet encoder: accepts any weights specification.

    Iterating lists the registered release tags and ``"imagenet"``, which is what
    smp shows when it lists available weights.
    """

    def __getitem__(self, spec):
        if not isinstance(spec, str):
            raise KeyError(spec)
        with _SPECS_LOCK:
            _SPECS.append(spec)
            index = len(_SPECS) - 1
        return {"repo_id": f"{_PLACEHOLDER_PREFIX}{index}", "revision": None}

    def __contains__(self, spec) -> bool:
        # Every string is accepted here so that hydranet_hub.hub, not smp's
        # generic KeyError, explains what is wrong with an invalid value.
        return isinstance(spec, str)

    def __iter__(self):
        return iter([r.tag for r in list_releases()] + [IMAGENET_ALIAS])

    def __len__(self) -> int:
        return len(list_releases()) + 1


def _spec_for(repo_id: str) -> str | None:
    if not isinstance(repo_id, str) or not repo_id.startswith(_PLACEHOLDER_PREFIX):
        return None
    with _SPECS_LOCK:
        return _SPECS[int(repo_id[len(_PLACEHOLDER_PREFIX):])]


def _log_imagenet_alias(spec: str) -> None:
    global _imagenet_logged
    if spec == IMAGENET_ALIAS and not _imagenet_logged:
        _imagenet_logged = True
        _logger.info(
            "encoder_weights='imagenet' for encoder 'hydranet' loads HydraNet release %r: an ImageNet-initialised "
            "ResNet-34 further pretrained on medical segmentation. Pass encoder_weights=None for random init.",
            DEFAULT_TAG,
        )


def _config_without_download(spec: str) -> str | None:
    # smp reads config.json for preprocessing; a release record already holds it,
    # so preprocessing works even before the weights are published.
    try:
        release = get_release(spec)
    except KeyError:
        return None
    folder = Path(tempfile.gettempdir()) / "hydranet_hub_configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{release.tag}.{release.architecture}.json"
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
        json.dump(release.config(), handle, indent=2)
    Path(handle.name).replace(path)
    return str(path)


def _make_download_wrapper(original):
    def hf_hub_download(repo_id, filename, *args, **kwargs):
        spec = _spec_for(repo_id)
        if spec is None:
            return original(repo_id, filename, *args, **kwargs)

        from .hub import resolve_weights

        if filename == CONFIG_NAME:
            path = _config_without_download(spec)
            if path is not None:
                return path
            resolved = resolve_weights(spec)
            # smp asks for model.safetensors next under the same placeholder id, so
            # keep this resolution instead of downloading and hashing the file twice.
            with _SPECS_LOCK:
                _RESOLVED[repo_id] = resolved
            config_path = resolved.weights_path.with_name(CONFIG_NAME)
            if resolved.config is not None and config_path.is_file():
                return str(config_path)
            return _config_without_download(DEFAULT_TAG)

        if filename == WEIGHTS_NAME:
            _log_imagenet_alias(spec)
            with _SPECS_LOCK:
                resolved = _RESOLVED.pop(repo_id, None)
            if resolved is None:
                resolved = resolve_weights(spec)
            _served.description = resolved.description
            return str(resolved.weights_path)
        raise FileNotFoundError(f"hydranet-hub serves only {WEIGHTS_NAME} and {CONFIG_NAME}, not {filename!r}")

    hf_hub_download._hydranet_hub_original = original
    return hf_hub_download


def _make_encoder_class():
    from segmentation_models_pytorch.encoders.resnet import ResNetEncoder

    from .loading import prepare_state_dict

    class HydraNetEncoder(ResNetEncoder):
        """smp's ResNet encoder whose ``load_state_dict`` explains mismatched weights."""

        def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
            if strict:
                source = getattr(_served, "description", "encoder_weights")
                state_dict = prepare_state_dict(state_dict, self, source=source)
            return super().load_state_dict(state_dict, strict=strict, **kwargs)

    HydraNetEncoder.__module__ = __name__
    HydraNetEncoder.__qualname__ = "HydraNetEncoder"
    return HydraNetEncoder


def register_smp_encoders() -> None:
    """Add ``hydranet`` and ``hydranet_<architecture>`` to smp's encoders and route their weights here.

    Safe to call more than once.
    """
    import segmentation_models_pytorch.encoders as smp_encoders
    from segmentation_models_pytorch.encoders.resnet import resnet_encoders

    if not getattr(smp_encoders.hf_hub_download, "_hydranet_hub_original", None):
        smp_encoders.hf_hub_download = _make_download_wrapper(smp_encoders.hf_hub_download)

    architectures = {release.architecture for release in list_releases()}
    names = {SMP_ENCODER_NAME: get_release(DEFAULT_TAG).architecture}
    names.update({f"{SMP_ENCODER_NAME}_{arch}": arch for arch in architectures})
    for name, arch in names.items():
        if name in smp_encoders.encoders or arch not in resnet_encoders:
            continue
        smp_encoders.encoders[name] = {
            "encoder": _make_encoder_class(),
            "pretrained_settings": _WeightsSettings(),
            "params": dict(resnet_encoders[arch]["params"]),
        }
        _logger.debug("Registered smp encoder %r (%s)", name, arch)
