"""Embedded demo dataset: seven small segmentation tasks in Medical Segmentation Decathlon layout.

The tasks are cut from two real T1 template scans in MNI space, the Colin27 single-subject average
and the MNI ICBM152 2009a average, with labels from their tissue maps and from the AAL,
Harvard-Oxford and JHU atlases. Every case is an axial slab (one task also splits hemispheres) at
2 mm voxels, so the cases of a task come from one scan and are not independent subjects. The set
is a few MB and is meant for the ``hydranet-pretrain --demo`` smoke run, not for benchmarks.

``scripts/build_demo_data.py`` rebuilds ``data/`` from the installed sources, and
``docs/demo-data.md`` lists each task, the sources and their licences. This module imports only
the standard library, but importing it as ``hydranet_hub.demo`` first runs
``hydranet_hub/__init__.py``, which imports torch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_HELDOUT_TASK", "DEMO_PRETRAIN_TASKS", "DEMO_TASKS", "demo_data_dir"]

DEMO_PRETRAIN_TASKS: tuple[str, ...] = (
    "Task11_BrainExtraction",
    "Task12_GreyMatter",
    "Task13_WhiteMatter",
    "Task14_DeepGreyMatter",
    "Task15_CorticalGyri",
    "Task16_WhiteMatterTracts",
)
"""Task folders that ``hydranet-pretrain --demo`` trains on."""

DEMO_HELDOUT_TASK: str = "Task17_Hippocampus"
"""Task folder kept out of pretraining: left/right hippocampus, small and data-poor, for transfer."""

DEMO_TASKS: tuple[str, ...] = (*DEMO_PRETRAIN_TASKS, DEMO_HELDOUT_TASK)
"""Every task folder of the demo dataset."""


def demo_data_dir() -> Path:
    """Return the folder that contains the demo task folders (``TaskNN_Name/dataset.json`` ...).

    Returns:
        Absolute path of ``hydranet_hub/demo/data`` in the installed package or the checkout.

    Raises:
        FileNotFoundError: the folder or one of the task folders is missing, which happens when
            the package was installed without its package data.
    """
    data_dir = Path(__file__).resolve().parent / "data"
    missing = [task for task in DEMO_TASKS if not (data_dir / task / "dataset.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"demo dataset incomplete in {data_dir}: no dataset.json for {', '.join(missing)}; "
            "reinstall hydranet-hub from a wheel or checkout that includes hydranet_hub/demo/data, "
            "or rebuild it with `python scripts/build_demo_data.py --out hydranet_hub/demo/data`"
        )
    return data_dir
