"""HydraNet: task routing, one encoder pass per step, and encoder export names."""

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import save_file

from hydranet_hub.models import HydraNet

torch.set_num_threads(1)

SMALL_DECODER = (32, 16, 16, 8, 8)


def _model(encoder: str = "hydranet", **kwargs) -> HydraNet:
    torch.manual_seed(0)
    tasks = kwargs.pop("tasks", {"Task02_Heart": 2, "Task03_Liver": 3})
    return HydraNet(encoder, tasks=tasks, decoder_channels=SMALL_DECODER, **kwargs)


def test_forward_returns_logits_per_task():
    model = _model()
    batches = {"Task02_Heart": torch.randn(2, 3, 32, 32), "Task03_Liver": torch.randn(3, 3, 32, 32)}

    logits = model(batches)

    assert list(logits) == ["Task02_Heart", "Task03_Liver"]
    assert logits["Task02_Heart"].shape == (2, 2, 32, 32)
    assert logits["Task03_Liver"].shape == (3, 3, 32, 32)


def test_forward_runs_encoder_once():
    model = _model()
    calls = []
    model.encoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))

    model({"Task02_Heart": torch.randn(2, 3, 32, 32), "Task03_Liver": torch.randn(3, 3, 32, 32)})

    assert calls == [5]


def test_forward_matches_forward_task_in_eval():
    model = _model().eval()
    heart, liver = torch.randn(2, 3, 32, 32), torch.randn(1, 3, 32, 32)

    with torch.no_grad():
        joint = model({"Task02_Heart": heart, "Task03_Liver": liver})
        heart_alone = model.forward_task(heart, "Task02_Heart")
        liver_alone = model.forward_task(liver, "Task03_Liver")

    torch.testing.assert_close(joint["Task02_Heart"], heart_alone)
    torch.testing.assert_close(joint["Task03_Liver"], liver_alone)


def test_forward_accepts_task_subset():
    model = _model()

    logits = model({"Task03_Liver": torch.randn(2, 3, 32, 32)})

    assert list(logits) == ["Task03_Liver"]


def test_forward_unknown_task_raises():
    model = _model()

    with pytest.raises(KeyError, match="Task09_Spleen"):
        model({"Task09_Spleen": torch.randn(1, 3, 32, 32)})
    with pytest.raises(KeyError, match="Task09_Spleen"):
        model.forward_task(torch.randn(1, 3, 32, 32), "Task09_Spleen")


def test_forward_mismatched_shapes_raise():
    model = _model()

    with pytest.raises(ValueError, match="differ"):
        model({"Task02_Heart": torch.randn(1, 3, 32, 32), "Task03_Liver": torch.randn(1, 3, 64, 64)})


@pytest.mark.parametrize(
    "tasks",
    [{}, {"Task02_Heart": 1}, {"Task02.Heart": 2}, {"Task02_Heart": 2.0}, {"Task02_Heart": True}],
)
def test_invalid_tasks_raise(tasks):
    with pytest.raises(ValueError):
        HydraNet("resnet18", tasks=tasks)


def test_decoder_depth_mismatch_raises():
    with pytest.raises(ValueError, match="encoder_depth"):
        HydraNet("resnet18", tasks={"a": 2}, encoder_depth=4, decoder_channels=SMALL_DECODER)


def test_encoder_state_dict_names_load_in_timm_and_smp():
    state = _model().encoder_state_dict()

    assert "conv1.weight" in state
    assert "layer4.2.bn2.running_var" in state
    assert not [name for name in state if name.startswith("fc.")]
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    timm.create_model("resnet34", num_classes=0).load_state_dict(state, strict=True)
    smp.encoders.get_encoder("resnet34", weights=None).load_state_dict(dict(state), strict=True)


def test_encoder_state_dict_is_contiguous_under_channels_last():
    model = _model().to(memory_format=torch.channels_last)

    state = model.encoder_state_dict()

    assert state["conv1.weight"].is_contiguous()


def test_other_encoder_and_channel_count():
    model = _model("resnet18", in_channels=5, tasks={"a": 4})

    logits = model.forward_task(torch.randn(1, 5, 64, 48), "a")

    assert logits.shape == (1, 4, 64, 48)
    assert model.encoder.conv1.weight.shape[1] == 5


def test_encoder_weights_from_safetensors_file(tmp_path):
    torch.manual_seed(1)
    source = smp.encoders.get_encoder("resnet34", weights=None)
    path = tmp_path / "model.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in source.state_dict().items()}, str(path))

    model = _model("resnet34", encoder_weights=str(path))

    torch.testing.assert_close(model.encoder.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.encoder.layer3[0].bn1.running_mean, source.layer3[0].bn1.running_mean)
