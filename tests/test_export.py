"""Tests of hydranet_hub.export: weights, config.json, model card, atomic writes and Hub upload."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import ModelCard, hf_hub_download
from safetensors import safe_open
from safetensors.torch import load_file

import hydranet_hub  # noqa: F401  (registers the "hydranet" encoder in smp)
from hydranet_hub.errors import ChecksumMismatchError
from hydranet_hub.export import (
    CARD_NAME,
    CONFIG_NAME,
    DEMO_SOURCE,
    EXPORT_FILES,
    WEIGHTS_NAME,
    ConfigError,
    ExportError,
    ExportExistsError,
    PushError,
    TaskSummary,
    export_encoder,
    find_card_template,
    push_to_hub,
    read_config,
    validate_export,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "mylab/hydranet-resnet34"

TASKS = (
    TaskSummary("Task02_Heart", "MRI", ("background", "left atrium"), 16),
    TaskSummary("Task03_Liver", "CT", ("background", "liver", "tumour"), 104),
)
METRICS = {
    "Task02_Heart": {"left atrium": 0.9123, "mean": 0.9123},
    "Task03_Liver": {"liver": 0.951, "tumour": 0.487, "mean": 0.719},
}
TRAINING = {
    "steps": 40,
    "batch_size_per_task": 4,
    "seed": 0,
    "lr": 0.001,
    "amp": "none",
    "world_size": 1,
    "wall_time_s": 12.5,
}
NORMALIZATION = {"window_hu": {"Task03_Liver": (-100, 250)}}


def _encoder_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """State dict of smp's resnet34 encoder with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    encoder = smp.encoders.get_encoder("resnet34", weights=None)
    state = encoder.state_dict()
    for name, tensor in state.items():
        if name.endswith("running_mean"):
            tensor.normal_()
        elif name.endswith("running_var"):
            tensor.uniform_(0.5, 2.0)
        elif name.endswith("num_batches_tracked"):
            tensor.fill_(seed + 7)
    return state


def _export(state: dict, out_dir: Path, **overrides):
    arguments = dict(
        slice_size=(64, 64),
        tasks=TASKS,
        metrics=METRICS,
        training=TRAINING,
        normalization=NORMALIZATION,
        repo_id=REPO_ID,
    )
    arguments.update(overrides)
    return export_encoder(state, out_dir, **arguments)


def _assert_same_tensors(loaded: dict, original: dict) -> None:
    assert sorted(loaded) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor), name


def _sibling_leftovers(out_dir: Path) -> list[str]:
    return [entry.name for entry in out_dir.parent.iterdir() if entry.name.startswith(f".{out_dir.name}.")]


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    return _encoder_state_dict(seed=1)


@pytest.fixture(scope="module")
def exported(state, tmp_path_factory):
    return _export(state, tmp_path_factory.mktemp("export") / "hydranet")


# --- model.safetensors --------------------------------------------------------------------------------------------


def test_weights_load_into_smp_encoder(exported, state):
    torch.manual_seed(99)
    encoder = smp.encoders.get_encoder("resnet34", weights=None)

    encoder.load_state_dict(load_file(exported.weights_path), strict=True)

    _assert_same_tensors(encoder.state_dict(), state)


def test_weights_load_into_timm_resnet34(exported, state):
    model = timm.create_model("resnet34", num_classes=0)

    model.load_state_dict(load_file(exported.weights_path), strict=True)

    _assert_same_tensors(model.state_dict(), state)


def test_weights_load_with_timm_file_overlay(exported, state):
    model = timm.create_model(
        "resnet34", num_classes=0, pretrained=True,
        pretrained_cfg_overlay={"file": str(exported.weights_path), "num_classes": 0},
    )

    _assert_same_tensors(model.state_dict(), state)


def test_weights_file_format(exported, state):
    with safe_open(str(exported.weights_path), framework="pt") as weights:
        assert weights.metadata() == {"format": "pt"}
        names = list(weights.keys())

    tensors = load_file(exported.weights_path)
    assert sorted(names) == sorted(state)
    assert not [name for name in names if name.startswith("fc.")]
    assert {tensors[name].dtype for name in names if state[name].is_floating_point()} == {torch.float32}
    assert tensors["bn1.num_batches_tracked"].dtype == torch.int64
    assert all(tensor.is_contiguous() for tensor in tensors.values())


def test_weights_half_precision_stored_as_float32(state, tmp_path):
    half = {name: t.to(torch.bfloat16) if t.is_floating_point() else t for name, t in state.items()}

    result = _export(half, tmp_path / "out")

    loaded = load_file(result.weights_path)
    assert loaded["conv1.weight"].dtype == torch.float32
    assert torch.equal(loaded["conv1.weight"], half["conv1.weight"].float())


def test_weights_sha256_matches_file(exported):
    assert exported.sha256 == hydranet_hub.hub.sha256_of_file(exported.weights_path)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: {f"module.{k}": v for k, v in s.items()}, "strip prefixes"),
        (lambda s: {**s, "fc.weight": torch.zeros(1000, 512)}, "unexpected"),
        (lambda s: {k: v for k, v in s.items() if k != "layer4.2.bn2.bias"}, "missing"),
        (lambda s: {**s, "conv1.weight": torch.zeros(64, 1, 7, 7)}, "other shapes"),
        (lambda s: {**s, "bn1.weight": torch.full((64,), float("nan"))}, "NaN"),
        (lambda s: {**s, "bn1.bias": [0.0] * 64}, "expected a torch.Tensor"),
        (lambda s: {}, "no tensors"),
    ],
)
def test_export_rejects_bad_state_dict(state, tmp_path, change, expected):
    with pytest.raises(ExportError, match=expected):
        _export(change(state), tmp_path / "out")

    assert not (tmp_path / "out").exists()


# --- config.json --------------------------------------------------------------------------------------------------


def test_config_passes_read_config(exported):
    config = read_config(exported.config_path)

    hydranet = config["hydranet"]
    assert hydranet["format_version"] == 1
    assert hydranet["architecture"] == "resnet34"
    assert hydranet["smp_encoder_name"] == "hydranet"
    assert hydranet["timm_model_name"] == "hydranet_resnet34"
    assert hydranet["in_channels"] == 3
    assert hydranet["context_slices"] == 1
    assert "z-1+i" in hydranet["channel_semantics"]
    assert hydranet["slice_size"] == [64, 64]
    assert hydranet["normalization"]["window_hu"] == {"Task03_Liver": [-100, 250]}
    assert set(hydranet["normalization"]) >= {"CT", "MRI"}
    assert [task["name"] for task in hydranet["tasks"]] == ["Task02_Heart", "Task03_Liver"]
    assert hydranet["tasks"][1]["classes"] == ["background", "liver", "tumour"]
    assert hydranet["tasks"][1]["num_training_cases"] == 104
    assert hydranet["metrics"] == METRICS
    assert hydranet["training"]["steps"] == 40
    assert hydranet["training"]["hydranet_hub_version"] == hydranet_hub.__version__


def test_config_has_smp_preprocessing_keys(exported):
    config = json.loads(exported.config_path.read_text())

    assert config["input_space"] == "RGB"
    assert config["input_range"] == [-5.0, 5.0]
    assert config["mean"] == [0.0, 0.0, 0.0]
    assert config["std"] == [1.0, 1.0, 1.0]


def test_config_read_by_smp_preprocessing(exported):
    params = smp.encoders.get_preprocessing_params("hydranet", pretrained=str(exported.weights_path))

    assert params == {"input_space": "RGB", "input_range": [-5.0, 5.0], "mean": [0.0] * 3, "std": [1.0] * 3}


def test_config_timm_local_dir_loads_weights(exported, state):
    model = timm.create_model(f"local-dir:{exported.dir}", pretrained=True)

    assert model.num_classes == 0
    _assert_same_tensors(model.state_dict(), state)


def test_smp_unet_loads_exported_weights(exported, state):
    model = smp.Unet(encoder_name="hydranet", encoder_weights=str(exported.weights_path), classes=2)

    _assert_same_tensors(model.encoder.state_dict(), state)


def _edit(config: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        config = config[int(key)] if isinstance(config, list) else config[key]
    if value is KeyError:
        del config[last]
    else:
        config[last] = value


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("hydranet", KeyError, "hydranet is missing"),
        ("hydranet.format_version", 2, "upgrade hydranet-hub"),
        ("hydranet.in_channels", 4, "2 \\* context_slices \\+ 1"),
        ("hydranet.slice_size", [64], "slice_size"),
        ("hydranet.tasks.0.modality", "PET", "modality"),
        ("hydranet.tasks.0.classes", ["background"], "classes"),
        ("hydranet.normalization.window_hu", {}, "CT task"),
        ("hydranet.metrics.Task02_Heart.mean", 1.5, "Dice score in \\[0, 1\\]"),
        ("hydranet.metrics.Task09_Spleen", {"mean": 0.9}, "names no task"),
        ("hydranet.metrics.Task02_Heart.spleen", 0.9, "not a foreground class"),
        ("mean", [0.0], "one per input channel"),
        ("input_range", [5.0, -5.0], "low < high"),
    ],
)
def test_read_config_rejects(exported, tmp_path, path, value, expected):
    config = json.loads(exported.config_path.read_text())
    _edit(config, path, value)
    broken = tmp_path / CONFIG_NAME
    broken.write_text(json.dumps(config))

    with pytest.raises(ConfigError, match=expected) as raised:
        read_config(broken)

    assert str(broken) in str(raised.value)


def test_read_config_rejects_invalid_json(tmp_path):
    broken = tmp_path / CONFIG_NAME
    broken.write_text("{not json")

    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config(broken)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"architecture": "resnet50"}, "not supported"),
        ({"in_channels": 5}, "context_slices"),
        ({"slice_size": (64, 0)}, "slice_size"),
        ({"tasks": [("Task02_Heart", "MRI")]}, "TaskSummary"),
        ({"training": {"lr": float("nan")}}, "cannot be written"),
        ({"normalization": {}}, "Task03_Liver"),
    ],
)
def test_export_rejects_bad_inputs(state, tmp_path, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        _export(state, tmp_path / "out", **overrides)

    assert not (tmp_path / "out").exists()


# --- model card ---------------------------------------------------------------------------------------------------


def test_card_model_index_has_dice(exported):
    card = ModelCard.load(exported.card_path)

    results = {result.dataset_name: result for result in card.data.eval_results}
    assert set(results) == set(METRICS)
    for task, dice in METRICS.items():
        assert results[task].metric_type == "dice"
        assert results[task].metric_value == dice["mean"]
        assert results[task].task_type == "image-segmentation"
        assert results[task].dataset_split == "validation"


def test_card_content(exported):
    text = exported.card_path.read_text()

    assert exported.sha256 in text
    assert f'encoder_weights="hf-hub:{REPO_ID}@<commit sha>"' in text
    assert "CC-BY-SA 4.0" in text
    assert "Not for clinical use" in text
    assert "| Task03_Liver | tumour | 0.4870 |" in text
    assert "| Task03_Liver | -100 | 250 |" in text
    assert "| steps | 40 |" in text


def test_card_metadata(exported):
    data = ModelCard.load(exported.card_path).data.to_dict()

    assert data["license"] == "cc-by-sa-4.0"
    assert data["weights_sha256"] == exported.sha256
    assert data["pipeline_tag"] == "image-segmentation"


def test_card_escapes_table_cells(state, tmp_path):
    tasks = (TaskSummary("Brain", "MRI", ("background", "left|right"), 3, source="Lab scans", license="other"),)

    result = _export(state, tmp_path / "out", tasks=tasks, metrics={}, normalization={})

    text = result.card_path.read_text()
    assert "| left\\|right |" in text
    assert "Medical Segmentation Decathlon data are distributed" not in text
    assert ModelCard.load(result.card_path).data.to_dict()["license"] == "other"


def test_card_demo_data_note(state, tmp_path):
    tasks = (TaskSummary("Task11_BrainExtraction", "MRI", ("background", "brain"), 6, source=DEMO_SOURCE,
                         license="BSD-3-Clause as shipped in mricron-data"),)

    result = _export(state, tmp_path / "out", tasks=tasks, metrics={}, normalization={})

    text = result.card_path.read_text()
    assert "docs/demo-data.md" in text
    assert "Medical Segmentation Decathlon data are distributed" not in text
    assert "Other sources" not in text


def test_card_template_found_in_checkout():
    assert find_card_template() == (REPO_ROOT / "weights_card" / "README.md").read_text(encoding="utf-8")


def test_card_template_found_in_installed_package(tmp_path):
    # The wheel build copies weights_card/* into hydranet_hub/weights_card/; lay the package out that way.
    site = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "hydranet_hub", site / "hydranet_hub", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "hydranet_hub" / "weights_card").mkdir()
    (site / "hydranet_hub" / "weights_card" / "README.md").write_text("packaged template", encoding="utf-8")
    environment = {**os.environ, "PYTHONPATH": str(site), "HYDRANET_HUB_DISABLE_AUTOREGISTER": "1"}

    output = subprocess.run(
        [sys.executable, "-c", "from hydranet_hub.export import find_card_template; print(find_card_template())"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, check=True,
    ).stdout

    assert output.strip() == "packaged template"


# --- atomic writes and overwrite ----------------------------------------------------------------------------------


def test_export_rejects_non_empty_folder(state, exported, tmp_path):
    out_dir = tmp_path / "out"
    shutil.copytree(exported.dir, out_dir)
    before = {name: (out_dir / name).read_bytes() for name in EXPORT_FILES}

    with pytest.raises(ExportExistsError, match="overwrite=True"):
        _export(_encoder_state_dict(seed=2), out_dir)

    assert {name: (out_dir / name).read_bytes() for name in EXPORT_FILES} == before
    assert _sibling_leftovers(out_dir) == []


def test_export_into_empty_folder(state, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    result = _export(state, out_dir)

    assert sorted(os.listdir(out_dir)) == sorted(EXPORT_FILES)
    assert validate_export(out_dir).sha256 == result.sha256


def test_export_overwrite_replaces_export(state, exported, tmp_path):
    out_dir = tmp_path / "out"
    shutil.copytree(exported.dir, out_dir)
    new_state = _encoder_state_dict(seed=2)

    result = _export(new_state, out_dir, overwrite=True)

    assert result.sha256 != exported.sha256
    assert validate_export(out_dir).sha256 == result.sha256
    _assert_same_tensors(load_file(result.weights_path), new_state)
    assert _sibling_leftovers(out_dir) == []


def test_export_overwrite_keeps_other_files(state, exported, tmp_path):
    out_dir = tmp_path / "out"
    shutil.copytree(exported.dir, out_dir)
    (out_dir / "notes.txt").write_text("mine")
    (out_dir / ".git").mkdir()
    (out_dir / ".git" / "HEAD").write_text("ref: refs/heads/main\n")

    result = _export(_encoder_state_dict(seed=2), out_dir, overwrite=True)

    assert (out_dir / "notes.txt").read_text() == "mine"
    assert (out_dir / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert validate_export(out_dir).sha256 == result.sha256
    assert _sibling_leftovers(out_dir) == []


def test_export_interrupted_leaves_no_folder(state, tmp_path, monkeypatch):
    def fail_mid_export(*args, **kwargs):
        raise RuntimeError("interrupted after the weights were written")

    monkeypatch.setattr("hydranet_hub.export.folder.render_card", fail_mid_export)
    out_dir = tmp_path / "nested" / "out"

    with pytest.raises(RuntimeError, match="interrupted"):
        _export(state, out_dir)

    assert not out_dir.exists()
    assert _sibling_leftovers(out_dir) == []


def test_export_interrupted_overwrite_keeps_old(state, exported, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    shutil.copytree(exported.dir, out_dir)

    def fail_mid_export(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("hydranet_hub.export.folder.render_card", fail_mid_export)
    with pytest.raises(RuntimeError):
        _export(_encoder_state_dict(seed=2), out_dir, overwrite=True)

    assert validate_export(out_dir).sha256 == exported.sha256
    assert _sibling_leftovers(out_dir) == []


def test_export_rejects_file_as_folder(state, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")

    with pytest.raises(ExportError, match="not a folder"):
        _export(state, target, overwrite=True)


# --- validate_export ----------------------------------------------------------------------------------------------


def test_validate_export_missing_file(exported, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(exported.dir, folder)
    (folder / CARD_NAME).unlink()

    with pytest.raises(ExportError, match="README.md"):
        validate_export(folder)


def test_validate_export_mixed_exports(state, exported, tmp_path):
    other = _export(_encoder_state_dict(seed=2), tmp_path / "other")
    folder = tmp_path / "mixed"
    shutil.copytree(exported.dir, folder)
    shutil.copy(other.weights_path, folder / WEIGHTS_NAME)

    with pytest.raises(ChecksumMismatchError, match=other.sha256):
        validate_export(folder)


def test_validate_export_truncated_weights(exported, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(exported.dir, folder)
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])

    with pytest.raises(ExportError, match="not a readable safetensors file"):
        validate_export(folder)


# --- push_to_hub --------------------------------------------------------------------------------------------------


def test_push_round_trip_byte_identical(exported, hub_server, hf_env, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(exported.dir, folder)
    (folder / "notes.txt").write_text("not uploaded")

    result = push_to_hub(folder, REPO_ID)

    assert result.repo_id == REPO_ID
    assert result.commit_sha == hub_server.commit_sha(REPO_ID)
    assert sorted(hub_server.list_files(REPO_ID)) == sorted(EXPORT_FILES)
    for name in EXPORT_FILES:
        downloaded = hf_hub_download(REPO_ID, name, revision=result.commit_sha)
        assert Path(downloaded).read_bytes() == (folder / name).read_bytes(), name


def test_push_then_load_with_smp_and_timm(exported, state, hub_server, hf_env):
    result = push_to_hub(exported.dir, REPO_ID)
    spec = f"hf-hub:{REPO_ID}@{result.commit_sha}"

    unet = smp.Unet(encoder_name="hydranet", encoder_weights=spec, classes=2)
    encoder = timm.create_model(spec, pretrained=True)

    _assert_same_tensors(unet.encoder.state_dict(), state)
    _assert_same_tensors(encoder.state_dict(), state)


def test_push_sends_token_and_never_logs_it(exported, hub_server, hf_env, caplog):
    token = "hf_exportTestToken123"

    with caplog.at_level(logging.DEBUG):
        push_to_hub(exported.dir, REPO_ID, token=token)

    assert f"Bearer {token}" in hub_server.authorizations
    assert token not in caplog.text


def test_push_validates_before_upload(exported, hub_server, hf_env, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(exported.dir, folder)
    (folder / CONFIG_NAME).unlink()

    with pytest.raises(ExportError, match="config.json"):
        push_to_hub(folder, REPO_ID)

    assert hub_server.requests == []


def test_push_http_error(exported, hub_server, hf_env):
    hub_server.fail_next(403, path_contains="/api/repos/create")

    with pytest.raises(PushError, match="token"):
        push_to_hub(exported.dir, REPO_ID)


@pytest.mark.parametrize(
    "repo_id, revision, expected",
    [
        ("no-namespace", None, "repo_id"),
        (REPO_ID, "0123456789abcdef0123456789abcdef01234567", "commit sha"),
    ],
)
def test_push_rejects_bad_target(exported, hub_server, hf_env, repo_id, revision, expected):
    with pytest.raises(ExportError, match=expected):
        push_to_hub(exported.dir, repo_id, revision=revision)

    assert hub_server.requests == []
