"""`hydranet-finetune` through `main([...])`: settings, outputs, resume and errors."""

import json

import pytest
import torch
from msd_fixtures import make_msd_task

from hydranet_hub.cli.finetune import main, resolve_config
from hydranet_hub.finetune import DEMO_SETTINGS

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return make_msd_task(tmp_path_factory.mktemp("msd"), "heart", n_cases=4, shape=(32, 32, 6), seed=2)


def _args(task_dir, output_dir, *extra):
    settings = output_dir.parent / f"{output_dir.name}-settings.json"
    settings.write_text(json.dumps({"model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]}, "num_workers": 0}))
    return ["--task", str(task_dir), "--encoder", "tu-resnet10t", "--encoder-weights", "none",
            "--slice-size", "32", "--steps", "4", "--batch-size", "2", "--warmup-steps", "1",
            "--val-every", "0", "--checkpoint-every", "2", "--config", str(settings),
            "--output-dir", str(output_dir), "--log-level", "WARNING", *extra]


def test_cli_trains_and_saves(task_dir, tmp_path, capsys):
    status = main(_args(task_dir, tmp_path / "run", "--train-cases", "2"))

    output = capsys.readouterr().out
    assert status == 0
    assert "validation dice/mean" in output
    assert "hydranet-predict --model" in output
    assert (tmp_path / "run" / "model" / "preprocessing.json").is_file()
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["train_cases"] == 2
    assert saved["encoder_weights"] is None
    assert saved["model_kwargs"] == {"decoder_channels": [32, 16, 16, 8, 8]}


def test_cli_resume_continues(task_dir, tmp_path, capsys):
    assert main(_args(task_dir, tmp_path / "run", "--stop-at-step", "2", "--no-save-model")) == 0
    assert "--resume" in capsys.readouterr().out

    status = main(["--output-dir", str(tmp_path / "run"), "--resume", "--log-level", "WARNING"])

    assert status == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["step"] == 4
    assert result["finished"] is True
    assert result["model_dir"] is None


def test_cli_rejects_existing_run(task_dir, tmp_path, capsys):
    assert main(_args(task_dir, tmp_path / "run", "--steps", "2")) == 0

    status = main(_args(task_dir, tmp_path / "run", "--steps", "2"))

    assert status == 1
    assert "--resume" in capsys.readouterr().err


def test_cli_invalid_setting_exit_code(task_dir, tmp_path, capsys):
    status = main(_args(task_dir, tmp_path / "run", "--slice-fraction", "2"))

    assert status == 2
    assert "slice_fraction=2.0" in capsys.readouterr().err


def test_demo_flag_settings():
    config, _ = resolve_config(["--demo", "--steps", "3", "--encoder-weights", "none", "--train-cases", "all"])

    assert config.demo
    assert config.steps == 3
    assert config.encoder_weights is None
    assert config.train_cases is None
    assert config.slice_size == DEMO_SETTINGS["slice_size"]
