"""FinetuneConfig: validation, the demo settings and the translation to the training engine."""

import pytest

from hydranet_hub.demo import DEMO_HELDOUT_TASK
from hydranet_hub.finetune import DEMO_PRETRAIN_EXPORT, FinetuneConfig


def test_task_or_demo_required():
    with pytest.raises(ValueError, match="exactly one"):
        FinetuneConfig()
    with pytest.raises(ValueError, match="exactly one"):
        FinetuneConfig(task="Task04_Hippocampus", demo=True)


def test_demo_targets_heldout_task():
    config = FinetuneConfig.for_demo()

    assert config.task_path().endswith(DEMO_HELDOUT_TASK)
    assert config.encoder_weights == DEMO_PRETRAIN_EXPORT
    assert config.slice_size == (64, 64)


def test_training_config_maps_names():
    config = FinetuneConfig(task="/data/Task04", batch_size=5, train_cases=3, steps=7, slice_size=64)

    training = config.training_config()

    assert training.tasks == ("/data/Task04",)
    assert training.batch_size_per_task == 5
    assert training.max_cases == 3
    assert training.steps == 7
    assert training.slice_size == (64, 64)
    assert training.export is False


@pytest.mark.parametrize(("field", "value", "message"), [
    ("train_cases", 0, "train_cases=0"),
    ("slice_fraction", 1.5, "slice_fraction=1.5"),
    ("freeze_encoder_steps", -1, "freeze_encoder_steps=-1"),
    ("encoder_lr_mult", -0.1, "encoder_lr_mult=-0.1"),
    ("batch_size", 0, "batch_size=0"),
    ("steps", 0, "steps=0"),
    ("model_kwargs", [1, 2], "model_kwargs"),
])
def test_invalid_values_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(task="T", **{field: value})


def test_unknown_arch_suggests_close_names():
    with pytest.raises(ValueError, match="unetplusplus"):
        FinetuneConfig(task="T", arch="UnetPlusPlu")


def test_arch_name_any_case():
    assert FinetuneConfig(task="T", arch="deeplabv3plus").arch == "deeplabv3plus"


def test_mapping_keys_with_dashes():
    config = FinetuneConfig.from_mapping({"task": "T", "freeze-encoder-steps": 10, "encoder-lr-mult": 0.1})

    assert config.freeze_encoder_steps == 10
    assert config.encoder_lr_mult == 0.1


def test_unknown_key_suggests_field():
    with pytest.raises(ValueError, match="train_cases"):
        FinetuneConfig.from_mapping({"task": "T", "train-case": 3})


def test_dict_round_trips():
    config = FinetuneConfig(task="T", modalities=[0, 1], model_kwargs={"decoder_channels": [64, 32, 16, 8, 4]})

    assert FinetuneConfig.from_mapping(config.to_dict()).to_dict() == config.to_dict()
