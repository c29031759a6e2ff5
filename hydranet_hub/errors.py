"""Exceptions raised by hydranet-hub. Each message states what to do next."""


class HydraNetHubError(Exception):
    """Base class of every error hydranet-hub raises on purpose."""


class UnknownReleaseError(HydraNetHubError, KeyError):
    """A release tag or weights specification that hydranet-hub does not recognise."""

    def __str__(self) -> str:
        # KeyError quotes its message; show it as written.
        return str(self.args[0]) if self.args else ""


class UnpublishedReleaseError(HydraNetHubError):
    """The release is recorded but its weights have not been published."""


class WeightsNotFoundError(HydraNetHubError, FileNotFoundError):
    """A local weights file or Hub file that does not exist."""


class WeightsDownloadError(HydraNetHubError):
    """The Hub (or mirror) could not be reached or refused the download."""


class ChecksumMismatchError(HydraNetHubError):
    """A weights file whose sha256 differs from the one its release pins."""


class WeightsFormatError(HydraNetHubError):
    """A file that is not a readable safetensors file."""


class WeightsMismatchError(HydraNetHubError):
    """Weights whose tensor names or shapes do not fit the model."""
