"""Tests of hydranet_hub.inference on real NIfTI files and real smp models.

The phantom is an off-centre bright ellipsoid defined in world coordinates (mm) and sampled into
voxel grids of any affine. One anatomy is thus stored canonically, permuted and flipped, or on an
oblique grid, and its label is its analytic mask on that grid.
"""

import itertools
import json
from pathlib import Path

import huggingface_hub
import nibabel as nib
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from hydranet_hub.data import TaskConfig, normalize_image, stack_context, to_axial_slices
from hydranet_hub.data.nifti import read_canonical
from hydranet_hub.data.slices import resize_slices
from hydranet_hub.inference import (
    InferenceError,
    InferencePreprocessing,
    OutputExistsError,
    find_volumes,
    load_model_folder,
    predict_paths,
    predict_volume,
)
from hydranet_hub.inference.geometry import canonical_to_stored, from_axial_slices, stored_orientation

ELLIPSOID_CENTRE_MM = np.array([12.0, -9.0, 8.0])
ELLIPSOID_RADII_MM = np.array([11.0, 8.0, 12.0])
SLICE_SIZE = (32, 32)

MRI_SETTINGS = InferencePreprocessing(
    task="Task99_Phantom",
    modality_kind="MRI",
    modalities=(0,),
    context_slices=1,
    slice_size=SLICE_SIZE,
    num_classes=2,
    label_names=("background", "ellipsoid"),
)


# --- phantom volumes --------------------------------------------------------------------------------------------------


def rotation_matrix(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    """Rotation about `axis` by `angle_deg` (Rodrigues' formula)."""
    unit = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    cross = np.array([[0, -unit[2], unit[1]], [unit[2], 0, -unit[0]], [-unit[1], unit[0], 0]])
    angle = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def centred_affine(linear: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """4x4 affine with the given 3x3 part whose grid centre lies at world (0, 0, 0)."""
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def canonical_affine(shape: tuple[int, int, int], zooms_mm: tuple[float, float, float]) -> np.ndarray:
    return centred_affine(np.diag(zooms_mm), shape)


def oblique_ilp_affine(shape: tuple[int, int, int], zooms_mm: tuple[float, float, float]) -> np.ndarray:
    """Stored axes run inferior, left, posterior, then the grid is rotated 25 degrees off the scanner axes."""
    signed_permutation = np.zeros((3, 3))
    signed_permutation[2, 0] = -1.0  # stored axis 0 -> inferior
    signed_permutation[0, 1] = -1.0  # stored axis 1 -> left
    signed_permutation[1, 2] = -1.0  # stored axis 2 -> posterior
    linear = rotation_matrix((1.0, 0.5, 0.3), 25.0) @ signed_permutation @ np.diag(zooms_mm)
    return centred_affine(linear, shape)


def phantom(affine: np.ndarray, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample the ellipsoid into a grid: float32 intensities and its uint8 mask."""
    indices = np.stack(np.meshgrid(*[np.arange(size) for size in shape], indexing="ij"), axis=-1)
    world = indices @ affine[:3, :3].T + affine[:3, 3]
    mask = (((world - ELLIPSOID_CENTRE_MM) / ELLIPSOID_RADII_MM) ** 2).sum(axis=-1) <= 1.0
    noise = np.random.default_rng(seed).normal(0.0, 10.0, size=shape)
    image = 100.0 + 200.0 * mask + noise
    return image.astype(np.float32), mask.astype(np.uint8)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    nib.save(image, str(path))
    return path


def dice(first: np.ndarray, second: np.ndarray) -> float:
    first, second = first.astype(bool), second.astype(bool)
    return 2.0 * np.logical_and(first, second).sum() / max(first.sum() + second.sum(), 1)


def tiny_unet(in_channels: int = 3, classes: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return smp.Unet(
        "tu-resnet10t", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4),
        in_channels=in_channels, classes=classes,
    )


def save_model_folder(folder: Path, model: torch.nn.Module, settings: InferencePreprocessing) -> Path:
    model.save_pretrained(str(folder))
    settings.save(folder)
    return folder


# --- shared fixtures --------------------------------------------------------------------------------------------------

CANONICAL_SHAPE = (40, 40, 16)
CANONICAL_ZOOMS_MM = (1.5, 1.5, 3.0)
OBLIQUE_SHAPE = (54, 36, 26)
OBLIQUE_ZOOMS_MM = (1.2, 1.8, 2.5)


@pytest.fixture(scope="module")
def trained_unet() -> torch.nn.Module:
    """A tiny Unet trained on the axial slices of the canonical phantom, laid out as training lays them out."""
    torch.set_num_threads(1)
    affine = canonical_affine(CANONICAL_SHAPE, CANONICAL_ZOOMS_MM)
    image, mask = phantom(affine, CANONICAL_SHAPE, seed=1)

    slices = resize_slices(to_axial_slices(normalize_image(image[np.newaxis], MRI_SETTINGS)), SLICE_SIZE)
    labels = resize_slices(to_axial_slices(mask), SLICE_SIZE, is_label=True)
    inputs = torch.from_numpy(np.stack([stack_context(slices, z, 1) for z in range(len(slices))]))
    targets = torch.from_numpy(labels.astype(np.int64))

    model = tiny_unet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        batch = torch.randint(0, len(inputs), (8,), generator=generator)
        x, y = inputs[batch], targets[batch]
        # Random flips teach the model intensity, not the ellipsoid's position in the slice.
        if torch.rand(1, generator=generator) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if torch.rand(1, generator=generator) < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_model_dir(trained_unet: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_folder(tmp_path_factory.mktemp("model"), trained_unet, MRI_SETTINGS)


@pytest.fixture
def oblique_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    affine = oblique_ilp_affine(OBLIQUE_SHAPE, OBLIQUE_ZOOMS_MM)
    image, mask = phantom(affine, OBLIQUE_SHAPE, seed=2)
    return save_nifti(tmp_path / "oblique.nii.gz", image, affine), mask


# --- preprocessing.json -----------------------------------------------------------------------------------------------


def test_preprocessing_save_load_roundtrip(tmp_path: Path) -> None:
    settings = InferencePreprocessing(
        task="Task03_Liver", modality_kind="CT", modalities=(0,), context_slices=2, slice_size=(64, 48),
        num_classes=3, label_names=("background", "liver", "cancer"), window_hu=(-100, 250), ct_stats_hu=(40, 60),
    )
    path = settings.save(tmp_path)

    document = json.loads(path.read_text())
    assert path.name == "preprocessing.json"
    assert document["format_version"] == 1
    assert document["slice_size"] == [64, 48]
    assert InferencePreprocessing.load(tmp_path) == settings
    assert settings.in_channels == 5


def test_preprocessing_from_task_config(tmp_path: Path) -> None:
    task = TaskConfig(
        name="Task03_Liver", root=tmp_path, modality_kind="CT", modalities=(0,),
        labels=((0, "background"), (1, "liver"), (2, "cancer")), label_mode="merge",
    )
    settings = InferencePreprocessing.from_task_config(task, slice_size=(96, 96), context_slices=1)

    assert settings.task == "Task03_Liver"
    assert settings.num_classes == 2
    assert settings.label_names == ("background", "foreground")
    assert settings.window_hu == task.window_hu
    assert settings.slice_size == (96, 96)
    assert settings.in_channels == task.in_channels(1)


def test_preprocessing_ct_default_window() -> None:
    settings = InferencePreprocessing(
        task="Task09_Spleen", modality_kind="CT", modalities=(0,), context_slices=0, slice_size=(32, 32),
        num_classes=2, label_names=("background", "spleen"),
    )
    assert settings.window_hu == (-160.0, 240.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "format_version"),
        ({"slice_size": "big"}, "slice_size"),
        ({"label_names": ["background"]}, "label_names"),
        ({"extra": 1}, "unknown field"),
        ({"modality_kind": "PET"}, "modality_kind"),
        ({"window_hu": [0, 100]}, "MRI"),
        ({"context_slices": -1}, "context_slices"),
    ],
)
def test_preprocessing_load_rejects(tmp_path: Path, change: dict, message: str) -> None:
    document = MRI_SETTINGS.to_dict() | change
    (tmp_path / "preprocessing.json").write_text(json.dumps(document))

    with pytest.raises(InferenceError, match=message):
        InferencePreprocessing.load(tmp_path)


def test_preprocessing_load_missing_field(tmp_path: Path) -> None:
    document = MRI_SETTINGS.to_dict()
    del document["num_classes"]
    (tmp_path / "preprocessing.json").write_text(json.dumps(document))

    with pytest.raises(InferenceError, match="missing field.*num_classes"):
        InferencePreprocessing.load(tmp_path)


def test_preprocessing_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="preprocessing.json does not exist"):
        InferencePreprocessing.load(tmp_path)


# --- geometry ---------------------------------------------------------------------------------------------------------


def test_canonical_to_stored_all_orientations() -> None:
    data = np.random.default_rng(0).random((3, 4, 5, 2)).astype(np.float32)
    for axes, signs in itertools.product(itertools.permutations(range(3)), itertools.product((1, -1), repeat=3)):
        affine = np.eye(4)
        affine[:3, :3] = 0.0
        for stored_axis, (world_axis, sign) in enumerate(zip(axes, signs)):
            affine[world_axis, stored_axis] = sign * (stored_axis + 1.5)
        canonical, _ = read_canonical(nib.Nifti1Image(data, affine), Path("x.nii"), dtype=np.float32)

        restored = canonical_to_stored(canonical, stored_orientation(affine, "x.nii"))

        assert np.array_equal(restored, data), (axes, signs)


def test_from_axial_slices_inverts_training_layout() -> None:
    volume = np.random.default_rng(0).random((2, 5, 6, 7))
    assert np.array_equal(from_axial_slices(to_axial_slices(volume)), volume)


def test_stored_orientation_rejects_singular_affine() -> None:
    affine = np.diag([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(InferenceError, match="singular affine"):
        stored_orientation(affine, "flat.nii.gz")


# --- predict_volume ---------------------------------------------------------------------------------------------------


def test_predict_same_grid_two_storage_orders(trained_unet: torch.nn.Module, tmp_path: Path) -> None:
    affine = oblique_ilp_affine(OBLIQUE_SHAPE, OBLIQUE_ZOOMS_MM)
    image, _ = phantom(affine, OBLIQUE_SHAPE)
    stored_path = save_nifti(tmp_path / "stored.nii.gz", image, affine)
    canonical_image, canonical_grid_affine = read_canonical(nib.load(str(stored_path)), stored_path, dtype=np.float32)
    canonical_path = save_nifti(tmp_path / "canonical.nii.gz", canonical_image, canonical_grid_affine)

    results = {}
    for path in (stored_path, canonical_path):
        source = nib.load(str(path))
        result = predict_volume(trained_unet, MRI_SETTINGS, path, return_probabilities=True)
        assert result.labels.shape == source.shape
        assert np.array_equal(result.labels.affine, source.affine)
        assert result.probabilities.shape == (*source.shape, 2)
        results[path] = result

    stored_in_ras, _ = read_canonical(results[stored_path].labels, stored_path)
    canonical_labels = np.asarray(results[canonical_path].labels.dataobj)
    assert canonical_labels.any()
    assert np.array_equal(stored_in_ras, canonical_labels)


def test_predict_oblique_matches_anatomy(
    trained_unet: torch.nn.Module, oblique_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    oblique_path, oblique_mask = oblique_file
    canonical_grid_affine = canonical_affine(CANONICAL_SHAPE, CANONICAL_ZOOMS_MM)
    canonical_image, canonical_mask = phantom(canonical_grid_affine, CANONICAL_SHAPE, seed=3)
    canonical_path = save_nifti(tmp_path / "canonical.nii.gz", canonical_image, canonical_grid_affine)

    oblique = predict_volume(trained_unet, MRI_SETTINGS, oblique_path).labels
    canonical = predict_volume(trained_unet, MRI_SETTINGS, canonical_path).labels

    assert oblique.shape == OBLIQUE_SHAPE
    assert np.array_equal(oblique.affine, nib.load(str(oblique_path)).affine)
    assert dice(np.asarray(canonical.dataobj), canonical_mask) > 0.7
    assert dice(np.asarray(oblique.dataobj), oblique_mask) > 0.7

    # World-space agreement: look up, for every canonical voxel, the nearest oblique voxel.
    indices = np.stack(np.meshgrid(*[np.arange(size) for size in CANONICAL_SHAPE], indexing="ij"), axis=-1)
    world = indices @ canonical.affine[:3, :3].T + canonical.affine[:3, 3]
    inverse = np.linalg.inv(oblique.affine)
    oblique_indices = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
    inside = np.all((oblique_indices >= 0) & (oblique_indices < np.asarray(OBLIQUE_SHAPE)), axis=-1)
    resampled = np.zeros(CANONICAL_SHAPE, dtype=np.uint8)
    resampled[inside] = np.asarray(oblique.dataobj)[tuple(oblique_indices[inside].T)]
    assert dice(resampled, np.asarray(canonical.dataobj)) > 0.7


def test_predict_output_header(trained_unet: torch.nn.Module, oblique_file: tuple[Path, np.ndarray]) -> None:
    path, _ = oblique_file
    source = nib.load(str(path))

    labels = predict_volume(trained_unet, MRI_SETTINGS, source).labels

    assert labels.get_data_dtype() == np.uint8
    assert labels.header.get_intent()[0] == "label"
    assert np.isnan(labels.header["scl_slope"]) or labels.header["scl_slope"] in (0.0, 1.0)
    assert int(labels.header["qform_code"]) == 1
    assert int(labels.header["sform_code"]) == 2
    assert np.allclose(labels.header.get_qform(), source.header.get_qform())
    assert labels.header.get_zooms() == source.header.get_zooms()


def test_predict_probabilities_sum_to_one(trained_unet: torch.nn.Module, oblique_file: tuple[Path, np.ndarray]) -> None:
    path, _ = oblique_file

    result = predict_volume(trained_unet, MRI_SETTINGS, path, return_probabilities=True, batch_size=5)

    probabilities = np.asarray(result.probabilities.dataobj)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (*OBLIQUE_SHAPE, 2)
    assert np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert np.array_equal(probabilities.argmax(axis=-1), np.asarray(result.labels.dataobj))


def test_predict_tta_flip(trained_unet: torch.nn.Module, oblique_file: tuple[Path, np.ndarray]) -> None:
    path, mask = oblique_file

    result = predict_volume(trained_unet, MRI_SETTINGS, path, tta_flip=True, return_probabilities=True)

    assert np.allclose(np.asarray(result.probabilities.dataobj).sum(axis=-1), 1.0, atol=1e-5)
    assert dice(np.asarray(result.labels.dataobj), mask) > 0.7


def test_predict_tta_unflips_outputs(oblique_file: tuple[Path, np.ndarray]) -> None:
    # A 1x1 convolution commutes with flips, so TTA must reproduce the plain prediction exactly.
    path, _ = oblique_file
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 2, kernel_size=1)

    plain = predict_volume(pointwise, MRI_SETTINGS, path, return_probabilities=True).probabilities
    flipped = predict_volume(pointwise, MRI_SETTINGS, path, tta_flip=True, return_probabilities=True).probabilities

    assert np.allclose(np.asarray(flipped.dataobj), np.asarray(plain.dataobj), atol=1e-5)


def test_predict_4d_two_modalities(tmp_path: Path) -> None:
    affine = oblique_ilp_affine((20, 14, 10), (2.0, 3.0, 4.0))
    first, _ = phantom(affine, (20, 14, 10), seed=4)
    second, _ = phantom(affine, (20, 14, 10), seed=5)
    path = save_nifti(tmp_path / "two.nii.gz", np.stack([first, 2.0 * second], axis=-1), affine)
    settings = InferencePreprocessing(
        task="Task05_Prostate", modality_kind="MRI", modalities=(0, 1), context_slices=1,
        slice_size=SLICE_SIZE, num_classes=3, label_names=("background", "PZ", "TZ"),
    )

    result = predict_volume(tiny_unet(in_channels=6, classes=3), settings, path, return_probabilities=True)

    assert result.labels.shape == (20, 14, 10)
    assert np.array_equal(result.labels.affine, nib.load(str(path)).affine)
    assert result.probabilities.shape == (20, 14, 10, 3)


def test_predict_selects_modality(tmp_path: Path) -> None:
    affine = canonical_affine((16, 16, 6), (2.0, 2.0, 3.0))
    first, _ = phantom(affine, (16, 16, 6), seed=6)
    second, _ = phantom(affine, (16, 16, 6), seed=7)
    four_d = save_nifti(tmp_path / "both.nii.gz", np.stack([first, second], axis=-1), affine)
    three_d = save_nifti(tmp_path / "second.nii.gz", second, affine)
    second_only = InferencePreprocessing(**{**MRI_SETTINGS.__dict__, "modalities": (1,)})
    model = tiny_unet()

    from_4d = predict_volume(model, second_only, four_d, return_probabilities=True).probabilities
    from_3d = predict_volume(model, MRI_SETTINGS, three_d, return_probabilities=True).probabilities

    assert np.array_equal(np.asarray(from_4d.dataobj), np.asarray(from_3d.dataobj))


def test_predict_rejects_missing_modality(oblique_file: tuple[Path, np.ndarray]) -> None:
    path, _ = oblique_file
    two_modalities = InferencePreprocessing(**{**MRI_SETTINGS.__dict__, "modalities": (0, 1)})

    with pytest.raises(InferenceError, match="1 modality channel.*indices \\[0, 1\\]"):
        predict_volume(tiny_unet(in_channels=6), two_modalities, path)


def test_predict_nonfinite_policy(tmp_path: Path) -> None:
    affine = canonical_affine((16, 16, 6), (2.0, 2.0, 3.0))
    image, _ = phantom(affine, (16, 16, 6))
    image[3, 4, 2] = np.nan
    path = save_nifti(tmp_path / "nan.nii.gz", image, affine)
    fill = InferencePreprocessing(**{**MRI_SETTINGS.__dict__, "nonfinite": "fill_min"})
    model = tiny_unet()

    with pytest.raises(InferenceError, match="NaN/Inf"):
        predict_volume(model, MRI_SETTINGS, path)
    assert predict_volume(model, fill, path).labels.shape == (16, 16, 6)


def test_predict_sigmoid_binary_output(oblique_file: tuple[Path, np.ndarray]) -> None:
    path, _ = oblique_file

    result = predict_volume(tiny_unet(classes=1), MRI_SETTINGS, path, return_probabilities=True)

    probabilities = np.asarray(result.probabilities.dataobj)
    assert probabilities.shape == (*OBLIQUE_SHAPE, 2)
    assert np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


def test_predict_rejects_wrong_class_count(oblique_file: tuple[Path, np.ndarray]) -> None:
    path, _ = oblique_file
    with pytest.raises(InferenceError, match="num_classes=2"):
        predict_volume(tiny_unet(classes=4), MRI_SETTINGS, path)


def test_predict_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="does not exist"):
        predict_volume(tiny_unet(), MRI_SETTINGS, tmp_path / "absent.nii.gz")


# --- model folders and predict_paths ----------------------------------------------------------------------------------


def test_load_model_folder(trained_model_dir: Path, trained_unet: torch.nn.Module) -> None:
    loaded = load_model_folder(trained_model_dir)

    assert loaded.preprocessing == MRI_SETTINGS
    for name, tensor in trained_unet.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_load_model_folder_skips_encoder_download(
    trained_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fine-tuned model's config.json may still name the encoder's pretrained weights.
    folder = tmp_path / "model"
    folder.mkdir()
    for entry in trained_model_dir.iterdir():
        (folder / entry.name).write_bytes(entry.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["encoder_weights"] = "imagenet"
    (folder / "config.json").write_text(json.dumps(config))
    # Offline mode makes any Hub download raise at once instead of reaching the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    loaded = load_model_folder(folder)

    assert loaded.preprocessing == MRI_SETTINGS


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "preprocessing.json"])
def test_load_model_folder_missing_file(trained_model_dir: Path, tmp_path: Path, missing: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for entry in trained_model_dir.iterdir():
        if entry.name != missing:
            (folder / entry.name).write_bytes(entry.read_bytes())

    with pytest.raises(InferenceError, match=f"lacks {missing}"):
        load_model_folder(folder)


def test_load_model_folder_channel_mismatch(tmp_path: Path) -> None:
    folder = save_model_folder(tmp_path, tiny_unet(in_channels=5), MRI_SETTINGS)
    with pytest.raises(InferenceError, match="in_channels=5"):
        load_model_folder(folder)


def test_find_volumes_skips_hidden(tmp_path: Path) -> None:
    affine = canonical_affine((8, 8, 4), (1.0, 1.0, 1.0))
    for name in ("b.nii", "a.nii.gz", "._a.nii.gz", "notes.txt"):
        save_nifti(tmp_path / name, np.zeros((8, 8, 4), np.float32), affine) if "nii" in name else (tmp_path / name).write_text("x")

    assert [path.name for path in find_volumes(tmp_path)] == ["a.nii.gz", "b.nii"]


def test_predict_paths_writes_folder(trained_model_dir: Path, oblique_file: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    inputs = oblique_file[0].parent
    (inputs / "._oblique.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    output = tmp_path / "predictions"

    written = predict_paths(trained_model_dir, inputs, output, probabilities=True, progress=False)

    assert [plan.labels.name for plan in written] == ["oblique.nii.gz"]
    assert sorted(path.name for path in output.iterdir()) == ["oblique.nii.gz", "oblique_probabilities.nii.gz"]
    expected = predict_volume(load_model_folder(trained_model_dir).model, MRI_SETTINGS, oblique_file[0])
    assert np.array_equal(np.asarray(nib.load(str(written[0].labels)).dataobj), np.asarray(expected.labels.dataobj))
    assert nib.load(str(written[0].probabilities)).shape == (*OBLIQUE_SHAPE, 2)


def test_predict_paths_no_overwrite(trained_model_dir: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    affine = canonical_affine((16, 16, 6), (2.0, 2.0, 3.0))
    for name in ("a", "b"):
        save_nifti(inputs / f"{name}.nii.gz", phantom(affine, (16, 16, 6))[0], affine)
    output = tmp_path / "out"
    output.mkdir()
    existing = output / "b.nii.gz"
    existing.write_bytes(b"earlier result")

    with pytest.raises(OutputExistsError, match=r"b\.nii\.gz already exists.*--overwrite"):
        predict_paths(trained_model_dir, inputs, output, progress=False)
    assert existing.read_bytes() == b"earlier result"
    assert sorted(path.name for path in output.iterdir()) == ["b.nii.gz"]

    predict_paths(trained_model_dir, inputs, output, overwrite=True, progress=False)
    assert nib.load(str(existing)).shape == (16, 16, 6)
    assert sorted(path.name for path in output.iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_predict_paths_rejects_collisions(trained_model_dir: Path, tmp_path: Path) -> None:
    affine = canonical_affine((8, 8, 4), (1.0, 1.0, 1.0))
    for name in ("case.nii", "case.nii.gz"):
        save_nifti(tmp_path / name, np.zeros((8, 8, 4), np.float32), affine)

    with pytest.raises(InferenceError, match="would both be written to"):
        predict_paths(trained_model_dir, tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(InferenceError, match="would replace the input volume"):
        predict_paths(trained_model_dir, tmp_path / "case.nii.gz", tmp_path, overwrite=True, progress=False)
