"""Run-folder lock: one live run per output folder, stale locks taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from hydranet_hub.training.run_lock import LOCK_NAME, RunLock, RunLockedError


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_lock_written_and_released(tmp_path):
    with RunLock(tmp_path) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid()

    assert not (tmp_path / LOCK_NAME).exists()


def test_second_lock_on_live_run_raises(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match="--output-dir") as caught:
            RunLock(tmp_path).acquire()

    assert str(os.getpid()) in str(caught.value)


def test_stale_lock_taken_over(tmp_path):
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))

    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_lock_from_other_host_kept(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-node"}))

    with pytest.raises(RunLockedError, match="another-node"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).exists()


def test_unreadable_lock_raises(tmp_path):
    (tmp_path / LOCK_NAME).write_text("garbage")

    with pytest.raises(RunLockedError, match="unreadable"):
        RunLock(tmp_path).acquire()
