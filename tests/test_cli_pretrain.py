"""The hydranet-pretrain command line: help, settings precedence, errors and a real short run."""

import dataclasses
import json

import pytest
import torch
from msd_fixtures import make_msd_task

from hydranet_hub.cli.pretrain import main, resolve_config
from hydranet_hub.training.config import DEMO_SETTINGS, PretrainConfig

torch.set_num_threads(1)


def _flag(field_name: str) -> str:
    return "--task" if field_name == "tasks" else "--" + field_name.replace("_", "-")


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    text = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0
    for field in dataclasses.fields(PretrainConfig):
        assert _flag(field.name) in text, field.name
    assert f"(default: 20000; with --demo: {DEMO_SETTINGS['steps']})" in text
    assert "(default: 3)" in text
    assert "--config FILE" in text


def test_config_file_then_flag_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 12\nlr: 0.01\nslice_size: [64, 64]\nlabel-mode: merge\n")

    config, _ = resolve_config(["--config", str(path), "--steps", "3", "--slice-size", "96"])

    assert config.steps == 3
    assert config.lr == 0.01
    assert config.label_mode == "merge"
    assert config.slice_size == (96, 96)


def test_json_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"batch_size_per_task": 5, "task_weights": {"Task02_Heart": 2}}))

    config, _ = resolve_config(["--config", str(path), "--task-weights", "Task03_Liver=0.5"])

    assert config.batch_size_per_task == 5
    assert config.task_weights == {"Task03_Liver": 0.5}


def test_demo_settings_yield_to_flags():
    config, _ = resolve_config(["--demo", "--steps", "7"])

    assert config.demo is True
    assert config.slice_size == tuple(DEMO_SETTINGS["slice_size"])
    assert config.steps == 7


def test_unset_flags_keep_defaults():
    config, _ = resolve_config([])

    assert config == PretrainConfig()


def test_resume_reuses_saved_run_settings(tmp_path):
    saved = PretrainConfig(output_dir=str(tmp_path), steps=50, lr=0.02, stop_at_step=10).to_dict()
    (tmp_path / "run_config.json").write_text(json.dumps(saved))

    config, _ = resolve_config(["--output-dir", str(tmp_path), "--resume", "--lr", "0.03"])

    assert config.resume == "latest"
    assert config.steps == 50
    assert config.lr == 0.03
    assert config.stop_at_step is None


def test_invalid_value_exits_2(capsys):
    status = main(["--steps", "0"])

    assert status == 2
    assert "steps=0" in capsys.readouterr().err


def test_malformed_task_weight_exits(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--task-weights", "Task02_Heart"])

    assert exited.value.code == 2
    assert "TASK=WEIGHT" in capsys.readouterr().err


def test_no_task_selected_exits_1(tmp_path, capsys):
    status = main(["--output-dir", str(tmp_path / "run"), "--steps", "1"])

    assert status == 1
    assert "--demo" in capsys.readouterr().err


def test_cli_run_prints_smp_line(tmp_path, capsys):
    make_msd_task(tmp_path / "data", "heart", n_cases=3, shape=(32, 32, 6))
    make_msd_task(tmp_path / "data", "hippocampus", n_cases=3, shape=(32, 32, 6), seed=1)

    status = main([
        "--data-root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"), "--slice-size", "32",
        "--decoder-channels", "32", "16", "16", "8", "8", "--steps", "2", "--batch-size-per-task", "2",
        "--val-fraction", "0.34", "--num-workers", "0", "--log-level", "WARNING",
    ])

    out = capsys.readouterr().out
    weights = (tmp_path / "run" / "export" / "model.safetensors").resolve()
    assert status == 0
    assert weights.is_file()
    assert f'smp.Unet(encoder_name="hydranet", encoder_weights="{weights}")' in out
    assert "Task04_Hippocampus: validation mean Dice" in out
