"""``deepultrasound bench stream`` and ``bench soak``: the live pipeline measured end to end over loopback.

``stream``: for each frame size (default 1600 x 128 and 2000 x 128) a scanner streams speckle
frames under a known axial compression at ``--rate`` Hz, the pipeline runs, and a viewer receives
the strain. The scanner is a ``deepultrasound scanner`` process of its own, as a PLUS server or a
scanner would be, and so is the viewer (:mod:`~deepultrasound.elastography.live.viewer`), as 3D Slicer
would be, connected before the first frame; the pipeline runs in this process. Reported per size: throughput
(results/s), pipeline latency p50/p95, end-to-end latency (source timestamp to result), dropped
frames and the per-stage medians; in the same run
the model-only throughput of the chosen model and of the original ReUSENet configuration (8
initial channels, eager PyTorch, batch-statistics normalisation), and their ratio. Every
throughput is the median over ``--runs`` repetitions. Without a bundled model the pipeline runs
the block-matching baseline and the model figures use an untrained ReUSENet bundle of the
original configuration (speed does not depend on the weights).

``soak``: many small frames through the whole chain; resident memory (``/proc/self/statm``)
after warm-up and at the end, growth in %.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepultrasound.elastography.options import add_inference_options, live_inference_options
from deepultrasound.errors import BundleError, DeepUltrasoundError

HELP = "live pipeline over loopback: throughput, latency p50/p95, dropped frames, stages, model-only ratio"

SIZES = ((1600, 128), (2000, 128))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="DeepUSE bundle (default: the bundled real-time model, else baseline)"
    )
    parser.add_argument("--baseline", action="store_true", help="run the pipeline with block matching")
    add_inference_options(parser, default_device="cpu")
    parser.add_argument("--frames", type=int, default=20, help="results collected per run (default: 20)")
    parser.add_argument("--rate", type=float, default=30.0, help="scanner frame rate in Hz (default: 30)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; figures are medians (default: 3)")
    parser.add_argument("--sizes", default="1600x128,2000x128", help="frame sizes HxW, comma separated")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    from deepultrasound.errors import InputError

    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]  # type: ignore[misc]
    except ValueError as error:
        raise InputError(f"--sizes must be HxW[,HxW...], e.g. 1600x128, got {text!r}") from error


def speckle_frames(height: int, width: int, count: int = 8, step: float = 0.005) -> np.ndarray:
    """``count`` speckle frames compressed by ``k * step`` (axial strain), band-limited like RF."""
    from scipy.ndimage import gaussian_filter1d, map_coordinates

    rng = np.random.default_rng(0)
    base = gaussian_filter1d(rng.standard_normal((height, width)), 1.5, axis=0)
    base *= np.cos(np.arange(height) * 0.9)[:, None]
    rows, cols = np.meshgrid(np.arange(height, dtype=float), np.arange(width, dtype=float), indexing="ij")
    return np.stack([map_coordinates(base, [rows * (1 + k * step), cols], order=3) for k in range(count)]).astype(
        np.float32
    )


def original_reusenet_bundle(folder: Path) -> Path:
    """An untrained ReUSENet of the original configuration (8 channels, batch statistics)."""
    from deepultrasound.elastography.bundles import save_deepuse_bundle
    from deepultrasound.elastography.networks import ReUSENet

    torch.manual_seed(0)
    model = ReUSENet(initial_channels=8, norm="batch").eval()
    return save_deepuse_bundle(
        model, folder / "reusenet-original", name="reusenet-original", example_size=(64, 32), formats=()
    )


def _model_fps(bundle: Path, options: dict[str, Any], frames: np.ndarray, steps: int) -> float:
    """Model-only pairs/s: the estimator's step on normalised pairs (no strain, no B-mode).

    ``options``: :func:`~deepultrasound.elastography.options.live_inference_options`.
    """
    from deepultrasound.elastography.estimators import StrainEstimator

    estimator = StrainEstimator(bundle, **options)
    pair = np.stack([frames[0], frames[1]]) / np.abs(frames[:2]).max()
    estimator.step(pair, True)  # warm-up
    started = time.perf_counter()
    for k in range(steps):
        estimator.step(pair, k == 0)
    return steps / (time.perf_counter() - started)


@contextlib.contextmanager
def _scanner_process(frames_file: Path, rate: float) -> Iterator[int]:
    """A ``deepultrasound scanner`` process replaying ``frames_file`` at ``rate`` Hz; yields its port."""
    command = [sys.executable, "-m", "deepultrasound", "scanner", str(frames_file), "--port", "0", "--rate", str(rate)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        for line in process.stdout:  # "serving ... on 127.0.0.1:PORT at R Hz ..."
            found = re.search(r" on [^ ]+:(\d+) at ", line)
            if found:
                port = int(found.group(1))
                break
        if port is None:
            raise DeepUltrasoundError(f"the scanner process ended without serving (exit status {process.wait()})")
        yield port
    finally:
        process.terminate()
        process.wait()
        process.stdout.close()


@contextlib.contextmanager
def _viewer_process(port: int) -> Iterator[list[float]]:
    """A viewer (:mod:`deepultrasound.elastography.live.viewer`) connected to ``port`` in a process of its own, as
    3D Slicer would be; yields the list that receives its end-to-end latencies (ms) when it is stopped."""
    command = [sys.executable, "-m", "deepultrasound.elastography.live.viewer", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    latencies: list[float] = []
    try:
        if process.stdout.readline().strip() != "connected":
            raise DeepUltrasoundError(f"the viewer process did not connect (exit status {process.wait()})")
        yield latencies
    finally:
        process.terminate()
        output, _ = process.communicate()
        latencies += [float(line) for line in output.split()]


def _stream_run(processor, source_port: int, count: int) -> dict[str, Any]:
    from deepultrasound.elastography.live.pipeline import StrainStream, StreamConfig

    processor.reset()
    stream = StrainStream(processor, StreamConfig(source_port=source_port, serve_port=0))
    try:
        with _viewer_process(stream.output.port) as end_to_end:  # connected before the first frame
            stream.start()
            deadline = time.monotonic() + 600
            while stream.figures()["sent"] < count and time.monotonic() < deadline:
                time.sleep(0.05)
            figures = stream.figures()
    finally:
        stream.stop()
    figures["viewer_received"] = len(end_to_end)
    figures["end_to_end_p50_ms"] = round(float(np.percentile(end_to_end, 50)), 2) if end_to_end else None
    return figures


def _write_cycle(folder: Path, frames: np.ndarray) -> Path:
    """``frames`` played up and down (:func:`~deepultrasound.streaming.scanner.cyclic_order`) as an RF sequence file."""
    from deepultrasound.io import Image, write_image
    from deepultrasound.streaming.scanner import cyclic_order

    return write_image(
        folder / f"frames_{frames.shape[1]}x{frames.shape[2]}.mha",
        Image(frames[cyclic_order(len(frames))], (0.2, 0.02, 1.0)),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from deepultrasound.elastography.live import LiveStrainProcessor
    from deepultrasound.elastography.live.processor import resolve_live_model

    baseline = args.baseline
    model = None
    if not baseline:
        try:
            model = resolve_live_model(args.model)
        except BundleError:
            if args.model is not None:
                raise
            baseline = True
    with tempfile.TemporaryDirectory() as scratch:
        reference = original_reusenet_bundle(Path(scratch))
        timed_model = model or reference
        print(
            f"pipeline: {'block matching' if baseline else model}; "
            f"model-only: {timed_model.name} vs original ReUSENet (8 ch, eager, batch norm)"
        )
        sizes: dict[str, Any] = {}
        for height, width in parse_sizes(args.sizes):
            frames = speckle_frames(height, width)
            processor = LiveStrainProcessor(
                model, baseline=baseline, reference_every=len(frames), **live_inference_options(args)
            )
            with _scanner_process(_write_cycle(Path(scratch), frames), args.rate) as port:
                runs = [_stream_run(processor, port, args.frames) for _ in range(args.runs)]
            steps = max(3, args.frames // 4)
            model_fps = [_model_fps(timed_model, live_inference_options(args), frames, steps) for _ in range(args.runs)]
            eager_float32 = {"backend": "torch", "half": False, "cuda_graphs": False}
            original = {**live_inference_options(args), **eager_float32}
            original_fps = [_model_fps(reference, original, frames, steps) for _ in range(args.runs)]

            def median(key: str) -> float | None:
                values = [r[key] for r in runs if r[key] is not None]
                return round(statistics.median(values), 2) if values else None

            stage_names = sorted({name for r in runs for name in r["stages_ms"]})
            figures = {
                "fps": median("fps"),
                "latency_p50_ms": median("latency_p50_ms"),
                "latency_p95_ms": median("latency_p95_ms"),
                "end_to_end_p50_ms": median("end_to_end_p50_ms"),
                "dropped": [r["dropped"] for r in runs],
                "received": [r["received"] for r in runs],
                "stages_ms": {
                    n: round(statistics.median(r["stages_ms"].get(n, 0.0) for r in runs), 2) for n in stage_names
                },
                "model_fps": round(statistics.median(model_fps), 2),
                "original_reusenet_fps": round(statistics.median(original_fps), 2),
            }
            figures["model_vs_original_ratio"] = round(figures["model_fps"] / figures["original_reusenet_fps"], 2)
            sizes[f"{height}x{width}"] = figures
            print(
                f"{height} x {width}: {figures['fps']} results/s, latency p50 {figures['latency_p50_ms']} ms "
                f"p95 {figures['latency_p95_ms']} ms, dropped {figures['dropped']}, stages {figures['stages_ms']}; "
                f"model {figures['model_fps']} pairs/s vs original {figures['original_reusenet_fps']} "
                f"(x{figures['model_vs_original_ratio']})",
                flush=True,
            )
    return {
        "pipeline": "block matching" if baseline else str(model),
        "backend": args.backend,
        "device": args.device,
        "rate_hz": args.rate,
        "frames": args.frames,
        "runs": args.runs,
        "sizes": sizes,
    }
