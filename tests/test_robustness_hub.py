"""The Hub failing: HTTP errors, time-outs, truncated downloads, concurrent first downloads and token hygiene.

All traffic goes to the Hub test server on 127.0.0.1 (`hub_server`, `hf_env` in conftest.py).
huggingface_hub waits up to 23 s between its retries of a 5xx response or a time-out. These tests
skip those waits by giving its modules a `time` whose sleep returns at once; the requests, the
time-outs and the number of retries stay real.
"""

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import time
import traceback
import types
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import file_download
from huggingface_hub.utils import _http as hf_http
from safetensors.torch import save

import hydranet_hub
from hydranet_hub import releases
from hydranet_hub.errors import ChecksumMismatchError, WeightsDownloadError, WeightsFormatError
from hydranet_hub.releases import Release, register_release

REPO = "lab/hydranet-robust"
TOKEN = "hf_robustnessSecret0123456789"
REPO_ROOT = Path(__file__).resolve().parents[1]

_SKIP_BACKOFF_WAITS = textwrap.dedent(
    """
    import time, types
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http
    _no_wait = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    _no_wait.sleep = lambda seconds: None
    file_download.time = _http.time = _no_wait
    """
)


def _no_wait_time() -> types.SimpleNamespace:
    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    clock.sleep = lambda seconds: None
    return clock


@pytest.fixture
def no_backoff(monkeypatch):
    clock = _no_wait_time()
    monkeypatch.setattr(hf_http, "time", clock)
    monkeypatch.setattr(file_download, "time", clock)


@pytest.fixture
def isolated_releases(monkeypatch):
    monkeypatch.setattr(releases, "_RELEASES", dict(releases._RELEASES))


@pytest.fixture(scope="module")
def weights_bytes() -> bytes:
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder("resnet34", weights=None)
    return save({name: tensor.contiguous() for name, tensor in encoder.state_dict().items()})


@pytest.fixture
def served(hf_env, hub_server, weights_bytes) -> str:
    """Commit of REPO that serves `weights_bytes` as model.safetensors, with a config.json."""
    hub_server.add_file(REPO, "config.json", b'{"mean": [0, 0, 0]}')
    return hub_server.add_file(REPO, "model.safetensors", weights_bytes)


def _child_env() -> dict[str, str]:
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}


def _error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


# --- HTTP errors ----------------------------------------------------------------------------------------------------


def test_file_404_names_status(served, hub_server):
    hub_server.fail_next(404, count=5, path_contains="model.safetensors")

    with pytest.raises(WeightsDownloadError) as caught:
        smp.Unet(encoder_name="hydranet", encoder_weights=f"hf-hub:{REPO}@{served}")

    message = str(caught.value)
    assert f"{REPO}@{served}" in message
    assert "HTTP 404" in message
    assert "not in the local cache" in message


@pytest.mark.parametrize("status", [200, 401, 403, 500])
def test_token_never_in_logs_or_errors(served, hub_server, monkeypatch, caplog, no_backoff, status):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    if status != 200:
        hub_server.fail_next(status, count=20, path_contains="model.safetensors")

    with caplog.at_level(logging.DEBUG):
        if status == 200:
            resolved = hydranet_hub.resolve_weights(f"hf-hub:{REPO}@{served}")
            shown = repr(resolved)
        else:
            with pytest.raises(WeightsDownloadError) as caught:
                hydranet_hub.resolve_weights(f"hf-hub:{REPO}@{served}")
            shown = _error_text(caught.value)

    assert f"Bearer {TOKEN}" in hub_server.authorizations
    assert TOKEN not in shown
    assert TOKEN not in caplog.text
    if status in (401, 403):
        assert f"refused access to model.safetensors in {REPO}@{served}" in shown
        assert f"(HTTP {status})" in shown
        assert "HF_TOKEN" in shown
    elif status == 500:
        assert "HTTP 500" in shown


# --- truncated downloads --------------------------------------------------------------------------------------------


def test_truncated_download_unpinned(hf_env, hub_server, weights_bytes):
    hub_server.add_file(REPO, "model.safetensors", weights_bytes[: len(weights_bytes) // 2])

    with pytest.raises(WeightsFormatError) as caught:
        hydranet_hub.resolve_weights(f"hf-hub:{REPO}")

    assert "model.safetensors" in str(caught.value)
    assert "not a readable safetensors file" in str(caught.value)


def test_truncated_download_pinned(hf_env, hub_server, weights_bytes, isolated_releases):
    commit = hub_server.add_file(REPO, "model.safetensors", weights_bytes[: len(weights_bytes) // 2])
    register_release(Release(tag="robust", architecture="resnet34", repo_id=REPO, revision=commit,
                             sha256=hashlib.sha256(weights_bytes).hexdigest()))

    with pytest.raises(ChecksumMismatchError) as caught:
        timm.create_model("hydranet_resnet34.robust", pretrained=True)

    assert hashlib.sha256(weights_bytes).hexdigest() in str(caught.value)
    assert "it was not loaded" in str(caught.value)


# --- time-outs ------------------------------------------------------------------------------------------------------


_RESOLVE_IN_CHILD = _SKIP_BACKOFF_WAITS + textwrap.dedent(
    """
    import sys
    import hydranet_hub
    try:
        hydranet_hub.resolve_weights(sys.argv[1])
    except Exception as error:
        print(f"{type(error).__name__}|{error}")
        sys.exit(3)
    """
)


def test_hub_time_outs_in_subprocess(served, hub_server):
    # huggingface_hub reads both time-outs once, at import, so they are set in a fresh process.
    # The first metadata request is held for 3 s: it times out only if HF_HUB_ETAG_TIMEOUT=1 was
    # read, and then the client asks again (with its own fixed 60 s time-out), so two HEADs arrive.
    # Every download is held for 60 s: with the default 10 s time-out, six attempts would outlast
    # the 45 s the child is given, so finishing in time shows HF_HUB_DOWNLOAD_TIMEOUT=1 was read.
    hub_server.hang_next(3, method="HEAD", path_contains="model.safetensors")
    hub_server.hang_next(60, count=20, method="GET", path_contains="model.safetensors")
    env = {**_child_env(), "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1"}

    result = subprocess.run([sys.executable, "-c", _RESOLVE_IN_CHILD, f"hf-hub:{REPO}@{served}"],
                            env=env, capture_output=True, text=True, timeout=45)

    assert result.returncode == 3, result.stdout + result.stderr
    kind, _, message = result.stdout.strip().splitlines()[-1].partition("|")
    assert kind == "WeightsDownloadError"
    assert f"{REPO}@{served}" in message
    assert "timed out" in message
    assert "HF_HUB_DOWNLOAD_TIMEOUT" in message
    assert hub_server.request_count("HEAD", "model.safetensors") == 2
    assert hub_server.request_count("GET", "model.safetensors") >= 1


# --- two processes, one cache ---------------------------------------------------------------------------------------


_RESOLVE_AFTER_BARRIER = textwrap.dedent(
    """
    import glob, os, sys, time
    import hydranet_hub
    import huggingface_hub  # imported before the barrier, so both processes start the download together

    barrier = sys.argv[2]
    open(f"{barrier}.{os.getpid()}", "w").close()
    deadline = time.monotonic() + 120
    while len(glob.glob(f"{barrier}.*")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(hydranet_hub.resolve_weights(sys.argv[1]).sha256)
    """
)


def test_concurrent_first_download_once(served, hub_server, weights_bytes, hf_env, tmp_path):
    # The first download is held for 3 s, so the second process reaches huggingface_hub's file
    # lock while the first one still downloads under it.
    hub_server.hang_next(3, method="GET", path_contains="model.safetensors")
    command = [sys.executable, "-c", _RESOLVE_AFTER_BARRIER, f"hf-hub:{REPO}@{served}", str(tmp_path / "ready")]

    loaders = [subprocess.Popen(command, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [loader.communicate(timeout=180) for loader in loaders]

    expected = hashlib.sha256(weights_bytes).hexdigest()
    assert [loader.returncode for loader in loaders] == [0, 0], [errors for _, errors in outputs]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == [expected, expected]
    # Both looked the file up before either had cached it, yet its bytes were sent once.
    assert hub_server.request_count("HEAD", "model.safetensors") == 2
    assert hub_server.request_count("GET", "model.safetensors") == 1
    assert (Path(hf_env["HF_HUB_CACHE"]) / ".locks" / f"models--{REPO.replace('/', '--')}").is_dir()
