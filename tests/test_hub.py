"""Weights from the Hub test server: releases, pinning, cache, offline use, corruption, timm and tu- paths."""

import hashlib
import io
import json
import logging
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save

import hydranet_hub
from hydranet_hub import releases
from hydranet_hub.errors import (
    ChecksumMismatchError,
    WeightsDownloadError,
    WeightsFormatError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from hydranet_hub.releases import Release, register_release

REPO = "lab/hydranet-test"


def _encoder_bytes(name="resnet34", seed=0):
    torch.manual_seed(seed)
    encoder = smp.encoders.get_encoder(name, weights=None)
    state = {key: value.contiguous() for key, value in encoder.state_dict().items()}
    return save(state), state


def _publish(hub_server, data, tag, repo=REPO, config=None):
    """Serve `data` as model.safetensors and register a release pinned to that commit."""
    hub_server.add_file(repo, "config.json", json.dumps(config or {"mean": [0, 0, 0]}).encode())
    commit = hub_server.add_file(repo, "model.safetensors", data)
    release = Release(
        tag=tag, architecture="resnet34", repo_id=repo, revision=commit, sha256=hashlib.sha256(data).hexdigest()
    )
    register_release(release, overwrite=True)
    return release


@pytest.fixture
def isolated_releases(monkeypatch):
    monkeypatch.setattr(releases, "_RELEASES", dict(releases._RELEASES))
    monkeypatch.delenv("HYDRANET_HUB_REPO_ID", raising=False)
    monkeypatch.delenv("HYDRANET_HUB_SHA256", raising=False)


@pytest.fixture
def published(hf_env, hub_server, isolated_releases):
    data, state = _encoder_bytes()
    release = _publish(hub_server, data, "test1")
    return release, state


@pytest.mark.parametrize("in_channels", [1, 4])
def test_release_loads_in_smp(published, in_channels):
    release, state = published

    model = smp.Unet(encoder_name="hydranet", encoder_weights=release.tag, in_channels=in_channels, classes=3)

    assert torch.equal(model.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert model.encoder.conv1.weight.shape[1] == in_channels
    assert model(torch.zeros(1, in_channels, 64, 64)).shape == (1, 3, 64, 64)


def test_cache_reused_with_server_stopped(published, hub_server):
    release, state = published
    smp.Unet(encoder_name="hydranet", encoder_weights=release.tag)
    downloads = hub_server.request_count("GET", "model.safetensors")
    hub_server.stop()

    model = smp.Unet(encoder_name="hydranet", encoder_weights=release.tag)

    assert downloads == 1
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])


def test_offline_mode_uses_cache(published, hub_server, monkeypatch):
    release, state = published
    hydranet_hub.resolve_weights(release.tag)
    hub_server.stop()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    resolved = hydranet_hub.resolve_weights(f"hf-hub:{REPO}@{release.revision}")

    assert resolved.sha256 == release.sha256


def test_unreachable_hub_names_repo_and_revision(published, hub_server):
    release, _ = published
    hub_server.stop()

    with pytest.raises(WeightsDownloadError) as excinfo:
        smp.Unet(encoder_name="hydranet", encoder_weights=release.tag)

    message = str(excinfo.value)
    assert f"{REPO}@{release.revision}" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "HF_ENDPOINT" in message


def test_corrupted_cache_never_loads(published):
    release, _ = published
    path = hydranet_hub.resolve_weights(release.tag).weights_path
    blob = Path(path).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))

    with pytest.raises(ChecksumMismatchError) as excinfo:
        smp.Unet(encoder_name="hydranet", encoder_weights=release.tag)

    message = str(excinfo.value)
    assert REPO in message
    assert release.revision in message
    assert release.sha256 in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert "hf cache delete" in message


def test_other_backbone_from_hub(hf_env, hub_server, isolated_releases):
    data, _ = _encoder_bytes("resnet50")
    release = _publish(hub_server, data, "wrong")

    with pytest.raises(WeightsMismatchError) as excinfo:
        smp.Unet(encoder_name="hydranet", encoder_weights=release.tag)

    assert "'layer1.0.conv1.weight'" in str(excinfo.value)
    assert REPO in str(excinfo.value)


def test_pickle_on_hub_never_unpickled(hf_env, hub_server, isolated_releases):
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1)}, buffer)
    release = _publish(hub_server, buffer.getvalue(), "pickled")

    with pytest.raises(WeightsFormatError, match="never loaded"):
        smp.Unet(encoder_name="hydranet", encoder_weights=release.tag)


def test_revision_pinning(hf_env, hub_server, isolated_releases):
    old_bytes, old_state = _encoder_bytes(seed=1)
    release = _publish(hub_server, old_bytes, "pinned")
    new_bytes, new_state = _encoder_bytes(seed=2)
    new_commit = hub_server.add_file(REPO, "model.safetensors", new_bytes)

    pinned = smp.Unet(encoder_name="hydranet", encoder_weights=release.tag)
    latest = smp.Unet(encoder_name="hydranet", encoder_weights=f"hf-hub:{REPO}@{new_commit}")
    main = smp.Unet(encoder_name="hydranet", encoder_weights=f"hf-hub:{REPO}")

    assert torch.equal(pinned.encoder.conv1.weight, old_state["conv1.weight"])
    assert torch.equal(latest.encoder.conv1.weight, new_state["conv1.weight"])
    assert torch.equal(main.encoder.conv1.weight, new_state["conv1.weight"])


def test_pinned_hash_checked_for_hub_id(hf_env, hub_server, isolated_releases):
    data, _ = _encoder_bytes(seed=1)
    release = _publish(hub_server, data, "pinned")
    register_release(
        Release(tag="pinned", architecture="resnet34", repo_id=REPO, revision=release.revision, sha256="0" * 64),
        overwrite=True,
    )

    with pytest.raises(ChecksumMismatchError):
        hydranet_hub.resolve_weights(f"hf-hub:{REPO}@{release.revision}")


def test_env_redirects_default_release(hf_env, hub_server, isolated_releases, monkeypatch, caplog):
    data, state = _encoder_bytes(seed=4)
    commit = hub_server.add_file("mylab/own-pretraining", "model.safetensors", data)
    monkeypatch.setenv("HYDRANET_HUB_REPO_ID", f"mylab/own-pretraining@{commit}")
    monkeypatch.setenv("HYDRANET_HUB_SHA256", hashlib.sha256(data).hexdigest())

    with caplog.at_level(logging.INFO, logger="hydranet_hub"):
        model = smp.Unet(encoder_name="hydranet", in_channels=1, classes=3)

    assert torch.equal(model.encoder.layer2[0].conv2.weight, state["layer2.0.conv2.weight"])
    assert "encoder_weights='imagenet'" in caplog.text


def test_missing_repo_and_file(hf_env, hub_server, isolated_releases):
    with pytest.raises(WeightsNotFoundError, match="nobody/nothing"):
        hydranet_hub.resolve_weights("hf-hub:nobody/nothing@main")

    hub_server.add_file("lab/empty", "README.md", b"no weights")
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        hydranet_hub.resolve_weights("hf-hub:lab/empty")


def test_server_error_names_repo(published, hub_server):
    release, _ = published
    hub_server.fail_next(500, count=20)

    with pytest.raises(WeightsDownloadError, match=REPO):
        hydranet_hub.resolve_weights(release.tag)


def test_timm_features_only(published):
    release, state = published

    backbone = timm.create_model(f"hydranet_resnet34.{release.tag}", pretrained=True, features_only=True, in_chans=1)

    assert torch.equal(backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    torch.testing.assert_close(backbone.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert [f.shape[1] for f in backbone(torch.zeros(1, 1, 64, 64))] == [64, 64, 128, 256, 512]
    assert backbone.pretrained_cfg.get("state_dict") is None


def test_timm_classifier_model(published):
    release, state = published

    model = timm.create_model(f"hydranet_resnet34.{release.tag}", pretrained=True, num_classes=5)

    assert torch.equal(model.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


def test_smp_tu_encoder(published):
    release, state = published

    model = smp.Unet(f"tu-hydranet_resnet34.{release.tag}", encoder_weights=True, in_channels=4, classes=2)

    assert torch.equal(model.encoder.model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert model(torch.zeros(1, 4, 64, 64)).shape == (1, 2, 64, 64)


def test_hub_id_downloaded_once_per_model(hf_env, hub_server, isolated_releases):
    data, state = _encoder_bytes(seed=6)
    commit = hub_server.add_file(REPO, "model.safetensors", data)

    model = smp.Unet(encoder_name="hydranet", encoder_weights=f"hf-hub:{REPO}@{commit}")

    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])
    assert hub_server.request_count("GET", "model.safetensors") == 1
    assert hub_server.request_count("HEAD", "model.safetensors") == 1
