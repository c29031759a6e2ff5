"""`hydranet-predict`: segment NIfTI volumes with a fine-tuned model folder.

A thin wrapper around `hydranet_hub.inference.predict_paths`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from hydranet_hub.data.errors import DatasetError
from hydranet_hub.inference import InferenceError, OutputExistsError, predict_paths

PROG = "hydranet-predict"

_logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer of 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `hydranet-predict`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment 3D or 4D NIfTI volumes with a model fine-tuned from the HydraNet encoder. "
        "Each volume is preprocessed as in training (RAS+ reorientation, normalisation, 2.5D axial "
        "slices) and its label map is written on the input's own voxel grid, with the input's affine "
        "and header.",
        epilog="Example: hydranet-predict --model runs/spleen/model --input scans/ --output predictions/ --tta-flip",
    )
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="Model folder with config.json and model.safetensors (smp save_pretrained) and "
                        "preprocessing.json.")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="A .nii/.nii.gz volume, or a folder of them (not searched recursively; hidden "
                        "files such as ._case.nii.gz are skipped). 4D volumes contain modalities in their last axis.")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="Folder for <name>.nii.gz label maps (uint8 class indices); created if missing.")

    parser.add_argument("--device", default="auto",
                        help="Torch device: 'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'. "
                        "(default: auto)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="SLICES",
                        help="Axial slices per forward pass; lower it if the device runs out of memory. (default: 16)")
    parser.add_argument("--tta-flip", action="store_true",
                        help="Average the softmax over the identity, left-right and up-down flips of each slice "
                        "(3x the compute).")
    parser.add_argument("--probabilities", action="store_true",
                        help="Also write <name>_probabilities.nii.gz: float32 class probabilities [X, Y, Z, C].")
    parser.add_argument("--amp", action="store_true",
                        help="Run the model under float16 autocast (CUDA only); probabilities may differ "
                        "slightly from a float32 run.")

    parser.add_argument("--overwrite", action="store_true",
                        help="Replace existing output files. Without it, an existing output stops the run "
                        "before anything is written.")
    parser.add_argument("--num-threads", type=_positive_int, metavar="N",
                        help="CPU threads torch may use (default: torch's own choice, usually all cores).")
    parser.add_argument("--quiet", action="store_true", help="Hide progress bars and informational logs.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hydranet-predict` with `argv` (default: sys.argv[1:]).

    Returns:
        0 on success, 1 if inference failed (the message is written to stderr); argparse exits
        with status 2 on invalid options.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    try:
        written = predict_paths(
            args.model, args.input, args.output,
            overwrite=args.overwrite,
            device=device,
            batch_size=args.batch_size,
            tta_flip=args.tta_flip,
            probabilities=args.probabilities,
            amp=args.amp,
            progress=not args.quiet,
        )
    except (InferenceError, OutputExistsError, DatasetError, ImportError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1

    _logger.info("Wrote %d label map(s) to %s on %s", len(written), args.output, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
