"""Two-process DistributedDataParallel training under a real `torchrun` on CPU (gloo)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from msd_fixtures import make_msd_task

from hydranet_hub.training.checkpoint import list_checkpoints

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch

    torch.set_num_threads(1)
    from hydranet_hub.training import PretrainConfig, pretrain

    data_root, output_dir, report_dir = sys.argv[1:4]
    config = PretrainConfig(
        data_root=data_root, output_dir=output_dir, encoder="resnet18", slice_size=(32, 32),
        decoder_channels=(32, 16, 16, 8, 8), batch_size_per_task=2, steps=4, warmup_steps=1,
        val_fraction=0.25, val_every=2, checkpoint_every=2, log_every=1, num_workers=0, export=False,
        device="cpu",
    )
    result = pretrain(config)
    rank = int(os.environ["RANK"])
    parameters = {name: p.detach().cpu() for name, p in result.model.named_parameters()}
    torch.save({"rank": rank, "world_size": result.world_size, "step": result.step,
                "parameters": parameters, "metrics": result.metrics},
               os.path.join(report_dir, f"rank{rank}.pt"))
    """
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data_root = root / "data"
    make_msd_task(data_root, "heart", n_cases=4, shape=(32, 32, 6), seed=0)
    make_msd_task(data_root, "liver", n_cases=4, shape=(32, 32, 6), seed=1)
    (root / "reports").mkdir()
    script = root / "worker.py"
    script.write_text(WORKER)

    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(data_root), str(root / "run"), str(root / "reports")]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    reports = [torch.load(root / "reports" / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    return root, reports


def test_ddp_both_ranks_finish(ddp_run):
    _, reports = ddp_run

    assert [report["rank"] for report in reports] == [0, 1]
    assert [report["world_size"] for report in reports] == [2, 2]
    assert [report["step"] for report in reports] == [4, 4]


def test_ddp_parameters_stay_in_sync(ddp_run):
    _, (rank0, rank1) = ddp_run

    assert rank0["parameters"].keys() == rank1["parameters"].keys()
    for name, tensor in rank0["parameters"].items():
        torch.testing.assert_close(tensor, rank1["parameters"][name], rtol=0, atol=0, msg=name)


def test_ddp_ranks_agree_on_validation(ddp_run):
    _, (rank0, rank1) = ddp_run

    assert rank0["metrics"] == rank1["metrics"]
    assert set(rank0["metrics"]) == {"Task02_Heart", "Task03_Liver"}


def test_ddp_only_rank0_writes(ddp_run):
    root, _ = ddp_run

    assert [step for step, _ in list_checkpoints(root / "run")] == [2, 4]
    assert (root / "run" / "metrics.csv").is_file()
    assert not (root / "run" / "run.lock").exists()
