"""``deepultrasound bench throughput``: model + strain per frame on one device, batch 1, frames in order.

What a live stream's computation costs without the network I/O, on the CPU or a GPU. For each
frame size, speckle frames under a known axial compression (the frames of ``bench stream``) are
processed as a stream does: each frame is normalised, copied to the device, paired with the
reference frame already there, run through the model's frame-to-frame chain (pre-alignment,
network, composition, recurrent state), turned into least-squares axial strain, and the strain
is copied back to the host, one frame after the other (a new reference every ``--per-reference``
frames). Reported per size, each a median over ``--runs`` repetitions:

- ``fps``: model + strain, frames per second, and the per-frame time p50/p95 in ms;
- ``without_cuda_graphs_fps`` (when the model's pairs are replayed as CUDA graphs): the same
  with every kernel launched from Python, in the same run;
- ``processor_fps``: the whole :meth:`LiveStrainProcessor.process` (frame checks, crop, B-mode
  of every frame on the host included);
- ``original_reusenet_fps``: model + strain with the original ReUSENet configuration (8 initial
  channels, eager torch, float32, batch-statistics normalisation, no CUDA graphs; untrained, as
  speed does not depend on the weights) on the same device, and ``ratio`` = ``fps`` / that.

On a CUDA device the model's pairs are replayed as CUDA graphs unless ``--no-cuda-graphs``;
``cuda_graphs`` in the figures says whether they stayed on (a failed capture falls back).

Frames/s counts result frames (the reference frame's upload is not timed); each figure times
frames for at least ``--seconds`` after a warm-up of one reference cycle.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepultrasound.elastography.options import add_inference_options, live_inference_options
from deepultrasound.elastography.strain import DEFAULT_AXIAL_SPACING_MM, DEFAULT_WINDOW_MM, axial_strain
from deepultrasound.errors import InputError

if TYPE_CHECKING:
    from deepultrasound.elastography.estimators import SequenceStrainEstimator

HELP = "model + strain per frame on one device (batch 1, frames in order): frames/s, p50/p95, ratio to the original"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="DeepUSE bundle (default: the bundled real-time model)")
    add_inference_options(parser)
    parser.add_argument("--sizes", default="1600x128,2000x128", help="frame sizes HxW, comma separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per figure (default: 3)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; figures are medians (default: 3)")
    parser.add_argument(
        "--per-reference", type=int, default=8, help="frames per reference frame, reference included (default: 8)"
    )


def _timed_frames(process: Callable[[int], object], count: int, seconds: float) -> list[float]:
    """Seconds of each result frame ``process(k)``, ``k = 1 .. count - 1``, cycle after cycle.

    ``process(0)`` (the reference frame: an upload, no result) runs untimed at the start of each
    cycle. One warm-up cycle comes first; timing stops after the cycle in which ``seconds``
    have passed.
    """
    for k in range(count):
        process(k)
    times: list[float] = []
    while not times or sum(times) < seconds:
        process(0)
        for k in range(1, count):
            begin = time.perf_counter()
            process(k)
            times.append(time.perf_counter() - begin)
    return times


def model_and_strain(
    estimator: SequenceStrainEstimator, frames: np.ndarray, window_mm: float, axial_spacing_mm: float
) -> Callable[[int], np.ndarray | None]:
    """A per-frame step for :func:`_timed_frames`: frame 0 of ``frames`` is the reference.

    ``step(0)`` uploads the reference and resets the estimator; ``step(k)`` for ``k >= 1``
    uploads frame k, runs the estimator's chain on (reference, k) on its device and returns the
    ``(H, W)`` axial strain in % on the host.

    Args:
        estimator: the model (or block matching) on its device.
        frames: ``(N, H, W)`` float32 frames, already normalised per the estimator.
    """
    reference: list[torch.Tensor] = []

    def step(k: int) -> np.ndarray | None:
        current = torch.from_numpy(frames[k]).to(estimator.device)
        with torch.inference_mode():
            if k == 0:
                estimator.reset()
                reference[:] = [current]
                return None
            displacement = estimator.step_tensor(torch.stack([reference[0], current])[None], k == 1)
            return axial_strain(displacement, window_mm, axial_spacing_mm)[0, 0].cpu().numpy()

    return step


def _summary(runs: list[list[float]]) -> dict[str, float]:
    """Medians over runs of frames/s and of the per-frame p50/p95 in ms."""

    def median(values: list[float], digits: int = 2) -> float:
        return round(statistics.median(values), digits)

    return {
        "fps": median([len(times) / sum(times) for times in runs]),
        "frame_p50_ms": median([1000 * float(np.percentile(times, 50)) for times in runs], 3),
        "frame_p95_ms": median([1000 * float(np.percentile(times, 95)) for times in runs], 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from deepultrasound.elastography.estimators import StrainEstimator
    from deepultrasound.elastography.frames import normalise_frame
    from deepultrasound.elastography.live import LiveStrainProcessor
    from deepultrasound.elastography.live.bench import original_reusenet_bundle, parse_sizes, speckle_frames
    from deepultrasound.elastography.live.processor import resolve_live_model

    if args.runs < 1 or args.per_reference < 2 or args.seconds < 0:
        raise InputError("--runs must be >= 1, --per-reference >= 2 and --seconds >= 0")
    model = resolve_live_model(args.model)
    options = live_inference_options(args)
    estimator = StrainEstimator(model, **options)
    processor = LiveStrainProcessor(model, reference_every=args.per_reference, **options)
    device = estimator.device
    eager = StrainEstimator(model, **{**options, "cuda_graphs": False}) if estimator.cuda_graphs else None
    with tempfile.TemporaryDirectory() as scratch:
        original = StrainEstimator(original_reusenet_bundle(Path(scratch)), "torch", device, cuda_graphs=False)
    print(
        f"model + strain on {device}: {estimator.name} ({estimator.predictor.backend}"
        f"{', float16' if args.half else ''}{', CUDA graphs' if estimator.cuda_graphs else ''}) "
        "vs original ReUSENet (8 ch, eager, float32, batch norm, no graphs); "
        f"{args.per_reference} frames per reference, >= {args.seconds} s per figure, {args.runs} runs",
        flush=True,
    )
    sizes: dict[str, Any] = {}
    for height, width in parse_sizes(args.sizes):
        raw = speckle_frames(height, width, count=args.per_reference)
        spacing = DEFAULT_AXIAL_SPACING_MM

        def normalised(kind: str) -> np.ndarray:
            return np.stack([normalise_frame(frame, kind) for frame in raw])

        def timed(step: Callable[[int], object]) -> dict[str, float]:
            return _summary([_timed_frames(step, len(raw), args.seconds) for _ in range(args.runs)])

        def model_step(model_estimator: StrainEstimator) -> Callable[[int], np.ndarray | None]:
            frames = normalised(model_estimator.normalisation)
            return model_and_strain(model_estimator, frames, DEFAULT_WINDOW_MM, spacing)

        figures = timed(model_step(estimator))
        if eager is not None:
            figures["without_cuda_graphs_fps"] = timed(model_step(eager))["fps"]
        figures["processor_fps"] = timed(lambda k: processor.process(raw[k], spacing))["fps"]
        figures["original_reusenet_fps"] = timed(model_step(original))["fps"]
        figures["ratio"] = round(figures["fps"] / figures["original_reusenet_fps"], 2)
        sizes[f"{height}x{width}"] = figures
        print(
            f"{height} x {width}: model + strain {figures['fps']} frames/s (p50 {figures['frame_p50_ms']} ms, "
            f"p95 {figures['frame_p95_ms']} ms"
            + (f"; {figures['without_cuda_graphs_fps']} without CUDA graphs" if eager is not None else "")
            + f"); whole processor {figures['processor_fps']} frames/s; "
            f"original ReUSENet {figures['original_reusenet_fps']} frames/s (x{figures['ratio']})",
            flush=True,
        )
    return {
        "model": str(model),
        "backend": estimator.predictor.backend,
        "device": str(device),
        "half": args.half,
        "cuda_graphs": estimator.cuda_graphs,
        "per_reference": args.per_reference,
        "runs": args.runs,
        "sizes": sizes,
    }
