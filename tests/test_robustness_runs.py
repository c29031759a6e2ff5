"""Interrupted and colliding runs: kill -9 during the cache build, a checkpoint write and the export.

Every interrupted process is a real `python` subprocess that sends itself SIGKILL right after
flushing a chosen temporary file to disk (its fsync), before the rename that would publish it.
That is the last moment a crash can hit a write, so a rerun must leave no trace of it. The rerun
is compared with an uninterrupted run of the same settings.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hydranet_hub.data import CacheError, SliceCache, build_slice_cache, msd_task_config
from hydranet_hub.export import validate_export
from hydranet_hub.training import load_checkpoint
from hydranet_hub.training.checkpoint import list_checkpoints
from hydranet_hub.training.run_lock import LOCK_NAME
from hydranet_hub.training.run_log import read_metrics
from msd_fixtures import make_msd_task

REPO_ROOT = Path(__file__).resolve().parents[1]

# Installed in the child before anything else runs. HOOK_MATCH selects a file by a part of its
# path. On that file's HOOK_COUNT-th fsync the child kills itself ("kill"), or it creates
# HOOK_READY and waits until HOOK_GO exists ("pause"). With HOOK_CALL=rename the child kills
# itself instead just before renaming a matching path. Without HOOK_MATCH it runs unchanged.
_HOOK = """
import os, signal, sys, time
_fsync, _rename = os.fsync, os.rename
_seen = 0

def _reached(path):
    global _seen
    match = os.environ.get("HOOK_MATCH")
    if not match or match not in str(path):
        return False
    _seen += 1
    return _seen == int(os.environ.get("HOOK_COUNT", "1"))

def _hooked_fsync(descriptor):
    _fsync(descriptor)
    if os.environ.get("HOOK_CALL", "fsync") != "fsync" or not _reached(os.readlink(f"/proc/self/fd/{descriptor}")):
        return
    if os.environ["HOOK_ACTION"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    open(os.environ["HOOK_READY"], "w").close()
    deadline = time.monotonic() + 300
    while not os.path.exists(os.environ["HOOK_GO"]) and time.monotonic() < deadline:
        time.sleep(0.05)

def _hooked_rename(source, target, **kwargs):
    if os.environ.get("HOOK_CALL") == "rename" and _reached(source):
        os.kill(os.getpid(), signal.SIGKILL)
    _rename(source, target, **kwargs)

os.fsync, os.rename = _hooked_fsync, _hooked_rename
"""

_RUN_CLI = "import sys\nfrom hydranet_hub.cli.pretrain import main\nsys.exit(main(sys.argv[1:]))\n"

_BUILD_CACHE = (
    "import sys\nfrom hydranet_hub.data import build_slice_cache, msd_task_config\n"
    "build_slice_cache([msd_task_config(sys.argv[1])], sys.argv[2], slice_size=(24, 24))\n"
)


def _child_env(**hook: str) -> dict[str, str]:
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    # One thread keeps the two-process tests light and the CPU arithmetic identical between runs.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1", **hook}


def _python(code: str, *args: str, **hook: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _HOOK + code, *map(str, args)], env=_child_env(**hook),
                          capture_output=True, text=True, timeout=300)


def _killed_at(match: str, count: int = 1) -> dict[str, str]:
    return {"HOOK_ACTION": "kill", "HOOK_MATCH": match, "HOOK_COUNT": str(count)}


@pytest.fixture(scope="module")
def tiny_msd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msd")
    make_msd_task(root, "heart", n_cases=4, shape=(32, 32, 6), seed=0)
    make_msd_task(root, "liver", n_cases=4, shape=(32, 32, 6), seed=1)
    return root


def _pretrain_args(data_root: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--data-root", str(data_root), "--output-dir", str(output_dir), "--encoder", "resnet18",
        "--slice-size", "32", "--decoder-channels", "32", "16", "16", "8", "8", "--batch-size-per-task", "2",
        "--steps", "6", "--lr", "0.003", "--warmup-steps", "1", "--val-fraction", "0.25", "--val-every", "3",
        "--checkpoint-every", "2", "--keep-checkpoints", "5", "--log-every", "1", "--num-workers", "0",
        "--no-export", "--log-level", "WARNING", *extra,
    ]


def _export_args(data_root: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--data-root", str(data_root), "--output-dir", str(output_dir), "--encoder", "hydranet",
        "--slice-size", "32", "--decoder-channels", "32", "16", "16", "8", "8", "--batch-size-per-task", "2",
        "--steps", "2", "--val-fraction", "0.25", "--val-every", "2", "--checkpoint-every", "0",
        "--num-workers", "0", "--log-level", "WARNING", *extra,
    ]


@pytest.fixture(scope="module")
def straight_run(tiny_msd, tmp_path_factory) -> Path:
    """An uninterrupted `hydranet-pretrain` run with `_pretrain_args`, to compare interrupted runs with."""
    output_dir = tmp_path_factory.mktemp("straight") / "run"
    result = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir))
    assert result.returncode == 0, result.stderr
    return output_dir


def _final_model(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(output_dir)[-1][1])["model"]


def _train_losses(output_dir: Path) -> list[float]:
    return [value for step, split, name, value in read_metrics(output_dir / "metrics.csv")
            if split == "train" and name == "loss"]


def _assert_matches_straight(output_dir: Path, straight: Path) -> None:
    assert [step for step, _ in list_checkpoints(output_dir)] == [step for step, _ in list_checkpoints(straight)]
    expected = _final_model(straight)
    for name, tensor in _final_model(output_dir).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert _train_losses(output_dir) == pytest.approx(_train_losses(straight))


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if ".tmp-" in path.name or ".old-" in path.name)


# --- slice cache ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "count"),
    [("la_001.image.npy.tmp-", 1), ("la_002.label.npy.tmp-", 1), ("manifest.json.tmp-", 2)],
    ids=["image-array", "label-array", "manifest"],
)
def test_killed_cache_build_rerun(tmp_path, match, count):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=4, shape=(32, 32, 6))
    cache_dir = tmp_path / "cache"

    killed = _python(_BUILD_CACHE, task_root, cache_dir, **_killed_at(match, count))

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _leftovers(cache_dir), "the kill should leave the temporary file behind"
    with pytest.raises(CacheError):
        SliceCache.open(cache_dir)

    cache = build_slice_cache([msd_task_config(task_root)], cache_dir, slice_size=(24, 24))
    clean = build_slice_cache([msd_task_config(task_root)], tmp_path / "clean", slice_size=(24, 24))

    assert _leftovers(cache_dir) == []
    assert cache.cases("Task02_Heart") == clean.cases("Task02_Heart")
    assert cache.cases("Task02_Heart", "val") == clean.cases("Task02_Heart", "val")
    for case_id in clean.cases("Task02_Heart"):
        for resumed, fresh in zip(cache.load_arrays("Task02_Heart", case_id), clean.load_arrays("Task02_Heart", case_id)):
            np.testing.assert_array_equal(resumed, fresh)


def test_concurrent_cache_builds_agree(tmp_path):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=4, shape=(32, 32, 6))
    cache_dir = tmp_path / "cache"
    command = [sys.executable, "-c", _BUILD_CACHE, str(task_root), str(cache_dir)]

    builders = [subprocess.Popen(command, env=_child_env(), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [builder.communicate(timeout=300)[1] for builder in builders]

    assert [builder.returncode for builder in builders] == [0, 0], errors
    cache = SliceCache.open(cache_dir)
    clean = build_slice_cache([msd_task_config(task_root)], tmp_path / "clean", slice_size=(24, 24))
    assert cache.cases("Task02_Heart") == clean.cases("Task02_Heart")
    for case_id in clean.cases("Task02_Heart"):
        np.testing.assert_array_equal(cache.load_arrays("Task02_Heart", case_id)[0],
                                      clean.load_arrays("Task02_Heart", case_id)[0])


# --- pretraining ----------------------------------------------------------------------------------------------------


def test_killed_in_cache_build_rerun(tiny_msd, straight_run, tmp_path):
    output_dir = tmp_path / "run"

    killed = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir), **_killed_at("liver_001.image.npy.tmp-"))

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (output_dir / LOCK_NAME).exists(), "a killed run leaves its lock behind"
    assert list_checkpoints(output_dir) == []

    # No checkpoint exists yet, so the same command (without --resume) starts the run again.
    rerun = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir))

    assert rerun.returncode == 0, rerun.stderr
    assert "no longer runs" in rerun.stderr
    assert not (output_dir / LOCK_NAME).exists()
    assert _leftovers(output_dir) == []
    _assert_matches_straight(output_dir, straight_run)


def test_killed_in_checkpoint_resumes(tiny_msd, straight_run, tmp_path):
    output_dir = tmp_path / "run"

    killed = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir), **_killed_at(".step_00000004.pt.tmp-"))

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [step for step, _ in list_checkpoints(output_dir)] == [2]
    assert [name.split("-")[0] for name in _leftovers(output_dir)] == ["checkpoints/.step_00000004.pt.tmp"]

    resumed = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir, "--resume"))

    assert resumed.returncode == 0, resumed.stderr
    assert _leftovers(output_dir) == []
    assert not (output_dir / LOCK_NAME).exists()
    _assert_matches_straight(output_dir, straight_run)


def test_corrupted_latest_resumes_from_older(tiny_msd, straight_run, tmp_path):
    output_dir = tmp_path / "run"
    first = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir, "--stop-at-step", "4"))
    assert first.returncode == 0, first.stderr
    latest = list_checkpoints(output_dir)[-1][1]
    # A copy that stopped half-way, as a non-atomic sync tool could leave it.
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])

    rejected = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir, "--resume"))

    assert rejected.returncode == 1
    assert str(latest) in rejected.stderr
    assert "corrupted" in rejected.stderr
    assert "older checkpoint" in rejected.stderr

    older = list_checkpoints(output_dir)[-2][1]
    resumed = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir, "--resume", str(older)))

    assert resumed.returncode == 0, resumed.stderr
    _assert_matches_straight(output_dir, straight_run)


def test_killed_in_export_resumes(tiny_msd, tmp_path):
    straight = _python(_RUN_CLI, *_export_args(tiny_msd, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    output_dir = tmp_path / "run"

    killed = _python(_RUN_CLI, *_export_args(tiny_msd, output_dir), **_killed_at(".export.tmp-"))

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (output_dir / "export").exists()
    assert len(_leftovers(output_dir)) > 0

    resumed = _python(_RUN_CLI, *_export_args(tiny_msd, output_dir, "--resume"))

    assert resumed.returncode == 0, resumed.stderr
    assert _leftovers(output_dir) == []
    exported = validate_export(output_dir / "export")
    expected = load_file(tmp_path / "straight" / "export" / "model.safetensors")
    for name, tensor in load_file(exported.weights_path).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)

    # Exporting again swaps folders: the old export moves aside, then the new one moves in. A kill
    # between the two renames leaves no export folder, only the two hidden ones.
    swapped = _python(_RUN_CLI, *_export_args(tiny_msd, output_dir, "--resume"),
                      HOOK_ACTION="kill", HOOK_CALL="rename", HOOK_MATCH=".export.tmp-")

    assert swapped.returncode == -signal.SIGKILL, swapped.stderr
    assert not (output_dir / "export").exists()
    assert sorted(name.split("-")[0] for name in _leftovers(output_dir)) == [".export.old", ".export.tmp"]

    again = _python(_RUN_CLI, *_export_args(tiny_msd, output_dir, "--resume"))

    assert again.returncode == 0, again.stderr
    assert _leftovers(output_dir) == []
    assert validate_export(output_dir / "export").sha256 == exported.sha256


def test_second_run_keeps_first_intact(tiny_msd, straight_run, tmp_path):
    output_dir = tmp_path / "run"
    ready, go = tmp_path / "paused", tmp_path / "go"
    hook = {"HOOK_ACTION": "pause", "HOOK_MATCH": ".step_00000002.pt.tmp-", "HOOK_READY": str(ready),
            "HOOK_GO": str(go)}
    first = subprocess.Popen([sys.executable, "-c", _HOOK + _RUN_CLI, *_pretrain_args(tiny_msd, output_dir)],
                             env=_child_env(**hook), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the first run should pause while writing its first checkpoint"
        before = _snapshot(output_dir)

        second = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir))
        second_resume = _python(_RUN_CLI, *_pretrain_args(tiny_msd, output_dir, "--resume"))

        assert second.returncode == 1
        assert f"in use by process {first.pid}" in second.stderr
        assert second_resume.returncode == 1
        assert f"in use by process {first.pid}" in second_resume.stderr
        assert _snapshot(output_dir) == before
    finally:
        go.touch()
        _, first_errors = first.communicate(timeout=300)

    assert first.returncode == 0, first_errors
    _assert_matches_straight(output_dir, straight_run)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}
