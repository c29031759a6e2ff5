"""Upload a validated export folder to a Hugging Face Hub model repository."""

import logging
import re
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from hydranet_hub.export.card import REVISION_PLACEHOLDER
from hydranet_hub.export.errors import ExportError, PushError
from hydranet_hub.export.folder import EXPORT_FILES, validate_export
from hydranet_hub.export.records import PushResult

_logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload HydraNet encoder export"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*/[A-Za-z0-9][A-Za-z0-9._\-]*$")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def push_to_hub(
    export_dir: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> PushResult:
    """Validate an export folder, then upload its three files in one commit.

    Creates the repository when missing (``exist_ok``), and the branch ``revision`` when it is
    not "main". Only model.safetensors, config.json and README.md are uploaded, whatever else
    the folder holds. The endpoint is huggingface_hub's (``HF_ENDPOINT``), and the token is
    ``token`` or else huggingface_hub's usual lookup (``HF_TOKEN``, the saved login). The token is
    never logged.

    Args:
        export_dir: Folder written by ``export_encoder``.
        repo_id: Model repository, "org/name".
        revision: Branch to commit to; None means the default branch.
        token: Hub token with write access, or None for huggingface_hub's lookup.
        private: Create the repository as private (ignored when it exists).
        commit_message: Message of the upload commit.

    Returns:
        The repository, the commit sha to pin as the revision, and the commit's URL.

    Raises:
        ExportError: The folder is not a valid export (see ``validate_export``), or ``repo_id``
            or ``revision`` has an invalid form.
        ChecksumMismatchError: The card's sha256 does not match the weights.
        PushError: The Hub responded with an HTTP error.
    """
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ExportError(f"repo_id {repo_id!r} is invalid; expected 'org/name', e.g. 'mylab/hydranet-resnet34'.")
    if revision is not None and _COMMIT_SHA.match(revision):
        raise ExportError(
            f"revision {revision!r} is a commit sha; push_to_hub commits to a branch. Pass a branch name or None."
        )

    export = validate_export(export_dir)
    card_text = export.card_path.read_text(encoding="utf-8")
    if f"hf-hub:{repo_id}@{REVISION_PLACEHOLDER}" not in card_text:
        _logger.warning(
            "The loading examples in %s name another repository than %s; export again with repo_id=%r to fix them.",
            export.card_path, repo_id, repo_id,
        )

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=export.dir,
            allow_patterns=list(EXPORT_FILES),
            revision=revision,
            commit_message=commit_message,
        )
    except HfHubHTTPError as error:
        status = error.response.status_code
        hint = (
            "Log in with `hf auth login` or pass token= with write access to the repository."
            if status in (401, 403)
            else "Check the repository name and the endpoint, then retry."
        )
        raise PushError(f"Upload of {export.dir} to {repo_id!r} at {api.endpoint} failed: {error}. {hint}") from error

    _logger.info("Pushed %s to %s at commit %s", export.dir, repo_id, commit.oid)
    return PushResult(repo_id=repo_id, commit_sha=commit.oid, url=commit.commit_url)
