"""``deepultrasound bench soak``: many small frames through scanner -> stream -> viewer; memory must stay flat.

Resident memory is read from ``/proc/self/statm`` after ``--warmup`` results and at the end; the
growth in % is reported with the counters of the stream (dropped, rejected, errors).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

HELP = "soak test: many small frames through the live pipeline, resident memory growth after warm-up"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=10000, help="results to stream (default: 10000)")
    parser.add_argument(
        "--warmup", type=int, default=200, help="results before the first memory reading (default: 200)"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="scanner frame rate in Hz (default: 500)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(64, 16), metavar=("H", "W"), help="frame size (default: 64 16)"
    )


def resident_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from deepultrasound.elastography.live import LiveStrainProcessor
    from deepultrasound.elastography.live.pipeline import StrainStream, StreamConfig, status_line
    from deepultrasound.streaming.igtl import FrameGeometry, IgtlClient
    from deepultrasound.streaming.scanner import LoopedFrames, Scanner

    height, width = args.size
    rng = np.random.default_rng(0)
    tall = rng.standard_normal((height + 16, width)).astype(np.float32)
    frames = np.stack([tall[8 - k : 8 - k + height] for k in range(8)])
    processor = LiveStrainProcessor(baseline=True, device="cpu", window_mm=0.5, reference_every=10)
    source = LoopedFrames(frames, FrameGeometry((0.2, 0.02)), np.arange(len(frames)))
    started = time.perf_counter()
    warm = None
    with (
        Scanner(source, rate_hz=args.rate) as scanner,
        StrainStream(processor, StreamConfig(source_port=scanner.port, serve_port=0)) as stream,
    ):
        viewer = IgtlClient(port=stream.output.port)
        try:
            last_print = time.perf_counter()
            while (sent := stream.figures()["sent"]) < args.frames:
                viewer.take(0.2)
                if warm is None and sent >= args.warmup:
                    warm = resident_bytes()
                if time.perf_counter() - last_print > 5:
                    print(f"{sent}/{args.frames} | {status_line(stream.figures())}", flush=True)
                    last_print = time.perf_counter()
        finally:
            viewer.stop()
        figures = stream.figures()
    end = resident_bytes()
    warm = warm or end
    growth = 100.0 * (end / warm - 1)
    print(
        f"{figures['sent']} results in {time.perf_counter() - started:.1f} s; resident memory {warm / 2**20:.1f} MiB "
        f"after warm-up, {end / 2**20:.1f} MiB at the end ({growth:+.2f} %)",
        flush=True,
    )
    return {
        "results": figures["sent"],
        "fps": figures["fps"],
        "rss_warm_mib": round(warm / 2**20, 2),
        "rss_end_mib": round(end / 2**20, 2),
        "rss_growth_percent": round(growth, 2),
        "dropped": figures["dropped"],
        "rejected": figures["rejected"],
        "errors": figures["errors"],
        "latency_p50_ms": figures["latency_p50_ms"],
        "latency_p95_ms": figures["latency_p95_ms"],
    }
