"""Registration of the HydraNet backbones in timm.

``hydranet_resnet34`` is timm's ResNet-34; each registered release becomes one
of its pretrained tags (``hydranet_resnet34.msd7``). Weights are fetched and
checked by :mod:`hydranet_hub.hub`, then handed to timm as an in-memory state
dict, so timm's own stem adaptation (``in_chans``), ``num_classes`` handling
and ``features_only`` wrapping apply unchanged. smp's ``tu-`` encoders build
through ``timm.create_model`` and get the same weights.
"""

from __future__ import annotations

import logging
import warnings

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models.resnet import BasicBlock, ResNet

from .hub import load_safetensors, resolve_weights
from .loading import check_state_dict
from .releases import DEFAULT_TAG, Release, list_releases

_logger = logging.getLogger(__name__)

_ARCHITECTURES = {
    "resnet34": dict(block=BasicBlock, layers=(3, 4, 6, 3)),
}

# timm's register_model reads the pretrained configs from this module attribute.
default_cfgs: dict = {}


def _pretrained_cfg(release: Release) -> dict:
    height, width = release.slice_size
    return dict(
        hf_hub_id=release.repo_id,
        num_classes=0,
        input_size=(release.in_channels, height, width),
        mean=(0.0,) * release.in_channels,
        std=(1.0,) * release.in_channels,
        first_conv="conv1",
        classifier="fc",
        license=release.license,
        description=f"HydraNet encoder, release {release.tag}: {release.training_data}",
        notes=(release.notes,) if release.notes else (),
    )


def _build(architecture: str, variant: str, pretrained: bool, **kwargs) -> torch.nn.Module:
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
        resolved = resolve_weights(cfg.tag or DEFAULT_TAG)
        state_dict = load_safetensors(resolved.weights_path)

        # Check names and shapes on a meta-device model, which allocates nothing,
        # so a wrong file fails with hydranet-hub's message rather than timm's.
        with torch.device("meta"):
            reference = ResNet(num_classes=0, **_ARCHITECTURES[architecture])
        check_state_dict(state_dict, reference.state_dict(), source=resolved.description, stem_key="conv1.weight")

        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay["state_dict"] = state_dict
        kwargs["pretrained_cfg_overlay"] = overlay

    model = build_model_with_cfg(ResNet, variant, pretrained, **dict(_ARCHITECTURES[architecture], **kwargs))

    # The state dict passed through the config would otherwise stay referenced
    # by model.pretrained_cfg, keeping a second copy of the weights alive.
    for cfg_dict in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
        if isinstance(cfg_dict, dict) and "state_dict" in cfg_dict:
            cfg_dict["state_dict"] = None
    return model


def hydranet_resnet34(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """HydraNet ResNet-34 encoder: timm's resnet34 with HydraNet weights."""
    return _build("resnet34", "hydranet_resnet34", pretrained, **kwargs)


_ENTRYPOINTS = {"resnet34": hydranet_resnet34}


def _update_default_cfgs() -> None:
    cfgs = {}
    for release in list_releases():
        if release.architecture in _ENTRYPOINTS:
            cfgs[f"hydranet_{release.architecture}.{release.tag}"] = _pretrained_cfg(release)
    default_cfgs.clear()
    default_cfgs.update(generate_default_cfgs(cfgs))


def register_timm_models() -> None:
    """Register ``hydranet_resnet34`` and one pretrained tag per release in timm. Safe to call more than once."""
    import timm.models._registry as registry

    if "hydranet_resnet34" in registry._model_entrypoints:
        return
    _update_default_cfgs()
    for entrypoint in _ENTRYPOINTS.values():
        register_model(entrypoint)
    _logger.debug("Registered timm models %s", sorted(default_cfgs))


def register_release_tag(release: Release) -> None:
    """Make a release added after registration available as a timm tag."""
    entrypoint = _ENTRYPOINTS.get(release.architecture)
    if entrypoint is None:
        return
    _update_default_cfgs()
    with warnings.catch_warnings():
        # Re-registering the same entrypoint is how timm adds tags to it.
        warnings.simplefilter("ignore", UserWarning)
        register_model(entrypoint)
