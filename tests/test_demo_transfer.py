"""End to end: a short demo pretraining, its export served by the Hub test server, fine-tuning in a fresh process.

The fresh process builds `smp.Unet(encoder_name="hydranet")` with the default encoder weights,
which HYDRANET_HUB_REPO_ID redirects to the served export, and fine-tunes it on the held-out demo
task. The test checks that this path works, not a speed or a score.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from hydranet_hub.demo import DEMO_HELDOUT_TASK, DEMO_PRETRAIN_TASKS
from hydranet_hub.training import PretrainConfig, pretrain

torch.set_num_threads(1)

REPO_ID = "mylab/hydranet-demo"
REPO_ROOT = Path(__file__).resolve().parents[1]

FINETUNE_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import torch
    import segmentation_models_pytorch as smp
    import hydranet_hub
    from hydranet_hub.finetune import FinetuneConfig, finetune

    torch.set_num_threads(1)
    model = smp.Unet(encoder_name="hydranet", in_channels=3, classes=3)
    loaded = float(model.encoder.layer4[1].conv1.weight.double().sum())

    config = FinetuneConfig.for_demo(
        encoder_weights="imagenet", slice_size=(32, 32), train_cases=1, steps=3, batch_size=4,
        warmup_steps=1, val_every=0, checkpoint_every=0, save_model=False, output_dir=sys.argv[1],
    )
    result = finetune(config, model=model)
    print(json.dumps({"loaded_sum": loaded, "task": result.task, "metrics": result.to_dict()["metrics"],
                      "train_cases": list(result.train_cases), "val_cases": list(result.val_cases),
                      "num_train_slices": result.num_train_slices}))
    """
)


def test_demo_export_transfers_through_hub(hub_server, hf_env, tmp_path):
    pretrained = pretrain(PretrainConfig.for_demo(
        steps=2, slice_size=(32, 32), batch_size_per_task=2, warmup_steps=1, checkpoint_every=0,
        output_dir=str(tmp_path / "pretrain"),
    ))
    export = pretrained.export
    assert [task["name"] for task in json.loads(export.config_path.read_text())["hydranet"]["tasks"]] == list(
        DEMO_PRETRAIN_TASKS
    )

    for path in (export.config_path, export.card_path, export.weights_path):
        commit = hub_server.add_file(REPO_ID, path.name, path.read_bytes())
    env = dict(hf_env, HYDRANET_HUB_REPO_ID=f"{REPO_ID}@{commit}", HYDRANET_HUB_SHA256=export.sha256)

    process = subprocess.run(
        [sys.executable, "-c", FINETUNE_SCRIPT, str(tmp_path / "finetune")],
        capture_output=True, text=True, env={**_inherited_env(), **env}, cwd=tmp_path, timeout=300,
    )

    assert process.returncode == 0, process.stderr[-4000:]
    outcome = json.loads(process.stdout.strip().splitlines()[-1])
    exported = load_file(str(export.weights_path))["layer4.1.conv1.weight"].double().sum()
    assert math.isclose(outcome["loaded_sum"], float(exported), rel_tol=1e-9)
    assert hub_server.request_count("GET", "model.safetensors") >= 1
    assert outcome["task"] == DEMO_HELDOUT_TASK
    assert len(outcome["train_cases"]) == 1
    assert outcome["val_cases"]
    assert not set(outcome["val_cases"]) & set(outcome["train_cases"])
    dice = outcome["metrics"]["dice/mean"]
    assert dice is not None
    assert math.isfinite(dice)
    assert 0.0 <= dice <= 1.0


def _inherited_env():
    # The fresh process imports this checkout, like the test process does.
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path}
