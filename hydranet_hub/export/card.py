"""The model card (README.md) of an export, rendered from config.json with huggingface_hub.

The template is the Jinja file weights_card/README.md. ``ModelCard.from_template`` renders it
and needs Jinja2, which huggingface_hub does not require; hydranet-hub lists it as a dependency.
"""

import importlib.resources
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hydranet_hub._version import __version__
from hydranet_hub.export.config import MEAN_KEY
from hydranet_hub.export.errors import CardTemplateNotFoundError
from hydranet_hub.export.records import DEMO_SOURCE, MSD_SOURCE

_logger = logging.getLogger(__name__)

TEMPLATE_FOLDER = "weights_card"
TEMPLATE_NAME = "README.md"

# Card metadata key holding the sha256 of model.safetensors, read back by validate_export.
SHA256_METADATA_KEY = "weights_sha256"

REPO_PLACEHOLDER = "<org>/<repo>"
REVISION_PLACEHOLDER = "<commit sha>"

DEMO_NOTE = (
    "The demo tasks ship with hydranet-hub. Their cases are axial slabs of two T1 template brain "
    "scans in MNI space (Colin27 and MNI ICBM152 2009a), labelled from their tissue maps and from "
    "the AAL, Harvard-Oxford and JHU atlases, so they are not independent subjects. "
    "docs/demo-data.md in the hydranet-hub repository lists each source and its licence. "
    "A `--demo` run is a short check that the pipeline works; its weights are not a useful pretraining."
)

_LICENSE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+\-]*$")


def find_card_template() -> str:
    """Return the text of the model card template.

    Looks first in the installed package (``hydranet_hub/weights_card/README.md``, copied there
    by the wheel build), then in the source checkout (``weights_card/README.md`` at the repository
    root).

    Returns:
        The Jinja template text.

    Raises:
        CardTemplateNotFoundError: Neither location has the file.
    """
    packaged = importlib.resources.files("hydranet_hub").joinpath(TEMPLATE_FOLDER, TEMPLATE_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")

    checkout = Path(__file__).resolve().parents[2] / TEMPLATE_FOLDER / TEMPLATE_NAME
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")

    raise CardTemplateNotFoundError(
        f"Model card template not found in the installed package ({packaged}) or the source checkout "
        f"({checkout}). Reinstall hydranet-hub, or restore weights_card/{TEMPLATE_NAME} in the checkout."
    )


def render_card(
    config: Mapping[str, Any],
    *,
    sha256: str,
    repo_id: str | None = None,
    weights_license: str | None = None,
) -> ModelCard:
    """Render the model card of an export.

    Args:
        config: A validated config.json (see ``build_config``).
        sha256: Hex sha256 of model.safetensors.
        repo_id: Hub repository the export is meant for; the loading examples use it. Without
            it they show the placeholder "<org>/<repo>".
        weights_license: Licence id for the card metadata. By default, the licence shared by all
            tasks' data, or "other" when they differ.

    Returns:
        The card; ``str(card)`` is the README.md text.
    """
    hydranet = config["hydranet"]
    tasks = hydranet["tasks"]
    metrics = hydranet["metrics"]
    repo = repo_id or REPO_PLACEHOLDER

    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=_slug(task["source"]),
            dataset_name=task["name"],
            # The config keeps tasks of one source apart: huggingface_hub merges results that
            # share task type, dataset type, config, split and revision.
            dataset_config=task["name"],
            dataset_split="validation",
            metric_type="dice",
            metric_value=metrics[task["name"]][MEAN_KEY],
            metric_name="Dice (validation, mean over foreground classes)",
        )
        for task in tasks
        if task["name"] in metrics
    ]
    card_data = ModelCardData(
        license=weights_license or _shared_license(tasks),
        library_name="segmentation-models-pytorch",
        pipeline_tag="image-segmentation",
        tags=["hydranet", "medical-imaging", "image-segmentation", "encoder", "timm", hydranet["architecture"]],
        metrics=["dice"],
        model_name=repo.split("/")[-1] if repo_id else f"hydranet-{hydranet['architecture']}",
        eval_results=eval_results or None,
        **{SHA256_METADATA_KEY: sha256},
    )

    template_context = _template_context(config, sha256=sha256, repo=repo)
    return ModelCard.from_template(card_data, template_str=find_card_template(), **template_context)


def card_weights_sha256(card: ModelCard) -> str | None:
    """Return the sha256 of model.safetensors recorded in a card's metadata, or None."""
    value = card.data.to_dict().get(SHA256_METADATA_KEY)
    return value if isinstance(value, str) else None


def _template_context(config: Mapping[str, Any], *, sha256: str, repo: str) -> dict[str, Any]:
    hydranet = config["hydranet"]
    normalization = hydranet["normalization"]
    tasks = hydranet["tasks"]
    sources = {task["source"] for task in tasks}
    height, width = hydranet["slice_size"]

    return {
        "title": f"HydraNet {hydranet['architecture']} encoder",
        "hydranet_hub_version": hydranet["training"].get("hydranet_hub_version", __version__),
        "architecture": hydranet["architecture"],
        "smp_encoder_name": hydranet["smp_encoder_name"],
        "timm_model_name": hydranet["timm_model_name"],
        "hub_spec": f"hf-hub:{repo}@{REVISION_PLACEHOLDER}",
        "timm_hub_name": f"hf-hub:{repo}@{REVISION_PLACEHOLDER}",
        "in_channels": hydranet["in_channels"],
        "channel_semantics": hydranet["channel_semantics"],
        "slice_height": height,
        "slice_width": width,
        "ct_normalization": _cell(normalization["CT"]),
        "mri_normalization": _cell(normalization["MRI"]),
        "input_low": config["input_range"][0],
        "input_high": config["input_range"][1],
        "windows": [
            {"task": _cell(name), "low": low, "high": high}
            for name, (low, high) in normalization["window_hu"].items()
        ],
        "tasks": [
            {
                "name": _cell(task["name"]),
                "modality": task["modality"],
                "classes": _cell(", ".join(task["classes"][1:])),
                "num_training_cases": task["num_training_cases"],
                "source": _cell(task["source"]),
                "license": _cell(task["license"]),
            }
            for task in tasks
        ],
        "msd_used": MSD_SOURCE in sources,
        "demo_used": DEMO_SOURCE in sources,
        "demo_note": DEMO_NOTE,
        "other_sources": sorted(
            _cell(f"{task['source']} ({task['license']})")
            for task in {t["source"]: t for t in tasks}.values()
            if task["source"] not in (MSD_SOURCE, DEMO_SOURCE)
        ),
        "dice_rows": _dice_rows(hydranet["metrics"]),
        "training_rows": [
            {"key": _cell(key), "value": _cell(_format_value(value))}
            for key, value in hydranet["training"].items()
        ],
        "format_version": hydranet["format_version"],
        "sha256": sha256,
    }


def _dice_rows(metrics: Mapping[str, Mapping[str, float]]) -> list[dict[str, str]]:
    rows = []
    for task, dice_by_class in metrics.items():
        # The mean goes last so each task's block reads from classes to summary.
        names = [name for name in dice_by_class if name != MEAN_KEY] + [MEAN_KEY]
        for name in names:
            rows.append({"task": _cell(task), "name": _cell(name), "dice": f"{dice_by_class[name]:.4f}"})
    return rows


def _shared_license(tasks: list[dict]) -> str:
    licenses = {task["license"] for task in tasks}
    if len(licenses) == 1:
        (license_id,) = licenses
        if _LICENSE_ID.match(license_id):
            return license_id.lower()
    return "other"


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


def _cell(text: str) -> str:
    """Escape text for a Markdown table cell: a bare '|' would start a new column."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "custom"
