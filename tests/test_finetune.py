"""Real fine-tuning runs on MSD-format fixtures: Dice, resume, freezing, budgets, the saved model folder."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from msd_fixtures import make_msd_task

from hydranet_hub.cli.predict import main as predict_main
from hydranet_hub.data import select_case_budget
from hydranet_hub.finetune import RESULT_NAME, FinetuneConfig, finetune
from hydranet_hub.inference import InferencePreprocessing, load_model_folder
from hydranet_hub.training import load_checkpoint
from hydranet_hub.training.checkpoint import list_checkpoints
from hydranet_hub.training.run_log import read_metrics

torch.set_num_threads(1)

SMALL_DECODER = {"decoder_channels": (32, 16, 16, 8, 8)}


@pytest.fixture(scope="module")
def heart_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd")
    return make_msd_task(root, "heart", n_cases=6, shape=(32, 32, 6), seed=0)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _config(heart_task, shared_cache, output_dir, **overrides):
    settings = dict(
        task=str(heart_task), encoder="tu-resnet10t", encoder_weights=None, model_kwargs=SMALL_DECODER,
        slice_size=(32, 32), steps=6, batch_size=4, warmup_steps=1, lr=3e-3, val_fraction=0.34,
        val_every=3, checkpoint_every=3, log_every=1, num_workers=0, cache_dir=str(shared_cache),
        output_dir=str(output_dir), save_model=False,
    )
    settings.update(overrides)
    return FinetuneConfig(**settings)


def _encoder_tensors(state, prefix="net.encoder."):
    return {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}


def _small_unet(in_channels=3, classes=2, seed=0):
    torch.manual_seed(seed)
    return smp.Unet("tu-resnet10t", encoder_weights=None, in_channels=in_channels, classes=classes, **SMALL_DECODER)


def test_finetune_raises_dice(heart_task, shared_cache, tmp_path):
    config = _config(heart_task, shared_cache, tmp_path, steps=30, augment=False, val_every=0,
                     checkpoint_every=0, val_at_start=True)

    result = finetune(config)

    assert result.finished
    assert result.step == 30
    assert set(result.metrics) == {"dice/left atrium", "dice/mean"}
    assert 0.0 <= result.initial_metrics["dice/mean"] <= 1.0
    assert result.dice_mean > result.initial_metrics["dice/mean"] + 0.2
    val_rows = [(step, name) for step, split, name, _ in read_metrics(tmp_path / "metrics.csv") if split == "val"]
    assert (0, "dice/mean/Task02_Heart") in val_rows


def test_validation_cases_held_out(heart_task, shared_cache, tmp_path):
    result = finetune(_config(heart_task, shared_cache, tmp_path, steps=1))

    assert len(result.val_cases) == 2
    assert len(result.train_cases) == 4
    assert not set(result.val_cases) & set(result.train_cases)
    assert result.num_val_slices == 2 * 6


def test_split_fixed_across_seeds(heart_task, shared_cache, tmp_path):
    first = finetune(_config(heart_task, shared_cache, tmp_path / "a", steps=1, seed=1))
    second = finetune(_config(heart_task, shared_cache, tmp_path / "b", steps=1, seed=2))

    assert first.val_cases == second.val_cases


def test_case_budget_selects_cases(heart_task, shared_cache, tmp_path):
    full = finetune(_config(heart_task, shared_cache, tmp_path / "all", steps=1, seed=3))
    two = finetune(_config(heart_task, shared_cache, tmp_path / "two", steps=1, seed=3, train_cases=2))
    three = finetune(_config(heart_task, shared_cache, tmp_path / "three", steps=1, seed=3, train_cases=3))

    assert len(two.train_cases) == 2
    assert len(three.train_cases) == 3
    assert set(two.train_cases) <= set(three.train_cases)
    assert two.train_cases == select_case_budget(full.train_cases, 2, 3, "Task02_Heart")
    assert two.num_train_slices == 2 * 6
    assert two.val_cases == full.val_cases


def test_budget_larger_than_split_rejected(heart_task, shared_cache, tmp_path):
    with pytest.raises(ValueError, match="train_cases=9 is invalid"):
        finetune(_config(heart_task, shared_cache, tmp_path, steps=1, train_cases=9))


def test_slice_fraction_selects_slices(heart_task, shared_cache, tmp_path):
    full = finetune(_config(heart_task, shared_cache, tmp_path / "all", steps=1))
    half = finetune(_config(heart_task, shared_cache, tmp_path / "half", steps=1, train_cases=2, slice_fraction=0.5))
    quarter = finetune(_config(heart_task, shared_cache, tmp_path / "quarter", steps=1, train_cases=2,
                               slice_fraction=0.25))

    budget = select_case_budget(full.train_cases, 2, 0, "Task02_Heart")
    assert half.num_train_slices == 6
    assert quarter.num_train_slices == 3
    assert set(half.train_cases) <= set(budget)
    assert set(quarter.train_cases) <= set(half.train_cases)


def test_resume_matches_uninterrupted(heart_task, shared_cache, tmp_path):
    transfer = dict(freeze_encoder_steps=4, encoder_lr_mult=0.5)
    straight = finetune(_config(heart_task, shared_cache, tmp_path / "straight", **transfer))
    first_half = finetune(_config(heart_task, shared_cache, tmp_path / "split", stop_at_step=3, **transfer))
    resumed = finetune(_config(heart_task, shared_cache, tmp_path / "split", resume="latest", **transfer))

    assert not first_half.finished
    assert first_half.step == 3
    assert resumed.finished
    assert resumed.step == 6
    expected = straight.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert resumed.metrics == straight.metrics


def test_encoder_frozen_then_trains(heart_task, shared_cache, tmp_path):
    model = _small_unet()
    initial = {name: tensor.clone() for name, tensor in model.encoder.state_dict().items()}
    initial_decoder = {name: tensor.clone() for name, tensor in model.decoder.state_dict().items()}
    config = _config(heart_task, shared_cache, tmp_path, steps=5, freeze_encoder_steps=3, checkpoint_every=1,
                     keep_checkpoints=0, val_every=0)

    finetune(config, model=model)

    states = {step: load_checkpoint(path)["model"] for step, path in list_checkpoints(tmp_path)}
    assert sorted(states) == [1, 2, 3, 4, 5]
    for step in (1, 2, 3):
        encoder = _encoder_tensors(states[step])
        for name, tensor in initial.items():
            assert torch.equal(encoder[name], tensor), f"encoder {name} changed at step {step}"
        decoder = _encoder_tensors(states[step], prefix="net.decoder.")
        assert any(not torch.equal(decoder[name], tensor) for name, tensor in initial_decoder.items())
    changed = [name for name, tensor in initial.items() if not torch.equal(_encoder_tensors(states[4])[name], tensor)]
    assert any(name.endswith("weight") for name in changed)


def test_encoder_lr_multiplier_groups(heart_task, shared_cache, tmp_path):
    model = _small_unet()
    config = _config(heart_task, shared_cache, tmp_path, steps=1, encoder_lr_mult=0.1, lr=1e-3, warmup_steps=0)
    encoder_ids = {id(parameter) for parameter in model.encoder.parameters()}
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    finetune(config, model=model)

    state = load_checkpoint(list_checkpoints(tmp_path)[-1][1])
    groups = state["optimizer"]["param_groups"]
    assert [group["initial_lr"] for group in groups] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert sum(len(group["params"]) for group in groups[2:]) == len(encoder_ids)
    assert any(not torch.equal(model.state_dict()[name], before[name]) for name in before if "encoder" in name)


def test_given_model_channels_checked(heart_task, shared_cache, tmp_path):
    with pytest.raises(ValueError, match="in_channels=1"):
        finetune(_config(heart_task, shared_cache, tmp_path, steps=1), model=_small_unet(in_channels=1))


def test_saved_folder_loads_and_predicts(heart_task, shared_cache, tmp_path):
    config = _config(heart_task, shared_cache, tmp_path / "run", steps=3, save_model=True)

    result = finetune(config)

    folder = result.model_dir
    assert folder == tmp_path / "run" / "model"
    assert json.loads((folder / "config.json").read_text())["encoder_weights"] is None
    preprocessing = InferencePreprocessing.load(folder)
    assert preprocessing.task == "Task02_Heart"
    assert preprocessing.slice_size == (32, 32)
    assert preprocessing.in_channels == 3
    assert preprocessing.label_names == ("background", "left atrium")

    loaded = smp.from_pretrained(str(folder))
    loaded.eval()
    trained = result.model.cpu().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), trained(images))
    assert isinstance(load_model_folder(folder).model, smp.Unet)

    scan = heart_task / "imagesTr" / "la_000.nii.gz"
    status = predict_main(["--model", str(folder), "--input", str(scan), "--output", str(tmp_path / "out"), "--quiet"])

    assert status == 0
    labels = nib.load(str(tmp_path / "out" / "la_000.nii.gz"))
    assert labels.shape == nib.load(str(scan)).shape
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1}


def test_result_file_written(heart_task, shared_cache, tmp_path):
    result = finetune(_config(heart_task, shared_cache, tmp_path, steps=2))

    document = json.loads((tmp_path / RESULT_NAME).read_text())
    assert document["step"] == 2
    assert document["val_cases"] == list(result.val_cases)
    assert document["config"]["encoder"] == "tu-resnet10t"
    assert math.isclose(document["metrics"]["dice/mean"], result.dice_mean)


@pytest.mark.parametrize("arch", ["FPN", "Linknet", "DeepLabV3Plus"])
def test_other_architectures_train(heart_task, shared_cache, tmp_path, arch):
    result = finetune(_config(heart_task, shared_cache, tmp_path, steps=2, arch=arch, encoder="resnet18",
                              model_kwargs={}, save_model=True))

    assert type(result.model).__name__ == arch
    assert 0.0 <= result.dice_mean <= 1.0
    assert type(smp.from_pretrained(str(result.model_dir))).__name__ == arch


def test_given_model_classes_checked(heart_task, shared_cache, tmp_path):
    with pytest.raises(ValueError, match="build it with classes=2"):
        finetune(_config(heart_task, shared_cache, tmp_path, steps=1), model=_small_unet(classes=4))
