"""Typed records of benchmark figures and the targets they are judged against."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Any

_COMPARISONS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Target:
    """A bound that a figure must meet, e.g. Target(">=", 0.9)."""

    comparison: str
    bound: float

    def __post_init__(self) -> None:
        if self.comparison not in _COMPARISONS:
            raise ValueError(f"comparison={self.comparison!r} is invalid: expected one of {sorted(_COMPARISONS)}.")

    def is_met(self, value: float) -> bool:
        return _COMPARISONS[self.comparison](value, self.bound)

    def __str__(self) -> str:
        return f"{self.comparison} {self.bound:g}"


@dataclass(frozen=True)
class Figure:
    """One reported number: what was measured, against what, and whether it meets its target.

    Attributes:
        key: Stable identifier, e.g. "train_step.vs_floor_fp32".
        what: The measured thing, in words.
        compared_with: The alternative the ratio is taken against, or "absolute".
        value: The measured value.
        unit: "x" for a throughput ratio, or the unit of an absolute value ("ms", "GiB", "slices/s").
        target: The bound from the benchmark plan, or None for a figure reported for information.
        detail: Short supporting numbers, e.g. both throughputs behind a ratio.
    """

    key: str
    what: str
    compared_with: str
    value: float
    unit: str
    target: Target | None = None
    detail: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.is_met(self.value)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["target"] = str(self.target) if self.target is not None else None
        record["met"] = self.met
        return record
