"""Task selection: --data-root, --task, --tasks-config, --label-mode, --modalities, --demo."""

import pytest
from msd_fixtures import make_msd_task

from hydranet_hub.demo import DEMO_PRETRAIN_TASKS
from hydranet_hub.training.config import PretrainConfig
from hydranet_hub.training.task_data import resolve_task_configs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd")
    for seed, kind in enumerate(("heart", "liver", "brain_tumour")):
        make_msd_task(root, kind, n_cases=2, shape=(24, 24, 4), seed=seed)
    return root


def _names(config):
    return [task.name for task in resolve_task_configs(config)]


def test_data_root_selects_every_task(data_root):
    assert _names(PretrainConfig(data_root=str(data_root))) == [
        "Task01_BrainTumour", "Task02_Heart", "Task03_Liver",
    ]


def test_task_by_name_and_by_path(data_root):
    config = PretrainConfig(data_root=str(data_root), tasks=("Task03_Liver", str(data_root / "Task02_Heart")))

    assert _names(config) == ["Task03_Liver", "Task02_Heart"]


def test_missing_task_named_in_error(data_root):
    with pytest.raises(ValueError, match="Task09_Spleen"):
        resolve_task_configs(PretrainConfig(data_root=str(data_root), tasks=("Task09_Spleen",)))


def test_tasks_config_adds_tasks(data_root, tmp_path):
    listing = tmp_path / "tasks.yaml"
    listing.write_text(f"data_root: {data_root}\ntasks:\n  - name: Task03_Liver\n    window_hu: [-50, 200]\n")

    tasks = resolve_task_configs(PretrainConfig(data_root=str(data_root), tasks=("Task02_Heart",),
                                                tasks_config=str(listing)))

    assert [task.name for task in tasks] == ["Task02_Heart", "Task03_Liver"]
    assert tasks[1].window_hu == (-50.0, 200.0)


def test_task_selected_twice_rejected(data_root, tmp_path):
    listing = tmp_path / "tasks.yaml"
    listing.write_text(f"data_root: {data_root}\ntasks:\n  - name: Task02_Heart\n")

    with pytest.raises(ValueError, match="Task02_Heart"):
        resolve_task_configs(PretrainConfig(data_root=str(data_root), tasks=("Task02_Heart",),
                                            tasks_config=str(listing)))


def test_label_mode_merge_gives_two_classes(data_root):
    (liver,) = resolve_task_configs(PretrainConfig(data_root=str(data_root), tasks=("Task03_Liver",),
                                                   label_mode="merge"))

    assert liver.num_classes == 2


def test_first_modality_by_default(data_root):
    (brain,) = resolve_task_configs(PretrainConfig(data_root=str(data_root), tasks=("Task01_BrainTumour",)))

    assert brain.modalities == (0,)
    assert brain.in_channels(1) == 3


def test_channel_count_mismatch_rejected(data_root, tmp_path):
    listing = tmp_path / "tasks.yaml"
    listing.write_text(f"data_root: {data_root}\ntasks:\n  - name: Task01_BrainTumour\n    modalities: [0, 1]\n")

    with pytest.raises(ValueError, match="channel counts"):
        resolve_task_configs(PretrainConfig(data_root=str(data_root), tasks=("Task02_Heart",),
                                            tasks_config=str(listing)))


def test_no_task_selected_rejected():
    with pytest.raises(ValueError, match="--demo"):
        resolve_task_configs(PretrainConfig())


def test_demo_selects_pretrain_tasks():
    assert _names(PretrainConfig(demo=True)) == list(DEMO_PRETRAIN_TASKS)
