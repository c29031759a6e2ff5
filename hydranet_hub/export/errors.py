"""Exceptions raised while exporting, validating or publishing encoder weights."""

from hydranet_hub.errors import HydraNetHubError


class ExportError(HydraNetHubError, ValueError):
    """Export inputs or an export folder that are invalid; the message names the value and the fix."""


class ExportExistsError(ExportError, FileExistsError):
    """The output folder already contains files and overwriting was not requested."""


class ConfigError(ExportError):
    """A config.json that does not follow the hydranet export schema."""


class CardTemplateNotFoundError(ExportError, FileNotFoundError):
    """The model card template is neither in the installed package nor in the source checkout."""


class PushError(HydraNetHubError):
    """The Hub rejected or failed an upload; the message names the repository and the next step."""
