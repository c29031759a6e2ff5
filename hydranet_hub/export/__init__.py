"""Export HydraNet encoder weights for smp and timm, and publish them on the Hugging Face Hub.

An export folder contains three files: ``model.safetensors`` (encoder tensors), ``config.json``
(smp's and timm's preprocessing fields plus the ``"hydranet"`` record) and ``README.md`` (the
model card). ``export_encoder`` writes it atomically, ``validate_export`` checks it and
``push_to_hub`` uploads it.
"""

from hydranet_hub._constants import CONFIG_NAME, WEIGHTS_NAME
from hydranet_hub.export.card import find_card_template, render_card
from hydranet_hub.export.config import FORMAT_VERSION, INPUT_RANGE, build_config, read_config, validate_config
from hydranet_hub.export.errors import (
    CardTemplateNotFoundError,
    ConfigError,
    ExportError,
    ExportExistsError,
    PushError,
)
from hydranet_hub.export.folder import CARD_NAME, EXPORT_FILES, export_encoder, validate_export
from hydranet_hub.export.push import push_to_hub
from hydranet_hub.export.records import (
    DEMO_SOURCE,
    MSD_LICENSE,
    MSD_SOURCE,
    ExportResult,
    PushResult,
    TaskSummary,
)

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "CardTemplateNotFoundError",
    "ConfigError",
    "DEMO_SOURCE",
    "EXPORT_FILES",
    "ExportError",
    "ExportExistsError",
    "ExportResult",
    "FORMAT_VERSION",
    "INPUT_RANGE",
    "MSD_LICENSE",
    "MSD_SOURCE",
    "PushError",
    "PushResult",
    "TaskSummary",
    "WEIGHTS_NAME",
    "build_config",
    "export_encoder",
    "find_card_template",
    "push_to_hub",
    "read_config",
    "render_card",
    "validate_config",
    "validate_export",
]
