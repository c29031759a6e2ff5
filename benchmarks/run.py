"""Run the benchmarks, write their JSON results and regenerate the tables of docs/benchmarks.md.

Usage::

    python -m benchmarks.run --quick          # a few minutes
    python -m benchmarks.run                  # the recorded run, about half an hour on 2 shared cores
    python -m benchmarks.run --only train_step loader

Every figure is a ratio against its alternative measured in the same run, with repetitions
interleaved, because the machines here are shared with other processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Progress bars of cache building and training would interleave with the log; set before tqdm loads.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from benchmarks import demo_memory, hub_load, loader, predict, startup, step_phases, train_step  # noqa: E402
from benchmarks.machine import describe_machine, load_average  # noqa: E402
from benchmarks.report import DEFAULT_DOCS, update_docs  # noqa: E402
from benchmarks.timing import primary_clock  # noqa: E402

_logger = logging.getLogger("benchmarks.run")

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Shortened demo runs: each still builds the cache, trains, validates twice, writes checkpoints and exports.
# NOTE: the documented 300-step demo took minutes per ten steps on the shared 2-core machine, so even the full
# mode measures a shortened run. Model, optimiser state and batch sizes do not change with the step count,
# but a 300-step run's peak was not measured.
_QUICK_DEMO_ARGS = ("--steps", "6", "--val-every", "3", "--checkpoint-every", "3", "--warmup-steps", "1")
_FULL_DEMO_ARGS = ("--steps", "12", "--val-every", "6", "--checkpoint-every", "6", "--warmup-steps", "1")


def benchmark_plan(quick: bool, threads: int) -> dict[str, tuple[Callable[[Any], dict], Any]]:
    """Return benchmark name -> (run function, settings) for the quick or the full mode."""
    if quick:
        return {
            "train_step": (train_step.run, train_step.StepSettings(batch_size_per_task=1, rounds=3)),
            "step_phases": (step_phases.run, train_step.StepSettings(batch_size_per_task=1, rounds=3)),
            "loader": (loader.run, loader.LoaderSettings(rounds=3, trainer_batch_size_per_task=1)),
            "hub_load": (hub_load.run, hub_load.HubLoadSettings(rounds=5, threads=threads)),
            "startup": (startup.run, startup.StartupSettings(runs=20, library_runs=3)),
            "predict": (predict.run, predict.PredictSettings(slice_size_px=128, slices=32, rounds=3,
                                                             threads=threads)),
            "demo_memory": (demo_memory.run, demo_memory.DemoSettings(extra_args=_QUICK_DEMO_ARGS)),
        }
    return {
        "train_step": (train_step.run, train_step.StepSettings(batch_size_per_task=4, rounds=5)),
        "step_phases": (step_phases.run, train_step.StepSettings(batch_size_per_task=4, rounds=3)),
        "loader": (loader.run, loader.LoaderSettings(rounds=5, trainer_batch_size_per_task=2)),
        "hub_load": (hub_load.run, hub_load.HubLoadSettings(rounds=11, threads=threads)),
        "startup": (startup.run, startup.StartupSettings(runs=40, library_runs=5)),
        "predict": (predict.run, predict.PredictSettings(slice_size_px=256, slices=64, rounds=3, threads=threads)),
        "demo_memory": (demo_memory.run, demo_memory.DemoSettings(extra_args=_FULL_DEMO_ARGS)),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark hydranet-hub: every figure is a ratio against its alternative, timed interleaved "
        "in the same run. Writes benchmarks/results/<mode>.json and the tables of docs/benchmarks.md.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="Smaller sizes, fewer repetitions and a 6-step demo run: a few minutes instead of about "
                        "half an hour.")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(benchmark_plan(False, 1)),
                        help="Run only these benchmarks (default: all).")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch threads of the timed processes; with 1, ratios are read from CPU time, which "
                        "other processes on the machine barely move (default: 1).")
    parser.add_argument("--results", type=Path, metavar="FILE",
                        help="JSON output (default: benchmarks/results/quick.json or full.json).")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, metavar="FILE",
                        help="Markdown file whose generated section is rewritten (default: docs/benchmarks.md).")
    parser.add_argument("--no-docs", action="store_true", help="Write the JSON results only.")
    return parser


def run_benchmarks(plan: dict[str, tuple[Callable[[Any], dict], Any]]) -> dict[str, dict[str, Any]]:
    """Run every planned benchmark; a failing one is recorded with its error and the others still run."""
    results: dict[str, dict[str, Any]] = {}
    for name, (run_function, settings) in plan.items():
        _logger.info("Running %s (load average %s)", name, load_average())
        start = time.perf_counter()
        try:
            results[name] = run_function(settings)
        except Exception as error:  # noqa: BLE001 - one broken benchmark must not lose the others' results
            _logger.exception("Benchmark %s failed", name)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        results[name]["duration_s"] = time.perf_counter() - start
        results[name]["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        for figure in results[name].get("figures", []):
            verdict = {None: "information", True: "met", False: "MISSED"}[figure["met"]]
            _logger.info("%s = %.3g %s (target %s: %s) %s", figure["key"], figure["value"], figure["unit"],
                         figure["target"], verdict, figure["detail"])
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return 0, or 1 when a benchmark failed to run (missed targets are not failures)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads < 1:
        print(f"--threads {args.threads} is invalid: expected 1 or more.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    mode = "quick" if args.quick else "full"
    plan = benchmark_plan(args.quick, args.threads)
    if args.only:
        plan = {name: plan[name] for name in args.only}

    results_path = args.results or RESULTS_DIR / f"{mode}.json"
    machine = describe_machine(REPO_ROOT)
    benchmarks = run_benchmarks(plan)
    for result in benchmarks.values():
        result["command"] = machine["command"]
    if args.only and results_path.is_file():
        # A partial run replaces its own entries and keeps the others' earlier results and commands.
        earlier = json.loads(results_path.read_text(encoding="utf-8"))
        if earlier.get("mode") == mode:
            for result in earlier["benchmarks"].values():
                result.setdefault("command", earlier["machine"]["command"])
            benchmarks = {**earlier["benchmarks"], **benchmarks}
    results = {
        "mode": mode,
        "clock": primary_clock(args.threads),
        "machine": machine,
        "benchmarks": benchmarks,
        "load_average_end": load_average(),
    }

    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    _logger.info("Wrote %s", results_path)
    if not args.no_docs:
        update_docs(results, args.docs)
    return 1 if any("error" in result for result in results["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
