"""Exceptions raised by volume inference. Each message names the value and the fix."""

from hydranet_hub.errors import HydraNetHubError


class InferenceError(HydraNetHubError, ValueError):
    """A model folder, preprocessing.json, input volume or model output that inference cannot use."""


class OutputExistsError(HydraNetHubError, FileExistsError):
    """A prediction file already exists and overwrite was not requested."""
