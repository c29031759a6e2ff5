"""Fine-tuning an smp model with a pretrained encoder on one target task, and the transfer benchmark.

Typical use::

    from hydranet_hub.finetune import FinetuneConfig, finetune

    result = finetune(FinetuneConfig(
        task="/data/msd/Task04_Hippocampus", arch="Unet", encoder="hydranet",
        encoder_weights="runs/msd7/export", train_cases=4, freeze_encoder_steps=200,
    ))
    print(result.metrics["dice/mean"], result.model_dir)

The model folder loads with `smp.from_pretrained(folder)` and runs in `hydranet-predict --model
folder`. Reading NIfTI files needs the `train` extra (`pip install hydranet-hub[train]`).
"""

from hydranet_hub.finetune.config import DEMO_PRETRAIN_EXPORT, DEMO_SETTINGS, FinetuneConfig
from hydranet_hub.finetune.data import select_slice_fraction
from hydranet_hub.finetune.model import TaskModel, create_segmentation_model, save_model_folder
from hydranet_hub.finetune.run import RESULT_NAME, FinetuneResult, finetune

__all__ = [
    "DEMO_PRETRAIN_EXPORT",
    "DEMO_SETTINGS",
    "FinetuneConfig",
    "FinetuneResult",
    "RESULT_NAME",
    "TaskModel",
    "create_segmentation_model",
    "finetune",
    "save_model_folder",
    "select_slice_fraction",
]
