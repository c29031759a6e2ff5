"""Build the embedded demo dataset: seven MSD-layout tasks cut from two real template scans.

Run from the repository root: ``python scripts/build_demo_data.py --out hydranet_hub/demo/data``.
It needs no network, only two installed sources: Debian ``mricron-data`` (Colin27 ``ch2`` and
``ch2bet``; AAL, Harvard-Oxford and JHU atlases in MNI space) and the ``nilearn`` wheel (MNI
ICBM152 2009a symmetric T1 with grey- and white-matter probability maps).

Atlases are resampled onto their template's 1 mm grid (nearest neighbour, only where the grids
differ). Templates are cropped and reduced to 2 mm voxels: area average for intensities,
mean-then-threshold for probability maps, majority vote for atlas labels. Each task volume is split
into axial slabs, and for one task into hemispheres, to give several cases. The output is
deterministic.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

_logger = logging.getLogger(__name__)

MRICRON_TEMPLATES_DIR = Path("/usr/share/mricron/templates")
MRICRON_DOC_DIR = Path("/usr/share/doc/mricron-data")
ICBM_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

SOURCE_VOXEL_MM = 1.0
BLOCK_VOXELS = 2  # 2 x 2 x 2 source voxels make one 2 mm output voxel
OUTPUT_VOXEL_MM = SOURCE_VOXEL_MM * BLOCK_VOXELS
CROP_MARGIN_MM = 4
# Cases with fewer foreground voxels (160 mm^3 at 2 mm) are dropped, because they only clip the
# edge of a structure.
MIN_FOREGROUND_VOXELS = 20
# Images store the int16 sum of the 8 uint8 source voxels of a block, so this slope gives the
# exact area average in source intensity units (0 to 255).
IMAGE_SLOPE = 1.0 / BLOCK_VOXELS**3
NIFTI_XFORM_ALIGNED = 2

COLIN27_LICENCE = (
    "Colin27 (ch2, ch2bet) and AAL as shipped in Debian mricron-data {mricron}, whose copyright "
    "file lists BSD-3-Clause (Chris Rorden) for all its files; original Colin27 and AAL terms: "
    "check upstream. See ../licences/."
)
ICBM_LICENCE = (
    "MNI ICBM152 2009a T1 and grey/white-matter maps as shipped in nilearn {nilearn}, whose own "
    "licence is BSD-3-Clause and whose dataset notes give the template licence as unknown: check "
    "upstream with the MNI. See ../licences/."
)
ATLAS_LICENCES = {
    "ho": (
        " Harvard-Oxford labels as shipped in Debian mricron-data {mricron} (BSD-3-Clause per its "
        "copyright file); nilearn's atlas notes point to the FSL licence for this atlas: check "
        "upstream."
    ),
    "jhu": (
        " JHU labels as shipped in Debian mricron-data {mricron} (BSD-3-Clause per its copyright "
        "file); original atlas terms: check upstream."
    ),
}
COLIN27_REFERENCE = (
    "Holmes et al. 1998, Enhancement of MR images using registration for signal averaging, "
    "J Comput Assist Tomogr"
)
ICBM_REFERENCE = (
    "Fonov et al. 2011, Unbiased average age-appropriate atlases for pediatric studies, NeuroImage"
)
AAL_REFERENCE = (
    "Tzourio-Mazoyer et al. 2002, Automated anatomical labeling of activations in SPM using a "
    "macroscopic anatomical parcellation of the MNI MRI single-subject brain, NeuroImage"
)


@dataclass(frozen=True)
class TaskSpec:
    """One demo task: its scan, label source and how its volume is split into cases.

    ``classes`` maps each output class (value 1, 2, ...) to the source values it groups. An empty
    group marks a probability map (uint8, 0 to 255), thresholded at a block mean above 0.5. Atlas
    labels are reduced by majority vote, where ties go to the lower class value (background first).
    """

    folder: str
    scan: str
    source: str
    classes: tuple[tuple[str, tuple[int, ...]], ...]
    summary: str
    reference: str
    slab_thickness_mm: float
    mask_source: str | None = None
    split_hemispheres: bool = False
    axcodes: tuple[str, str, str] = ("R", "A", "S")


@dataclass(frozen=True)
class Scan:
    """One template scan cropped on a RAS grid: 2 mm intensity sums, 1 mm label sources."""

    key: str
    title: str
    licence: str
    image_sums: np.ndarray
    affine: np.ndarray
    sources_1mm: dict[str, np.ndarray]


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        "Task11_BrainExtraction", "colin27", "ch2bet", (("brain", ()),),
        "Brain extraction on the whole-head Colin27 T1; the label is the non-zero region of its "
        "skull-stripped version ch2bet",
        COLIN27_REFERENCE, slab_thickness_mm=24,
    ),
    TaskSpec(
        "Task12_GreyMatter", "icbm2009a", "gm", (("grey matter", ()),),
        "Grey matter on the ICBM152 2009a T1; the label is the template's grey-matter probability "
        "above 0.5",
        ICBM_REFERENCE, slab_thickness_mm=20,
    ),
    TaskSpec(
        "Task13_WhiteMatter", "icbm2009a", "wm", (("white matter", ()),),
        "White matter on the ICBM152 2009a T1; the label is the template's white-matter "
        "probability above 0.5",
        ICBM_REFERENCE, slab_thickness_mm=20,
    ),
    TaskSpec(
        "Task14_DeepGreyMatter", "colin27", "aal",
        (("caudate", (71, 72)), ("putamen", (73, 74)), ("thalamus", (77, 78))),
        "Deep grey nuclei on the Colin27 T1 from the AAL atlas, which was drawn on this scan; left "
        "and right are merged into one class each",
        f"{COLIN27_REFERENCE}; {AAL_REFERENCE}", slab_thickness_mm=12, split_hemispheres=True,
    ),
    TaskSpec(
        "Task15_CorticalGyri", "icbm2009a", "ho",
        (
            ("precentral gyrus", (7,)),
            ("postcentral gyrus", (17,)),
            ("superior temporal gyrus", (9, 10)),
            ("lateral occipital cortex", (22, 23)),
        ),
        "Cortical gyri on the ICBM152 2009a T1 from the Harvard-Oxford cortical max-probability "
        "atlas (thr0), kept only where the grey-matter probability is above 0.5; stored in LAS "
        "orientation",
        f"{ICBM_REFERENCE}; Desikan et al. 2006, An automated labeling system for subdividing the "
        "human cerebral cortex on MRI scans into gyral based regions of interest, NeuroImage",
        slab_thickness_mm=20, mask_source="gm", axcodes=("L", "A", "S"),
    ),
    TaskSpec(
        "Task16_WhiteMatterTracts", "icbm2009a", "jhu",
        (
            ("corpus callosum", (3, 4, 5)),
            ("internal capsule", (17, 18, 19, 20, 21, 22)),
            ("corona radiata", (23, 24, 25, 26, 27, 28)),
        ),
        "White-matter tracts on the ICBM152 2009a T1 from the JHU ICBM-DTI-81 labels, kept only "
        "where the white-matter probability is above 0.5",
        f"{ICBM_REFERENCE}; Mori et al. 2008, Stereotaxic white matter atlas based on diffusion "
        "tensor imaging in an ICBM template, NeuroImage",
        slab_thickness_mm=12, mask_source="wm",
    ),
    TaskSpec(
        "Task17_Hippocampus", "colin27", "aal",
        (("left hippocampus", (37,)), ("right hippocampus", (38,))),
        "Left and right hippocampus on the Colin27 T1 from the AAL atlas; a small, data-poor "
        "structure kept out of pretraining as the transfer task",
        f"{COLIN27_REFERENCE}; {AAL_REFERENCE}", slab_thickness_mm=8,
    ),
)


def load_source(path: Path) -> nib.Nifti1Image:
    """Load one 1 mm source volume.

    Raises:
        FileNotFoundError: the file is missing, so the package that ships it is not installed.
        ValueError: the voxels are not 1 mm.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"demo source {path} not found; install Debian mricron-data and nilearn, or pass "
            "--mricron-dir / --nilearn-data-dir"
        )
    img = nib.load(path)
    zooms = img.header.get_zooms()[:3]
    if not np.allclose(zooms, SOURCE_VOXEL_MM):
        raise ValueError(f"{path} has voxel size {zooms} mm, expected {SOURCE_VOXEL_MM} mm")
    return img


def to_reference_grid(img: nib.Nifti1Image, reference: nib.Nifti1Image) -> np.ndarray:
    """Return the voxels of ``img`` on the grid of ``reference`` (nearest neighbour via affines)."""
    data = np.asarray(img.dataobj)
    if img.shape == reference.shape and np.allclose(img.affine, reference.affine):
        return data

    _logger.info("resampling %s onto the template grid (nearest neighbour)", img.get_filename())
    reference_to_source = np.linalg.inv(img.affine) @ reference.affine
    return ndimage.affine_transform(
        data, reference_to_source, output_shape=reference.shape, order=0, mode="constant"
    )


def crop_or_pad(data: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Cut a box from ``data``, filling with zeros where the box leaves the volume."""
    out = np.zeros(tuple(size), dtype=data.dtype)
    source_lo = np.maximum(start, 0)
    source_hi = np.minimum(start + size, data.shape)
    target_lo = source_lo - start
    target_hi = target_lo + (source_hi - source_lo)
    out[tuple(map(slice, target_lo, target_hi))] = data[tuple(map(slice, source_lo, source_hi))]
    return out


def block_sum(data: np.ndarray) -> np.ndarray:
    """Sum each 2 x 2 x 2 block of voxels (as int32)."""
    nx, ny, nz = (n // BLOCK_VOXELS for n in data.shape)
    blocks = data.astype(np.int32).reshape(nx, BLOCK_VOXELS, ny, BLOCK_VOXELS, nz, BLOCK_VOXELS)
    return blocks.sum(axis=(1, 3, 5))


def probability_mask(probability_1mm: np.ndarray) -> np.ndarray:
    """Return 1 where the block mean of a 0-255 probability map is above 0.5, else 0."""
    return (block_sum(probability_1mm) > 0.5 * 255 * BLOCK_VOXELS**3).astype(np.uint8)


def make_scan(
    key: str, title: str, licence: str, img: nib.Nifti1Image, head_threshold: int,
    sources: dict[str, nib.Nifti1Image],
) -> Scan:
    """Crop a 1 mm RAS template to its head plus margin and reduce its intensities to 2 mm sums."""
    if nib.aff2axcodes(img.affine) != ("R", "A", "S"):
        raise ValueError(f"{img.get_filename()} is {nib.aff2axcodes(img.affine)}, expected RAS")

    data = np.asarray(img.dataobj)
    head = np.argwhere(data > head_threshold)
    margin = int(CROP_MARGIN_MM / SOURCE_VOXEL_MM)
    start = np.maximum(head.min(axis=0) - margin, 0)
    size = np.minimum(head.max(axis=0) + 1 + margin, data.shape) - start
    # An odd size grows by one voxel (zero padding at the volume edge) so 2 x 2 x 2 blocks tile it.
    size += size % BLOCK_VOXELS

    block_to_source = np.diag([BLOCK_VOXELS] * 3 + [1]).astype(float)
    # A 2 mm voxel centre lies halfway between source voxels 2i and 2i + 1 of the crop.
    block_to_source[:3, 3] = start + (BLOCK_VOXELS - 1) / 2
    return Scan(
        key=key,
        title=title,
        licence=licence,
        image_sums=block_sum(crop_or_pad(data, start, size)).astype(np.int16),
        affine=img.affine @ block_to_source,
        sources_1mm={
            name: crop_or_pad(to_reference_grid(source, img), start, size)
            for name, source in sources.items()
        },
    )


def load_scans(mricron_dir: Path, nilearn_dir: Path, versions: dict[str, str]) -> dict[str, Scan]:
    """Load both template scans with their label sources."""
    colin = load_source(mricron_dir / "ch2.nii.gz")
    ch2bet = load_source(mricron_dir / "ch2bet.nii.gz")
    # ch2bet is an intensity image whose non-zero voxels are the brain, stored as probability 255.
    brain_mask = np.where(np.asarray(ch2bet.dataobj) > 0, 255, 0).astype(np.uint8)
    brain = nib.Nifti1Image(brain_mask, ch2bet.affine)
    icbm = load_source(nilearn_dir / ICBM_FILE.format("t1"))

    # Colin27 keeps skull and scalp because the brain-extraction task needs them, and intensity 20
    # of 255 separates the head from the air. The ICBM T1 is skull-stripped, so any non-zero voxel
    # counts.
    colin_scan = make_scan(
        "colin27", "Colin27 single-subject T1 (ch2)", COLIN27_LICENCE.format(**versions),
        colin, 20, {"ch2bet": brain, "aal": load_source(mricron_dir / "aal.nii.gz")},
    )
    icbm_scan = make_scan(
        "icbm2009a", "MNI ICBM152 2009a symmetric T1", ICBM_LICENCE.format(**versions), icbm, 0,
        {
            "gm": load_source(nilearn_dir / ICBM_FILE.format("gm")),
            "wm": load_source(nilearn_dir / ICBM_FILE.format("wm")),
            "ho": load_source(mricron_dir / "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz"),
            "jhu": load_source(mricron_dir / "JHU-WhiteMatter-labels-1mm.nii.gz"),
        },
    )
    return {colin_scan.key: colin_scan, icbm_scan.key: icbm_scan}


def task_label(task: TaskSpec, scan: Scan) -> np.ndarray:
    """Build the 2 mm uint8 label volume of one task over the whole cropped scan."""
    source = scan.sources_1mm[task.source]
    if not task.classes[0][1]:
        label = probability_mask(source)
    else:
        lookup = np.zeros(256, dtype=np.uint8)
        for class_value, (_, source_values) in enumerate(task.classes, start=1):
            lookup[list(source_values)] = class_value
        class_values = range(len(task.classes) + 1)
        class_counts = [block_sum(lookup[source] == value) for value in class_values]
        label = np.argmax(np.stack(class_counts), axis=0).astype(np.uint8)

    if task.mask_source is not None:
        label[probability_mask(scan.sources_1mm[task.mask_source]) == 0] = 0
    return label


def split_cases(task: TaskSpec, scan: Scan, label: np.ndarray):
    """Yield ``(case_id, image_sums, label, affine)`` per slab (and hemisphere) with foreground."""
    slab_slices = int(round(task.slab_thickness_mm / OUTPUT_VOXEL_MM))
    n_slabs = max(1, label.shape[2] // slab_slices)
    x_parts = [("", 0, label.shape[0])]
    if task.split_hemispheres:
        # World x < 0 is the left hemisphere in MNI space, and on this RAS grid x grows with i.
        first_right = int(np.ceil(-scan.affine[0, 3] / scan.affine[0, 0]))
        x_parts = [("_left", 0, first_right), ("_right", first_right, label.shape[0])]

    for slab_number, z_indices in enumerate(np.array_split(np.arange(label.shape[2]), n_slabs), 1):
        z0, z1 = int(z_indices[0]), int(z_indices[-1]) + 1
        for suffix, x0, x1 in x_parts:
            case_label = label[x0:x1, :, z0:z1]
            if np.count_nonzero(case_label) < MIN_FOREGROUND_VOXELS:
                continue
            offset = np.eye(4)
            offset[:3, 3] = (x0, 0, z0)
            case_id = f"{scan.key}_slab{slab_number:02d}{suffix}"
            yield case_id, scan.image_sums[x0:x1, :, z0:z1], case_label, scan.affine @ offset


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]):
    """Return data and affine stored in ``axcodes`` orientation, keeping the world geometry."""
    transform = orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.axcodes2ornt(axcodes)
    )
    new_affine = affine @ orientations.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(orientations.apply_orientation(data, transform)), new_affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, slope: float) -> None:
    """Write a NIfTI-1 file with qform and sform set to ``affine`` and a fixed slope."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=NIFTI_XFORM_ALIGNED)
    img.set_sform(affine, code=NIFTI_XFORM_ALIGNED)
    img.header.set_xyzt_units("mm")
    # An explicit slope stops nibabel from choosing its own scaling on save.
    img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)


def build_task(task: TaskSpec, scan: Scan, out_dir: Path, versions: dict[str, str]) -> int:
    """Write one task folder in MSD layout and return its number of cases."""
    task_dir = out_dir / task.folder
    if task_dir.exists():
        shutil.rmtree(task_dir)
    (task_dir / "imagesTr").mkdir(parents=True)
    (task_dir / "labelsTr").mkdir()

    training = []
    for case_id, image_sums, case_label, affine in split_cases(task, scan, task_label(task, scan)):
        image_sums, stored_affine = reorient(image_sums, affine, task.axcodes)
        case_label, _ = reorient(case_label, affine, task.axcodes)
        file_name = f"{case_id}.nii.gz"
        save_nifti(task_dir / "imagesTr" / file_name, image_sums, stored_affine, IMAGE_SLOPE)
        save_nifti(task_dir / "labelsTr" / file_name, case_label, stored_affine, 1.0)
        training.append({"image": f"./imagesTr/{file_name}", "label": f"./labelsTr/{file_name}"})

    split = "axial slabs and left/right hemispheres" if task.split_hemispheres else "axial slabs"
    licence = scan.licence + ATLAS_LICENCES.get(task.source, "").format(**versions)
    labels = {"0": "background"}
    labels.update({str(value): name for value, (name, _) in enumerate(task.classes, start=1)})
    dataset = {
        "name": task.folder.split("_", 1)[1],
        "description": (
            f"{task.summary}. Cases are {split} of one template scan ({scan.title}), not "
            f"independent subjects; {OUTPUT_VOXEL_MM:g} mm voxels, intensities are area averages "
            "of the 1 mm source (0 to 255). Built by scripts/build_demo_data.py of hydranet-hub."
        ),
        "reference": task.reference,
        "licence": licence,
        "release": "hydranet-hub demo 1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": labels,
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (task_dir / "dataset.json").write_text(json.dumps(dataset, indent=4) + "\n")
    _logger.info("%s: %d cases", task.folder, len(training))
    return len(training)


def source_versions(mricron_doc_dir: Path) -> dict[str, str]:
    """Read the installed mricron-data and nilearn versions, for the licence notes."""
    with gzip.open(mricron_doc_dir / "changelog.Debian.gz", "rt") as changelog:
        # The first line reads "mricron (VERSION) DISTRIBUTION; urgency=...".
        mricron = changelog.readline().split("(", 1)[1].split(")", 1)[0]
    return {"mricron": mricron, "nilearn": importlib.metadata.version("nilearn")}


def copy_licences(out_dir: Path, mricron_doc_dir: Path) -> None:
    """Copy the licence files of the two source packages into ``out_dir/licences``."""
    licence_dir = out_dir / "licences"
    licence_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mricron_doc_dir / "copyright", licence_dir / "mricron-data-copyright.txt")
    nilearn = importlib.metadata.distribution("nilearn")
    licence_files = [
        path for path in nilearn.files or () if path.name == "LICENSE" and ".dist-info" in str(path)
    ]
    if not licence_files:
        raise FileNotFoundError("the installed nilearn has no LICENSE in its .dist-info folder")
    shutil.copyfile(nilearn.locate_file(licence_files[0]), licence_dir / "nilearn-LICENSE.txt")


def build(
    out_dir: Path, mricron_dir: Path, nilearn_dir: Path, mricron_doc_dir: Path
) -> dict[str, int]:
    """Build every demo task into ``out_dir``.

    Args:
        out_dir: target folder; task folders and ``licences/`` inside it are replaced.
        mricron_dir: folder with the mricron-data templates.
        nilearn_dir: nilearn's ``datasets/data`` folder with the ICBM152 2009a files.
        mricron_doc_dir: mricron-data's doc folder with ``copyright`` and ``changelog.Debian.gz``.

    Returns:
        Number of cases per task folder.

    Raises:
        FileNotFoundError: a source file is missing.
        importlib.metadata.PackageNotFoundError: nilearn is not installed.
    """
    versions = source_versions(mricron_doc_dir)
    scans = load_scans(mricron_dir, nilearn_dir, versions)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {task.folder: build_task(task, scans[task.scan], out_dir, versions) for task in TASKS}
    copy_licences(out_dir, mricron_doc_dir)
    return counts


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and build the demo dataset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write the task folders into"
    )
    parser.add_argument(
        "--mricron-dir", type=Path, default=MRICRON_TEMPLATES_DIR,
        help="folder with the mricron-data templates (default: %(default)s)",
    )
    parser.add_argument(
        "--mricron-doc-dir", type=Path, default=MRICRON_DOC_DIR,
        help="mricron-data doc folder with copyright and changelog (default: %(default)s)",
    )
    parser.add_argument(
        "--nilearn-data-dir", type=Path, default=None,
        help="folder with the ICBM152 2009a files (default: nilearn's datasets/data folder)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # locate_file finds nilearn's data folder without importing nilearn, which is slow to import.
    nilearn_dir = args.nilearn_data_dir or Path(
        importlib.metadata.distribution("nilearn").locate_file("nilearn/datasets/data")
    )
    build(args.out, args.mricron_dir, nilearn_dir, args.mricron_doc_dir)


if __name__ == "__main__":
    main()
