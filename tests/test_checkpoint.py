"""Checkpoint files: atomic write, content hash, rejection of damaged files, pruning."""

import os

import pytest
import torch

from hydranet_hub.training.checkpoint import (
    CHECKPOINT_MAGIC,
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume_path,
    save_checkpoint,
)


def _state():
    return {"step": 7, "model": {"w": torch.arange(6.0).reshape(2, 3)}, "rng": [(3, (1, 2), None)], "name": "x"}


def test_checkpoint_round_trip(tmp_path):
    path = checkpoint_path(tmp_path, 7)

    digest = save_checkpoint(path, _state())
    loaded = load_checkpoint(path)

    assert len(digest) == 64
    assert loaded["step"] == 7
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert loaded["rng"] == [(3, (1, 2), None)]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_checkpoint_flipped_byte_rejected(tmp_path):
    path = checkpoint_path(tmp_path, 1)
    save_checkpoint(path, _state())
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="corrupted") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_checkpoint_truncated_rejected(tmp_path):
    path = checkpoint_path(tmp_path, 1)
    save_checkpoint(path, _state())
    path.write_bytes(path.read_bytes()[: len(CHECKPOINT_MAGIC) + 10])

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_checkpoint_foreign_file_rejected(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"step": 1}, path)

    with pytest.raises(CheckpointError, match="not a hydranet-hub checkpoint"):
        load_checkpoint(path)


def test_checkpoint_missing_file_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_failed_write_keeps_previous_file(tmp_path):
    path = checkpoint_path(tmp_path, 3)
    save_checkpoint(path, _state())
    before = path.read_bytes()

    with pytest.raises(Exception):
        save_checkpoint(path, {"bad": lambda: None})

    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_prune_keeps_newest(tmp_path):
    for step in (5, 10, 15, 20):
        save_checkpoint(checkpoint_path(tmp_path, step), _state())

    removed = prune_checkpoints(tmp_path, keep=2)

    assert [p.name for p in removed] == ["step_00000005.pt", "step_00000010.pt"]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [15, 20]


def test_resume_latest_picks_newest(tmp_path):
    for step in (9, 100, 20):
        save_checkpoint(checkpoint_path(tmp_path, step), _state())

    assert resolve_resume_path(tmp_path, "latest") == checkpoint_path(tmp_path, 100)


def test_resume_latest_without_checkpoint_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_resume_path(tmp_path, "latest")
