"""Volume inference of hydranet-predict against MONAI's SliceInferer, with peak memory.

Both sides segment the same NIfTI volume with the same smp model (a randomly initialised U-Net
with the HydraNet encoder, 3 input channels for a 2.5D context of one slice each side) and keep
the label map in memory:

- hydranet: `hydranet_hub.inference.predict_volume`, the function behind hydranet-predict
  (read, reorient, normalise, 2.5D slices, batched model, probabilities, label map on the input grid);
- MONAI: LoadImage, Orientation("RAS"), NormalizeIntensity(nonzero=True), the 2.5D context stacked
  into channels, `SliceInferer(spatial_dim=2)` and an argmax. Where MONAI is not installed, a plain
  batched per-slice loop in torch takes its place, and the result names it.

Timing runs both sides interleaved in one worker process. Peak memory (max RSS) comes from
separate worker processes that segment the volume once, and from one that only loads the model
and reads the volume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peak_rss import run_with_peak_rss
from benchmarks.records import Figure, Target

_logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parent.parent
_CLIP = 5.0


@dataclass(frozen=True)
class PredictSettings:
    """Size of the inference benchmark.

    Attributes:
        slice_size_px: In-plane size of the volume and of the model input, in pixels.
        slices: Axial slices of the volume.
        batch_size: Slices per forward pass on both sides.
        rounds: Timed interleaved rounds.
        threads: torch threads in the worker processes.
    """

    slice_size_px: int = 128
    slices: int = 32
    batch_size: int = 16
    rounds: int = 3
    threads: int = 1


def _write_inputs(folder: Path, settings: PredictSettings) -> tuple[Path, Path]:
    """Write the model folder and an MRI-like volume; return (model folder, volume path)."""
    import nibabel as nib
    import numpy as np
    import segmentation_models_pytorch as smp
    import torch

    import hydranet_hub  # noqa: F401 - registers the "hydranet" encoder in smp
    from hydranet_hub.inference import InferencePreprocessing

    torch.manual_seed(0)
    model = smp.Unet(encoder_name="hydranet", encoder_weights=None, in_channels=3, classes=2)
    model_dir = folder / "model"
    model.save_pretrained(str(model_dir))
    size = settings.slice_size_px
    preprocessing = InferencePreprocessing(task="Task99_Bench", modality_kind="MRI", modalities=(0,), context_slices=1,
                                           slice_size=(size, size), num_classes=2,
                                           label_names=("background", "foreground"))
    preprocessing.save(model_dir)

    # Positive intensities, so MRI normalisation over nonzero voxels covers the whole volume.
    rng = np.random.default_rng(0)
    intensities = np.abs(rng.normal(100.0, 30.0, size=(size, size, settings.slices))).astype(np.float32) + 1.0
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    volume_path = folder / "volume.nii.gz"
    nib.save(nib.Nifti1Image(intensities, affine), str(volume_path))
    return model_dir, volume_path


def _monai_available() -> bool:
    try:
        from monai.inferers import SliceInferer  # noqa: F401
    except ImportError:
        return False
    return True


def _alternative_predict(model: Any, volume_path: Path, settings: PredictSettings) -> Any:
    """Segment the volume with MONAI's SliceInferer, or with a plain torch loop without MONAI."""
    import torch

    if _monai_available():
        from monai.inferers import SliceInferer
        from monai.transforms import Compose, LoadImage, NormalizeIntensity, Orientation

        load = Compose([LoadImage(image_only=True, ensure_channel_first=True), Orientation(axcodes="RAS"),
                        NormalizeIntensity(nonzero=True)])
        image = torch.as_tensor(load(str(volume_path))).clamp(-_CLIP, _CLIP)
    else:
        # NOTE: this path without MONAI has not been run for the recorded results, which used MONAI 1.6.1.
        import nibabel as nib
        import numpy as np

        data = np.asarray(nib.as_closest_canonical(nib.load(str(volume_path))).dataobj, dtype=np.float32)
        foreground = data[data != 0]
        image = torch.from_numpy((data - foreground.mean()) / foreground.std()).clamp(-_CLIP, _CLIP)[None]

    # 2.5D context: slices z-1, z, z+1 as channels, edge slices repeated.
    depth = image.shape[-1]
    index = torch.arange(depth)
    stacked = torch.cat([image[..., (index + offset).clamp(0, depth - 1)] for offset in (-1, 0, 1)])[None]

    with torch.inference_mode():
        if _monai_available():
            size = settings.slice_size_px
            inferer = SliceInferer(spatial_dim=2, roi_size=(size, size), sw_batch_size=settings.batch_size,
                                   progress=False)
            logits = inferer(stacked, model)
            return torch.as_tensor(logits).softmax(dim=1).argmax(dim=1)[0].to(torch.uint8).numpy()

        slices = stacked[0].permute(3, 0, 1, 2)
        labels = [model(slices[start:start + settings.batch_size]).softmax(dim=1).argmax(dim=1)
                  for start in range(0, depth, settings.batch_size)]
        return torch.cat(labels).permute(1, 2, 0).to(torch.uint8).numpy()


def _worker(mode: str, model_dir: Path, volume_path: Path, settings: PredictSettings) -> dict[str, Any]:
    """Run inside a worker process: time both sides, or segment once with one of them."""
    import torch

    from benchmarks.timing import paired_speedup, primary_clock, time_interleaved
    from hydranet_hub.inference import load_model_folder, predict_volume

    torch.set_num_threads(settings.threads)
    loaded = load_model_folder(model_dir)

    def hydranet() -> Any:
        return predict_volume(loaded.model, loaded.preprocessing, volume_path, batch_size=settings.batch_size).labels

    def alternative() -> Any:
        return _alternative_predict(loaded.model, volume_path, settings)

    if mode == "time":
        timings = time_interleaved({"hydranet": hydranet, "alternative": alternative}, settings.rounds)
        clock = primary_clock(settings.threads)
        return {
            "clock": clock,
            "speedup": paired_speedup(timings["hydranet"], timings["alternative"], clock=clock),
            "speedup_wall": paired_speedup(timings["hydranet"], timings["alternative"]),
            "timings": {name: timing.to_dict() for name, timing in timings.items()},
        }

    start = time.perf_counter()
    if mode == "peak-hydranet":
        hydranet()
    elif mode == "peak-alternative":
        alternative()
    else:
        import nibabel as nib

        nib.load(str(volume_path)).get_fdata(dtype="float32")
    return {"seconds": time.perf_counter() - start}


def _run_worker(mode: str, model_dir: Path, volume_path: Path, settings: PredictSettings) -> tuple[dict, float]:
    """Run one worker process; return its JSON output and its max RSS in MiB."""
    command = [sys.executable, "-m", "benchmarks.predict", "--worker", mode, "--model", str(model_dir),
               "--volume", str(volume_path), "--settings", json.dumps(settings.__dict__)]
    with tempfile.TemporaryFile("w+") as output, tempfile.TemporaryFile("w+") as errors:
        outcome = run_with_peak_rss(command, stdout=output, stderr=errors, cwd=_REPO_ROOT)
        output.seek(0)
        errors.seek(0)
        if outcome.exit_code != 0:
            raise RuntimeError(f"Predict worker {mode} failed (exit {outcome.exit_code}): {errors.read()[-4000:]}")
        # smp prints to stdout while loading a model, so the worker's result is the last line.
        return json.loads(output.read().strip().splitlines()[-1]), outcome.max_rss_mib


def run(settings: PredictSettings) -> dict[str, Any]:
    """Time hydranet-predict's volume inference against the alternative and measure peak memory.

    Returns:
        {"settings", "alternative", "timings", "throughput_slices_per_s", "peak_rss_mib", "figures"}.
    """
    alternative_name = "MONAI SliceInferer" if _monai_available() else "plain batched per-slice loop (no MONAI)"
    with tempfile.TemporaryDirectory(prefix="hydranet-bench-predict-") as folder:
        model_dir, volume_path = _write_inputs(Path(folder), settings)
        timed, _ = _run_worker("time", model_dir, volume_path, settings)
        peak = {mode: _run_worker(f"peak-{mode}", model_dir, volume_path, settings)[1]
                for mode in ("hydranet", "alternative", "baseline")}

    timings = timed["timings"]
    median = "median_cpu_s" if timed["clock"] == "cpu" else "median_wall_s"
    rates = {name: settings.slices / timing[median] for name, timing in timings.items()}
    size = f"{settings.slice_size_px}x{settings.slice_size_px}x{settings.slices}"
    figures = [
        Figure("predict.vs_alternative", f"hydranet-predict volume inference (predict_volume), {size}",
               f"{alternative_name}, same model and volume", timed["speedup"], "x", Target(">=", 1.0),
               f"{rates['hydranet']:.2f} vs {rates['alternative']:.2f} slices/s ({timed['clock']} time), "
               f"wall-clock ratio {timed['speedup_wall']:.2f}"),
        Figure("predict.peak_rss", "peak memory (max RSS) of one volume with hydranet-predict",
               f"{alternative_name}: {peak['alternative']:.0f} MiB; model and volume only: "
               f"{peak['baseline']:.0f} MiB", peak["hydranet"], "MiB", None, ""),
    ]
    return {
        "settings": settings.__dict__,
        "alternative": alternative_name,
        "clock": timed["clock"],
        "timings": timings,
        "throughput_slices_per_s": rates,
        "peak_rss_mib": peak,
        "figures": [figure.to_dict() for figure in figures],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Worker of the inference benchmark; run by benchmarks.run.")
    parser.add_argument("--worker", required=True,
                        choices=("time", "peak-hydranet", "peak-alternative", "peak-baseline"),
                        help="What the worker process does.")
    parser.add_argument("--model", required=True, type=Path, help="Model folder.")
    parser.add_argument("--volume", required=True, type=Path, help="NIfTI volume.")
    parser.add_argument("--settings", required=True, help="PredictSettings as JSON.")
    args = parser.parse_args(argv)
    settings = PredictSettings(**json.loads(args.settings))
    print(json.dumps(_worker(args.worker, args.model, args.volume, settings)))


if __name__ == "__main__":
    main()
