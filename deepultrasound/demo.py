"""``deepultrasound demo``: the main job on bundled defaults, end to end, into one output folder.

A phantom with a stiff and a soft inclusion - both invisible in B-mode, as lesions often are -
is compressed in a simulated quasi-static elastography sequence (FEM mechanics, RF at the
geometry of the shared in vivo data). Axial strain is estimated frame 0 -> k with the bundled
DeepUSE network when one is installed, otherwise with the block-matching baseline, and compared
with the FEM truth. The output folder holds:

- ``rf.mha``                 the simulated RF sequence (frames, axial samples, lines)
- ``strain.mha``             the estimated axial strain in % (one frame per pair), same geometry
- ``truth_strain.mha``       the FEM truth over the same rows
- ``strain_XX.png``          B-mode and strain over it, per pair, with colour bars
- ``summary.json``           method, timings, and per-pair NRMSE, CNRe (stiff and soft inclusion), SNRe
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from deepultrasound.errors import BundleError

HELP = "run the main job on bundled defaults and write an output folder"

logger = logging.getLogger(__name__)

#: a seed of the reserved bench range: never used for training
DEMO_SEED = 9_099_999


def demo_phantom():
    """Background plus a stiff (3x) and a soft (0.4x) circular inclusion, both isoechoic."""
    from deepultrasound.simulation import Inclusion, Phantom

    return Phantom(
        depth_mm=40.0,
        width_mm=25.6,
        inclusions=(
            Inclusion(center_mm=(7.5, 17.0), semi_axes_mm=(4.0, 4.0), stiffness=3.0),
            Inclusion(center_mm=(18.0, 26.0), semi_axes_mm=(3.5, 3.5), stiffness=0.4),
        ),
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path("demo-output"), help="output folder (default: demo-output)")
    parser.add_argument("--frames", type=int, default=6, help="frames in the simulated sequence (default: 6)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"simulation seed (default: {DEMO_SEED})")
    parser.add_argument(
        "--model", default=None,
        help="DeepUSE bundle folder or bundled name, or 'baseline' for block matching (default: the bundled "
        "DeepUSE model if installed, else baseline)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")


def _estimator(model: str | None, device: str):
    from deepultrasound.elastography.inference import BlockMatchingEstimator, StrainEstimator, resolve_model

    if model == "baseline":
        return BlockMatchingEstimator(device=device)
    try:
        return StrainEstimator(resolve_model(model), device=device)
    except BundleError as error:
        if model is not None:
            raise
        logger.info("no bundled DeepUSE model (%s): using the block-matching baseline", error)
        return BlockMatchingEstimator(device=device)


def run(args: argparse.Namespace) -> int:
    from deepultrasound.elastography.inference import PAPER_CROP, crop_rows
    from deepultrasound.elastography.metrics import cnr_e, snr_e, strain_nrmse
    from deepultrasound.elastography.strain import DEFAULT_WINDOW_MM, window_samples
    from deepultrasound.elastography.visualise import bmode_db, save_strain_figure
    from deepultrasound.io import Image, write_image
    from deepultrasound.simulation import SimulationConfig, simulate_sequence

    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    config = SimulationConfig(n_frames=args.frames)
    print(f"[1/3] simulating {config.n_frames} RF frames of {config.height} x {config.width} under compression ...", flush=True)
    started = time.perf_counter()
    sequence = simulate_sequence(config, seed=args.seed, phantom=demo_phantom())
    simulate_seconds = time.perf_counter() - started
    spacing = (config.lateral_pitch_mm, config.axial_spacing_mm, 1.0)
    rf = Image(sequence.rf, spacing)
    write_image(out / "rf.mha", rf)

    estimator = _estimator(args.model, args.device)
    cropped = crop_rows(rf, PAPER_CROP)
    rows = PAPER_CROP.indices(config.height)
    kept = slice(rows[0], rows[0] + cropped.array.shape[1])
    print(f"[2/3] estimating strain with {estimator.name} (rows {kept.start}:{kept.stop}) ...", flush=True)
    started = time.perf_counter()
    result = estimator.estimate(cropped.array, cropped.axial_spacing_mm, reference="first", progress=True)
    estimate_seconds = time.perf_counter() - started
    strain_image = Image(result.strain, cropped.spacing, cropped.origin, cropped.direction)
    write_image(out / "strain.mha", strain_image)
    truth = sequence.strain_percent[:, kept]
    write_image(out / "truth_strain.mha", Image(np.ascontiguousarray(truth), cropped.spacing, cropped.origin, cropped.direction))

    print("[3/3] scoring against the FEM truth and drawing figures ...", flush=True)
    half = window_samples(DEFAULT_WINDOW_MM, config.axial_spacing_mm) // 2
    evaluated = np.zeros(truth.shape[1:], dtype=bool)
    evaluated[half:-half] = True
    background = sequence.background_mask[kept] & evaluated
    stiff, soft = (mask[kept] & evaluated for mask in sequence.inclusion_masks)
    bmode = bmode_db(cropped.array)
    pairs = []
    for k, (fixed, moving) in enumerate(result.pairs):
        pairs.append(
            {
                "pair": [int(fixed), int(moving)],
                "applied_strain_percent": round(float(sequence.applied_strain_percent[moving]), 3),
                "nrmse": round(strain_nrmse(result.strain[k], truth[k], evaluated), 4),
                "cnr_e_stiff": round(cnr_e(result.strain[k], stiff, background), 3),
                "cnr_e_soft": round(cnr_e(result.strain[k], soft, background), 3),
                "snr_e": round(snr_e(result.strain[k], background), 3),
            }
        )
        save_strain_figure(
            out / f"strain_{k + 1:02d}.png", result.strain[k], bmode[fixed],
            spacing_mm=(cropped.lateral_spacing_mm, cropped.axial_spacing_mm),
            origin_mm=(cropped.origin[0], cropped.origin[1]),
            title=f"{estimator.name}: frame {fixed} -> {moving}, applied {pairs[-1]['applied_strain_percent']} %",
            valid_rows=slice(half, -half),
        )
    summary = {
        "method": estimator.name,
        "frames": int(config.n_frames),
        "frame_shape": [int(s) for s in cropped.array.shape[1:]],
        "simulation_seconds": round(simulate_seconds, 2),
        "estimation_seconds": round(estimate_seconds, 2),
        "pairs_per_second": round(len(result.pairs) / estimate_seconds, 2),
        "mean_nrmse": round(float(np.mean([p["nrmse"] for p in pairs])), 4),
        "mean_cnr_e_stiff": round(float(np.mean([p["cnr_e_stiff"] for p in pairs])), 3),
        "mean_snr_e": round(float(np.mean([p["snr_e"] for p in pairs])), 3),
        "pairs": pairs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}/: rf.mha, strain.mha, truth_strain.mha, {len(pairs)} PNGs, summary.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "pairs"}))
    return 0
