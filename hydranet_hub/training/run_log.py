"""Scalar logging of a run: always a CSV file, and TensorBoard event files when installed."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping
from pathlib import Path

_logger = logging.getLogger(__name__)

try:
    from torch.utils.tensorboard import SummaryWriter

    HAS_TENSORBOARD = True
except ImportError:  # tensorboard is part of the optional `train` extra
    SummaryWriter = None
    HAS_TENSORBOARD = False

METRICS_CSV_NAME = "metrics.csv"
CSV_FIELDS = ("step", "split", "name", "value")


class RunLogger:
    """Appends scalars to `<folder>/metrics.csv` (long format) and to TensorBoard.

    The CSV has one row per scalar (step, split, name, value), so new metric names never change
    its header and a resumed run appends to the same file. Rows past the resume step, written
    after the last checkpoint of an interrupted run, are dropped on open so the file has no
    duplicate steps.

    Args:
        folder: Run output folder.
        resume_step: Step the run (re)starts from; rows with a larger step are removed.
        tensorboard: Also write TensorBoard events to `<folder>/tensorboard` when available.
    """

    def __init__(self, folder: str | os.PathLike[str], resume_step: int = 0, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / METRICS_CSV_NAME
        self._truncate_after(resume_step)

        new_file = not self.csv_path.exists()
        self._handle = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)
        if new_file:
            self._writer.writerow(CSV_FIELDS)

        self._tensorboard = None
        if tensorboard and HAS_TENSORBOARD:
            self._tensorboard = SummaryWriter(log_dir=str(self.folder / "tensorboard"), purge_step=resume_step or None)
        elif tensorboard:
            _logger.info("tensorboard is not installed; logging scalars to %s only", self.csv_path)

    def _truncate_after(self, step: int) -> None:
        if not self.csv_path.exists():
            return
        with open(self.csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= step] if rows else []
        if len(kept) != len(rows):
            temporary = self.csv_path.with_suffix(".csv.tmp")
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows(kept)
            os.replace(temporary, self.csv_path)

    def log(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        """Record scalars of one step.

        Args:
            step: Optimisation step (1-based count of finished steps).
            split: "train" or "val".
            scalars: Name -> value, e.g. {"loss/Task02_Heart": 0.41}.
        """
        for name, value in scalars.items():
            self._writer.writerow((step, split, name, f"{float(value):.6g}"))
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(f"{split}/{name}", float(value), step)
        self._handle.flush()

    def close(self) -> None:
        """Flush and close the files."""
        self._handle.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(csv_path: str | os.PathLike[str]) -> list[tuple[int, str, str, float]]:
    """Read the rows of a metrics.csv as (step, split, name, value)."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        return [(int(step), split, name, float(value)) for step, split, name, value in reader]
