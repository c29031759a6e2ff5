"""The transfer benchmark: initialisations, budgets, the reduced run, reuse of finished runs, the report."""

import csv
import json
import logging
import math
import statistics
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from msd_fixtures import make_msd_task
from safetensors.torch import save_file

from hydranet_hub.cli.transfer import main, resolve_config
from hydranet_hub.finetune import FinetuneConfig
from hydranet_hub.finetune.transfer import (
    Initialisation, TransferConfig, TransferRun, find_imagenet_weights, plan_budgets, run_transfer_benchmark,
)
from hydranet_hub.finetune.transfer_report import summarise

torch.set_num_threads(1)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return make_msd_task(tmp_path_factory.mktemp("msd"), "heart", n_cases=4, shape=(32, 32, 6), seed=5)


def _resnet34_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    state = smp.encoders.get_encoder("resnet34", weights=None).state_dict()
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def hydranet_file(tmp_path_factory):
    return _resnet34_file(tmp_path_factory.mktemp("weights") / "model.safetensors", seed=7)


def _imagenet_in_cache(hf_env) -> Path:
    settings = smp.encoders.encoders["resnet34"]["pretrained_settings"]["imagenet"]
    folder = (Path(hf_env["HF_HUB_CACHE"]) / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots"
              / settings["revision"])
    folder.mkdir(parents=True)
    return _resnet34_file(folder / "model.safetensors", seed=8)


def _benchmark(task_dir, hydranet_file, output_dir, **overrides):
    base = FinetuneConfig(task=str(task_dir), val_fraction=0.25, num_workers=0)
    settings = dict(base=base, hydranet_weights=str(hydranet_file), output_dir=str(output_dir))
    settings.update(overrides)
    return TransferConfig(**settings)


def test_imagenet_unavailable_without_cache(hf_env):
    found = find_imagenet_weights("auto", "resnet34")

    assert not found.available
    assert found.encoder_weights is None
    assert "not in the local Hugging Face cache" in found.source


def test_imagenet_found_in_cache(hf_env):
    path = _imagenet_in_cache(hf_env)

    found = find_imagenet_weights("auto", "resnet34")

    assert found.available
    assert Path(found.encoder_weights).resolve() == path.resolve()


def test_imagenet_missing_path_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_imagenet_weights(str(tmp_path / "absent.safetensors"), "resnet34")


def test_budgets_planned_against_split():
    assert plan_budgets([4, 1, None, 2, 9], available=3) == (1, 2, 3)
    with pytest.raises(ValueError, match="No budget"):
        plan_budgets([5], available=3)


def test_benchmark_needs_hydranet_encoder(task_dir, hydranet_file, tmp_path):
    with pytest.raises(ValueError, match="base.encoder"):
        _benchmark(task_dir, hydranet_file, tmp_path, base=FinetuneConfig(task=str(task_dir), encoder="resnet34"))


def test_summary_mean_std_and_gain():
    initialisations = [Initialisation("scratch", None, True, ""), Initialisation("imagenet", None, False, ""),
                       Initialisation("hydranet", "w", True, "")]
    scores = {("scratch", 0): 0.40, ("scratch", 1): 0.50, ("hydranet", 0): 0.60, ("hydranet", 1): 0.64}
    runs = [TransferRun("T", name, 2, seed, dice) for (name, seed), dice in scores.items()]
    runs.append(TransferRun("T", "hydranet", 3, 0, 0.7))

    rows = {(row.initialisation, row.budget_cases): row for row in summarise(runs, initialisations, (2, 3), 3)}

    scratch_mean = statistics.fmean([0.40, 0.50])
    hydranet_mean = statistics.fmean([0.60, 0.64])
    assert rows["scratch", 2].dice_mean == pytest.approx(scratch_mean)
    assert rows["scratch", 2].dice_std == pytest.approx(statistics.stdev([0.40, 0.50]))
    assert rows["scratch", 2].gain_vs_scratch is None
    assert rows["hydranet", 2].gain_vs_scratch == pytest.approx((hydranet_mean - scratch_mean) / scratch_mean)
    assert math.isnan(rows["hydranet", 3].dice_std)
    assert rows["hydranet", 3].gain_vs_scratch is None
    assert rows["hydranet", 3].all_cases
    assert ("imagenet", 2) not in rows


def test_reduced_benchmark_writes_report(task_dir, hydranet_file, tmp_path, hf_env):
    _imagenet_in_cache(hf_env)
    config = _benchmark(task_dir, hydranet_file, tmp_path, budgets=(2, 1, None), seeds=(3, 4)).reduced()

    report = run_transfer_benchmark(config)

    assert config.budgets == (1,)
    assert config.seeds == (3,)
    assert [(run.initialisation, run.budget_cases, run.seed) for run in report.runs] == [
        ("scratch", 1, 3), ("imagenet", 1, 3), ("hydranet", 1, 3),
    ]
    assert all(len(run.train_cases) == 1 for run in report.runs)
    assert all(run.val_cases == report.val_cases for run in report.runs)
    assert len(report.val_cases) == 1
    for run in report.runs:
        assert 0.0 <= run.dice_mean <= 1.0
        assert not (Path(run.output_dir) / "checkpoints").exists()
        assert not (Path(run.output_dir) / "model").exists()

    table = report.markdown_path.read_text()
    assert "| labelled cases | scratch | imagenet | hydranet | HydraNet vs scratch |" in table
    assert report.plot_path.read_bytes().startswith(PNG_SIGNATURE)
    document = json.loads(report.json_path.read_text())
    assert document["val_cases"] == list(report.val_cases)
    assert [row["initialisation"] for row in document["summary"]] == ["scratch", "imagenet", "hydranet"]
    with open(report.summary_csv_path, newline="") as handle:
        summary = list(csv.DictReader(handle))
    hydranet_row = report.row("hydranet", 1)
    assert float(summary[2]["dice_mean"]) == pytest.approx(hydranet_row.dice_mean, rel=1e-5)
    expected_gain = (hydranet_row.dice_mean - report.row("scratch", 1).dice_mean) / report.row("scratch", 1).dice_mean
    assert hydranet_row.gain_vs_scratch == pytest.approx(expected_gain)


def test_rerun_reuses_finished_runs(task_dir, hydranet_file, tmp_path, hf_env, caplog):
    config = _benchmark(task_dir, hydranet_file, tmp_path, imagenet_weights=None).reduced()
    first = run_transfer_benchmark(config)
    stamps = [(Path(run.output_dir) / "result.json").stat().st_mtime_ns for run in first.runs]

    with caplog.at_level(logging.INFO, logger="hydranet_hub.finetune.transfer"):
        second = run_transfer_benchmark(config)

    assert [(Path(run.output_dir) / "result.json").stat().st_mtime_ns for run in second.runs] == stamps
    assert caplog.text.count("Reusing the finished run") == 2
    assert [run.dice_mean for run in second.runs] == [run.dice_mean for run in first.runs]
    assert "not requested" in second.markdown_path.read_text()


def test_rerun_with_other_settings_rejected(task_dir, hydranet_file, tmp_path, hf_env):
    config = _benchmark(task_dir, hydranet_file, tmp_path, imagenet_weights=None).reduced()
    run_transfer_benchmark(config)
    changed = TransferConfig(**{**config.__dict__, "base": config.base.replace(lr=1e-4)})

    with pytest.raises(ValueError, match="other settings"):
        run_transfer_benchmark(changed)


def test_cli_reduced_mode(task_dir, hydranet_file, tmp_path, hf_env, capsys):
    status = main(["--reduced", "--task", str(task_dir), "--val-fraction", "0.25", "--num-workers", "0",
                   "--hydranet-weights", str(hydranet_file), "--output-dir", str(tmp_path), "--log-level", "WARNING"])

    output = capsys.readouterr().out
    assert status == 0
    assert "| 1 |" in output
    assert "unavailable" in output
    assert (tmp_path / "transfer.png").is_file()
    assert (tmp_path / "runs" / "hydranet" / "cases-001" / "seed-0" / "result.json").is_file()


def test_cli_requires_hydranet_weights(task_dir, tmp_path, capsys):
    status = main(["--task", str(task_dir), "--output-dir", str(tmp_path)])

    assert status == 2
    assert "--hydranet-weights" in capsys.readouterr().err


def test_cli_full_mode_settings(task_dir, hydranet_file, tmp_path):
    config, _ = resolve_config([
        "--task", str(task_dir), "--hydranet-weights", str(hydranet_file), "--budgets", "1", "all",
        "--seeds", "0", "1", "2", "--steps", "7", "--output-dir", str(tmp_path / "bench"),
    ])

    assert config.seeds == (0, 1, 2)
    assert config.budgets == (1, None)
    assert config.base.steps == 7
