"""Register the HydraNet encoder when smp or timm is first imported.

The file ``hydranet_hub_autoregister.pth``, installed into site-packages with
the package, imports this module at interpreter start. It imports nothing but
the standard library (no torch): it only adds a finder to ``sys.meta_path``
that lets segmentation_models_pytorch or timm load as usual and then
registers HydraNet in it. Set ``HYDRANET_HUB_DISABLE_AUTOREGISTER=1`` to turn
it off; ``import hydranet_hub`` still registers explicitly.
"""

import os
import sys

_WATCHED = ("segmentation_models_pytorch", "timm")
_DISABLE_VARIABLE = "HYDRANET_HUB_DISABLE_AUTOREGISTER"

# True while this hook imports hydranet_hub, so that the package registers only
# into the library being imported (importing timm alone must not import smp).
registering = False


def _registration_in_progress(library):
    # When `import hydranet_hub` itself imports timm or smp, the package is
    # half-initialised and registers explicitly once its imports finish.
    module = sys.modules.get("hydranet_hub._timm" if library == "timm" else "hydranet_hub._smp")
    entry = "register_timm_models" if library == "timm" else "register_smp_encoders"
    return module is not None and not hasattr(module, entry)


def _register(library):
    global registering
    if _registration_in_progress(library):
        return
    registering = True
    try:
        if library == "timm":
            from hydranet_hub._timm import register_timm_models

            register_timm_models()
        else:
            from hydranet_hub._smp import register_smp_encoders

            register_smp_encoders()
    except Exception as error:  # noqa: BLE001 - a broken hook must never break the user's import
        import warnings

        warnings.warn(
            f"hydranet-hub could not register its encoder in {library}: {error!r}. "
            f"`import hydranet_hub` registers explicitly; set {_DISABLE_VARIABLE}=1 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
    finally:
        registering = False


class _RegisteringFinder:
    """A meta path finder that wraps the watched packages' loaders and finds nothing itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _WATCHED:
            return None

        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None

        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec_module = loader.exec_module

        def exec_module(module):
            original_exec_module(module)
            _register(fullname)

        loader.exec_module = exec_module
        return spec


def install():
    """Add the finder to sys.meta_path unless disabled or already present."""
    if os.environ.get(_DISABLE_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}:
        return
    if any(isinstance(finder, _RegisteringFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _RegisteringFinder())


install()
