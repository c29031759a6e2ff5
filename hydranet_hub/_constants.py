"""Environment variables and file names that hydranet-hub reads, in one place."""

import os

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

HF_HUB_PREFIX = "hf-hub:"

# Setting this to 1, true or yes stops the import hook from registering the
# encoder when smp or timm is imported. `import hydranet_hub` still registers.
ENV_DISABLE_AUTOREGISTER = "HYDRANET_HUB_DISABLE_AUTOREGISTER"

# "org/repo" or "org/repo@revision": where the default release is downloaded
# from instead of its recorded repo (a copy in your own organisation, or your
# own pretraining exported by hydranet-pretrain).
ENV_REPO_ID = "HYDRANET_HUB_REPO_ID"

# Expected sha256 of model.safetensors in the repo named by HYDRANET_HUB_REPO_ID,
# for releases whose record has no hash yet.
ENV_SHA256 = "HYDRANET_HUB_SHA256"

_TRUE_VALUES = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE_VALUES
