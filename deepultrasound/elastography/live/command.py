"""``deepultrasound stream``: live strain from an OpenIGTLink RF source, served as IMAGE messages.

Connects to an RF source (a PLUS server or ``deepultrasound scanner``) as a client, runs the
:class:`LiveStrainProcessor` in the threaded :class:`StrainStream` pipeline and serves "Strain"
(float32, %) and "BMode" (float32, dB) with the geometry of the processed rows on its own port,
for 3D Slicer (OpenIGTLinkIF) or any IGT viewer. Prints a status line every few seconds; Ctrl-C
stops cleanly. On a CUDA device the frames stay on the GPU and each pair after the first of its
reference is replayed as a CUDA graph (``--no-cuda-graphs`` turns that off); ``--half`` runs the
network in float16.
"""

from __future__ import annotations

import argparse
import json
import logging

from deepultrasound.elastography.frames import parse_crop
from deepultrasound.elastography.options import add_inference_options, live_inference_options
from deepultrasound.elastography.strain import DEFAULT_WINDOW_MM
from deepultrasound.streaming.igtl import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_OUTPUT_PORT, DEFAULT_SOURCE_PORT

logger = logging.getLogger(__name__)


def add_processor_options(parser: argparse.ArgumentParser) -> None:
    """Options of :class:`LiveStrainProcessor`, shared by the commands that build one."""
    parser.add_argument(
        "--model", default=None, help="DeepUSE bundle folder or bundled name (default: the bundled real-time model)"
    )
    parser.add_argument("--baseline", action="store_true", help="NCC block matching instead of a network")
    add_inference_options(parser)
    parser.add_argument(
        "--reference-every", type=int, default=10, help="new reference frame every K frames, 0 for never (default: 10)"
    )
    parser.add_argument(
        "--reference-min-ncc",
        type=float,
        default=None,
        help="also a new reference when NCC(reference, frame) drops below this (default: off)",
    )
    parser.add_argument(
        "--window-mm", type=float, default=DEFAULT_WINDOW_MM, help=f"strain window in mm (default: {DEFAULT_WINDOW_MM})"
    )
    parser.add_argument(
        "--crop", type=parse_crop, default=None, help="rows START:STOP kept, e.g. 100:-300 (default: all)"
    )


def build_processor(args: argparse.Namespace):
    """A :class:`LiveStrainProcessor` from :func:`add_processor_options` arguments."""
    from deepultrasound.elastography.live.processor import LiveStrainProcessor

    return LiveStrainProcessor(
        args.model,
        baseline=args.baseline,
        reference_every=args.reference_every or None,
        reference_min_ncc=args.reference_min_ncc,
        window_mm=args.window_mm,
        crop=args.crop,
        **live_inference_options(args),
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="RF source host (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_SOURCE_PORT, help=f"RF source port (default: {DEFAULT_SOURCE_PORT})"
    )
    parser.add_argument("--device-name", default="RF", help="IMAGE device name of the RF frames (default: RF)")
    parser.add_argument(
        "--serve-host",
        default="127.0.0.1",
        help="address to serve on; 0.0.0.0 for every interface (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--serve-port",
        type=int,
        default=DEFAULT_OUTPUT_PORT,
        help=f"port to serve strain on (default: {DEFAULT_OUTPUT_PORT})",
    )
    parser.add_argument(
        "--source-timeout", type=float, default=2.0, help="seconds without a frame before reconnecting (default: 2)"
    )
    parser.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
        help="largest OpenIGTLink message accepted from the source, in MiB; a larger one is reported and its "
        f"connection dropped (default: {DEFAULT_MAX_MESSAGE_BYTES // 2**20}, a 4096 x 1024 float32 frame 4 times over)",
    )
    parser.add_argument("--status-every", type=float, default=2.0, help="seconds between status lines (default: 2)")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)"
    )
    add_processor_options(parser)


def run(args: argparse.Namespace) -> int:
    import threading

    from deepultrasound.elastography.live.pipeline import StrainStream, StreamConfig, status_line

    config = StreamConfig(
        source_host=args.host,
        source_port=args.port,
        source_device=args.device_name,
        serve_host=args.serve_host,
        serve_port=args.serve_port,
        source_timeout_s=args.source_timeout,
        max_message_bytes=int(args.max_message_mb * 2**20),
    )
    processor = build_processor(args)
    stream = StrainStream(processor, config).start()
    print(
        f"{processor.name}: reading '{args.device_name}' from {args.host}:{args.port}, serving "
        f"'{config.strain_device}' and '{config.bmode_device}' on {args.serve_host}:{stream.output.port} "
        "(Ctrl-C stops)",
        flush=True,
    )
    finished = threading.Event()
    if args.duration is not None:
        timer = threading.Timer(args.duration, finished.set)
        timer.daemon = True
        timer.start()
    try:
        while not finished.wait(args.status_every):
            print(status_line(stream.figures()), flush=True)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        stream.stop()
    figures = stream.figures()
    print(status_line(figures), flush=True)
    print(json.dumps(figures), flush=True)
    return 0
