"""Two-process fine-tuning under a real `torchrun` on CPU (gloo), with encoder freezing across ranks."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from msd_fixtures import make_msd_task

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch

    torch.set_num_threads(1)
    from hydranet_hub.finetune import FinetuneConfig, finetune

    task, output_dir, report_dir = sys.argv[1:4]
    config = FinetuneConfig(
        task=task, output_dir=output_dir, encoder="tu-resnet10t", encoder_weights=None,
        model_kwargs={"decoder_channels": (32, 16, 16, 8, 8)}, slice_size=(32, 32), batch_size=2, steps=4,
        warmup_steps=1, val_fraction=0.34, val_every=2, checkpoint_every=2, num_workers=0, device="cpu",
        freeze_encoder_steps=2, encoder_lr_mult=0.5,
    )
    result = finetune(config)
    rank = int(os.environ["RANK"])
    parameters = {name: p.detach().cpu() for name, p in result.model.named_parameters()}
    torch.save({"rank": rank, "world_size": result.world_size, "step": result.step, "parameters": parameters,
                "metrics": dict(result.metrics), "model_dir": None if result.model_dir is None else str(result.model_dir)},
               os.path.join(report_dir, f"rank{rank}.pt"))
    """
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    task = make_msd_task(root / "data", "heart", n_cases=6, shape=(32, 32, 6), seed=3)
    (root / "reports").mkdir()
    script = root / "worker.py"
    script.write_text(WORKER)

    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(task), str(root / "run"), str(root / "reports")]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    reports = [torch.load(root / "reports" / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    return root, reports


def test_ddp_finetune_ranks_finish(ddp_run):
    root, (rank0, rank1) = ddp_run

    assert [rank0["step"], rank1["step"]] == [4, 4]
    assert [rank0["world_size"], rank1["world_size"]] == [2, 2]
    assert rank0["model_dir"] == str(root / "run" / "model")
    assert rank1["model_dir"] is None
    assert (root / "run" / "model" / "preprocessing.json").is_file()


def test_ddp_finetune_parameters_in_sync(ddp_run):
    _, (rank0, rank1) = ddp_run

    assert rank0["parameters"].keys() == rank1["parameters"].keys()
    for name, tensor in rank0["parameters"].items():
        torch.testing.assert_close(tensor, rank1["parameters"][name], rtol=0, atol=0, msg=name)


def test_ddp_finetune_ranks_agree_on_dice(ddp_run):
    _, (rank0, rank1) = ddp_run

    assert rank0["metrics"] == rank1["metrics"]
    assert 0.0 <= rank0["metrics"]["dice/mean"] <= 1.0
