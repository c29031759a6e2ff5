"""Typed records that go into an export and come back from export and push."""

from dataclasses import dataclass
from pathlib import Path

MSD_SOURCE = "Medical Segmentation Decathlon"
MSD_LICENSE = "CC-BY-SA-4.0"

# Source name for tasks of the demo data shipped in hydranet_hub.demo. The card then points to
# the document that lists the demo scans and their licences.
DEMO_SOURCE = "hydranet-hub demo data"


@dataclass(frozen=True)
class TaskSummary:
    """One pretraining task as the export records it.

    Attributes:
        name: Task folder name, e.g. "Task02_Heart".
        modality: "CT" or "MRI"; selects the normalisation that inputs need.
        classes: Class names in label order, background first, e.g. ("background", "left atrium").
        num_training_cases: Number of volumes (cases) in the training split.
        source: Dataset the task comes from, shown in the model card.
        license: Licence of that dataset as an SPDX-style id or a short phrase.
    """

    name: str
    modality: str
    classes: tuple[str, ...]
    num_training_cases: int
    source: str = MSD_SOURCE
    license: str = MSD_LICENSE


@dataclass(frozen=True)
class ExportResult:
    """Files of one finished export.

    Attributes:
        dir: The export folder.
        weights_path: model.safetensors inside it.
        config_path: config.json inside it.
        card_path: README.md (the model card) inside it.
        sha256: Hex sha256 of model.safetensors, also written in the card.
    """

    dir: Path
    weights_path: Path
    config_path: Path
    card_path: Path
    sha256: str


@dataclass(frozen=True)
class PushResult:
    """Outcome of uploading an export folder to a Hub repository.

    Attributes:
        repo_id: "org/name" of the model repository.
        commit_sha: 40-hex id of the commit that the upload created; pin it as the revision.
        url: Web address of that commit on the Hub endpoint used.
    """

    repo_id: str
    commit_sha: str
    url: str
