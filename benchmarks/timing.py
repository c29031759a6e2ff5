"""Interleaved timing of alternatives, so that a shared, noisy machine slows every case alike."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One timed repetition: wall-clock and CPU seconds of this process (all its threads)."""

    wall_s: float
    cpu_s: float


@dataclass(frozen=True)
class CaseTiming:
    """Repetitions of one case, in the order they ran."""

    name: str
    samples: tuple[Sample, ...]

    @property
    def median_wall_s(self) -> float:
        return statistics.median(sample.wall_s for sample in self.samples)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(sample.cpu_s for sample in self.samples)

    def to_dict(self) -> dict[str, object]:
        walls = [sample.wall_s for sample in self.samples]
        return {
            "repetitions": len(walls),
            "median_wall_s": self.median_wall_s,
            "median_cpu_s": self.median_cpu_s,
            "min_wall_s": min(walls),
            "max_wall_s": max(walls),
        }


def time_interleaved(
    cases: Mapping[str, Callable[[], object]], rounds: int, warmup_rounds: int = 1
) -> dict[str, CaseTiming]:
    """Time every case once per round, alternating the order of the cases between rounds.

    Running A, B, C then C, B, A spreads slow drifts of the machine (another process starting,
    thermal limits) evenly over the cases, and pairs each case's repetition with the others'
    repetitions of the same round.

    Args:
        cases: Case name -> zero-argument callable doing one repetition.
        rounds: Timed rounds, 1 or more.
        warmup_rounds: Untimed rounds first (allocator, oneDNN kernel selection, file caches).

    Returns:
        Case name -> its timings, in the order of `cases`.

    Raises:
        ValueError: If `cases` is empty or `rounds` < 1.
    """
    if not cases:
        raise ValueError("cases is empty: pass at least one name -> callable.")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} is invalid: expected 1 or more.")

    names = list(cases)
    for _ in range(warmup_rounds):
        for name in names:
            cases[name]()

    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            cases[name]()
            samples[name].append(Sample(time.perf_counter() - wall_start, time.process_time() - cpu_start))
        _logger.debug("Round %d of %d done", round_index + 1, rounds)
    return {name: CaseTiming(name, tuple(samples[name])) for name in names}


def paired_speedup(fast: CaseTiming, slow: CaseTiming, fast_work: float = 1.0, slow_work: float = 1.0,
                   clock: str = "wall") -> float:
    """Return the median over rounds of (throughput of `fast`) / (throughput of `slow`).

    Each round's ratio compares repetitions that ran next to each other, so a burst of load
    from another process that slows one round cancels out of that round's ratio.

    Args:
        fast: The case in the numerator.
        slow: The case in the denominator (the alternative).
        fast_work: Units of work (slices, runs) in one repetition of `fast`.
        slow_work: Units of work in one repetition of `slow`.
        clock: "wall" or "cpu".

    Returns:
        The throughput ratio; above 1 means `fast` does more work per second.
    """
    attribute = "wall_s" if clock == "wall" else "cpu_s"
    ratios = [
        (fast_work / getattr(a, attribute)) / (slow_work / getattr(b, attribute))
        for a, b in zip(fast.samples, slow.samples)
    ]
    return statistics.median(ratios)


def primary_clock(threads: int) -> str:
    """Return the clock that ratios are read from: "cpu" for one torch thread, else "wall".

    With one thread, the process's CPU time counts only the time it ran, so other processes on
    a shared machine barely move it. With several threads, CPU time also counts threads that
    spin while they wait for each other, so wall-clock time is the fairer measure.
    """
    return "cpu" if threads == 1 else "wall"


def throughput(timing: CaseTiming, work: float, clock: str = "wall") -> float:
    """Return units of work per second at the median repetition time."""
    seconds = timing.median_wall_s if clock == "wall" else timing.median_cpu_s
    return work / seconds
