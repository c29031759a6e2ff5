"""`hydranet-finetune`: fine-tune an smp model with the HydraNet encoder (or any smp encoder) on one task.

Settings are merged in this order, later winning: FinetuneConfig defaults, the --demo settings,
the saved settings of the run being resumed (with --resume), the --config file, and the flags
given on the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydranet_hub.finetune.config import DEMO_SETTINGS, FinetuneConfig
from hydranet_hub.training.config import AMP_CHOICES, LABEL_MODES, load_config_file
from hydranet_hub.training.run import RUN_CONFIG_NAME

PROG = "hydranet-finetune"
_DEFAULTS = FinetuneConfig(task="TASK")
# Settings of a saved run that describe that process, not the run, so resuming does not inherit them.
_NOT_INHERITED_ON_RESUME = ("resume", "stop_at_step")
NONE_WORDS = ("none", "null", "random")


def _default(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    if isinstance(value, tuple):
        value = " ".join(str(item) for item in value) or "none"
    demo = DEMO_SETTINGS.get(name)
    if demo is not None and name != "demo":
        if isinstance(demo, tuple):
            demo = " ".join(str(item) for item in demo)
        return f"(default: {value}; with --demo: {demo})"
    return f"(default: {value})"


def parse_weights_spec(text: str) -> str | None:
    """Return an --encoder-weights value, with none, null and random meaning None."""
    return None if text.strip().lower() in NONE_WORDS else text


def parse_budget_cases(text: str) -> int | None:
    """Return a case count, with 'all' meaning None (every case)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid case count {text!r}: expected an integer >= 1 or 'all'") from None


def add_finetune_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """Add the options of every FinetuneConfig setting, each defaulting to 'not given'.

    Args:
        parser: A parser built with `argument_default=argparse.SUPPRESS`.
        skip: Destination names to leave out (e.g. settings a caller sets per run).
    """
    groups = {
        "data": parser.add_argument_group("data"),
        "model": parser.add_argument_group("model"),
        "transfer": parser.add_argument_group("transfer"),
        "optimisation": parser.add_argument_group("optimisation"),
        "run": parser.add_argument_group("run"),
    }

    def add(group: str, *flags: str, **kwargs: Any) -> None:
        destination = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if destination not in skip:
            groups[group].add_argument(*flags, **kwargs)

    add("data", "--task", metavar="NAME_OR_DIR",
        help="Target task: a folder name under --data-root, or a path to an MSD task folder (dataset.json, "
        "imagesTr/, labelsTr/).")
    add("data", "--data-root", metavar="DIR", help="Folder of MSD task folders that --task names one of.")
    add("data", "--demo", action="store_true",
        help=f"Fine-tune on the held-out demo task (Task17_Hippocampus) with settings sized for a CPU, starting "
        f"from the encoder that `hydranet-pretrain --demo` exports to {DEMO_SETTINGS['encoder_weights']}. "
        "Explicit options override them.")
    add("data", "--label-mode", choices=LABEL_MODES,
        help=f"'all' keeps every class of dataset.json, 'merge' maps all foreground classes to 1. {_default('label_mode')}")
    add("data", "--modalities", type=int, nargs="+", metavar="INDEX",
        help="dataset.json modality indices used as input channels. Input channels = number of modalities x "
        f"(2 x --context-slices + 1). {_default('modalities')}")
    add("data", "--slice-size", type=int, nargs="+", metavar="PX",
        help=f"In-plane size H [W] in pixels that slices are resized to. {_default('slice_size')}")
    add("data", "--context-slices", type=int, metavar="K",
        help=f"2.5D context: slices z-K..z+K become 2K+1 channels per modality. {_default('context_slices')}")
    add("data", "--val-fraction", type=float, metavar="F",
        help=f"Share of the task's cases (volumes) held out for validation. {_default('val_fraction')}")
    add("data", "--split-seed", type=int, metavar="N",
        help=f"Seed of the train/validation case split, kept apart from --seed so that every seed is scored "
        f"on the same held-out cases. {_default('split_seed')}")
    add("data", "--train-cases", type=parse_budget_cases, metavar="N",
        help="Labelled-data budget: train on N cases (volumes) of the train split, or 'all'. Budgets are "
        "nested: for one --seed, the cases of a smaller budget are among those of a larger one. (default: all)")
    add("data", "--slice-fraction", type=float, metavar="F",
        help="Labelled-data budget in slices: train on a seeded share F (0 < F <= 1) of the training slices, "
        "after --train-cases. (default: all slices)")
    add("data", "--cache-dir", metavar="DIR",
        help="Slice cache folder, reused across runs with the same settings (default: OUTPUT_DIR/slice-cache)")
    add("data", "--augment", action=argparse.BooleanOptionalAction,
        help=f"Random flips, rotations and intensity changes of training slices. {_default('augment')}")

    add("model", "--arch", metavar="NAME",
        help=f"smp architecture: Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Linknet, PSPNet, PAN, MAnet, UPerNet, "
        f"Segformer, ... (any case). {_default('arch')}")
    add("model", "--encoder", metavar="NAME", help=f"smp encoder name. {_default('encoder')}")
    add("model", "--encoder-weights", type=parse_weights_spec, metavar="SPEC",
        help="Initial encoder weights: a HydraNet release tag, 'imagenet' (for hydranet: the default HydraNet "
        "release), a .safetensors file or its folder (e.g. the export folder of hydranet-pretrain), "
        f"hf-hub:org/repo@revision, or none for random initialisation. {_default('encoder_weights')}")

    add("transfer", "--freeze-encoder-steps", type=int, metavar="N",
        help=f"Keep the encoder (weights and batch-norm statistics) frozen for the first N steps while the "
        f"decoder trains. {_default('freeze_encoder_steps')}")
    add("transfer", "--encoder-lr-mult", type=float, metavar="F",
        help=f"Encoder learning rate as a multiple of --lr once it trains. {_default('encoder_lr_mult')}")

    add("optimisation", "--steps", type=int, metavar="N", help=f"Optimisation steps. {_default('steps')}")
    add("optimisation", "--batch-size", type=int, metavar="N",
        help=f"Slices per step on each process. {_default('batch_size')}")
    add("optimisation", "--lr", type=float, metavar="LR", help=f"Peak AdamW learning rate. {_default('lr')}")
    add("optimisation", "--min-lr-ratio", type=float, metavar="F",
        help=f"Final learning rate of the cosine decay as a fraction of --lr. {_default('min_lr_ratio')}")
    add("optimisation", "--weight-decay", type=float, metavar="WD",
        help=f"AdamW decoupled weight decay (not applied to biases and norms). {_default('weight_decay')}")
    add("optimisation", "--warmup-steps", type=int, metavar="N",
        help=f"Steps of linear learning-rate warmup before the cosine decay. {_default('warmup_steps')}")
    add("optimisation", "--dice-weight", type=float, metavar="W", help=f"Weight of the soft Dice term. {_default('dice_weight')}")
    add("optimisation", "--ce-weight", type=float, metavar="W", help=f"Weight of the cross-entropy term. {_default('ce_weight')}")
    add("optimisation", "--grad-clip-norm", type=float, metavar="NORM",
        help=f"Clip the global gradient L2 norm to NORM; 0 disables. {_default('grad_clip_norm')}")
    add("optimisation", "--amp", choices=AMP_CHOICES,
        help=f"Autocast dtype; auto = bf16 on GPUs that support it, fp16 on older GPUs, none on CPU. {_default('amp')}")
    add("optimisation", "--channels-last", action=argparse.BooleanOptionalAction,
        help=f"channels_last memory format (faster convolutions on recent GPUs). {_default('channels_last')}")
    add("optimisation", "--seed", type=int, metavar="N",
        help=f"Seed of initialisation, case budget, data order and augmentation. {_default('seed')}")
    add("optimisation", "--deterministic", action=argparse.BooleanOptionalAction,
        help=f"Request deterministic kernels (slower on GPU). {_default('deterministic')}")

    add("run", "--output-dir", metavar="DIR",
        help=f"Run folder: checkpoints, metrics.csv, TensorBoard, previews, result.json, model/. {_default('output_dir')}")
    add("run", "--resume", nargs="?", const="latest", metavar="CHECKPOINT",
        help="Continue a run: from its newest checkpoint in --output-dir, or from CHECKPOINT. The run's saved "
        "settings are reused unless overridden.")
    add("run", "--stop-at-step", type=int, metavar="N",
        help="Stop after step N with a checkpoint, to continue later with --resume; the learning-rate schedule "
        "still spans --steps")
    add("run", "--val-every", type=int, metavar="N",
        help=f"Validate (Dice per class on the held-out cases) every N steps and at the end; 0: only at the end. "
        f"{_default('val_every')}")
    add("run", "--val-at-start", action=argparse.BooleanOptionalAction,
        help=f"Also validate before the first step, to record the starting point. {_default('val_at_start')}")
    add("run", "--val-max-batches", type=int, metavar="N",
        help="Validate on at most N batches (default: every validation slice)")
    add("run", "--checkpoint-every", type=int, metavar="N",
        help=f"Write a checkpoint every N steps and at the end; 0: only at the end. {_default('checkpoint_every')}")
    add("run", "--keep-checkpoints", type=int, metavar="N",
        help=f"Keep the newest N checkpoints; 0 keeps all. {_default('keep_checkpoints')}")
    add("run", "--log-every", type=int, metavar="N", help=f"Write training losses every N steps. {_default('log_every')}")
    add("run", "--num-workers", type=int, metavar="N",
        help=f"DataLoader worker processes, and cache-building workers. {_default('num_workers')}")
    add("run", "--device", metavar="DEVICE", help=f"auto, cpu, cuda (the local rank's GPU) or cuda:N. {_default('device')}")
    add("run", "--save-model", action=argparse.BooleanOptionalAction,
        help=f"Save the finished model to OUTPUT_DIR/model (smp save_pretrained + preprocessing.json). "
        f"{_default('save_model')}")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser; every option defaults to 'not given' so it overrides only when set."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune a segmentation_models_pytorch model (any architecture) with the HydraNet encoder, "
        "or any smp encoder, on one MSD-format task, then save it for `hydranet-predict` and smp.from_pretrained. "
        "Runs on one device or under `torchrun --nproc_per_node N`.",
        argument_default=argparse.SUPPRESS,
        epilog="Example: hydranet-finetune --task /data/msd/Task04_Hippocampus --encoder-weights runs/msd7/export "
        "--train-cases 4 --freeze-encoder-steps 200    (after `hydranet-pretrain --demo`: hydranet-finetune --demo)",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="YAML or JSON file of settings (keys as the long options, '-' or '_'); flags override it.")
    add_finetune_arguments(parser)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="Logging level of rank 0; other ranks log warnings and errors only (default: INFO)")
    return parser


def flag_settings(namespace: argparse.Namespace, ignored: Sequence[str] = ("config", "log_level")) -> dict[str, Any]:
    """Return the FinetuneConfig settings given as flags, with --slice-size H [W] as (H, W).

    Raises:
        ValueError: When --slice-size has more than two values.
    """
    settings = {key: value for key, value in vars(namespace).items() if key not in ignored}
    if "slice_size" in settings:
        size = settings["slice_size"]
        if len(size) not in (1, 2):
            raise ValueError(f"--slice-size {' '.join(map(str, size))} is invalid: give H or H W in pixels, e.g. 256 256.")
        settings["slice_size"] = (size[0], size[-1])
    return settings


def _saved_run_settings(output_dir: str) -> dict[str, Any]:
    path = Path(output_dir) / RUN_CONFIG_NAME
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    return {key: value for key, value in saved.items() if key not in _NOT_INHERITED_ON_RESUME}


def resolve_config(argv: Sequence[str] | None = None) -> tuple[FinetuneConfig, argparse.Namespace]:
    """Parse arguments and merge defaults, --demo settings, a resumed run's settings, --config and flags.

    Args:
        argv: Arguments without the program name (default: sys.argv[1:]).

    Returns:
        The validated config and the parsed namespace.

    Raises:
        SystemExit: For --help or unparsable arguments (argparse's behaviour).
        ValueError: For invalid settings; the message names the setting and the fix.
    """
    namespace = build_parser().parse_args(argv)
    flags = flag_settings(namespace)
    from_file = load_config_file(namespace.config) if getattr(namespace, "config", None) else {}
    from_file = {key.replace("-", "_"): value for key, value in from_file.items()}

    explicit = {**from_file, **flags}
    merged: dict[str, Any] = {}
    if explicit.get("demo"):
        merged.update(DEMO_SETTINGS)
    if explicit.get("resume"):
        output_dir = explicit.get("output_dir", merged.get("output_dir", _DEFAULTS.output_dir))
        merged.update(_saved_run_settings(str(output_dir)))
    merged.update(explicit)
    return FinetuneConfig.from_mapping(merged, source="settings"), namespace


def configure_logging(level: str) -> None:
    """Log at `level` on rank 0 and at WARNING on the other ranks of a torchrun job."""
    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(
        level=getattr(logging, level) if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s" if "WORLD_SIZE" in os.environ
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _print_summary(result: Any) -> None:
    print(f"Run folder: {result.output_dir} ({result.step} steps, {result.wall_time_s:.0f} s)")
    print(f"Task {result.task}: {len(result.train_cases)} training case(s), {result.num_train_slices} slices; "
          f"{len(result.val_cases)} validation case(s)")
    for name, value in result.metrics.items():
        print(f"  validation {name}: {value:.4f}")
    if not result.finished:
        print(f"Stopped before the last step; continue with: {PROG} --output-dir {result.output_dir} --resume")
    if result.model_dir is not None:
        print(f"Model folder: {result.model_dir}")
        print(f"  segment volumes: hydranet-predict --model {result.model_dir} --input SCANS --output LABELS")
        print(f"  load in Python:  smp.from_pretrained('{result.model_dir}')")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hydranet-finetune` and return its exit status (0 success, 1 failure, 2 invalid settings)."""
    try:
        config, namespace = resolve_config(argv)
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    configure_logging(namespace.log_level)

    from hydranet_hub.errors import HydraNetHubError
    from hydranet_hub.finetune import finetune

    try:
        result = finetune(config)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume from the last checkpoint", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, ImportError, HydraNetHubError) as error:
        # Library errors carry the value and the fix; a traceback adds nothing for a user.
        logging.getLogger(PROG).debug("Run failed", exc_info=True)
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1

    if int(os.environ.get("RANK", "0") or 0) == 0:
        _print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
