"""Multi-task segmentation models built on smp encoders."""

from hydranet_hub.models.hydranet import HydraNet

__all__ = ["HydraNet"]
