"""Loading a fine-tuned model folder: smp's save_pretrained files plus preprocessing.json."""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from hydranet_hub._constants import CONFIG_NAME, WEIGHTS_NAME

from .errors import InferenceError
from .preprocessing import PREPROCESSING_NAME, InferencePreprocessing

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A segmentation model and the settings its input was prepared with.

    Attributes:
        model: The smp model, in eval mode, on the CPU.
        preprocessing: The contents of preprocessing.json.
        folder: The model folder it was loaded from.
    """

    model: torch.nn.Module
    preprocessing: InferencePreprocessing
    folder: Path


def load_model_folder(model_dir: Path | str) -> LoadedModel:
    """Load a model saved with smp's `save_pretrained` and its `preprocessing.json`.

    Only local files are read: the folder is checked for all three files first, because
    `smp.from_pretrained` would otherwise look a missing file up on the Hugging Face Hub. The
    encoder's pretrained weights are not downloaded either, since model.safetensors replaces them.

    Args:
        model_dir: Folder with config.json, model.safetensors and preprocessing.json.

    Returns:
        The model and its preprocessing settings.

    Raises:
        InferenceError: If the folder or a file is missing, smp cannot build the model, or the
            model's input channels or classes differ from preprocessing.json.
    """
    import segmentation_models_pytorch as smp

    folder = Path(model_dir)
    if not folder.is_dir():
        raise InferenceError(
            f"Model folder {folder} does not exist; pass the folder written by the fine-tuning command "
            f"(with {CONFIG_NAME}, {WEIGHTS_NAME} and {PREPROCESSING_NAME})."
        )
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME, PREPROCESSING_NAME) if not (folder / name).is_file()]
    if missing:
        raise InferenceError(
            f"Model folder {folder} lacks {', '.join(missing)}; it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"from model.save_pretrained(folder) and {PREPROCESSING_NAME} from InferencePreprocessing.save(folder)."
        )

    preprocessing = InferencePreprocessing.load(folder)
    try:
        model = smp.from_pretrained(str(folder), encoder_weights=None)
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError, OSError) as error:
        raise InferenceError(
            f"segmentation_models_pytorch {smp.__version__} could not load the model in {folder}: "
            f"{type(error).__name__}: {error}"
        ) from error

    _check_model_config(getattr(model, "config", None) or {}, preprocessing, folder)
    model.eval()
    _logger.info("Loaded %s model for %s from %s", type(model).__name__, preprocessing.task, folder)
    return LoadedModel(model=model, preprocessing=preprocessing, folder=folder)


def _check_model_config(config: dict, preprocessing: InferencePreprocessing, folder: Path) -> None:
    in_channels = config.get("in_channels")
    if in_channels is not None and in_channels != preprocessing.in_channels:
        raise InferenceError(
            f"{folder / CONFIG_NAME} declares in_channels={in_channels} but {PREPROCESSING_NAME} gives "
            f"{preprocessing.in_channels} ({len(preprocessing.modalities)} modalities x "
            f"(2 * context_slices {preprocessing.context_slices} + 1)); fix {PREPROCESSING_NAME} to match the model."
        )

    classes = config.get("classes")
    sigmoid_binary = classes == 1 and preprocessing.num_classes == 2
    if classes is not None and classes != preprocessing.num_classes and not sigmoid_binary:
        raise InferenceError(
            f"{folder / CONFIG_NAME} declares classes={classes} but {PREPROCESSING_NAME} gives "
            f"num_classes={preprocessing.num_classes}; fix {PREPROCESSING_NAME} to match the model."
        )
