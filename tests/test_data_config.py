"""Tests of TaskConfig, msd_task_config and load_task_configs."""

import json

import numpy as np
import pytest

from hydranet_hub.data import DatasetError, TaskConfig, default_window_hu, load_task_configs, msd_task_config
from msd_fixtures import make_msd_task, msd_root  # noqa: F401 - msd_root is a fixture

LIVER_LABELS = ((0, "background"), (1, "liver"), (2, "cancer"))


def _liver_config(**overrides) -> TaskConfig:
    settings = {"name": "Task03_Liver", "root": "/data/Task03_Liver", "modality_kind": "CT", "modalities": (0,),
                "labels": LIVER_LABELS}
    settings.update(overrides)
    return TaskConfig(**settings)


def test_config_inferred_from_dataset_json(msd_root):
    brain = msd_task_config(msd_root / "Task01_BrainTumour")
    liver = msd_task_config(msd_root / "Task03_Liver")

    assert brain.modality_kind == "MRI"
    assert brain.modalities == (0, 1, 2, 3)
    assert brain.window_hu is None
    assert brain.num_classes == 4
    assert brain.in_channels(context_slices=1) == 12
    assert liver.modality_kind == "CT"
    assert liver.window_hu == default_window_hu("Task03_Liver")
    assert liver.class_names == ("background", "liver", "cancer")


def test_config_overrides(msd_root):
    config = msd_task_config(msd_root / "Task01_BrainTumour", modalities=[0], label_mode="merge", name="Brain")

    assert config.name == "Brain"
    assert config.modalities == (0,)
    assert config.in_channels(context_slices=1) == 3
    assert config.num_classes == 2


def test_config_modality_out_of_range(msd_root):
    with pytest.raises(ValueError, match="modality index 2"):
        msd_task_config(msd_root / "Task05_Prostate", modalities=(0, 2))


def test_config_unknown_override(msd_root):
    with pytest.raises(TypeError, match="windows"):
        msd_task_config(msd_root / "Task03_Liver", windows=(0, 1))


def test_label_mode_all():
    config = _liver_config()

    assert config.num_classes == 3
    assert config.class_lookup().tolist() == [0, 1, 2]


def test_label_mode_merge():
    config = _liver_config(label_mode="merge")

    assert config.num_classes == 2
    assert config.class_lookup().tolist() == [0, 1, 1]
    assert config.class_names == ("background", "foreground")


def test_label_mode_map():
    config = _liver_config(label_mode="map", label_map={2: 1, 1: 0})

    assert config.label_map == ((0, 0), (1, 0), (2, 1))
    assert config.num_classes == 2
    assert config.class_lookup().tolist() == [0, 0, 1]
    assert config.class_names == ("background+liver", "cancer")


def test_label_map_alone_implies_map(msd_root):
    config = msd_task_config(msd_root / "Task03_Liver", label_map={1: 1, 2: 1})

    assert config.label_mode == "map"
    assert config.num_classes == 2


def test_label_all_non_contiguous_values():
    config = _liver_config(labels=((0, "background"), (1, "a"), (4, "b")))

    assert config.num_classes == 3
    assert config.class_lookup()[[0, 1, 4]].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"modality_kind": "PET"}, "modality_kind"),
        ({"modalities": ()}, "modalities"),
        ({"modalities": (0, 0)}, "modalities"),
        ({"window_hu": (200, -100)}, "low < high"),
        ({"label_mode": "binary"}, "label_mode"),
        ({"label_map": {1: 1, 2: 1}}, "set label_mode='map'"),
        ({"label_mode": "map"}, "needs label_map"),
        ({"label_mode": "map", "label_map": {1: 1}}, r"unmapped values \[2\]"),
        ({"label_mode": "map", "label_map": {1: 1, 2: 1, 7: 1}}, r"unknown keys \[7\]"),
        ({"name": "../escape"}, "Task name"),
        ({"nonfinite": "ignore"}, "nonfinite"),
        ({"ct_stats_hu": (0.0, 0.0)}, "positive std"),
        ({"labels": ((1, "liver"),)}, "background value 0"),
    ],
)
def test_config_invalid(overrides, message):
    with pytest.raises(ValueError, match=message):
        _liver_config(**overrides)


def test_config_mri_rejects_window():
    with pytest.raises(ValueError, match="CT only"):
        _liver_config(modality_kind="MRI", window_hu=(-100, 200))


def test_default_windows():
    assert default_window_hu("Task06_Lung") == (-1350.0, 150.0)
    assert default_window_hu("Task503_Liver") == (-100.0, 250.0)
    assert default_window_hu("MyOwnCT") == (-160.0, 240.0)


def test_cache_key_ignores_root():
    first = _liver_config(root="/a/Task03_Liver")
    second = _liver_config(root="/b/Task03_Liver")

    assert first.cache_key() == second.cache_key()
    assert first.cache_key() != _liver_config(window_hu=(-200, 200)).cache_key()
    json.dumps(first.cache_key())


def test_load_yaml_configs(msd_root, tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text(
        f"data_root: {msd_root}\n"
        "tasks:\n"
        "  - name: Task02_Heart\n"
        "  - name: Task03_Liver\n"
        "    window_hu: [-200, 300]\n"
        "    label_mode: merge\n"
        f"  - root: {msd_root / 'Task05_Prostate'}\n"
        "    modalities: [1]\n"
    )

    configs = load_task_configs(path)

    assert [config.name for config in configs] == ["Task02_Heart", "Task03_Liver", "Task05_Prostate"]
    assert configs[1].window_hu == (-200.0, 300.0)
    assert configs[1].num_classes == 2
    assert configs[2].modalities == (1,)


def test_load_json_relative_roots(tmp_path):
    make_msd_task(tmp_path, "heart", n_cases=1)
    make_msd_task(tmp_path, "brain_tumour", n_cases=1)
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"root": "Task02_Heart"}, {"root": "./Task01_BrainTumour", "modalities": [0]}]))

    configs = load_task_configs(path)

    assert configs[0].root == tmp_path / "Task02_Heart"
    assert configs[1].in_channels() == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks: []\n", "non-empty list"),
        ("- 3\n", "not a mapping"),
        ("- window_hu: [0, 1]\n", "needs 'root'"),
        ("- root: Task02_Heart\n  colour: red\n", "colour"),
        ("- root: Task02_Heart\n- root: Task02_Heart\n", "more than once"),
        ("tasks: [unclosed\n", "not valid YAML"),
    ],
)
def test_load_configs_invalid(msd_root, tmp_path, text, message):
    path = tmp_path / "tasks.yaml"
    path.write_text(text.replace("Task02_Heart", str(msd_root / "Task02_Heart")))

    with pytest.raises(DatasetError, match=message) as error:
        load_task_configs(path)
    assert str(path) in str(error.value)


def test_load_configs_wrong_suffix(tmp_path):
    path = tmp_path / "tasks.txt"
    path.write_text("[]")

    with pytest.raises(DatasetError, match=r"\.yaml, \.yml or \.json"):
        load_task_configs(path)


def test_config_own_dataset(tmp_path):
    task_root = make_msd_task(tmp_path, "spleen", n_cases=1)

    config = msd_task_config(task_root)

    assert config.window_hu == (-160.0, 240.0)
    assert np.array_equal(config.class_lookup(), [0, 1])
