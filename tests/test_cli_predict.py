"""End-to-end tests of `hydranet-predict` through `main([...])`, with real NIfTI files and a real smp model."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from hydranet_hub.cli.predict import main
from hydranet_hub.inference import InferencePreprocessing, load_model_folder, predict_volume

SHAPE = (24, 18, 8)
SETTINGS = InferencePreprocessing(
    task="Task99_Phantom",
    modality_kind="CT",
    modalities=(0,),
    context_slices=1,
    slice_size=(32, 32),
    num_classes=3,
    label_names=("background", "organ", "lesion"),
    window_hu=(-160.0, 240.0),
)


def lps_affine() -> np.ndarray:
    """Storage order L, P, S (DICOM), anisotropic voxels."""
    return np.array([[-1.5, 0.0, 0.0, 20.0], [0.0, -2.0, 0.0, 15.0], [0.0, 0.0, 4.0, -10.0], [0.0, 0.0, 0.0, 1.0]])


def write_ct(path: Path, seed: int, shape: tuple[int, ...] = SHAPE) -> Path:
    hounsfield = np.random.default_rng(seed).normal(40.0, 80.0, size=shape).astype(np.float32)
    image = nib.Nifti1Image(hounsfield, lps_affine())
    image.header.set_qform(lps_affine(), code=1)
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = smp.Unet(
        "tu-resnet10t", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4),
        in_channels=SETTINGS.in_channels, classes=SETTINGS.num_classes,
    )
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(str(folder))
    SETTINGS.save(folder)
    return folder


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_ct(folder / "case_001.nii.gz", seed=1)
    write_ct(folder / "case_002.nii", seed=2)
    return folder


def test_cli_predicts_folder(model_dir: Path, inputs: Path, tmp_path: Path) -> None:
    output = tmp_path / "predictions"

    status = main(["--model", str(model_dir), "--input", str(inputs), "--output", str(output),
                   "--device", "cpu", "--batch-size", "3", "--num-threads", "1", "--probabilities", "--quiet"])

    assert status == 0
    assert sorted(path.name for path in output.iterdir()) == [
        "case_001.nii.gz", "case_001_probabilities.nii.gz", "case_002.nii.gz", "case_002_probabilities.nii.gz",
    ]
    labels = nib.load(str(output / "case_002.nii.gz"))
    assert labels.shape == SHAPE
    assert np.array_equal(labels.affine, nib.load(str(inputs / "case_002.nii")).affine)
    assert labels.get_data_dtype() == np.uint8
    probabilities = np.asarray(nib.load(str(output / "case_002_probabilities.nii.gz")).dataobj)
    assert probabilities.shape == (*SHAPE, 3)
    assert np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)

    loaded = load_model_folder(model_dir)
    expected = predict_volume(loaded.model, loaded.preprocessing, inputs / "case_002.nii").labels
    assert np.array_equal(np.asarray(labels.dataobj), np.asarray(expected.dataobj))


def test_cli_tta_single_file(model_dir: Path, inputs: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"

    status = main(["--model", str(model_dir), "--input", str(inputs / "case_001.nii.gz"),
                   "--output", str(output), "--device", "cpu", "--tta-flip", "--quiet"])

    assert status == 0
    assert [path.name for path in output.iterdir()] == ["case_001.nii.gz"]


def test_cli_no_overwrite(model_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out"
    output.mkdir()
    existing = output / "case_002.nii.gz"
    existing.write_bytes(b"do not touch")
    argv = ["--model", str(model_dir), "--input", str(inputs), "--output", str(output), "--device", "cpu", "--quiet"]

    assert main(argv) == 1
    assert "case_002.nii.gz already exists" in capsys.readouterr().err
    assert existing.read_bytes() == b"do not touch"
    assert [path.name for path in output.iterdir()] == ["case_002.nii.gz"]

    assert main([*argv, "--overwrite"]) == 0
    assert nib.load(str(existing)).shape == SHAPE
    assert sorted(path.name for path in output.iterdir()) == ["case_001.nii.gz", "case_002.nii.gz"]


def test_cli_missing_model_dir(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = main(["--model", str(tmp_path / "absent"), "--input", str(inputs), "--output", str(tmp_path / "out")])

    assert status == 1
    assert "Model folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_missing_preprocessing(model_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((model_dir / name).read_bytes())

    status = main(["--model", str(folder), "--input", str(inputs), "--output", str(tmp_path / "out"), "--device", "cpu"])

    assert status == 1
    assert "lacks preprocessing.json" in capsys.readouterr().err


def test_cli_wrong_modality_count(tmp_path: Path, inputs: Path, capsys: pytest.CaptureFixture) -> None:
    settings = InferencePreprocessing(**{**SETTINGS.__dict__, "modalities": (0, 1)})
    torch.manual_seed(0)
    model = smp.Unet("tu-resnet10t", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4),
                     in_channels=settings.in_channels, classes=3)
    folder = tmp_path / "two_modalities"
    model.save_pretrained(str(folder))
    settings.save(folder)

    status = main(["--model", str(folder), "--input", str(inputs), "--output", str(tmp_path / "out"),
                   "--device", "cpu", "--quiet"])

    assert status == 1
    assert "has 1 modality channel(s)" in capsys.readouterr().err


def test_cli_rejects_zero_batch_size(model_dir: Path, inputs: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(model_dir), "--input", str(inputs), "--output", str(tmp_path), "--batch-size", "0"])
    assert exit_info.value.code == 2


def test_cli_amp_needs_cuda(model_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = main(["--model", str(model_dir), "--input", str(inputs), "--output", str(tmp_path / "out"),
                   "--device", "cpu", "--amp", "--quiet"])

    assert status == 1
    assert "amp=True needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
