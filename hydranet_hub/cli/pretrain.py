"""`hydranet-pretrain`: multi-task pretraining of the HydraNet encoder from the command line.

Settings are merged in this order, later winning: PretrainConfig defaults, the --demo
settings, the saved settings of the run being resumed (with --resume), the --config file, and
the flags given on the command line.
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

from hydranet_hub.errors import HydraNetHubError
from hydranet_hub.training.config import AMP_CHOICES, DEMO_SETTINGS, LABEL_MODES, PretrainConfig, load_config_file

PROG = "hydranet-pretrain"
_DEFAULTS = PretrainConfig()
# Settings of a saved run that describe that process, not the run, so resuming does not inherit them.
_NOT_INHERITED_ON_RESUME = ("resume", "stop_at_step")


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


def _task_weight(text: str) -> tuple[str, float]:
    name, separator, weight = text.partition("=")
    try:
        if not separator or not name:
            raise ValueError
        return name, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid task weight {text!r}: expected TASK=WEIGHT, e.g. Task02_Heart=2.0"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser; every option defaults to 'not given' so it overrides only when set."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pretrain the HydraNet encoder (ResNet-34 U-Net encoder shared by one decoder per task) "
        "on several segmentation tasks at once, then export it for segmentation_models_pytorch and timm. "
        "Runs on one device or under `torchrun --nproc_per_node N` (DistributedDataParallel).",
        argument_default=argparse.SUPPRESS,
        epilog="Example: hydranet-pretrain --demo    (embedded demo tasks, a few minutes on 2 CPU cores)",
    )
    add = parser.add_argument

    source = parser.add_argument_group("settings file")
    source.add_argument("--config", metavar="FILE",
                        help="YAML or JSON file of settings (keys as the long options, '-' or '_'); flags override it.")

    data = parser.add_argument_group("data")
    data.add_argument("--demo", action="store_true",
                      help="Train on the embedded demo dataset (real MRI templates in MSD layout) with settings "
                      f"sized for a CPU: {DEMO_SETTINGS['slice_size'][0]}x{DEMO_SETTINGS['slice_size'][1]} slices, "
                      f"{DEMO_SETTINGS['steps']} steps. Explicit options override them.")
    data.add_argument("--data-root", metavar="DIR",
                      help="Folder of MSD task folders (TaskXX_Name with dataset.json). Without --task every task "
                      "folder in it is used.")
    data.add_argument("--task", dest="tasks", action="append", metavar="NAME_OR_DIR",
                      help="Task folder name under --data-root, or a path to a task folder; repeat for several.")
    data.add_argument("--tasks-config", metavar="FILE",
                      help="YAML/JSON list of extra tasks with their own settings (e.g. Task04_Hippocampus, your own data).")
    data.add_argument("--label-mode", choices=LABEL_MODES,
                      help=f"'all' keeps every class of dataset.json, 'merge' maps all foreground classes to 1. {_default('label_mode')}")
    data.add_argument("--modalities", type=int, nargs="+", metavar="INDEX",
                      help=f"dataset.json modality indices used as channels; every task must end up with the same "
                      f"channel count. {_default('modalities')}")
    data.add_argument("--slice-size", type=int, nargs="+", metavar="PX",
                      help=f"In-plane size H [W] in pixels that slices are resized to. {_default('slice_size')}")
    data.add_argument("--context-slices", type=int, metavar="K",
                      help=f"2.5D context: slices z-K..z+K become 2K+1 input channels. {_default('context_slices')}")
    data.add_argument("--val-fraction", type=float, metavar="F",
                      help=f"Share of each task's cases (volumes) held out for validation. {_default('val_fraction')}")
    data.add_argument("--max-cases", type=int, metavar="N",
                      help=f"Train on at most N cases per task. {_default('max_cases')}")
    data.add_argument("--cache-dir", metavar="DIR",
                      help="Slice cache folder, reused across runs with the same settings (default: OUTPUT_DIR/slice-cache)")
    data.add_argument("--augment", action=argparse.BooleanOptionalAction,
                      help=f"Random flips, rotations and intensity changes of training slices. {_default('augment')}")

    model = parser.add_argument_group("model")
    model.add_argument("--encoder", metavar="NAME",
                       help=f"smp encoder name; only hydranet and resnet34 can be exported. {_default('encoder')}")
    model.add_argument("--encoder-weights", metavar="SPEC",
                       help="Initial encoder weights: a HydraNet release tag, 'imagenet', a .safetensors path or "
                       "hf-hub:org/repo@revision (default: random initialisation)")
    model.add_argument("--decoder-channels", type=int, nargs="+", metavar="C",
                       help=f"Output channels of the decoder blocks, deepest first. {_default('decoder_channels')}")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, metavar="N",
                       help=f"Optimisation steps; each step uses one batch of every task. {_default('steps')}")
    optim.add_argument("--batch-size-per-task", type=int, metavar="N",
                       help=f"Slices per task per step on each process. {_default('batch_size_per_task')}")
    optim.add_argument("--lr", type=float, metavar="LR", help=f"Peak AdamW learning rate. {_default('lr')}")
    optim.add_argument("--min-lr-ratio", type=float, metavar="F",
                       help=f"Final learning rate of the cosine decay as a fraction of --lr. {_default('min_lr_ratio')}")
    optim.add_argument("--weight-decay", type=float, metavar="WD",
                       help=f"AdamW decoupled weight decay (not applied to biases and norms). {_default('weight_decay')}")
    optim.add_argument("--warmup-steps", type=int, metavar="N",
                       help=f"Steps of linear learning-rate warmup before the cosine decay. {_default('warmup_steps')}")
    optim.add_argument("--task-weights", type=_task_weight, nargs="+", metavar="TASK=W",
                       help="Loss weight per task, e.g. Task02_Heart=2 (default: 1 for every task)")
    optim.add_argument("--dice-weight", type=float, metavar="W", help=f"Weight of the soft Dice term. {_default('dice_weight')}")
    optim.add_argument("--ce-weight", type=float, metavar="W", help=f"Weight of the cross-entropy term. {_default('ce_weight')}")
    optim.add_argument("--grad-clip-norm", type=float, metavar="NORM",
                       help=f"Clip the global gradient L2 norm to NORM; 0 disables. {_default('grad_clip_norm')}")
    optim.add_argument("--amp", choices=AMP_CHOICES,
                       help=f"Autocast dtype; auto = bf16 on GPUs that support it, fp16 on older GPUs, none on CPU. {_default('amp')}")
    optim.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       help=f"channels_last memory format (faster convolutions on recent GPUs). {_default('channels_last')}")
    optim.add_argument("--seed", type=int, metavar="N", help=f"Seed of initialisation, data order and augmentation. {_default('seed')}")
    optim.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                       help=f"Request deterministic kernels (slower on GPU). {_default('deterministic')}")

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", metavar="DIR",
                     help=f"Run folder: checkpoints, metrics.csv, TensorBoard, previews, export. {_default('output_dir')}")
    run.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                     help="Continue a run: from its newest checkpoint in --output-dir, or from CHECKPOINT. The "
                     "run's saved settings are reused unless overridden.")
    run.add_argument("--stop-at-step", type=int, metavar="N",
                     help="Stop after step N with a checkpoint, to continue later with --resume (for job time limits); "
                     "the learning-rate schedule still spans --steps")
    run.add_argument("--val-every", type=int, metavar="N",
                     help=f"Validate (Dice per task and class) every N steps and at the end; 0: only at the end. {_default('val_every')}")
    run.add_argument("--val-max-batches", type=int, metavar="N",
                     help="Validate on at most N batches per task (default: the whole validation split)")
    run.add_argument("--checkpoint-every", type=int, metavar="N",
                     help=f"Write a checkpoint every N steps and at the end; 0: only at the end. {_default('checkpoint_every')}")
    run.add_argument("--keep-checkpoints", type=int, metavar="N",
                     help=f"Keep the newest N checkpoints; 0 keeps all. {_default('keep_checkpoints')}")
    run.add_argument("--log-every", type=int, metavar="N", help=f"Write training losses every N steps. {_default('log_every')}")
    run.add_argument("--num-workers", type=int, metavar="N",
                     help=f"DataLoader worker processes per task, and cache-building workers. {_default('num_workers')}")
    run.add_argument("--device", metavar="DEVICE",
                     help=f"auto, cpu, cuda (the local rank's GPU) or cuda:N. {_default('device')}")
    run.add_argument("--export", action=argparse.BooleanOptionalAction,
                     help=f"Export model.safetensors, config.json and a model card to OUTPUT_DIR/export at the end. {_default('export')}")
    run.add_argument("--push-to-hub", metavar="REPO",
                     help="Upload the export to this Hub model repository (org/name); uses HF_TOKEN / HF_ENDPOINT")
    run.add_argument("--hub-private", action="store_true", help="Create the Hub repository as private")
    add("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="Logging level of rank 0; other ranks log warnings and errors only (default: INFO)")
    return parser


def _flag_settings(namespace: argparse.Namespace) -> dict[str, Any]:
    settings = {key: value for key, value in vars(namespace).items() if key not in ("config", "log_level")}
    if "task_weights" in settings:
        settings["task_weights"] = dict(settings["task_weights"])
    if "slice_size" in settings:
        size = settings["slice_size"]
        if len(size) not in (1, 2):
            raise ValueError(f"--slice-size {' '.join(map(str, size))} is invalid: give H or H W in pixels, e.g. 256 256.")
        settings["slice_size"] = (size[0], size[-1])
    return settings


def _saved_run_settings(output_dir: str) -> dict[str, Any]:
    from hydranet_hub.training.loop import RUN_CONFIG_NAME

    path = Path(output_dir) / RUN_CONFIG_NAME
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    return {key: value for key, value in saved.items() if key not in _NOT_INHERITED_ON_RESUME}


def resolve_config(argv: Sequence[str] | None = None) -> tuple[PretrainConfig, argparse.Namespace]:
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
    flags = _flag_settings(namespace)
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
    return PretrainConfig.from_mapping(merged, source="settings"), namespace


def _configure_logging(level: str) -> None:
    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(
        level=getattr(logging, level) if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s" if "WORLD_SIZE" in os.environ
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _print_summary(result: Any) -> None:
    print(f"Run folder: {result.output_dir} ({result.step} steps, {result.wall_time_s:.0f} s)")
    for task, values in result.metrics.items():
        print(f"  {task}: validation mean Dice {values.get('dice/mean', float('nan')):.3f}")
    if result.export is None:
        if not result.finished:
            print(f"Stopped before the last step; continue with: {PROG} --output-dir {result.output_dir} --resume")
        return
    print(f"Weights:    {result.export.weights_path}")
    print(f"Config:     {result.export.config_path}")
    print(f"Model card: {result.export.card_path}")
    print(f"sha256:     {result.export.sha256}")
    print("Load the encoder in segmentation_models_pytorch with:")
    print(f'  smp.Unet(encoder_name="hydranet", encoder_weights="{result.export.weights_path.resolve()}")')
    if result.push is not None:
        print(f"Pushed to the Hub: {result.push.url} (pin revision {result.push.commit_sha})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hydranet-pretrain` and return its exit status (0 success, 1 failure, 2 invalid settings)."""
    try:
        config, namespace = resolve_config(argv)
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    _configure_logging(namespace.log_level)

    from hydranet_hub.training import pretrain

    try:
        result = pretrain(config)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue from the last checkpoint with: "
              f"{PROG} --output-dir {config.output_dir} --resume", file=sys.stderr)
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
