"""Volume inference with a fine-tuned 2.5D model, written back on each input's own voxel grid.

Typical use::

    from hydranet_hub.inference import load_model_folder, predict_paths, predict_volume

    predict_paths("runs/spleen/model", "scans/", "predictions/", device="cuda", tta_flip=True)

    loaded = load_model_folder("runs/spleen/model")
    result = predict_volume(loaded.model, loaded.preprocessing, "scans/case_001.nii.gz")
    result.labels.to_filename("case_001_labels.nii.gz")

A model folder contains smp's `save_pretrained` files (config.json, model.safetensors) and
`preprocessing.json` (see `InferencePreprocessing`). Reading NIfTI files needs the `train` extra
(`pip install hydranet-hub[train]`).
"""

from .errors import InferenceError, OutputExistsError
from .model_folder import LoadedModel, load_model_folder
from .paths import PredictedFiles, find_volumes, predict_paths
from .preprocessing import PREPROCESSING_NAME, InferencePreprocessing
from .volume import PredictionResult, predict_volume

__all__ = [
    "InferenceError",
    "InferencePreprocessing",
    "LoadedModel",
    "OutputExistsError",
    "PREPROCESSING_NAME",
    "PredictedFiles",
    "PredictionResult",
    "find_volumes",
    "load_model_folder",
    "predict_paths",
    "predict_volume",
]
