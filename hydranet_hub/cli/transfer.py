"""`hydranet-transfer`: the transfer benchmark, scratch vs ImageNet vs HydraNet at several labelled-data budgets.

A thin wrapper around `hydranet_hub.finetune.transfer.run_transfer_benchmark`. The fine-tuning
options are those of `hydranet-finetune`, except the ones the benchmark sets per run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from hydranet_hub.cli.finetune import (
    add_finetune_arguments, configure_logging, flag_settings, parse_budget_cases, parse_weights_spec,
)
from hydranet_hub.finetune.config import DEMO_PRETRAIN_EXPORT, DEMO_SETTINGS, FinetuneConfig
from hydranet_hub.finetune.transfer import IMAGENET_AUTO, TransferConfig
from hydranet_hub.training.config import load_config_file

PROG = "hydranet-transfer"
DEFAULT_OUTPUT_DIR = "runs/hydranet-transfer"
DEMO_OUTPUT_DIR = "hydranet-demo-transfer"
_PER_RUN = ("encoder_weights", "train_cases", "seed", "output_dir", "resume", "stop_at_step", "save_model",
            "val_at_start")
_BENCHMARK_OPTIONS = ("config", "log_level", "hydranet_weights", "imagenet_weights", "budgets", "seeds",
                      "benchmark_output_dir", "reduced", "save_models", "keep_run_checkpoints")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser; fine-tuning options default to 'not given' so they override only when set."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune one task from scratch, from ImageNet (when its weights are in the local Hugging "
        "Face cache or given as a file) and from HydraNet weights, under identical settings, at several "
        "labelled-data budgets and seeds. Every run is scored on the same held-out cases. Writes transfer.md, "
        "transfer.json, transfer_runs.csv, transfer_summary.csv and transfer.png to --output-dir.",
        argument_default=argparse.SUPPRESS,
        epilog="Example: hydranet-transfer --task /data/msd/Task04_Hippocampus --hydranet-weights runs/msd7/export "
        "--budgets 1 2 4 all --seeds 0 1 2    (after `hydranet-pretrain --demo`: hydranet-transfer --demo)",
    )

    benchmark = parser.add_argument_group("benchmark")
    benchmark.add_argument("--hydranet-weights", metavar="SPEC",
                           help="HydraNet encoder weights: a .safetensors file or its folder (e.g. the export folder "
                           "of hydranet-pretrain), a release tag or hf-hub:org/repo@revision. Required unless "
                           f"--demo, which uses {DEMO_PRETRAIN_EXPORT}.")
    benchmark.add_argument("--imagenet-weights", type=parse_weights_spec, default=IMAGENET_AUTO, metavar="SPEC",
                           help="'auto': smp's ImageNet weights of the encoder's architecture if they are in the local "
                           "Hugging Face cache (never downloaded; otherwise reported as unavailable), a .safetensors "
                           f"file, or none to leave ImageNet out. (default: {IMAGENET_AUTO})")
    benchmark.add_argument("--budgets", type=parse_budget_cases, nargs="+", default=[1, 2, 4, None], metavar="N",
                           help="Labelled training cases (volumes) per run, 'all' for the whole train split; budgets "
                           "above the train split are dropped. (default: 1 2 4 all)")
    benchmark.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="N",
                           help="Seeds; each run's case budget, decoder initialisation and data order follow its "
                           "seed. (default: 0 1 2)")
    benchmark.add_argument("--output-dir", dest="benchmark_output_dir", metavar="DIR",
                           help=f"Benchmark folder: runs/, report files, slice cache. Rerunning continues an "
                           f"interrupted benchmark. (default: {DEFAULT_OUTPUT_DIR}; with --demo: {DEMO_OUTPUT_DIR})")
    benchmark.add_argument("--reduced", action="store_true", default=False,
                           help="Pipeline check: 4 steps of batch 2 on 32x32 slices, the smallest budget and the "
                           "first seed; its Dice scores mean nothing.")
    benchmark.add_argument("--save-models", action="store_true", default=False,
                           help="Keep every run's model folder (about 100 MB each for a ResNet-34 U-Net).")
    benchmark.add_argument("--keep-run-checkpoints", action="store_true", default=False,
                           help="Keep every finished run's checkpoints (about 3x the model size each).")

    parser.add_argument("--config", metavar="FILE",
                        help="YAML or JSON file of fine-tuning settings shared by every run (keys as the long "
                        "options of hydranet-finetune); flags override it.")
    add_finetune_arguments(parser, skip=_PER_RUN)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="Logging level (default: INFO)")
    return parser


def resolve_config(argv: Sequence[str] | None = None) -> tuple[TransferConfig, argparse.Namespace]:
    """Parse arguments into the benchmark settings.

    Returns:
        The validated settings (reduced when --reduced is given) and the parsed namespace.

    Raises:
        SystemExit: For --help or unparsable arguments (argparse's behaviour).
        ValueError: For invalid settings; the message names the setting and the fix.
    """
    namespace = build_parser().parse_args(argv)
    flags = flag_settings(namespace, ignored=_BENCHMARK_OPTIONS)
    from_file = load_config_file(namespace.config) if getattr(namespace, "config", None) else {}
    from_file = {key.replace("-", "_"): value for key, value in from_file.items()}

    explicit = {**from_file, **flags}
    demo = bool(explicit.get("demo"))
    shared: dict[str, Any] = dict(DEMO_SETTINGS) if demo else {}
    shared.update(explicit)
    ignored = sorted(key for key in shared if key in _PER_RUN and key in explicit)
    if ignored:
        logging.getLogger(PROG).warning("Ignoring %s from --config: the benchmark sets them per run", ignored)
    base = FinetuneConfig.from_mapping({key: value for key, value in shared.items() if key not in _PER_RUN},
                                       source="settings")

    weights = getattr(namespace, "hydranet_weights", DEMO_PRETRAIN_EXPORT if demo else None)
    if not weights:
        raise ValueError("--hydranet-weights is missing: pass the HydraNet weights (e.g. the export folder of "
                         "hydranet-pretrain), or use --demo.")
    output_dir = getattr(namespace, "benchmark_output_dir", DEMO_OUTPUT_DIR if demo else DEFAULT_OUTPUT_DIR)
    config = TransferConfig(
        base=base, hydranet_weights=weights, imagenet_weights=namespace.imagenet_weights,
        budgets=tuple(namespace.budgets), seeds=tuple(namespace.seeds), output_dir=output_dir,
        save_models=namespace.save_models, keep_run_checkpoints=namespace.keep_run_checkpoints,
    )
    return (config.reduced() if namespace.reduced else config), namespace


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hydranet-transfer` and return its exit status (0 success, 1 failure, 2 invalid settings)."""
    try:
        config, namespace = resolve_config(argv)
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    configure_logging(namespace.log_level)

    from hydranet_hub.errors import HydraNetHubError
    from hydranet_hub.finetune.transfer import run_transfer_benchmark

    try:
        report = run_transfer_benchmark(config)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, ImportError, HydraNetHubError) as error:
        logging.getLogger(PROG).debug("Benchmark failed", exc_info=True)
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1

    print(report.markdown_path.read_text(encoding="utf-8"))
    print(f"Written: {report.markdown_path}, {report.json_path}, {report.runs_csv_path}, {report.summary_csv_path}"
          + (f", {report.plot_path}" if report.plot_path is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
