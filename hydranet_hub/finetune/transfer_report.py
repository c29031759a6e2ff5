"""The transfer benchmark's report: mean and std of Dice per initialisation and budget, the gain over scratch, a plot."""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydranet_hub._version import __version__

if TYPE_CHECKING:
    from hydranet_hub.finetune.transfer import Initialisation, TransferConfig, TransferRun

_logger = logging.getLogger(__name__)

try:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    HAS_MATPLOTLIB = True
except ImportError:  # matplotlib is part of the optional `train` extra
    pyplot = None
    HAS_MATPLOTLIB = False

MARKDOWN_NAME = "transfer.md"
JSON_NAME = "transfer.json"
RUNS_CSV_NAME = "transfer_runs.csv"
SUMMARY_CSV_NAME = "transfer_summary.csv"
PLOT_NAME = "transfer.png"


@dataclass(frozen=True)
class SummaryRow:
    """Dice of one initialisation at one budget, over seeds.

    Attributes:
        initialisation: "scratch", "imagenet" or "hydranet".
        budget_cases: Labelled training cases (volumes).
        all_cases: True when the budget is the whole train split.
        runs: Number of runs (seeds) with a Dice score.
        dice_mean: Mean over seeds of the validation mean Dice; NaN without runs.
        dice_std: Sample standard deviation over seeds; NaN with fewer than 2 runs.
        gain_vs_scratch: (dice_mean - scratch dice_mean) / scratch dice_mean; None for scratch
            itself and when scratch has no positive mean Dice at this budget.
    """

    initialisation: str
    budget_cases: int
    all_cases: bool
    runs: int
    dice_mean: float
    dice_std: float
    gain_vs_scratch: float | None


@dataclass(frozen=True)
class TransferReport:
    """The benchmark's runs, summary and the files written.

    Attributes:
        initialisations: Every initialisation, available or not, with its source.
        runs: Every run.
        rows: One summary row per available initialisation and budget.
        val_cases: The held-out cases every run was scored on.
        markdown_path: The markdown table.
        json_path: Settings, runs and summary as JSON.
        runs_csv_path: One row per run.
        summary_csv_path: One row per initialisation and budget.
        plot_path: Dice against budget (PNG), or None when matplotlib is not installed.
    """

    initialisations: tuple[Any, ...]
    runs: tuple[Any, ...]
    rows: tuple[SummaryRow, ...]
    val_cases: tuple[str, ...]
    markdown_path: Path
    json_path: Path
    runs_csv_path: Path
    summary_csv_path: Path
    plot_path: Path | None

    def row(self, initialisation: str, budget_cases: int) -> SummaryRow:
        """Return the summary row of one initialisation and budget.

        Raises:
            KeyError: When the benchmark has no such row.
        """
        for row in self.rows:
            if row.initialisation == initialisation and row.budget_cases == budget_cases:
                return row
        raise KeyError(f"No summary row for {initialisation!r} at {budget_cases} case(s).")


def summarise(runs: Sequence["TransferRun"], initialisations: Sequence["Initialisation"],
              budgets: Sequence[int], all_cases: int) -> tuple[SummaryRow, ...]:
    """Average each available initialisation's runs per budget and compare with scratch."""
    rows = []
    for budget in budgets:
        scores = {
            initialisation.name: [run.dice_mean for run in runs if run.initialisation == initialisation.name
                                  and run.budget_cases == budget and math.isfinite(run.dice_mean)]
            for initialisation in initialisations if initialisation.available
        }
        scratch_scores = scores.get("scratch", [])
        scratch = statistics.fmean(scratch_scores) if scratch_scores else float("nan")

        for name, values in scores.items():
            mean = statistics.fmean(values) if values else float("nan")
            gain = None
            if name != "scratch" and math.isfinite(mean) and math.isfinite(scratch) and scratch > 0:
                gain = (mean - scratch) / scratch
            rows.append(SummaryRow(
                initialisation=name, budget_cases=budget, all_cases=budget == all_cases, runs=len(values),
                dice_mean=mean, dice_std=statistics.stdev(values) if len(values) >= 2 else float("nan"),
                gain_vs_scratch=gain,
            ))
    return tuple(rows)


def write_report(config: "TransferConfig", initialisations: Sequence["Initialisation"], runs: Sequence["TransferRun"],
                 rows: Sequence[SummaryRow], budgets: Sequence[int], all_cases: int) -> TransferReport:
    """Write transfer.md, transfer.json, transfer_runs.csv, transfer_summary.csv and transfer.png.

    Returns:
        The report with the paths written.
    """
    output_dir = Path(config.output_dir)
    val_cases = runs[0].val_cases if runs else ()
    report = TransferReport(
        initialisations=tuple(initialisations), runs=tuple(runs), rows=tuple(rows), val_cases=tuple(val_cases),
        markdown_path=output_dir / MARKDOWN_NAME, json_path=output_dir / JSON_NAME,
        runs_csv_path=output_dir / RUNS_CSV_NAME, summary_csv_path=output_dir / SUMMARY_CSV_NAME,
        plot_path=output_dir / PLOT_NAME if HAS_MATPLOTLIB else None,
    )

    report.markdown_path.write_text(render_markdown(config, report, budgets, all_cases), encoding="utf-8")
    report.json_path.write_text(json.dumps(_json_document(config, report, budgets), indent=2) + "\n", encoding="utf-8")
    _write_runs_csv(report.runs_csv_path, runs)
    _write_summary_csv(report.summary_csv_path, rows)
    if report.plot_path is not None:
        plot_dice(report, all_cases, report.plot_path)
    else:
        _logger.warning("matplotlib is not installed, so no plot was drawn; `pip install hydranet-hub[train]` adds it")
    _logger.info("Transfer report written to %s", report.markdown_path)
    return report


def _format_score(row: SummaryRow | None) -> str:
    if row is None or row.runs == 0:
        return "no runs"
    spread = f" ± {row.dice_std:.3f}" if math.isfinite(row.dice_std) else ""
    return f"{row.dice_mean:.3f}{spread} (n={row.runs})"


def render_markdown(config: "TransferConfig", report: TransferReport, budgets: Sequence[int], all_cases: int) -> str:
    """Return the markdown page: settings, initialisations and one table row per budget."""
    base = config.base
    names = [initialisation.name for initialisation in report.initialisations]
    lines = [
        f"# Transfer benchmark: {_task_name(report)}",
        "",
        f"- Held-out cases, the same for every run: {', '.join(report.val_cases) or 'none'}",
        f"- Seeds: {', '.join(str(seed) for seed in config.seeds)}",
        f"- Each run: {base.arch} with encoder {base.encoder}, {base.steps} steps of batch {base.batch_size}, "
        f"lr {base.lr}, slices {base.slice_size[0]}x{base.slice_size[1]}, context {base.context_slices}, "
        f"encoder frozen for {base.freeze_encoder_steps} steps, encoder lr x{base.encoder_lr_mult}",
        "- Initialisations:",
    ]
    lines += [f"  - {initialisation.name}: {initialisation.source}" for initialisation in report.initialisations]
    lines += [
        "",
        "| labelled cases | " + " | ".join(names) + " | HydraNet vs scratch |",
        "| --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for budget in budgets:
        cells = []
        for initialisation in report.initialisations:
            if not initialisation.available:
                cells.append("unavailable")
                continue
            cells.append(_format_score(_find(report.rows, initialisation.name, budget)))
        hydranet = _find(report.rows, "hydranet", budget)
        gain = f"{hydranet.gain_vs_scratch:+.1%}" if hydranet and hydranet.gain_vs_scratch is not None else "n/a"
        label = f"{budget} (all)" if budget == all_cases else str(budget)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {gain} |")
    lines += [
        "",
        "Dice is the mean over foreground classes of the Dice pooled over every held-out slice at the training "
        "slice size; ± is the sample standard deviation over seeds. HydraNet vs scratch is the relative "
        "difference of the mean Dice.",
        "",
    ]
    return "\n".join(lines)


def _task_name(report: TransferReport) -> str:
    return report.runs[0].task if report.runs else "no runs"


def _find(rows: Sequence[SummaryRow], name: str, budget: int) -> SummaryRow | None:
    for row in rows:
        if row.initialisation == name and row.budget_cases == budget:
            return row
    return None


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_document(config: "TransferConfig", report: TransferReport, budgets: Sequence[int]) -> dict[str, Any]:
    return {
        "task": _task_name(report),
        "settings": config.base.to_dict(),
        "hydranet_weights": config.hydranet_weights,
        "seeds": list(config.seeds),
        "budgets": list(budgets),
        "val_cases": list(report.val_cases),
        "initialisations": [asdict(initialisation) for initialisation in report.initialisations],
        "runs": [
            {**asdict(run), "dice_mean": _finite_or_none(run.dice_mean),
             "dice": {name: _finite_or_none(value) for name, value in run.dice.items()},
             "train_cases": list(run.train_cases), "val_cases": list(run.val_cases)}
            for run in report.runs
        ],
        "summary": [
            {**asdict(row), "dice_mean": _finite_or_none(row.dice_mean), "dice_std": _finite_or_none(row.dice_std)}
            for row in report.rows
        ],
        "hydranet_hub_version": __version__,
    }


def _write_runs_csv(path: Path, runs: Sequence["TransferRun"]) -> None:
    classes = sorted({name for run in runs for name in run.dice})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["initialisation", "budget_cases", "seed", "dice_mean", *classes, "steps", "wall_time_s",
                         "train_cases", "output_dir"])
        for run in runs:
            writer.writerow([run.initialisation, run.budget_cases, run.seed, f"{run.dice_mean:.6g}",
                             *(f"{run.dice.get(name, float('nan')):.6g}" for name in classes), run.steps,
                             f"{run.wall_time_s:.1f}", " ".join(run.train_cases), run.output_dir])


def _write_summary_csv(path: Path, rows: Sequence[SummaryRow]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["initialisation", "budget_cases", "all_cases", "runs", "dice_mean", "dice_std",
                         "gain_vs_scratch"])
        for row in rows:
            gain = "" if row.gain_vs_scratch is None else f"{row.gain_vs_scratch:.6g}"
            writer.writerow([row.initialisation, row.budget_cases, row.all_cases, row.runs, f"{row.dice_mean:.6g}",
                             f"{row.dice_std:.6g}", gain])


def plot_dice(report: TransferReport, all_cases: int, path: Path) -> Path:
    """Draw mean validation Dice against the labelled-case budget, one line per initialisation.

    Error bars show the standard deviation over seeds where there are two or more.

    Raises:
        ImportError: When matplotlib is not installed.
    """
    if not HAS_MATPLOTLIB:
        raise ImportError("Plotting needs matplotlib; install it with `pip install hydranet-hub[train]`.")

    figure, axes = pyplot.subplots(figsize=(6.0, 4.0), dpi=120)
    for initialisation in report.initialisations:
        rows = [row for row in report.rows if row.initialisation == initialisation.name and row.runs]
        if not rows:
            continue
        errors = [row.dice_std if math.isfinite(row.dice_std) else 0.0 for row in rows]
        axes.errorbar([row.budget_cases for row in rows], [row.dice_mean for row in rows], yerr=errors,
                      marker="o", capsize=3, label=initialisation.name)
    budgets = sorted({row.budget_cases for row in report.rows})
    axes.set_xticks(budgets, [f"{budget} (all)" if budget == all_cases else str(budget) for budget in budgets])
    axes.set_xlabel("labelled training cases (volumes)")
    axes.set_ylabel("validation Dice (mean over classes)")
    axes.set_title(f"Transfer to {_task_name(report)}")
    axes.set_ylim(0.0, 1.0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return path
