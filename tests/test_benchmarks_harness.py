"""The benchmark harness's own logic: interleaved timing, targets, peak memory and the docs tables.

These tests check what the harness computes and writes, never how fast anything runs.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.peak_rss import run_with_peak_rss
from benchmarks.records import Figure, Target
from benchmarks.report import BEGIN_MARKER, END_MARKER, update_docs
from benchmarks.startup import hook_import_us
from benchmarks.timing import CaseTiming, Sample, paired_speedup, time_interleaved


def test_interleaved_order_alternates():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}

    timings = time_interleaved(cases, rounds=3, warmup_rounds=1)

    assert calls == ["a", "b", "c", "a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert [len(timing.samples) for timing in timings.values()] == [3, 3, 3]


def test_interleaved_records_sleep():
    timings = time_interleaved({"sleep": lambda: time.sleep(0.02), "none": lambda: None}, rounds=2, warmup_rounds=0)

    assert timings["sleep"].median_wall_s >= 0.02
    assert timings["sleep"].median_cpu_s < timings["sleep"].median_wall_s


def test_interleaved_rejects_no_rounds():
    with pytest.raises(ValueError, match="rounds=0"):
        time_interleaved({"a": lambda: None}, rounds=0)


def test_paired_speedup_uses_work_per_round():
    fast = CaseTiming("fast", (Sample(1.0, 1.0), Sample(2.0, 1.0), Sample(1.0, 1.0)))
    slow = CaseTiming("slow", (Sample(2.0, 4.0), Sample(4.0, 4.0), Sample(2.0, 4.0)))

    # In every round fast's throughput is 4 units per time t and slow's 1 unit per 2t, a ratio of 8.
    assert paired_speedup(fast, slow, fast_work=4.0, slow_work=1.0) == pytest.approx(8.0)
    assert paired_speedup(fast, slow, clock="cpu") == pytest.approx(4.0)


def test_target_verdicts():
    assert Target(">=", 0.9).is_met(0.9)
    assert not Target(">=", 0.9).is_met(0.89)
    assert Target("<=", 5.0).is_met(4.0)
    assert Figure("k", "w", "c", 1.0, "x").met is None
    assert Figure("k", "w", "c", 1.2, "x", Target("<=", 1.1)).to_dict()["met"] is False
    with pytest.raises(ValueError, match="comparison"):
        Target("==", 1.0)


def test_peak_rss_excludes_parent_memory():
    # A child forked straight from this process would report the 300 MiB ballast as its own peak.
    ballast = bytearray(300 * 2**20)
    allocate = "block = bytearray(200 * 2**20); block[::4096] = b'x' * len(block[::4096])"

    small = run_with_peak_rss([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    large = run_with_peak_rss([sys.executable, "-c", allocate], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    assert len(ballast) == 300 * 2**20
    assert small.exit_code == 0
    assert small.max_rss_mib < 150
    assert large.max_rss_mib >= 200
    assert large.max_rss_mib < 350


def test_peak_rss_reports_exit_code():
    outcome = run_with_peak_rss([sys.executable, "-c", "raise SystemExit(3)"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    assert outcome.exit_code == 3


def test_importtime_line_parsed():
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       489 |      10169 |   __editable___hydranet_hub_0_1_0_finder",
        "import time:      1460 |       1512 |   _hydranet_hub_hook",
    ])

    assert hook_import_us(stderr) == (1460, 1512)
    assert hook_import_us("import time:   3 |   3 | os") is None


def _results(value: float) -> dict:
    figure = Figure("train_step.vs_floor_fp32", "multi-task step", "floor | smp.Unet", value, "x", Target(">=", 0.9),
                    "6.1 vs 6.5 slices/s")
    return {
        "mode": "quick",
        "clock": "cpu",
        "machine": {
            "date_utc": "2026-12-04 20:00 UTC", "command": "python -m benchmarks.run --quick", "git_commit": "abc1234",
            "cpu_model": "Test CPU", "cpu_flags": ["avx2"], "logical_cores": 2, "usable_cores": 2, "memory_gib": 8.0,
            "python": "3.11.7", "torch": "2.14.1", "smp": "0.6.0", "timm": "1.0.31", "torch_threads": 1,
            "load_average_1_5_15_min": [1.0, 2.0, 3.0],
        },
        "benchmarks": {
            "train_step": {"figures": [figure.to_dict()]},
            "loader": {"error": "RuntimeError: demo data missing"},
        },
        "load_average_end": [1.5, 2.0, 3.0],
    }


def test_docs_section_replaced(tmp_path: Path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nBefore.\n\n{BEGIN_MARKER}\nold table\n{END_MARKER}\n\nAfter.\n", encoding="utf-8")

    update_docs(_results(0.85), docs)
    text = docs.read_text(encoding="utf-8")

    assert text.startswith("# Benchmarks\n\nBefore.\n\n")
    assert text.endswith("\n\nAfter.\n")
    assert "old table" not in text
    assert "| multi-task step | floor \\| smp.Unet | 0.85x | >= 0.9 | **missed** | 6.1 vs 6.5 slices/s |" in text
    assert "| CPU | Test CPU (avx2) |" in text
    assert "- `loader` failed: RuntimeError: demo data missing" in text

    update_docs(_results(0.95), docs)
    rewritten = docs.read_text(encoding="utf-8")
    assert rewritten.count(BEGIN_MARKER) == 1
    assert "| 0.95x | >= 0.9 | met |" in rewritten


def test_docs_without_markers_rejected(tmp_path: Path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nHand-written only.\n", encoding="utf-8")

    with pytest.raises(ValueError, match="no generated section"):
        update_docs(_results(1.0), docs)
    assert docs.read_text(encoding="utf-8") == "# Benchmarks\n\nHand-written only.\n"


def test_report_cli_writes_docs(tmp_path: Path):
    results = tmp_path / "quick.json"
    results.write_text(json.dumps(_results(0.91)), encoding="utf-8")
    docs = tmp_path / "new" / "benchmarks.md"

    subprocess.run([sys.executable, "-m", "benchmarks.report", str(results), "--docs", str(docs)], check=True,
                   cwd=Path(__file__).resolve().parent.parent)

    assert "| 0.91x | >= 0.9 | met |" in docs.read_text(encoding="utf-8")


def test_docs_name_each_command(tmp_path: Path):
    results = _results(0.9)
    results["benchmarks"]["train_step"]["command"] = "python -m benchmarks.run --only train_step"
    results["benchmarks"]["loader"]["command"] = "python -m benchmarks.run --only loader"
    docs = tmp_path / "benchmarks.md"

    update_docs(results, docs)
    text = docs.read_text(encoding="utf-8")

    assert ("| command | `python -m benchmarks.run --only train_step` (train_step); "
            "`python -m benchmarks.run --only loader` (loader) (quick mode) |") in text
