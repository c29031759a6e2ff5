"""Tests of the Hub test server against the real huggingface_hub client."""

import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http as hf_http

from hubserver import HubServer

REPO_ID = "hydranet-test/encoder"


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def test_download_from_branch(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    sha = hub_server.add_file(REPO_ID, "config.json", b'{"depth": 34}')

    path = hf_hub_download(REPO_ID, "config.json")

    assert _read(path) == b'{"depth": 34}'
    assert Path(path).parent.name == sha
    assert Path(path).is_relative_to(hf_env["HF_HUB_CACHE"])
    assert hub_server.request_count("GET", "/resolve/main/config.json") == 1


def test_download_pinned_commit(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    old_sha = hub_server.add_file(REPO_ID, "model.safetensors", b"weights v1")
    new_sha = hub_server.add_file(REPO_ID, "model.safetensors", b"weights v2, longer")

    new_path = hf_hub_download(REPO_ID, "model.safetensors")
    old_path = hf_hub_download(REPO_ID, "model.safetensors", revision=old_sha)

    assert old_sha != new_sha
    assert hub_server.commit_sha(REPO_ID) == new_sha
    assert _read(new_path) == b"weights v2, longer"
    assert _read(old_path) == b"weights v1"
    assert hub_server.file_bytes(REPO_ID, "model.safetensors", revision=old_sha) == b"weights v1"


def test_download_unchanged_file_carries_over(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    second_sha = hub_server.add_file(REPO_ID, "weights/encoder.safetensors", b"tensor bytes")

    path = hf_hub_download(REPO_ID, "config.json", revision=second_sha)

    assert _read(path) == b"{}"
    assert hub_server.list_files(REPO_ID, second_sha) == ["config.json", "weights/encoder.safetensors"]


def test_download_url_encoded_branch(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"main")
    hub_server.add_file(REPO_ID, "config.json", b"release", revision="release/v1")

    path = hf_hub_download(REPO_ID, "config.json", revision="release/v1")

    assert _read(path) == b"release"
    assert ("HEAD", f"/{REPO_ID}/resolve/release/v1/config.json") in hub_server.requests


def test_lfs_headers_carry_sha256(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    data = b"\x00" * 300
    hub_server.add_file(REPO_ID, "model.safetensors", data)
    hub_server.add_file(REPO_ID, "config.json", b"{}")

    lfs_request = urllib.request.Request(f"{hub_server.url}/{REPO_ID}/resolve/main/model.safetensors", method="HEAD")
    regular_request = urllib.request.Request(f"{hub_server.url}/{REPO_ID}/resolve/main/config.json", method="HEAD")
    with urllib.request.urlopen(lfs_request) as lfs, urllib.request.urlopen(regular_request) as regular:
        lfs_headers, regular_headers = lfs.headers, regular.headers

    assert lfs_headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert lfs_headers["X-Linked-Size"] == "300"
    assert lfs_headers["X-Repo-Commit"] == hub_server.commit_sha(REPO_ID)
    assert regular_headers["X-Linked-Etag"] is None
    assert regular_headers["Content-Length"] == "2"
    assert "X-Xet-Hash" not in lfs_headers


def test_range_request_returns_slice(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "model.safetensors", bytes(range(100)))
    url = f"{hub_server.url}/{REPO_ID}/resolve/main/model.safetensors"

    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=10-19"})) as response:
        status, body, content_range = response.status, response.read(), response.headers["Content-Range"]
    with pytest.raises(urllib.error.HTTPError) as outside:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=200-"}))

    assert status == 206
    assert body == bytes(range(10, 20))
    assert content_range == "bytes 10-19/100"
    assert outside.value.code == 416


def test_missing_file_raises_entry_not_found(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO_ID, "missing.safetensors")


def test_missing_repo_raises_repository_not_found(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("hydranet-test/absent", "config.json")


def test_missing_revision_raises_revision_not_found(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")

    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO_ID, "config.json", revision="0" * 40)


def test_injected_500_raises_http_error(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    hub_server.fail_next(500, method="GET")

    with pytest.raises(HfHubHTTPError) as raised:
        hf_hub_download(REPO_ID, "config.json")

    assert raised.value.response.status_code == 500
    assert hub_server.request_count("GET") == 1


def test_injected_404_code_raises_repository_not_found(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    hub_server.fail_next(404, error_code="RepoNotFound", path_contains="/api/models/")

    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(REPO_ID)
    assert HfApi().model_info(REPO_ID).sha == hub_server.commit_sha(REPO_ID)


def test_transient_503_is_retried(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    hub_server.fail_next(503, method="HEAD")

    path = hf_hub_download(REPO_ID, "config.json")

    assert _read(path) == b"{}"
    assert hub_server.request_count("HEAD") == 2


def test_hang_times_out_then_retries(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    hub_server.hang_next(5.0, method="HEAD")

    path = hf_hub_download(REPO_ID, "config.json", etag_timeout=0.3)

    assert _read(path) == b"{}"
    assert hub_server.request_count("HEAD") == 2


def test_hang_raises_timeout(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    hub_server.hang_next(5.0)

    with pytest.raises(httpx2.TimeoutException):
        HfApi().model_info(REPO_ID, timeout=0.3)


def test_token_is_recorded(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")

    hf_hub_download(REPO_ID, "config.json", token="hf_test_token")

    assert hub_server.authorizations == ["Bearer hf_test_token", "Bearer hf_test_token"]


def test_upload_folder_round_trip(hub_server: HubServer, hf_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "release"
    (folder / "weights").mkdir(parents=True)
    files = {
        "config.json": b'{"encoder": "resnet34"}',
        "weights/encoder.safetensors": os.urandom(4096),
        "README.md": b"# HydraNet encoder\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    api = HfApi(token="hf_write_token")

    api.create_repo(REPO_ID, exist_ok=True)
    api.create_repo(REPO_ID, exist_ok=True)
    commit = api.upload_folder(repo_id=REPO_ID, folder_path=folder, commit_message="Upload release")
    snapshot = Path(snapshot_download(REPO_ID, cache_dir=tmp_path / "download_cache"))

    assert commit.oid == hub_server.commit_sha(REPO_ID)
    assert hub_server.list_files(REPO_ID) == sorted(files)
    for name, data in files.items():
        assert (snapshot / name).read_bytes() == data
    assert hub_server.request_count("PUT", "/lfs-objects/") == 1
    assert "Bearer hf_write_token" in hub_server.authorizations


def test_upload_unchanged_file_is_skipped(hub_server: HubServer, hf_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"same weights")
    api = HfApi()
    api.create_repo(REPO_ID)
    local_path = tmp_path / "model.safetensors"
    first = api.upload_file(path_or_fileobj=local_path, path_in_repo="model.safetensors", repo_id=REPO_ID)

    second = api.upload_file(path_or_fileobj=local_path, path_in_repo="model.safetensors", repo_id=REPO_ID)

    assert second.oid == first.oid
    assert hub_server.request_count("POST", "/commit/") == 1


def test_upload_delete_patterns_remove_files(hub_server: HubServer, hf_env: dict[str, str], tmp_path: Path) -> None:
    hub_server.add_file(REPO_ID, "old/config.json", b"{}")
    hub_server.add_file(REPO_ID, "old/notes.txt", b"kept")
    (tmp_path / "model.safetensors").write_bytes(b"new weights")

    HfApi().upload_folder(repo_id=REPO_ID, folder_path=tmp_path, delete_patterns="*.json")

    assert hub_server.list_files(REPO_ID) == ["model.safetensors", "old/notes.txt"]


def test_model_info_pinned_revision(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    first_sha = hub_server.add_file(REPO_ID, "config.json", b"{}")
    hub_server.add_file(REPO_ID, "model.safetensors", b"weights")

    pinned = HfApi().model_info(REPO_ID, revision=first_sha, files_metadata=True)
    latest = HfApi().model_info(REPO_ID, files_metadata=True)

    assert pinned.sha == first_sha
    assert [sibling.rfilename for sibling in pinned.siblings] == ["config.json"]
    assert [sibling.rfilename for sibling in latest.siblings] == ["config.json", "model.safetensors"]
    assert latest.siblings[1].lfs.sha256 == hashlib.sha256(b"weights").hexdigest()
    assert latest.siblings[0].lfs is None


def test_list_repo_tree_levels(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    hub_server.add_file(REPO_ID, "weights/fold0/encoder.safetensors", b"weights")

    top_level = [entry.path for entry in HfApi().list_repo_tree(REPO_ID)]
    recursive = [entry.path for entry in HfApi().list_repo_tree(REPO_ID, recursive=True)]
    in_folder = [entry.path for entry in HfApi().list_repo_tree(REPO_ID, path_in_repo="weights/fold0")]

    assert top_level == ["config.json", "weights"]
    assert recursive == ["config.json", "weights", "weights/fold0", "weights/fold0/encoder.safetensors"]
    assert in_folder == ["weights/fold0/encoder.safetensors"]


def test_stopped_server_uses_cache(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    cached = hf_hub_download(REPO_ID, "config.json")
    hub_server.stop()

    assert hf_hub_download(REPO_ID, "config.json") == cached
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{hub_server.url}/api/models/{REPO_ID}")


def test_offline_mode_returns_cached_file(
    hub_server: HubServer, hf_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_server.add_file(REPO_ID, "model.safetensors", b"cached weights")
    cached = hf_hub_download(REPO_ID, "model.safetensors")
    requests_before = len(hub_server.requests)
    hub_server.set_offline(True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    path = hf_hub_download(REPO_ID, "model.safetensors")

    assert path == cached
    assert _read(path) == b"cached weights"
    assert len(hub_server.requests) == requests_before


def test_offline_subprocess_returns_cached_file(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    hub_server.add_file(REPO_ID, "model.safetensors", b"cached weights")
    cached = hf_hub_download(REPO_ID, "model.safetensors")
    hub_server.stop()
    script = f"from huggingface_hub import hf_hub_download; print(hf_hub_download({REPO_ID!r}, 'model.safetensors'))"

    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **hf_env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == cached


def test_restart_serves_same_port(hub_server: HubServer, hf_env: dict[str, str]) -> None:
    url = hub_server.url
    hub_server.add_file(REPO_ID, "config.json", b"{}")
    hub_server.set_offline(True)
    hub_server.set_offline(False)

    with urllib.request.urlopen(f"{url}/api/models/{REPO_ID}") as response:
        assert response.status == 200
    assert hub_server.url == url


def test_non_loopback_request_rejected(hf_env: dict[str, str]) -> None:
    session = hf_http.get_session()
    request = session.build_request("GET", "https://huggingface.co/api/models/some/model")

    # The hooks run before a request leaves the process, so calling them directly sends nothing.
    with pytest.raises(RuntimeError, match="other than 127.0.0.1"):
        for hook in session.event_hooks["request"]:
            hook(request)


def test_fault_arguments_validated(hub_server: HubServer) -> None:
    with pytest.raises(ValueError, match="status=200"):
        hub_server.fail_next(200)
    with pytest.raises(ValueError, match="count=0"):
        hub_server.fail_next(500, count=0)
    with pytest.raises(ValueError, match="seconds=0"):
        hub_server.hang_next(0)


def test_add_file_validates_names(hub_server: HubServer) -> None:
    with pytest.raises(ValueError, match="namespace/name"):
        hub_server.add_file("no-namespace", "config.json", b"{}")
    with pytest.raises(ValueError, match="relative path"):
        hub_server.add_file(REPO_ID, "../escape.json", b"{}")
    with pytest.raises(KeyError):
        hub_server.commit_sha(REPO_ID, "main")
