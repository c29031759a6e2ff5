"""Shared pytest fixtures. Each section belongs to one area of the test suite."""

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_api
from huggingface_hub.utils import _http as hf_http

from hubserver import HubServer

# --- Hub test server ----------------------------------------------------------------------------------------------

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# Variables that could send the client elsewhere, reuse a real token or switch modes behind a test's back.
_UNSET_FOR_HUB_TESTS = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING",
    "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_HIGH_PERFORMANCE",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
)


def _reject_non_loopback(request: httpx2.Request) -> None:
    if request.url.host not in _LOOPBACK_HOSTS:
        raise RuntimeError(
            f"Test sent {request.method} {request.url} to a host other than 127.0.0.1; "
            "use the hf_env fixture so that huggingface_hub calls reach the Hub test server."
        )


def _loopback_only_client() -> httpx2.Client:
    # Same settings as huggingface_hub's default client, plus the loopback check before every request.
    return httpx2.Client(
        event_hooks={"request": [hf_http.hf_request_event_hook, _reject_non_loopback]},
        follow_redirects=True,
        timeout=None,
    )


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """Hub test server on 127.0.0.1, started for one test and stopped after it."""
    with HubServer() as server:
        yield server


@pytest.fixture
def hf_env(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point huggingface_hub at `hub_server`, in this process and in subprocesses started by the test.

    Sets the variables below in `os.environ` (subprocesses inherit them) and patches the values that
    huggingface_hub 2.4.0 read from them at import time. In-process HTTP calls to any host other than
    127.0.0.1 raise RuntimeError. Xet is disabled because the test server implements only the LFS upload
    protocol. To test offline mode in-process, also patch `huggingface_hub.constants.HF_HUB_OFFLINE` to True.

    Returns:
        The variables set, e.g. `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_DISABLE_XET`.
    """
    hf_home = tmp_path / "hf_home"
    env = {
        "HF_ENDPOINT": hub_server.url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name in _UNSET_FOR_HUB_TESTS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    patched_constants = {
        "ENDPOINT": hub_server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub_server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": env["HF_HOME"],
        "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HUGGINGFACE_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_ASSETS_CACHE": env["HF_ASSETS_CACHE"],
        "HUGGINGFACE_ASSETS_CACHE": env["HF_ASSETS_CACHE"],
        "HF_XET_CACHE": env["HF_XET_CACHE"],
        "HF_TOKEN_PATH": env["HF_TOKEN_PATH"],
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in patched_constants.items():
        monkeypatch.setattr(hf_constants, name, value)

    # The module-level HfApi behind huggingface_hub.create_repo() and friends copied ENDPOINT when imported.
    monkeypatch.setattr(hf_api.api, "endpoint", hub_server.url)
    monkeypatch.setattr("huggingface_hub.utils._cache_manager.HF_HUB_CACHE", env["HF_HUB_CACHE"])

    previous_factory = hf_http._GLOBAL_CLIENT_FACTORY
    hf_http.set_client_factory(_loopback_only_client)
    try:
        yield env
    finally:
        # Also closes the shared client, so no connection outlives the test's server.
        hf_http.set_client_factory(previous_factory)
