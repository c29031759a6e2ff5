"""Hub-compatible HTTP server on 127.0.0.1 for tests of the download and upload paths.

`HubServer` serves the part of the Hugging Face Hub HTTP API that huggingface_hub 2.4.0 calls from
`hf_hub_download`, `snapshot_download`, `HfApi.model_info`, `HfApi.create_repo` and
`HfApi.upload_folder` / `HfApi.create_commit`. Tests point the real client at it through `HF_ENDPOINT`.
Only model repositories named `namespace/name` are served.

Client settings that the server relies on (read from huggingface_hub 2.4.0):

- Downloads use plain HTTP: responses never carry `X-Xet-Hash`, and without it the client does not call
  hf_xet (`file_download._download_to_tmp_and_move`).
- Uploads need `HF_HUB_DISABLE_XET=1`. While hf_xet is installed, `upload_folder` and `create_commit` send
  LFS files through the Xet protocol, which this server does not implement. With the variable set, the client
  uses preupload, the LFS batch API, one PUT per LFS file and the NDJSON commit endpoint.
- huggingface_hub reads `HF_ENDPOINT`, `HF_HUB_DISABLE_XET` and `HF_HUB_OFFLINE` once, at import time, so
  in-process tests must also patch `huggingface_hub.constants`. The `hf_env` fixture in conftest.py does that.

Every response carries `Connection: close`, so after `stop()` or `set_offline(True)` the next request gets
"connection refused" instead of reusing a kept-alive socket.
"""

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from hubserver_repos import HubError, Reply, RepoStore, json_reply, parse_commit_ndjson

_logger = logging.getLogger(__name__)

_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_REVISION = r"(?P<revision>[^/]+)"

# (HTTP method, pattern on the still percent-encoded path, HubServer method). Groups are decoded before the call.
_ROUTES = (
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/{_REVISION}/(?P<filename>.+)$"), "_resolve_file"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/{_REVISION}/(?P<filename>.+)$"), "_resolve_file"),
    ("GET", re.compile(rf"^/api/models/{_REPO}$"), "_model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/revision/{_REVISION}$"), "_model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/{_REVISION}(?:/(?P<folder>.*))?$"), "_tree"),
    ("POST", re.compile(r"^/api/repos/create$"), "_create_repo"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/{_REVISION}$"), "_preupload"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "_lfs_batch"),
    ("PUT", re.compile(r"^/lfs-objects/(?P<oid>[0-9a-f]{64})$"), "_lfs_put"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/{_REVISION}$"), "_commit"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "_validate_yaml"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "_whoami"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "_agent_harnesses"),
)


@dataclass
class _Fault:
    """An injected failure or delay, applied to the next `remaining` matching requests."""

    remaining: int
    status: int | None = None
    hang_s: float | None = None
    error_code: str | None = None
    method: str | None = None
    path_contains: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path_contains is None or self.path_contains in path


@dataclass
class _Traffic:
    """Requests seen by the server, in arrival order."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)


class _LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, port: int, hub: "HubServer") -> None:
        super().__init__(("127.0.0.1", port), _HubRequestHandler)
        self.hub = hub

    def handle_error(self, request, client_address) -> None:
        _logger.exception("Hub test server failed on a request from %s", client_address)


class HubServer:
    """Hugging Face Hub stand-in on 127.0.0.1 with revisions, fault injection and a request log.

    Example:
        >>> with HubServer() as hub:
        ...     sha = hub.add_file("org/model", "config.json", b"{}")
        ...     # set HF_ENDPOINT=hub.url, then hf_hub_download("org/model", "config.json")
    """

    def __init__(self) -> None:
        self.store = RepoStore()
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._traffic = _Traffic()
        self._port = 0
        self._httpd: _LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    # Life cycle.

    def start(self) -> "HubServer":
        """Start serving on 127.0.0.1. After `stop()`, it binds the same port again.

        Returns:
            This server, so that `HubServer().start()` can be assigned.
        """
        if self._httpd is not None:
            return self
        self._httpd = _LoopbackHTTPServer(self._port, self)
        self._port = self._httpd.server_address[1]
        self._wake.clear()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"hub-server-{self._port}",
            daemon=True,
        )
        self._thread.start()
        _logger.debug("Hub test server started on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the port, so clients get "connection refused". Stored repositories are kept."""
        if self._httpd is None:
            return

        # Wake handlers that sleep in hang_next() so that they end with the server.
        self._wake.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None
        _logger.debug("Hub test server on port %d stopped", self._port)

    def set_offline(self, offline: bool) -> None:
        """Refuse connections (`True`) or serve again on the same port (`False`)."""
        if offline:
            self.stop()
        else:
            self.start()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Endpoint for `HF_ENDPOINT`, `http://127.0.0.1:<port>`."""
        if self._port == 0:
            raise RuntimeError("HubServer has no port yet: call start() before reading url.")
        return f"http://127.0.0.1:{self._port}"

    # Repository content.

    def create_repo(self, repo_id: str) -> str:
        """Create an empty model repository, or keep an existing one, and return the sha of `main`."""
        return self.store.create_repo(repo_id)

    def add_file(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Commit one file to a branch, creating the repository and branch when missing.

        Files not re-added carry over from the branch head, and older commits stay resolvable by sha.
        A new branch starts from the head of `main`.

        Args:
            repo_id: `namespace/name`.
            filename: Path inside the repository, with `/` between folders.
            data: File content.
            revision: Branch name.

        Returns:
            The 40-hex sha of the new commit.

        Raises:
            ValueError: If `repo_id`, `filename` or `revision` is malformed.
        """
        return self.store.add_file(repo_id, filename, data, revision)

    def commit_sha(self, repo_id: str, revision: str = "main") -> str:
        """Return the commit sha that a branch name or sha resolves to.

        Raises:
            KeyError: If the repository or revision does not exist.
        """
        return self.store.commit_sha(repo_id, revision)

    def file_bytes(self, repo_id: str, filename: str, revision: str = "main") -> bytes:
        """Return the content of a file at a revision, for checking what an upload stored.

        Raises:
            KeyError: If the repository, revision or file does not exist.
        """
        return self.store.file_bytes(repo_id, filename, revision)

    def list_files(self, repo_id: str, revision: str = "main") -> list[str]:
        """Return the sorted file paths of a revision.

        Raises:
            KeyError: If the repository or revision does not exist.
        """
        return self.store.list_files(repo_id, revision)

    # Fault injection and request log.

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        error_code: str | None = None,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Fail the next `count` matching requests with an HTTP error status instead of serving them.

        Args:
            status: HTTP status from 400 to 599, e.g. 404, 500 or 503.
            count: Number of requests to fail.
            error_code: Optional `X-Error-Code` header, e.g. `"RepoNotFound"`, which the client maps to its
                exception classes.
            method: Only fail requests with this HTTP method (`"HEAD"`, `"GET"`, ...); all methods if `None`.
            path_contains: Only fail requests whose decoded path contains this text; all paths if `None`.

        Raises:
            ValueError: If `status` or `count` is out of range.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status={status} is not an HTTP error status. Pass a value from 400 to 599.")
        self._add_fault(_Fault(count, status=status, error_code=error_code, method=method, path_contains=path_contains))

    def hang_next(
        self, seconds: float, count: int = 1, *, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Delay the next `count` matching requests by `seconds` before serving them, to cause client time-outs.

        Args:
            seconds: Delay in seconds, greater than 0. `stop()` ends the delay early.
            count: Number of requests to delay.
            method: Only delay requests with this HTTP method; all methods if `None`.
            path_contains: Only delay requests whose decoded path contains this text; all paths if `None`.

        Raises:
            ValueError: If `seconds` or `count` is out of range.
        """
        if seconds <= 0:
            raise ValueError(f"seconds={seconds} must be greater than 0.")
        self._add_fault(_Fault(count, hang_s=seconds, method=method, path_contains=path_contains))

    @property
    def requests(self) -> list[tuple[str, str]]:
        """`(method, path)` of every request received, path percent-decoded and without the query string."""
        with self._lock:
            return list(self._traffic.requests)

    @property
    def authorizations(self) -> list[str]:
        """`Authorization` header values received, in arrival order. Requests without the header add nothing."""
        with self._lock:
            return list(self._traffic.authorizations)

    def request_count(self, method: str | None = None, path_contains: str = "") -> int:
        """Return how many requests match `method` (any if `None`) and contain `path_contains` in their path."""
        return sum(
            1 for seen_method, path in self.requests if method in (None, seen_method) and path_contains in path
        )

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError(f"count={fault.remaining} must be at least 1.")
        with self._lock:
            self._faults.append(fault)

    def _log_request(self, method: str, path: str, authorization: str | None) -> _Fault | None:
        """Record a request and return the first injected fault that matches it, consuming one use."""
        with self._lock:
            self._traffic.requests.append((method, path))
            if authorization is not None:
                self._traffic.authorizations.append(authorization)
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # Route handlers. Each takes the HTTP method, the decoded route groups, the query, the body and the headers.

    def _resolve_file(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        return self.store.resolve_file(
            groups["repo_id"],
            groups["revision"],
            groups["filename"],
            range_header=headers.get("Range"),
            head=method == "HEAD",
        )

    def _model_info(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
        return json_reply(self.store.model_info(groups["repo_id"], groups.get("revision") or "main", with_blobs))

    def _tree(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries = self.store.tree(groups["repo_id"], groups["revision"], groups.get("folder") or "", recursive)
        return json_reply(entries)

    def _create_repo(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        payload = json.loads(body or b"{}")
        if payload.get("type", "model") != "model":
            raise HubError(400, f"Repository type {payload.get('type')!r} is not supported. Create a model repository.")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if self.store.has_repo(repo_id):
            raise HubError(409, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"})
        self.store.create_repo(repo_id)
        return json_reply({"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _preupload(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        files = json.loads(body)["files"]
        return json_reply({"files": self.store.upload_modes(groups["repo_id"], groups["revision"], files)})

    def _lfs_batch(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, f"LFS operation {payload.get('operation')!r} is not supported. Use 'upload'.")
        objects = []
        for item in payload["objects"]:
            answer = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if not self.store.has_blob(item["oid"]):
                answer["actions"] = {"upload": {"href": f"{self.url}/lfs-objects/{item['oid']}"}}
            objects.append(answer)
        return json_reply({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        self.store.put_blob(groups["oid"], body)
        return Reply(200)

    def _commit(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        header, additions, deletions = parse_commit_ndjson(body)
        sha = self.store.commit(
            groups["repo_id"],
            groups["revision"],
            additions,
            deletions,
            message=header.get("summary", ""),
            parent_commit=header.get("parentCommit"),
        )
        return json_reply({"commitUrl": f"{self.url}/{groups['repo_id']}/commit/{sha}", "commitOid": sha})

    def _validate_yaml(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        # The client sends README.md here before committing it.
        # NOTE: the metadata block is accepted without parsing, so invalid YAML passes here but not on the Hub.
        return json_reply({"errors": [], "warnings": []})

    def _whoami(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        if headers.get("Authorization") is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return json_reply({"type": "user", "name": "hub-test-user", "orgs": [], "auth": {"type": "access_token"}})

    def _agent_harnesses(self, method: str, groups: dict, query: dict, body: bytes, headers) -> Reply:
        # huggingface_hub fetches this registry for its user agent unless telemetry is off.
        return json_reply({"standardEnvVars": [], "harnesses": {}})


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _LoopbackHTTPServer

    def do_HEAD(self) -> None:
        self._dispatch()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD

    def log_message(self, format: str, *args) -> None:
        _logger.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        fault = hub._log_request(self.command, unquote(split.path), self.headers.get("Authorization"))
        try:
            reply = self._route(hub, split.path, parse_qs(split.query), fault)
        except HubError as error:
            _logger.debug("Hub test server replied %d to %s %s: %s", error.status, self.command, self.path, error)
            reply = error.reply()
        except (KeyError, ValueError, TypeError) as error:
            _logger.warning("Hub test server rejected %s %s: %r", self.command, self.path, error)
            reply = HubError(400, f"Malformed request: {error!r}").reply()

        try:
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up first, typically after a time-out caused by hang_next().
            _logger.debug("Client closed the connection before the reply to %s %s", self.command, self.path)

    def _route(self, hub: HubServer, raw_path: str, query: dict, fault: _Fault | None) -> Reply:
        body = self._read_body()
        if fault is not None and fault.hang_s is not None:
            hub._wake.wait(fault.hang_s)
        elif fault is not None:
            raise HubError(fault.status, f"Injected {fault.status} fault", error_code=fault.error_code)

        for method, pattern, handler_name in _ROUTES:
            match = pattern.match(raw_path)
            if method == self.command and match is not None:
                groups = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                return getattr(hub, handler_name)(self.command, groups, query, body, self.headers)

        _logger.warning("Hub test server has no route for %s %s", self.command, raw_path)
        raise HubError(404, f"No route for {self.command} {raw_path} on the Hub test server")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Skip optional trailers up to the blank line that ends the body.
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if "Content-Length" not in reply.headers:
            self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(reply.body)
