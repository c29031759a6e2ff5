"""PretrainConfig: validation, settings files and the demo preset."""

import json

import pytest

from hydranet_hub.training.config import DEMO_SETTINGS, PretrainConfig, load_config_file


def test_config_defaults_valid():
    config = PretrainConfig()

    assert config.encoder == "hydranet"
    assert config.context_slices == 1


def test_from_mapping_accepts_dashes_and_lists():
    config = PretrainConfig.from_mapping({"slice-size": [64, 48], "tasks": ["Task02_Heart"], "modalities": 1})

    assert config.slice_size == (64, 48)
    assert config.tasks == ("Task02_Heart",)
    assert config.modalities == (1,)


def test_from_mapping_unknown_key_suggests():
    with pytest.raises(ValueError, match="Did you mean batch_size_per_task"):
        PretrainConfig.from_mapping({"batch_size_per_tsk": 4})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps=0"),
        ("lr", 0.0, "lr=0.0"),
        ("slice_size", (16, 16), "slice_size"),
        ("amp", "fp8", "amp='fp8'"),
        ("label_mode", "some", "label_mode"),
        ("val_fraction", 1.0, "val_fraction"),
        ("task_weights", {"a": -1}, "task_weights"),
        ("batch_size_per_task", True, "batch_size_per_task"),
        ("modalities", (), "modalities"),
    ],
)
def test_invalid_value_names_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PretrainConfig(**{field: value})


def test_zero_loss_weights_rejected():
    with pytest.raises(ValueError, match="both 0"):
        PretrainConfig(dice_weight=0, ce_weight=0)


def test_yaml_and_json_files_load(tmp_path):
    (tmp_path / "run.yaml").write_text("steps: 12\nslice-size: [64, 64]\ntask_weights: {Task02_Heart: 2}\n")
    (tmp_path / "run.json").write_text(json.dumps({"steps": 13}))

    from_yaml = PretrainConfig.from_mapping(load_config_file(tmp_path / "run.yaml"))
    from_json = PretrainConfig.from_mapping(load_config_file(tmp_path / "run.json"))

    assert from_yaml.steps == 12
    assert from_yaml.task_weights == {"Task02_Heart": 2}
    assert from_json.steps == 13


def test_config_file_not_mapping_rejected(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("- 1\n- 2\n")

    with pytest.raises(ValueError, match="mapping"):
        load_config_file(path)


def test_missing_config_file_rejected(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config_file(tmp_path / "absent.yaml")


def test_demo_preset_with_override():
    config = PretrainConfig.for_demo(steps=5)

    assert config.demo is True
    assert config.slice_size == tuple(DEMO_SETTINGS["slice_size"])
    assert config.steps == 5


def test_to_dict_round_trips():
    config = PretrainConfig(tasks=("a",), task_weights={"a": 2.0}, slice_size=(64, 64))

    assert PretrainConfig.from_mapping(config.to_dict()) == config
