"""Weights files that are damaged, do not fit the encoder, or are pickles that would run code when loaded."""

import hashlib
import io

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

import hydranet_hub
from hydranet_hub.errors import WeightsFormatError, WeightsMismatchError
from hydranet_hub.export import ExportError, TaskSummary, export_encoder, validate_export
from hydranet_hub.training.checkpoint import CHECKPOINT_MAGIC, CheckpointError, load_checkpoint

torch.set_num_threads(1)


class _CreatesFileWhenUnpickled:
    """Pickles as a call to open(path, "w"): loading the pickle creates the file, which the tests watch for."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder("resnet34", weights=None)
    return {name: tensor.contiguous() for name, tensor in encoder.state_dict().items()}


def _save(tmp_path, state) -> str:
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return str(path)


# --- damaged files --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kept", ["8 bytes", "half the header", "half the data"])
def test_truncated_file_named(tmp_path, encoder_state, kept):
    path = _save(tmp_path, encoder_state)
    content = open(path, "rb").read()
    header_end = 8 + int.from_bytes(content[:8], "little")
    cut = {"8 bytes": 8, "half the header": header_end // 2, "half the data": (header_end + len(content)) // 2}[kept]
    with open(path, "wb") as handle:
        handle.write(content[:cut])

    with pytest.raises(WeightsFormatError) as caught:
        smp.Unet(encoder_name="hydranet", encoder_weights=path)

    assert path in str(caught.value)
    assert "truncated" in str(caught.value)


def test_empty_file_named(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")

    with pytest.raises(WeightsFormatError, match="not a readable safetensors file") as caught:
        hydranet_hub.load_encoder_weights(smp.Unet("resnet34", encoder_weights=None), path)

    assert str(path) in str(caught.value)


# --- tensors that do not fit ----------------------------------------------------------------------------------------


def test_extra_tensor_rejected(tmp_path, encoder_state):
    path = _save(tmp_path, {**encoder_state, "decoder.blocks.0.conv.weight": torch.zeros(8, 8, 3, 3)})

    with pytest.raises(WeightsMismatchError, match="0 tensors missing and 1 unexpected") as caught:
        smp.Unet(encoder_name="hydranet", encoder_weights=path)

    assert "'decoder.blocks.0.conv.weight'" in str(caught.value)
    assert path in str(caught.value)


def test_classifier_tensors_ignored(tmp_path, encoder_state):
    path = _save(tmp_path, {**encoder_state, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})

    model = smp.Unet(encoder_name="hydranet", encoder_weights=path)

    assert torch.equal(model.encoder.layer4[0].conv1.weight, encoder_state["layer4.0.conv1.weight"])


def test_missing_tensor_rejected(tmp_path, encoder_state):
    state = dict(encoder_state)
    del state["layer3.2.bn1.running_var"]
    path = _save(tmp_path, state)

    with pytest.raises(WeightsMismatchError, match="1 tensors missing and 0 unexpected") as caught:
        smp.Unet(encoder_name="hydranet", encoder_weights=path)

    assert "'layer3.2.bn1.running_var'" in str(caught.value)
    assert "(256,)" in str(caught.value)


def test_wrong_shape_rejected(tmp_path, encoder_state):
    path = _save(tmp_path, {**encoder_state, "layer2.0.conv1.weight": torch.zeros(128, 64, 1, 1)})

    with pytest.raises(WeightsMismatchError) as caught:
        hydranet_hub.load_encoder_weights(smp.FPN("resnet34", encoder_weights=None), path)

    message = str(caught.value)
    assert "'layer2.0.conv1.weight'" in message
    assert "(128, 64, 1, 1)" in message
    assert "(128, 64, 3, 3)" in message


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_float_dtype_cast(tmp_path, encoder_state, dtype):
    state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in encoder_state.items()}
    path = _save(tmp_path, state)

    model = smp.Unet(encoder_name="hydranet", encoder_weights=path)

    assert model.encoder.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(model.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"].float())


def test_int64_batch_counter_as_float_accepted(tmp_path, encoder_state):
    state = dict(encoder_state, **{"bn1.num_batches_tracked": torch.tensor(12.0)})
    path = _save(tmp_path, state)

    model = smp.Unet(encoder_name="hydranet", encoder_weights=path)

    assert model.encoder.bn1.num_batches_tracked.dtype == torch.int64
    assert int(model.encoder.bn1.num_batches_tracked) == 12


# --- pickles --------------------------------------------------------------------------------------------------------


def _hostile_pickle(path, marker) -> None:
    torch.save({"conv1.weight": _CreatesFileWhenUnpickled(marker)}, path)


def test_pickle_never_unpickled_by_smp(tmp_path):
    path, marker = tmp_path / "model.safetensors", tmp_path / "code-ran"
    _hostile_pickle(path, marker)

    with pytest.raises(WeightsFormatError, match="never loaded"):
        smp.Unet(encoder_name="hydranet", encoder_weights=str(path))
    with pytest.raises(WeightsFormatError, match="never loaded"):
        hydranet_hub.load_encoder_weights(smp.Unet("resnet34", encoder_weights=None), path)

    assert not marker.exists()


def test_pickle_rejected_by_validate_export(tmp_path, encoder_state):
    marker = tmp_path / "code-ran"
    exported = export_encoder(
        encoder_state, tmp_path / "export", slice_size=(32, 32),
        tasks=(TaskSummary("Task02_Heart", "MRI", ("background", "left atrium"), 3),),
        metrics={"Task02_Heart": {"left atrium": 0.5, "mean": 0.5}}, training={"steps": 2}, normalization={},
    )
    _hostile_pickle(exported.weights_path, marker)

    with pytest.raises(ExportError, match="not a readable safetensors file") as caught:
        validate_export(exported.dir)

    assert str(exported.weights_path) in str(caught.value)
    assert not marker.exists()


def test_pickle_in_checkpoint_never_run(tmp_path):
    path, marker = tmp_path / "step_00000001.pt", tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"step": 1, "model": _CreatesFileWhenUnpickled(marker)}, buffer)
    payload = buffer.getvalue()
    # A valid header and hash: the file passes the integrity check and reaches the unpickler.
    path.write_bytes(CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)

    with pytest.raises(CheckpointError, match="could not be unpickled") as caught:
        load_checkpoint(path)

    assert str(path) in str(caught.value)
    assert not marker.exists()
