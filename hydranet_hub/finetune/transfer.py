"""The transfer benchmark: fine-tune from scratch, from ImageNet and from HydraNet at several labelled-data budgets.

Every run shares one FinetuneConfig apart from the encoder weights, the budget and the seed, and
every run is scored on the same held-out cases (`split_seed` fixes the split). The table, CSV,
JSON and plot come from `hydranet_hub.finetune.transfer_report`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydranet_hub.finetune.config import FinetuneConfig
from hydranet_hub.finetune.run import RESULT_NAME, finetune
from hydranet_hub.training.checkpoint import CHECKPOINT_DIRNAME, list_checkpoints
from hydranet_hub.training.run import RUN_CONFIG_NAME

_logger = logging.getLogger(__name__)

IMAGENET_AUTO = "auto"
SCRATCH, IMAGENET, HYDRANET = "scratch", "imagenet", "hydranet"

# Settings of the reduced benchmark, a pipeline check that runs in well under a minute on 2 CPU cores.
REDUCED_SETTINGS: dict[str, Any] = {
    "steps": 4,
    "batch_size": 2,
    "slice_size": (32, 32),
    "warmup_steps": 1,
    "val_every": 0,
    "checkpoint_every": 0,
    "num_workers": 0,
}
# Settings a run never inherits from `TransferConfig.base`, because the benchmark sets them per run.
_PER_RUN_SETTINGS = ("encoder_weights", "train_cases", "seed", "output_dir", "resume", "stop_at_step")


@dataclass(frozen=True)
class TransferConfig:
    """Settings of a transfer benchmark.

    Attributes:
        base: Settings shared by every run (task, split, steps, optimiser, architecture). Its
            encoder must be a HydraNet encoder name ("hydranet" or "hydranet_<architecture>"),
            which loads every initialisation below into the same network.
        hydranet_weights: HydraNet encoder weights: a release tag, a .safetensors file or its
            folder (e.g. the export folder of hydranet-pretrain), or "hf-hub:org/repo@revision".
        imagenet_weights: "auto" looks for smp's ImageNet weights of the encoder's architecture
            in the local Hugging Face cache and never downloads them. A path uses that
            .safetensors file, and None leaves the ImageNet initialisation out.
        budgets: Labelled training cases (volumes) per run; None means every case of the train
            split. Budgets above the train split are dropped with a warning.
        seeds: Seeds of the runs; each seed draws its own case budget, initialisation of the
            decoder, data order and augmentation.
        output_dir: Benchmark folder: runs/, the report files and the shared slice cache.
        save_models: Keep each run's model folder (about 100 MB for a ResNet-34 U-Net).
        keep_run_checkpoints: Keep each finished run's checkpoints (about 3x the model size).
    """

    base: FinetuneConfig
    hydranet_weights: str
    imagenet_weights: str | None = IMAGENET_AUTO
    budgets: tuple[int | None, ...] = (1, 2, 4, None)
    seeds: tuple[int, ...] = (0, 1, 2)
    output_dir: str = "runs/hydranet-transfer"
    save_models: bool = False
    keep_run_checkpoints: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(self.budgets))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.budgets or any(budget is not None and (not isinstance(budget, int) or budget < 1)
                                   for budget in self.budgets):
            raise ValueError(f"budgets={self.budgets!r} is invalid: expected case counts >= 1 or None (all cases).")
        if not self.seeds or any(not isinstance(seed, int) or seed < 0 for seed in self.seeds):
            raise ValueError(f"seeds={self.seeds!r} is invalid: expected one or more integers >= 0.")
        if not self.hydranet_weights:
            raise ValueError("hydranet_weights is empty: pass the HydraNet weights (a path, release tag or hf-hub id).")
        if not self.base.encoder.startswith("hydranet"):
            raise ValueError(
                f"base.encoder={self.base.encoder!r} is invalid for the benchmark: expected 'hydranet' or "
                "'hydranet_<architecture>', which loads scratch, ImageNet and HydraNet weights into one network."
            )

    def reduced(self) -> "TransferConfig":
        """Return the reduced benchmark: REDUCED_SETTINGS, the smallest budget and the first seed."""
        smallest = min((budget for budget in self.budgets if budget is not None), default=None)
        return TransferConfig(
            base=self.base.replace(**REDUCED_SETTINGS), hydranet_weights=self.hydranet_weights,
            imagenet_weights=self.imagenet_weights, budgets=(smallest,), seeds=self.seeds[:1],
            output_dir=self.output_dir, save_models=self.save_models, keep_run_checkpoints=self.keep_run_checkpoints,
        )


@dataclass(frozen=True)
class Initialisation:
    """One way to initialise the encoder.

    Attributes:
        name: "scratch", "imagenet" or "hydranet".
        encoder_weights: The `encoder_weights` value of its runs (None: random).
        available: False when the weights cannot be had here; such an initialisation gets no runs.
        source: Where the weights come from, or why they are unavailable.
    """

    name: str
    encoder_weights: str | None
    available: bool
    source: str


@dataclass(frozen=True)
class TransferRun:
    """One fine-tuning run of the benchmark.

    Attributes:
        task: Name of the target task.
        initialisation: "scratch", "imagenet" or "hydranet".
        budget_cases: Labelled training cases (volumes).
        seed: Seed of the run.
        dice_mean: Validation Dice averaged over the foreground classes present.
        dice: Validation Dice per foreground class ("dice/<class>").
        train_cases: Ids of the cases trained on.
        val_cases: Ids of the held-out cases scored.
        steps: Optimisation steps.
        wall_time_s: Training time in seconds.
        output_dir: The run folder.
    """

    task: str
    initialisation: str
    budget_cases: int
    seed: int
    dice_mean: float
    dice: dict[str, float] = field(default_factory=dict)
    train_cases: tuple[str, ...] = ()
    val_cases: tuple[str, ...] = ()
    steps: int = 0
    wall_time_s: float = 0.0
    output_dir: str = ""


def find_imagenet_weights(request: str | None, architecture: str) -> Initialisation:
    """Locate ImageNet encoder weights without any download.

    Args:
        request: "auto" (smp's ImageNet file of `architecture` in the local Hugging Face cache),
            a path to a .safetensors file, or None to leave ImageNet out.
        architecture: smp encoder name of the network, e.g. "resnet34".

    Returns:
        The ImageNet initialisation, available or not, with the reason.

    Raises:
        ValueError: When `request` is a path that does not exist.
    """
    if request is None:
        return Initialisation(IMAGENET, None, False, "not requested (imagenet_weights=None)")
    if request != IMAGENET_AUTO:
        path = Path(request).expanduser()
        if not path.is_file():
            raise ValueError(
                f"imagenet_weights={request!r} does not exist: pass a .safetensors file of {architecture} "
                f"ImageNet weights, '{IMAGENET_AUTO}' or None."
            )
        return Initialisation(IMAGENET, str(path), True, f"file {path}")

    import segmentation_models_pytorch as smp
    from huggingface_hub import try_to_load_from_cache

    settings = smp.encoders.encoders.get(architecture, {}).get("pretrained_settings", {}).get("imagenet")
    if not settings:
        return Initialisation(IMAGENET, None, False, f"unavailable: smp {smp.__version__} has no ImageNet weights "
                              f"for {architecture}")
    repo, revision = settings["repo_id"], settings["revision"]
    # The cache look-up reads local files only, so a machine without network is never contacted.
    cached = try_to_load_from_cache(repo, "model.safetensors", revision=revision)
    if not isinstance(cached, str):
        return Initialisation(
            IMAGENET, None, False,
            f"unavailable: {repo}@{revision} is not in the local Hugging Face cache and is not downloaded; "
            "pass imagenet_weights=PATH to a .safetensors copy",
        )
    return Initialisation(IMAGENET, cached, True, f"{repo}@{revision} from the local Hugging Face cache")


def resolve_initialisations(config: TransferConfig) -> tuple[Initialisation, ...]:
    """Return scratch, ImageNet and HydraNet, with the HydraNet weights resolved and verified.

    Raises:
        HydraNetHubError: When the HydraNet weights cannot be found, downloaded or verified.
        ValueError: When `imagenet_weights` is a path that does not exist.
    """
    from hydranet_hub import resolve_weights

    resolved = resolve_weights(config.hydranet_weights)
    hydranet = Initialisation(HYDRANET, config.hydranet_weights, True,
                              f"{resolved.description} (sha256 {resolved.sha256})")
    scratch = Initialisation(SCRATCH, None, True, "random initialisation")
    imagenet = find_imagenet_weights(config.imagenet_weights, _encoder_architecture(config.base.encoder))
    return scratch, imagenet, hydranet


def _encoder_architecture(encoder: str) -> str:
    if encoder == "hydranet":
        from hydranet_hub import DEFAULT_TAG, get_release

        return get_release(DEFAULT_TAG).architecture
    return encoder.removeprefix("hydranet_")


def count_train_cases(base: FinetuneConfig, cache_dir: Path) -> int:
    """Build or reuse the slice cache of the task and count the cases of its train split."""
    from hydranet_hub import data
    from hydranet_hub.training.task_data import resolve_task_configs

    (task,) = resolve_task_configs(base.training_config())
    cache = data.build_slice_cache([task], cache_dir, slice_size=base.slice_size, context_slices=base.context_slices,
                                   val_fraction=base.val_fraction, seed=base.split_seed, num_workers=base.num_workers)
    return len(cache.cases(task.name, "train"))


def plan_budgets(budgets: Sequence[int | None], available: int) -> tuple[int, ...]:
    """Turn requested budgets into sorted, distinct case counts; None becomes `available`.

    Budgets above `available` are dropped with a warning.
    """
    planned = set()
    for budget in budgets:
        cases = available if budget is None else budget
        if cases > available:
            _logger.warning("Budget %d dropped: the train split has %d case(s)", cases, available)
            continue
        planned.add(cases)
    if not planned:
        raise ValueError(f"No budget fits the {available} training case(s); pass budgets up to {available} or None.")
    return tuple(sorted(planned))


def run_transfer_benchmark(config: TransferConfig) -> Any:
    """Fine-tune every available initialisation at every budget and seed, then write the report.

    Finished runs found in the benchmark folder with the same settings are reused, and
    interrupted ones resume from their last checkpoint, so an interrupted benchmark continues
    where it stopped.

    Args:
        config: The benchmark settings; `config.reduced()` gives the quick pipeline check.

    Returns:
        hydranet_hub.finetune.transfer_report.TransferReport, with the paths of the files written.

    Raises:
        HydraNetHubError: When the HydraNet weights cannot be found, downloaded or verified.
        ValueError: For invalid settings, or when runs were scored on different held-out cases.
    """
    from hydranet_hub.finetune.transfer_report import summarise, write_report

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(config.base.cache_dir) if config.base.cache_dir else output_dir / "slice-cache"
    initialisations = resolve_initialisations(config)
    for initialisation in initialisations:
        _logger.info("Initialisation %s: %s", initialisation.name, initialisation.source)

    available = count_train_cases(config.base, cache_dir)
    budgets = plan_budgets(config.budgets, available)
    runs = []
    for budget in budgets:
        for initialisation in initialisations:
            if not initialisation.available:
                continue
            for seed in config.seeds:
                settings = config.base.replace(
                    encoder_weights=initialisation.encoder_weights, train_cases=None if budget == available else budget,
                    seed=seed, output_dir=str(output_dir / "runs" / initialisation.name / f"cases-{budget:03d}" / f"seed-{seed}"),
                    cache_dir=str(cache_dir), save_model=config.save_models, val_at_start=False, resume=None,
                    stop_at_step=None,
                )
                runs.append(_run_or_reuse(settings, initialisation.name, budget, config.keep_run_checkpoints))

    _check_same_validation_cases(runs)
    rows = summarise(runs, initialisations, budgets, available)
    return write_report(config, initialisations, runs, rows, budgets, available)


def _run_or_reuse(settings: FinetuneConfig, name: str, budget: int, keep_run_checkpoints: bool) -> TransferRun:
    run_dir = Path(settings.output_dir)
    result_path = run_dir / RESULT_NAME
    saved_settings = run_dir / RUN_CONFIG_NAME
    if saved_settings.is_file():
        saved = json.loads(saved_settings.read_text(encoding="utf-8"))
        if not _same_settings(saved, settings.to_dict()):
            raise ValueError(
                f"Run folder {run_dir} belongs to a run with other settings; choose another benchmark output folder."
            )
        if result_path.is_file() and json.loads(result_path.read_text(encoding="utf-8")).get("finished"):
            _logger.info("Reusing the finished run in %s", run_dir)
            return _transfer_run(json.loads(result_path.read_text(encoding="utf-8")), name, budget, settings.seed)
        if list_checkpoints(run_dir):
            settings = settings.replace(resume="latest")

    _logger.info("Fine-tuning %s with %d labelled case(s), seed %d", name, budget, settings.seed)
    finetune(settings)
    if not keep_run_checkpoints:
        shutil.rmtree(run_dir / CHECKPOINT_DIRNAME, ignore_errors=True)
    return _transfer_run(json.loads(result_path.read_text(encoding="utf-8")), name, budget, settings.seed)


def _same_settings(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    ignored = ("resume", "stop_at_step")
    return {k: v for k, v in saved.items() if k not in ignored} == {k: v for k, v in current.items() if k not in ignored}


def _transfer_run(document: dict[str, Any], name: str, budget: int, seed: int) -> TransferRun:
    metrics = document.get("metrics") or {}
    mean = metrics.get("dice/mean")
    return TransferRun(
        task=str(document.get("task", "")), initialisation=name, budget_cases=budget, seed=seed,
        dice_mean=float("nan") if mean is None else float(mean),
        dice={key: (float("nan") if value is None else float(value)) for key, value in metrics.items()
              if key != "dice/mean"},
        train_cases=tuple(document.get("train_cases", ())), val_cases=tuple(document.get("val_cases", ())),
        steps=int(document.get("step", 0)), wall_time_s=float(document.get("wall_time_s", 0.0)),
        output_dir=str(document.get("output_dir", "")),
    )


def _check_same_validation_cases(runs: Sequence[TransferRun]) -> None:
    splits = {run.val_cases for run in runs}
    if len(splits) > 1:
        raise ValueError(
            f"Runs were scored on different held-out cases {sorted(splits)}; use one split_seed and val_fraction "
            "for every run, in a new benchmark output folder."
        )
    if runs and not runs[0].val_cases:
        raise ValueError("The task has no held-out validation cases; set val_fraction > 0 with at least 2 cases.")
