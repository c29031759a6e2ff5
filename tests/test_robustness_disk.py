"""Output folders that cannot be written, and a disk that fills during the cache build, a checkpoint or an export.

A full disk is simulated per process: the child lowers its file-size limit (RLIMIT_FSIZE) and
ignores SIGXFSZ, so a write past the limit fails with EFBIG ("File too large") the way a full
disk fails with ENOSPC. Where this user may mount file systems, a small tmpfs also gives a real
ENOSPC. Tests may run as root, and chmod does not stop root from writing. So an
unwritable folder is a path under a regular file, and the chmod variant runs only for other users.
"""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from hydranet_hub.data import CacheError, SliceCache, build_slice_cache, msd_task_config
from hydranet_hub.export import ExportError, TaskSummary, export_encoder, validate_export
from hydranet_hub.training import load_checkpoint
from hydranet_hub.training.checkpoint import list_checkpoints
from hydranet_hub.training.run_lock import LOCK_NAME
from msd_fixtures import make_msd_task

REPO_ROOT = Path(__file__).resolve().parents[1]
SLICE_SIZE = (24, 24)

_LIMIT_FILE_SIZE = textwrap.dedent(
    """
    import os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _limit = int(os.environ["FILE_SIZE_LIMIT_BYTES"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (_limit, _limit))
    """
)

# Prints the error class and message on the last line, so the parent can check what a user reads.
_REPORT_ERROR = textwrap.dedent(
    """
    def _report(function, *args, **kwargs):
        try:
            function(*args, **kwargs)
        except Exception as error:
            print(f"{type(error).__name__}|{error}")
            sys.exit(3)
        print("no error")
    """
)


def _python(code: str, *args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}
    prefix = "import sys\n"
    if limit_bytes is not None:
        env["FILE_SIZE_LIMIT_BYTES"] = str(limit_bytes)
        prefix += _LIMIT_FILE_SIZE
    return subprocess.run([sys.executable, "-c", prefix + _REPORT_ERROR + textwrap.dedent(code), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=300)


def _reported(result: subprocess.CompletedProcess) -> tuple[str, str]:
    assert result.returncode == 3, result.stdout + result.stderr
    kind, _, message = result.stdout.strip().splitlines()[-1].partition("|")
    return kind, message


def _temporaries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if ".tmp-" in path.name)


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file, so that any path under it cannot be created, even by root."""
    path = tmp_path / "not_a_folder"
    path.write_text("a file where a folder is expected")
    return path


# --- unwritable output folders --------------------------------------------------------------------------------------


def test_cache_dir_under_file(tmp_path, blocker):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=2)
    cache_dir = blocker / "cache"

    with pytest.raises(NotADirectoryError) as caught:
        build_slice_cache([msd_task_config(task_root)], cache_dir, slice_size=SLICE_SIZE)

    assert str(cache_dir) in str(caught.value)
    assert "writable disk" in str(caught.value)


def test_output_dir_under_file(tmp_path, blocker, capsys):
    from hydranet_hub.cli.pretrain import main

    make_msd_task(tmp_path / "data", "heart", n_cases=3)
    output_dir = blocker / "run"

    status = main(["--data-root", str(tmp_path / "data"), "--output-dir", str(output_dir), "--steps", "1"])

    error = capsys.readouterr().err
    assert status == 1
    assert f"Could not create the output folder {output_dir}" in error
    assert "--output-dir" in error


def test_export_dir_under_file(blocker):
    out_dir = blocker / "export"

    with pytest.raises(ExportError, match="is a file, not a folder") as caught:
        _export(_encoder_state(), out_dir)

    assert str(blocker) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; covered by the *_under_file tests")
def test_cache_dir_read_only(tmp_path):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=2)
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as caught:
            build_slice_cache([msd_task_config(task_root)], parent / "cache", slice_size=SLICE_SIZE)
    finally:
        parent.chmod(0o755)

    assert str(parent / "cache") in str(caught.value)


# --- disk full ------------------------------------------------------------------------------------------------------


def test_cache_build_disk_full(tmp_path):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=3, shape=(32, 32, 6))
    cache_dir = tmp_path / "cache"
    # The manifest (about 1 kB) fits; the first image array (6 slices of 24x24 float16, 7 kB) does not.
    code = """
        from hydranet_hub.data import build_slice_cache, msd_task_config
        _report(build_slice_cache, [msd_task_config(sys.argv[1])], sys.argv[2], slice_size=(24, 24))
    """

    kind, message = _reported(_python(code, task_root, cache_dir, limit_bytes=4096))

    assert kind == "OSError"
    assert f"Could not write the slice cache file {cache_dir / 'Task02_Heart' / 'la_000.image.npy'}" in message
    assert "disk may be full" in message
    assert _temporaries(cache_dir) == []
    with pytest.raises(CacheError, match="incomplete"):
        SliceCache.open(cache_dir)

    cache = build_slice_cache([msd_task_config(task_root)], cache_dir, slice_size=SLICE_SIZE)
    clean = build_slice_cache([msd_task_config(task_root)], tmp_path / "clean", slice_size=SLICE_SIZE)

    assert cache.cases("Task02_Heart") == clean.cases("Task02_Heart")
    for case_id in clean.cases("Task02_Heart"):
        np.testing.assert_array_equal(cache.load_arrays("Task02_Heart", case_id)[0],
                                      clean.load_arrays("Task02_Heart", case_id)[0])


def test_checkpoint_write_disk_full(tmp_path):
    path = tmp_path / "checkpoints" / "step_00000002.pt"
    code = """
        import torch
        from hydranet_hub.training.checkpoint import save_checkpoint
        save_checkpoint(sys.argv[1], {"step": 1, "weights": torch.ones(16)})
        _report(save_checkpoint, sys.argv[1], {"step": 2, "weights": torch.ones(1_000_000)})
    """

    kind, message = _reported(_python(code, path, limit_bytes=256 * 1024))

    assert kind == "OSError"
    assert f"Could not write checkpoint {path}" in message
    assert "--resume" in message
    assert "File too large" in message
    assert sorted(entry.name for entry in path.parent.iterdir()) == [path.name]
    assert load_checkpoint(path)["step"] == 1


def test_pretrain_checkpoint_disk_full(tmp_path):
    make_msd_task(tmp_path / "data", "heart", n_cases=3, shape=(32, 32, 6))
    output_dir = tmp_path / "run"
    args = [
        "--data-root", str(tmp_path / "data"), "--output-dir", str(output_dir), "--encoder", "resnet18",
        "--slice-size", "32", "--decoder-channels", "32", "16", "16", "8", "8", "--batch-size-per-task", "2",
        "--steps", "2", "--val-fraction", "0.34", "--checkpoint-every", "0", "--num-workers", "0", "--no-export",
        "--log-level", "WARNING",
    ]
    cli = "from hydranet_hub.cli.pretrain import main\nsys.exit(main(sys.argv[1:]))\n"

    # Cached slices, logs and previews stay far below 4 MB; a resnet18 checkpoint with AdamW state is over 100 MB.
    result = _python(cli, *args, limit_bytes=4 * 1024 * 1024)

    assert result.returncode == 1, result.stderr
    assert f"Could not write checkpoint {output_dir / 'checkpoints' / 'step_00000002.pt'}" in result.stderr
    assert "--resume" in result.stderr
    assert list_checkpoints(output_dir) == []
    assert _temporaries(output_dir) == []
    assert not (output_dir / LOCK_NAME).exists()

    rerun = _python(cli, *args)

    assert rerun.returncode == 0, rerun.stderr
    assert [step for step, _ in list_checkpoints(output_dir)] == [2]


def test_export_disk_full_keeps_previous(tmp_path):
    out_dir = tmp_path / "export"
    previous = _export(_encoder_state(seed=1), out_dir)
    code = """
        import torch
        from test_robustness_disk import _encoder_state, _export
        _report(_export, _encoder_state(seed=2), sys.argv[1], overwrite=True)
    """

    kind, message = _reported(_python(code, out_dir, limit_bytes=1024 * 1024))

    assert kind == "OSError"
    assert f"Could not write the export to {out_dir}" in message
    assert "left as it was" in message
    assert validate_export(out_dir).sha256 == previous.sha256
    assert [entry.name for entry in tmp_path.iterdir() if entry.name.startswith(".export.")] == []


def test_export_disk_full_new_folder(tmp_path):
    out_dir = tmp_path / "export"
    code = """
        from test_robustness_disk import _encoder_state, _export
        _report(_export, _encoder_state(seed=2), sys.argv[1])
    """

    kind, message = _reported(_python(code, out_dir, limit_bytes=1024 * 1024))

    assert kind == "OSError"
    assert str(out_dir) in message
    assert not out_dir.exists()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == []


def _encoder_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return smp.encoders.get_encoder("resnet34", weights=None).state_dict()


def _export(state: dict[str, torch.Tensor], out_dir, **overrides):
    arguments = dict(
        slice_size=(32, 32),
        tasks=(TaskSummary("Task02_Heart", "MRI", ("background", "left atrium"), 3),),
        metrics={"Task02_Heart": {"left atrium": 0.5, "mean": 0.5}},
        training={"steps": 2, "seed": 0},
        normalization={},
    )
    arguments.update(overrides)
    return export_encoder(state, Path(out_dir), **arguments)


# --- a real full disk (tmpfs) ---------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 kB tmpfs mounted under tmp_path; skips where mounting is not permitted."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({mounted.stderr.strip()}); the RLIMIT_FSIZE tests cover these writes")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_cache_build_no_space(tmp_path, small_disk):
    task_root = make_msd_task(tmp_path / "data", "heart", n_cases=4, shape=(32, 32, 6))
    cache_dir = small_disk / "cache"

    with pytest.raises(OSError) as caught:
        build_slice_cache([msd_task_config(task_root)], cache_dir, slice_size=SLICE_SIZE)

    assert caught.value.errno == errno.ENOSPC
    assert "Could not write the slice cache file" in str(caught.value)
    assert _temporaries(cache_dir) == []
    with pytest.raises(CacheError):
        SliceCache.open(cache_dir)

    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
    cache = build_slice_cache([msd_task_config(task_root)], cache_dir, slice_size=SLICE_SIZE)

    assert cache.cases("Task02_Heart") == ("la_000", "la_001", "la_002", "la_003")


def test_checkpoint_write_no_space(small_disk):
    from hydranet_hub.training.checkpoint import save_checkpoint

    path = small_disk / "checkpoints" / "step_00000002.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.ones(16)})

    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"step": 2, "weights": torch.ones(100_000)})

    assert caught.value.errno == errno.ENOSPC
    assert f"Could not write checkpoint {path}" in str(caught.value)
    assert sorted(entry.name for entry in path.parent.iterdir()) == [path.name]
    assert load_checkpoint(path)["step"] == 1
