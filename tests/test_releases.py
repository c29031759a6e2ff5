"""Release records: validation, registration and environment overrides."""

import pytest

from hydranet_hub import releases
from hydranet_hub.errors import UnknownReleaseError, UnpublishedReleaseError
from hydranet_hub.releases import Release, get_release, register_release, release_source

COMMIT = "a" * 40
SHA = "b" * 64


def test_default_release_is_unpublished():
    release = get_release("msd7")

    assert not release.published
    assert release.revision is None
    assert release.sha256 is None
    assert release.architecture == "resnet34"
    assert get_release("imagenet") is release


def test_branch_revision_rejected():
    with pytest.raises(ValueError, match="40-character commit"):
        Release(tag="x", architecture="resnet34", repo_id="o/r", revision="main", sha256=SHA)


def test_half_published_rejected():
    with pytest.raises(ValueError, match="both revision and sha256"):
        Release(tag="x", architecture="resnet34", repo_id="o/r", revision=COMMIT)


def test_register_then_overwrite(monkeypatch):
    monkeypatch.setattr(releases, "_RELEASES", dict(releases._RELEASES))
    release = Release(tag="lab1", architecture="resnet34", repo_id="lab/one", revision=COMMIT, sha256=SHA)
    register_release(release)

    with pytest.raises(ValueError, match="already registered"):
        register_release(release)

    moved = Release(tag="lab1", architecture="resnet34", repo_id="lab/two", revision=COMMIT, sha256=SHA)
    register_release(moved, overwrite=True)
    assert get_release("lab1").repo_id == "lab/two"


@pytest.mark.parametrize("tag", ["imagenet", "bad tag", ".x", ""])
def test_invalid_tags_rejected(tag):
    with pytest.raises(ValueError):
        register_release(Release(tag=tag, architecture="resnet34", repo_id="o/r"))


def test_unknown_tag():
    with pytest.raises(UnknownReleaseError, match="'nope'"):
        get_release("nope")


def test_unpublished_source_raises(monkeypatch):
    monkeypatch.delenv("HYDRANET_HUB_REPO_ID", raising=False)

    with pytest.raises(UnpublishedReleaseError):
        release_source(get_release("msd7"))


def test_env_redirect(monkeypatch):
    monkeypatch.setenv("HYDRANET_HUB_REPO_ID", "mylab/hydranet@dev")
    monkeypatch.setenv("HYDRANET_HUB_SHA256", SHA)

    source = release_source(get_release("msd7"))

    assert (source.repo_id, source.revision, source.sha256) == ("mylab/hydranet", "dev", SHA)


def test_env_redirect_defaults_to_main(monkeypatch):
    monkeypatch.setenv("HYDRANET_HUB_REPO_ID", "mylab/hydranet")
    monkeypatch.delenv("HYDRANET_HUB_SHA256", raising=False)

    source = release_source(get_release("msd7"))

    assert source.revision == "main"
    assert source.sha256 is None


@pytest.mark.parametrize("value", ["no-slash", "a/b/c", "/repo"])
def test_env_redirect_malformed(monkeypatch, value):
    monkeypatch.setenv("HYDRANET_HUB_REPO_ID", value)

    with pytest.raises(ValueError, match="HYDRANET_HUB_REPO_ID"):
        release_source(get_release("msd7"))


def test_config_has_smp_fields():
    config = get_release("msd7").config()

    assert set(config) >= {"input_space", "input_range", "mean", "std", "hydranet"}
    assert config["hydranet"]["in_channels"] == 3
