"""``deepultrasound demo``: the main job on bundled defaults, live, end to end, into one output folder.

A phantom with a stiff and a soft inclusion - both invisible in B-mode, as lesions often are -
is compressed and released in cycles by a simulated scanner (FEM mechanics, RF at the geometry of
the shared in vivo data) that streams RF frames over OpenIGTLink on 127.0.0.1. The live pipeline
(``deepultrasound stream``) receives them, estimates strain against a reference frame at rest
with the bundled DeepUSE network when one is installed (otherwise the block-matching baseline,
which the summary says), serves Strain and B-mode over OpenIGTLink to a viewer, and every result
is scored against the FEM truth. The output folder holds:

- ``strain.mha``        the streamed axial strain in % (one frame per result), geometry of the processed rows
- ``truth_strain.mha``  the FEM truth of the same pairs
- ``strain_XX.png``     B-mode and strain over it with colour bars, per result
- ``latency.png``       per-frame pipeline latency and network time
- ``summary.json``      method, fps, latency p50/p95, dropped frames, and per-result NRMSE, CNRe, SNRe
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from deepultrasound.errors import BundleError

logger = logging.getLogger(__name__)

#: a seed of the reserved bench range: never used for training
DEMO_SEED = 9_099_999


def configure(parser: argparse.ArgumentParser) -> None:
    from deepultrasound.streaming.scanner import add_phantom_arguments

    parser.add_argument(
        "-o", "--output", type=Path, default=Path("demo-output"), help="output folder (default: demo-output)"
    )
    parser.add_argument(
        "--frames", type=int, default=12, help="strain results to collect from the stream (default: 12)"
    )
    parser.add_argument("--rate", type=float, default=4.0, help="scanner frame rate in Hz (default: 4)")
    add_phantom_arguments(parser, ramp_frames=5, step_percent=0.3, seed=DEMO_SEED)
    parser.add_argument(
        "--model",
        default=None,
        help="DeepUSE bundle folder or bundled name, or 'baseline' for block matching (default: the bundled "
        "real-time DeepUSE model if installed, else baseline)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")


def _processor(model: str | None, device: str, crop: slice, reference_every: int):
    """The live processor and a note on the method chosen."""
    from deepultrasound.elastography.live import LiveStrainProcessor

    options = {"device": device, "crop": crop, "reference_every": reference_every}
    if model == "baseline":
        return LiveStrainProcessor(baseline=True, **options), "block matching, as asked"
    try:
        processor = LiveStrainProcessor(model, **options)
        return processor, f"DeepUSE model {processor.name}"
    except BundleError as error:
        if model is not None:
            raise
        logger.info("no bundled DeepUSE model (%s): using the block-matching baseline", error)
        return LiveStrainProcessor(baseline=True, **options), (
            "block matching: no trained DeepUSE model is bundled (put one in deepultrasound/models/ to use it)"
        )


def _save_latency_plot(path: Path, latency_ms: list[float], network_ms: list[float]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deepultrasound.io import atomic_write

    figure = Figure(figsize=(6, 3), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    results = np.arange(1, len(latency_ms) + 1)
    axes.plot(results, latency_ms, "o-", label="pipeline latency")
    axes.plot(results, network_ms, "s--", label="network (or block matching)")
    axes.set_xlabel("result")
    axes.set_ylabel("ms")
    axes.set_ylim(bottom=0)
    axes.legend()
    with atomic_write(path) as staged:
        figure.savefig(staged, format="png")


def run(args: argparse.Namespace) -> int:
    from deepultrasound.elastography.live.pipeline import StrainStream, StreamConfig, status_line
    from deepultrasound.elastography.metrics import cnr_e, snr_e, strain_nrmse
    from deepultrasound.elastography.strain import DEFAULT_WINDOW_MM, window_samples
    from deepultrasound.elastography.visualise import save_strain_figure
    from deepultrasound.io import Image, write_image
    from deepultrasound.streaming.igtl import IgtlClient
    from deepultrasound.streaming.scanner import Scanner, demo_phantom_source

    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"[1/3] simulating a {args.ramp_frames}-frame compression ramp of {args.height} x {args.width} ...", flush=True
    )
    started = time.perf_counter()
    source, sequence = demo_phantom_source(
        ramp_frames=args.ramp_frames,
        height=args.height,
        width=args.width,
        step_percent=args.step_percent,
        seed=args.seed,
    )
    config = sequence.config
    simulate_seconds = time.perf_counter() - started
    crop = slice(args.height // 20, -(3 * args.height) // 20)  # rows 100:-300 of 2000, as the DeepUSE paper crops
    kept = slice(*crop.indices(args.height)[:2])
    period = len(source.order)
    processor, note = _processor(args.model, args.device, crop, reference_every=period)

    results: list[tuple[object, object, int, int]] = []

    def collect(result, geometry, source_index, reference_index) -> None:  # runs in the send stage
        if len(results) < args.frames:
            results.append((result, geometry, source_index, reference_index))

    print(f"[2/3] streaming through {processor.name} until {args.frames} strain images arrive ...", flush=True)
    started = time.perf_counter()
    with Scanner(source, rate_hz=args.rate) as scanner:
        stream = StrainStream(processor, StreamConfig(source_port=scanner.port, serve_port=0), on_result=collect)
        with stream:
            viewer = IgtlClient(port=stream.output.port)  # a viewer, as Slicer would connect
            viewed = 0
            try:
                while len(results) < args.frames and time.perf_counter() - started < 600:
                    viewed += sum(m.device_name == "Strain" and m.message_type == "IMAGE" for m in viewer.take(1.0))
                    print(f"  {len(results)}/{args.frames} | {status_line(stream.figures())}", flush=True)
            finally:
                viewer.stop()
            figures = stream.figures()
            latency = stream.stats.latencies_ms()[: len(results)]
    stream_seconds = time.perf_counter() - started

    print("[3/3] scoring against the FEM truth and drawing figures ...", flush=True)
    # The FEM is linear: pair (frame a, frame b) strains by the ramp's strain at b's phase minus a's
    # (exact on the rest grid; the shift of a's grid is second order).
    truth_by_phase = np.concatenate(
        [np.zeros((1, *sequence.strain_percent.shape[1:]), np.float32), sequence.strain_percent]
    )

    def phase(index: int) -> int:
        return int(source.order[index % period])

    half = window_samples(DEFAULT_WINDOW_MM, config.axial_spacing_mm) // 2
    evaluated = np.zeros((kept.stop - kept.start, config.width), dtype=bool)
    evaluated[half:-half] = True
    background = sequence.background_mask[kept] & evaluated
    stiff, soft = (mask[kept] & evaluated for mask in sequence.inclusion_masks)
    strain = np.stack([result.strain for result, *_ in results])
    truth = np.stack(
        [(truth_by_phase[phase(index)] - truth_by_phase[phase(ref)])[kept] for _, _, index, ref in results]
    )
    geometry = results[0][1]
    spacing = (*geometry.spacing, 1.0 / args.rate)
    origin = (geometry.origin[0], geometry.origin[1], 0.0)
    write_image(out / "strain.mha", Image(strain, spacing, origin))
    write_image(out / "truth_strain.mha", Image(truth, spacing, origin))
    per_result = []
    for k, ((result, _, index, ref), expected) in enumerate(zip(results, truth)):
        applied = float(sequence.applied_strain_percent[phase(index)] - sequence.applied_strain_percent[phase(ref)])
        per_result.append(
            {
                "frame": int(index),
                "reference": int(ref),
                "applied_strain_percent": round(applied, 3),
                "latency_ms": round(latency[k], 1) if k < len(latency) else None,
                "nrmse": round(strain_nrmse(result.strain, expected, evaluated), 4) if applied else None,
                "cnr_e_stiff": round(cnr_e(result.strain, stiff, background), 3),
                "cnr_e_soft": round(cnr_e(result.strain, soft, background), 3),
                "snr_e": round(snr_e(result.strain, background), 3),
            }
        )
        save_strain_figure(
            out / f"strain_{k + 1:02d}.png",
            result.strain,
            result.bmode_db,
            spacing_mm=geometry.spacing,
            origin_mm=geometry.origin[:2],
            valid_rows=slice(half, -half),
            title=f"{processor.name}: frame {index} vs {ref}, applied {applied:.2f} %",
        )
    _save_latency_plot(out / "latency.png", latency, [result.timings_ms["network"] for result, *_ in results])

    scored = [r for r in per_result if r["nrmse"] is not None]
    summary = {
        "method": processor.name,
        "method_note": note,
        "frames": len(results),
        "frame_shape": [int(s) for s in strain.shape[1:]],
        "scanner_rate_hz": args.rate,
        "simulation_seconds": round(simulate_seconds, 2),
        "stream_seconds": round(stream_seconds, 2),
        "fps": figures["fps"],
        "latency_p50_ms": figures["latency_p50_ms"],
        "latency_p95_ms": figures["latency_p95_ms"],
        "stages_ms": figures["stages_ms"],
        "received": figures["received"],
        "dropped": figures["dropped"],
        "rejected": figures["rejected"],
        "viewer_received": viewed,
        "mean_nrmse": round(float(np.mean([r["nrmse"] for r in scored])), 4) if scored else None,
        "mean_cnr_e_stiff": round(float(np.mean([r["cnr_e_stiff"] for r in per_result])), 3),
        "mean_cnr_e_soft": round(float(np.mean([r["cnr_e_soft"] for r in per_result])), 3),
        "mean_snr_e": round(float(np.mean([r["snr_e"] for r in per_result])), 3),
        "results": per_result,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}/: strain.mha, truth_strain.mha, {len(results)} PNGs, latency.png, summary.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    return 0
