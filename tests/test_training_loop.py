"""Real short training runs on MSD-format fixtures: loss, resume, checkpoints, outputs, export."""

import json
import os

import pytest
import segmentation_models_pytorch as smp
import torch
from msd_fixtures import make_msd_task

from hydranet_hub.export import read_config
from hydranet_hub.training import CheckpointError, PretrainConfig, RunLockedError, load_checkpoint, pretrain
from hydranet_hub.training.run_lock import LOCK_NAME
from hydranet_hub.training.run_log import read_metrics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_msd(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd")
    make_msd_task(root, "heart", n_cases=4, shape=(32, 32, 6), seed=0)
    make_msd_task(root, "liver", n_cases=4, shape=(32, 32, 6), seed=1)
    return root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _config(tiny_msd, shared_cache, output_dir, **overrides):
    settings = dict(
        data_root=str(tiny_msd), cache_dir=str(shared_cache), output_dir=str(output_dir), encoder="resnet18",
        slice_size=(32, 32), decoder_channels=(32, 16, 16, 8, 8), batch_size_per_task=2, steps=6,
        lr=3e-3, warmup_steps=1, val_fraction=0.25, val_every=3, checkpoint_every=3, log_every=1,
        num_workers=0, export=False,
    )
    settings.update(overrides)
    return PretrainConfig(**settings)


def _train_losses(output_dir):
    return [value for step, split, name, value in read_metrics(output_dir / "metrics.csv")
            if split == "train" and name == "loss"]


def test_training_loss_falls(tiny_msd, shared_cache, tmp_path):
    config = _config(tiny_msd, shared_cache, tmp_path, steps=30, augment=False, val_every=0, checkpoint_every=0)

    result = pretrain(config)

    losses = _train_losses(tmp_path)
    assert result.step == 30
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_resume_matches_uninterrupted(tiny_msd, shared_cache, tmp_path):
    straight = pretrain(_config(tiny_msd, shared_cache, tmp_path / "straight"))
    first_half = pretrain(_config(tiny_msd, shared_cache, tmp_path / "split", stop_at_step=3))
    resumed = pretrain(_config(tiny_msd, shared_cache, tmp_path / "split", resume="latest"))

    assert first_half.step == 3
    assert not first_half.finished
    assert resumed.step == 6
    assert resumed.finished
    expected = straight.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert resumed.metrics == straight.metrics
    assert _train_losses(tmp_path / "split") == pytest.approx(_train_losses(tmp_path / "straight"))


def test_resume_rejects_corrupted_checkpoint(tiny_msd, shared_cache, tmp_path):
    first = pretrain(_config(tiny_msd, shared_cache, tmp_path, stop_at_step=3))
    data = bytearray(first.checkpoint_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.checkpoint_path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError) as caught:
        pretrain(_config(tiny_msd, shared_cache, tmp_path, resume="latest"))

    assert str(first.checkpoint_path) in str(caught.value)
    assert not (tmp_path / LOCK_NAME).exists()


def test_resume_rejects_other_tasks(tiny_msd, shared_cache, tmp_path):
    pretrain(_config(tiny_msd, shared_cache, tmp_path, stop_at_step=3))

    with pytest.raises(CheckpointError, match="tasks"):
        pretrain(_config(tiny_msd, shared_cache, tmp_path, resume="latest", tasks=("Task02_Heart",)))


def test_checkpoint_holds_full_state(tiny_msd, shared_cache, tmp_path):
    result = pretrain(_config(tiny_msd, shared_cache, tmp_path, steps=3))

    state = load_checkpoint(result.checkpoint_path)

    assert state["step"] == 3
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "data", "config"}
    assert state["scheduler"]["last_epoch"] == 3
    assert state["data"]["next_step"] == 3
    assert len(state["rng"]) == 1


def test_run_writes_logs_previews_and_export(tiny_msd, shared_cache, tmp_path):
    result = pretrain(_config(tiny_msd, shared_cache, tmp_path, steps=4, val_every=2, export=True, encoder="hydranet"))

    names = {name for _, split, name, _ in read_metrics(tmp_path / "metrics.csv") if split == "val"}
    assert "dice/mean/Task02_Heart" in names
    assert "dice/cancer/Task03_Liver" in names
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert (tmp_path / "tensorboard").is_dir()
    assert json.loads((tmp_path / "run_config.json").read_text())["steps"] == 4

    config = read_config(result.export.config_path)
    assert [task["name"] for task in config["hydranet"]["tasks"]] == ["Task02_Heart", "Task03_Liver"]
    assert config["hydranet"]["training"]["steps"] == 4
    model = smp.Unet(encoder_name="hydranet", encoder_weights=str(result.export.weights_path), classes=2)
    torch.testing.assert_close(model.encoder.conv1.weight, result.model.encoder.conv1.weight)


def test_second_run_on_locked_folder_raises(tiny_msd, shared_cache, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))

    with pytest.raises(RunLockedError, match=str(os.getpid())):
        pretrain(_config(tiny_msd, shared_cache, tmp_path, steps=1))

    assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / "checkpoints").exists()


def test_new_run_in_used_folder_raises(tiny_msd, shared_cache, tmp_path):
    pretrain(_config(tiny_msd, shared_cache, tmp_path, steps=1))

    with pytest.raises(ValueError, match="--resume"):
        pretrain(_config(tiny_msd, shared_cache, tmp_path, steps=1))
    assert not (tmp_path / LOCK_NAME).exists()


def test_unknown_task_weight_rejected(tiny_msd, shared_cache, tmp_path):
    with pytest.raises(ValueError, match="Task99_None"):
        pretrain(_config(tiny_msd, shared_cache, tmp_path, task_weights={"Task99_None": 1.0}))


def test_multimodal_task_needs_one_modality_for_export(tmp_path, shared_cache):
    make_msd_task(tmp_path / "data", "prostate", n_cases=3, shape=(32, 32, 6))
    config = PretrainConfig(data_root=str(tmp_path / "data"), modalities=(0, 1), cache_dir=str(tmp_path / "cache"),
                            output_dir=str(tmp_path / "run"), slice_size=(32, 32), steps=1, export=True)

    with pytest.raises(ValueError, match="--modalities"):
        pretrain(config)


def test_push_to_hub_uploads_export(tiny_msd, shared_cache, tmp_path, hub_server, hf_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    config = _config(tiny_msd, shared_cache, tmp_path, steps=2, export=True, encoder="hydranet",
                     push_to_hub="lab/hydranet-test")

    result = pretrain(config)

    assert result.push.repo_id == "lab/hydranet-test"
    assert result.push.commit_sha == hub_server.commit_sha("lab/hydranet-test")
    uploaded = hub_server.file_bytes("lab/hydranet-test", "model.safetensors")
    assert uploaded == result.export.weights_path.read_bytes()


def test_bf16_channels_last_run_on_cpu(tiny_msd, shared_cache, tmp_path):
    result = pretrain(_config(tiny_msd, shared_cache, tmp_path, steps=2, amp="bf16", channels_last=True))

    losses = _train_losses(tmp_path)
    assert result.finished
    assert len(losses) == 2
    assert all(loss == loss and loss < 1e3 for loss in losses)
    assert result.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
