"""The `hydranet` encoder in smp, loaded from local safetensors files."""

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

import hydranet_hub
from hydranet_hub.errors import (
    UnknownReleaseError,
    UnpublishedReleaseError,
    WeightsFormatError,
    WeightsMismatchError,
    WeightsNotFoundError,
)


def _encoder_file(tmp_path, name="resnet34", seed=0):
    torch.manual_seed(seed)
    encoder = smp.encoders.get_encoder(name, weights=None)
    state = {key: value.contiguous() for key, value in encoder.state_dict().items()}
    path = tmp_path / f"{name}-{seed}" / "model.safetensors"
    path.parent.mkdir()
    save_file(state, str(path))
    return path, state


def test_random_init_needs_no_weights():
    model = smp.Unet(encoder_name="hydranet", encoder_weights=None, in_channels=1, classes=3)

    assert type(model.encoder).__name__ == "HydraNetEncoder"
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_default_release_unpublished_raises():
    with pytest.raises(UnpublishedReleaseError) as excinfo:
        smp.Unet(encoder_name="hydranet", in_channels=1, classes=3)

    message = str(excinfo.value)
    assert "'msd7'" in message
    assert "not published" in message
    assert "HYDRANET_HUB_REPO_ID" in message
    assert "hf-hub:" in message


@pytest.mark.parametrize("in_channels", [1, 2, 3, 4, 7])
def test_local_file_any_in_channels(tmp_path, in_channels):
    path, state = _encoder_file(tmp_path)

    model = smp.Unet(encoder_name="hydranet", encoder_weights=str(path), in_channels=in_channels, classes=2)

    assert torch.equal(model.encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    stem = model.encoder.conv1.weight
    assert stem.shape[1] == in_channels
    if in_channels == 1:
        torch.testing.assert_close(stem, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert model(torch.zeros(1, in_channels, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("depth", [3, 4, 5])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_depth_and_output_stride(tmp_path, depth, output_stride):
    path, state = _encoder_file(tmp_path)

    model = smp.Unet(
        encoder_name="hydranet",
        encoder_weights=str(path),
        encoder_depth=depth,
        decoder_channels=(256, 128, 64, 32, 16)[:depth],
        encoder_output_stride=output_stride,
        classes=2,
    )

    assert torch.equal(model.encoder.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_folder_path_and_other_architectures(tmp_path):
    path, state = _encoder_file(tmp_path)

    model = smp.FPN(encoder_name="hydranet", encoder_weights=str(path.parent), classes=2)

    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])


def test_other_backbone_names_tensor_and_shapes(tmp_path):
    path, _ = _encoder_file(tmp_path, "resnet50")

    with pytest.raises(WeightsMismatchError) as excinfo:
        smp.Unet(encoder_name="hydranet", encoder_weights=str(path))

    message = str(excinfo.value)
    assert "'layer1.0.conv1.weight'" in message
    assert "(64, 64, 1, 1)" in message
    assert "(64, 64, 3, 3)" in message
    assert str(path) in message


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"

    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        smp.Unet(encoder_name="hydranet", encoder_weights=str(missing))


def test_pickle_named_safetensors_rejected(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)

    with pytest.raises(WeightsFormatError, match="never loaded"):
        smp.Unet(encoder_name="hydranet", encoder_weights=str(path))


def test_unknown_tag_lists_choices():
    with pytest.raises(UnknownReleaseError) as excinfo:
        smp.Unet(encoder_name="hydranet", encoder_weights="msd8")

    assert "'msd8'" in str(excinfo.value)
    assert "msd7" in str(excinfo.value)


def test_preprocessing_params_without_download():
    params = smp.encoders.get_preprocessing_params("hydranet")

    assert params["mean"] == [0.0, 0.0, 0.0]
    assert params["std"] == [1.0, 1.0, 1.0]
    assert params["input_range"] == [-5.0, 5.0]


def test_load_into_existing_model(tmp_path):
    path, state = _encoder_file(tmp_path, seed=3)
    model = smp.UnetPlusPlus("resnet34", encoder_weights=None, in_channels=4, classes=2)

    resolved = hydranet_hub.load_encoder_weights(model, path)

    assert resolved.sha256 == hydranet_hub.hub.sha256_of_file(path)
    assert torch.equal(model.encoder.layer4[2].bn2.running_var, state["layer4.2.bn2.running_var"])
    assert model.encoder.conv1.weight.shape[1] == 4


def test_load_half_precision_file(tmp_path):
    path, state = _encoder_file(tmp_path)
    save_file({key: value.half() if value.is_floating_point() else value for key, value in state.items()}, str(path))
    model = smp.Unet("resnet34", encoder_weights=None)

    hydranet_hub.load_encoder_weights(model, path)

    assert model.encoder.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"].half().float())


def test_integer_tensor_rejected(tmp_path):
    path, state = _encoder_file(tmp_path)
    state["bn1.weight"] = torch.ones(64, dtype=torch.int32)
    save_file(state, str(path))

    with pytest.raises(WeightsMismatchError, match="'bn1.weight'"):
        hydranet_hub.load_encoder_weights(smp.Unet("resnet34", encoder_weights=None), path)
