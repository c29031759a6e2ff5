"""Multi-task pretraining of the HydraNet encoder (the library behind `hydranet-pretrain`)."""

from hydranet_hub.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hydranet_hub.training.config import PretrainConfig, load_config_file
from hydranet_hub.training.loop import PretrainResult, pretrain
from hydranet_hub.training.losses import MultiTaskLoss, soft_dice_loss
from hydranet_hub.training.run_lock import RunLock, RunLockedError

__all__ = [
    "CheckpointError",
    "MultiTaskLoss",
    "PretrainConfig",
    "PretrainResult",
    "RunLock",
    "RunLockedError",
    "load_checkpoint",
    "load_config_file",
    "pretrain",
    "save_checkpoint",
    "soft_dice_loss",
]
