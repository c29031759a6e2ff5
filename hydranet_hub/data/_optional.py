"""Guarded imports of the dependencies that only the `train` extra installs."""

import importlib
from types import ModuleType

_INSTALL_HINT = "pip install hydranet-hub[train]"


def require(module_name: str, purpose: str) -> ModuleType:
    """Import an optional dependency or explain how to install it.

    Args:
        module_name: Importable module name, e.g. "nibabel".
        purpose: What the caller needs the module for, used in the error message.

    Returns:
        The imported module.

    Raises:
        ImportError: If the module is not installed; the message names the install command.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"{module_name} is required for {purpose} but is not installed. "
            f"Install the training extras with `{_INSTALL_HINT}`."
        ) from error
