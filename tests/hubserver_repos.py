"""Repository storage behind the Hub test server: commits, branches, blobs and the JSON they are served as.

Each commit stores the full file list of its revision as path -> sha256 of the content; content lives once in
a blob table keyed by sha256. Commit shas are sha1 digests of the parent sha, the file list and the message.
"""

import base64
import hashlib
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

# A subset of the patterns in the `.gitattributes` that the Hub puts into new repositories.
_LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".npy", ".npz", ".pkl", ".zip", ".gz", ".tar",
)
# NOTE: the real Hub decides LFS from .gitattributes and rejects regular files over 10 MB; this size threshold
# approximates that rule.
_LFS_MIN_SIZE_BYTES = 10 * 1000 * 1000

_REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_RANGE_PATTERN = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Reply:
    """HTTP response to send: status, headers and body bytes."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


class HubError(Exception):
    """Error reply in the Hub's format: `X-Error-Code` and `X-Error-Message` headers and a JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})
        self.body = dict(body or {})

    def reply(self) -> Reply:
        headers = {"X-Error-Message": self.message, "Content-Type": "application/json", **self.headers}
        if self.error_code is not None:
            headers["X-Error-Code"] = self.error_code
        return Reply(self.status, json.dumps({"error": self.message, **self.body}).encode(), headers)


def json_reply(payload: object, status: int = 200, content_type: str = "application/json") -> Reply:
    """Return a reply with `payload` serialized as JSON."""
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": content_type})


@dataclass(frozen=True)
class _Commit:
    sha: str
    parent: str | None
    files: Mapping[str, str]
    message: str


@dataclass
class _Repo:
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)


@dataclass(frozen=True)
class _FileMeta:
    """How the Hub describes a stored file: git blob id, size and, for LFS files, the pointer size."""

    size: int
    sha256: str
    blob_id: str
    is_lfs: bool
    pointer_size: int


def is_lfs_path(path: str, size: int) -> bool:
    """Return whether the Hub test server stores a file of `size` bytes at `path` through LFS."""
    return path.lower().endswith(_LFS_SUFFIXES) or size >= _LFS_MIN_SIZE_BYTES


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _describe(path: str, sha256: str, data: bytes) -> _FileMeta:
    if not is_lfs_path(path, len(data)):
        return _FileMeta(len(data), sha256, _git_blob_sha1(data), False, 0)

    # Git stores an LFS pointer in place of the content, so the blob id is that of the pointer text.
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    return _FileMeta(len(data), sha256, _git_blob_sha1(pointer), True, len(pointer))


def _commit_sha(parent: str | None, files: Mapping[str, str], message: str) -> str:
    digest = hashlib.sha1(f"parent {parent or ''}\n".encode())
    for path in sorted(files):
        digest.update(f"{path} {files[path]}\n".encode())
    digest.update(message.encode())
    return digest.hexdigest()


def _validate_filename(filename: str) -> None:
    parts = filename.split("/")
    if not filename or filename.startswith("/") or "\\" in filename or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"filename={filename!r} is not a relative path in a repository. Use e.g. 'weights/model.safetensors'."
        )


class RepoStore:
    """Thread-safe model repositories with branches, immutable commits and content-addressed blobs."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, bytes] = {}

    # Python API for tests.

    def has_repo(self, repo_id: str) -> bool:
        with self._lock:
            return repo_id in self._repos

    def create_repo(self, repo_id: str) -> str:
        """Create a repository whose `main` branch points to one empty commit, and return the sha of `main`."""
        if not _REPO_ID_PATTERN.match(repo_id):
            raise ValueError(f"repo_id={repo_id!r} is not of the form 'namespace/name'. Use e.g. 'hydranet/resnet34'.")
        with self._lock:
            if repo_id not in self._repos:
                # NOTE: the real Hub starts a repository with a .gitattributes file; this one starts empty.
                repo = _Repo()
                self._add_commit(repo, "main", {}, "initial commit")
                self._repos[repo_id] = repo
            return self._repos[repo_id].branches["main"]

    def add_file(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Commit `data` at `filename` on branch `revision` and return the new commit sha."""
        _validate_filename(filename)
        if not revision or re.fullmatch(r"[0-9a-f]{40}", revision):
            raise ValueError(f"revision={revision!r} is not a branch name. Pass a branch such as 'main'.")

        self.create_repo(repo_id)
        with self._lock:
            repo = self._repos[repo_id]
            base = repo.branches.get(revision, repo.branches["main"])
            sha256 = hashlib.sha256(data).hexdigest()
            self._blobs[sha256] = bytes(data)
            files = {**repo.commits[base].files, filename: sha256}
            if revision not in repo.branches:
                repo.branches[revision] = base
            return self._add_commit(repo, revision, files, f"Add {filename}")

    def commit_sha(self, repo_id: str, revision: str = "main") -> str:
        return self._resolve_for_python(repo_id, revision).sha

    def file_bytes(self, repo_id: str, filename: str, revision: str = "main") -> bytes:
        commit = self._resolve_for_python(repo_id, revision)
        if filename not in commit.files:
            raise KeyError(f"{filename!r} not found in {repo_id!r} at {revision!r}. Files: {sorted(commit.files)}")
        with self._lock:
            return self._blobs[commit.files[filename]]

    def list_files(self, repo_id: str, revision: str = "main") -> list[str]:
        return sorted(self._resolve_for_python(repo_id, revision).files)

    def has_blob(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._blobs

    def put_blob(self, sha256: str, data: bytes) -> None:
        """Store an uploaded LFS object after checking that its content matches `sha256`."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise HubError(400, f"LFS object {sha256} was uploaded with content of sha256 {actual}. Upload it again.")
        with self._lock:
            self._blobs[sha256] = data

    # Served views.

    def resolve_file(self, repo_id: str, revision: str, filename: str, range_header: str | None, head: bool) -> Reply:
        """Return the HEAD or GET reply for `/{repo_id}/resolve/{revision}/{filename}`."""
        commit = self._resolve(repo_id, revision)
        if filename not in commit.files:
            raise HubError(404, "Entry not found", error_code="EntryNotFound", headers={"X-Repo-Commit": commit.sha})

        with self._lock:
            data = self._blobs[commit.files[filename]]
        meta = _describe(filename, commit.files[filename], data)
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{meta.blob_id}"',
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Content-Length": str(meta.size),
        }
        if meta.is_lfs:
            headers["X-Linked-Etag"] = f'"{meta.sha256}"'
            headers["X-Linked-Size"] = str(meta.size)
        if head:
            return Reply(200, b"", headers)

        byte_range = _parse_range(range_header, meta.size)
        if byte_range is None:
            return Reply(200, data, headers)
        first, last = byte_range
        headers["Content-Range"] = f"bytes {first}-{last}/{meta.size}"
        headers["Content-Length"] = str(last - first + 1)
        return Reply(206, data[first : last + 1], headers)

    def model_info(self, repo_id: str, revision: str, with_blobs: bool) -> dict:
        """Return the `/api/models/{repo_id}` JSON; `with_blobs` adds sizes and LFS data to `siblings`."""
        commit = self._resolve(repo_id, revision)
        siblings = []
        for path, meta in self._describe_all(commit).items():
            sibling: dict = {"rfilename": path}
            if with_blobs:
                sibling.update(size=meta.size, blobId=meta.blob_id)
                if meta.is_lfs:
                    sibling["lfs"] = {"size": meta.size, "sha256": meta.sha256, "pointerSize": meta.pointer_size}
            siblings.append(sibling)
        namespace = repo_id.split("/")[0]
        return {"id": repo_id, "modelId": repo_id, "author": namespace, "sha": commit.sha, "private": False,
                "gated": False, "disabled": False, "tags": [], "siblings": siblings}

    def tree(self, repo_id: str, revision: str, folder: str, recursive: bool) -> list[dict]:
        """Return the `/api/models/{repo_id}/tree/{revision}/{folder}` JSON list of files and directories."""
        commit = self._resolve(repo_id, revision)
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, meta in self._describe_all(commit).items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for level in range(1, min(depth, len(parts) - 1) + 1):
                directory = prefix + "/".join(parts[:level])
                entries[directory] = {"type": "directory", "path": directory, "size": 0,
                                      "oid": hashlib.sha1(f"{commit.sha}:{directory}".encode()).hexdigest()}
            if recursive or len(parts) == 1:
                entry = {"type": "file", "path": path, "size": meta.size, "oid": meta.blob_id}
                if meta.is_lfs:
                    entry["lfs"] = {"oid": meta.sha256, "size": meta.size, "pointerSize": meta.pointer_size}
                entries[path] = entry
        if prefix and not entries:
            raise HubError(404, f"Folder {folder!r} not found", error_code="EntryNotFound")
        return [entries[path] for path in sorted(entries)]

    def upload_modes(self, repo_id: str, revision: str, files: list[dict]) -> list[dict]:
        """Return the preupload response: `lfs` or `regular` per file, with the oid of the file already stored."""
        commit = self._resolve(repo_id, revision)
        stored = self._describe_all(commit)
        modes = []
        for item in files:
            # The client skips a file whose oid matches its own: sha256 for LFS files, git blob id otherwise.
            meta = stored.get(item["path"])
            remote_oid = None
            if meta is not None:
                remote_oid = meta.sha256 if meta.is_lfs else meta.blob_id
            mode = "lfs" if is_lfs_path(item["path"], int(item["size"])) else "regular"
            modes.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        return modes

    def commit(
        self,
        repo_id: str,
        branch: str,
        additions: Mapping[str, bytes | str],
        deletions: list[tuple[str, bool]],
        message: str,
        parent_commit: str | None,
    ) -> str:
        """Apply a commit request to `branch` and return the new sha.

        Args:
            additions: path -> content for regular files, or path -> sha256 of an uploaded LFS object.
            deletions: `(path, is_folder)` pairs.
        """
        with self._lock:
            head = self._resolve(repo_id, branch)
            repo = self._repos[repo_id]
            if branch not in repo.branches:
                raise HubError(400, f"Cannot commit to {branch!r}: it is a commit sha, not a branch.")
            if parent_commit is not None and not head.sha.startswith(parent_commit):
                raise HubError(412, f"parentCommit {parent_commit} is not the head {head.sha} of {branch!r}.")

            files = dict(head.files)
            for path, is_folder in deletions:
                matched = [p for p in files if p.startswith(path.rstrip("/") + "/")] if is_folder else [path]
                if not matched or any(p not in files for p in matched):
                    raise HubError(404, f"A file with this name doesn't exist: {path}", error_code="EntryNotFound")
                for p in matched:
                    del files[p]
            for path, content in additions.items():
                _validate_filename(path)
                if isinstance(content, str):
                    if content not in self._blobs:
                        raise HubError(422, f"LFS object {content} for {path!r} was never uploaded.")
                    files[path] = content
                else:
                    files[path] = hashlib.sha256(content).hexdigest()
                    self._blobs[files[path]] = content
            return self._add_commit(repo, branch, files, message)

    # Helpers. The caller of `_add_commit` must hold `_lock`, and the others take it themselves.

    def _add_commit(self, repo: _Repo, branch: str, files: Mapping[str, str], message: str) -> str:
        parent = repo.branches.get(branch)
        sha = _commit_sha(parent, files, message)
        repo.commits[sha] = _Commit(sha, parent, dict(files), message)
        repo.branches[branch] = sha
        return sha

    def _resolve(self, repo_id: str, revision: str) -> _Commit:
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                raise HubError(404, "Repository not found", error_code="RepoNotFound")
            sha = repo.branches.get(revision, revision)
            if sha not in repo.commits:
                raise HubError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")
            return repo.commits[sha]

    def _resolve_for_python(self, repo_id: str, revision: str) -> _Commit:
        try:
            return self._resolve(repo_id, revision)
        except HubError as error:
            raise KeyError(f"{repo_id!r} at {revision!r}: {error.message}") from None

    def _describe_all(self, commit: _Commit) -> dict[str, _FileMeta]:
        with self._lock:
            return {path: _describe(path, sha, self._blobs[sha]) for path, sha in sorted(commit.files.items())}


def parse_commit_ndjson(body: bytes) -> tuple[dict, dict[str, bytes | str], list[tuple[str, bool]]]:
    """Split the NDJSON body of a commit request into its header, additions and deletions.

    Returns:
        The header value (`summary`, `description` and optional `parentCommit`), path -> content for regular files
        or path -> sha256 for LFS files, and `(path, is_folder)` pairs to delete.

    Raises:
        KeyError, ValueError: If a line is not a JSON object with `key` and `value`.
    """
    header: dict = {}
    additions: dict[str, bytes | str] = {}
    deletions: list[tuple[str, bool]] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        key, value = item["key"], item["value"]
        if key == "header":
            header = value
        elif key == "file":
            additions[value["path"]] = base64.b64decode(value["content"])
        elif key == "lfsFile":
            additions[value["path"]] = value["oid"]
        elif key in ("deletedFile", "deletedFolder"):
            deletions.append((value["path"], key == "deletedFolder"))
        else:
            supported = "header, file, lfsFile, deletedFile or deletedFolder"
            raise ValueError(f"Commit line key {key!r} is not supported. Use {supported}.")
    return header, additions, deletions


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive byte range `(first, last)` of a single-range header, or None to send everything."""
    match = _RANGE_PATTERN.match((header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None

    start, end = match.groups()
    if start == "":
        first, last = max(size - int(end), 0), size - 1
    else:
        first, last = int(start), min(int(end), size - 1) if end else size - 1
    if first >= size or first > last:
        message = f"Range {header!r} is outside a file of {size} bytes"
        raise HubError(416, message, headers={"Content-Range": f"bytes */{size}"})
    return first, last
