"""``deepultrasound scanner``: an OpenIGTLink server that streams RF frames like a PLUS server.

Frames come from an RF sequence file, replayed in a loop, or from a simulated phantom under
cyclic quasi-static compression: one FE solution and one scatterer set give a compression ramp
(:func:`deepultrasound.simulation.simulate_sequence`), played up and down (frames
``0, 1, .., n-1, n-2, .., 1``) so the cycle repeats without a jump. Frames go out at a fixed rate
as IMAGE messages (float32 or int16) with their geometry and a ``FrameIndex`` (see
:mod:`deepultrasound.streaming.igtl`). Frames are numbered and sent only while a client is
connected: the simulated probe pauses when nobody watches.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepultrasound.errors import InputError
from deepultrasound.streaming.igtl import DEFAULT_SOURCE_PORT, FRAME_INDEX_KEY, FrameGeometry, IgtlServer, image_message

logger = logging.getLogger(__name__)

DTYPES = ("float32", "int16")


@dataclass(frozen=True)
class LoopedFrames:
    """An endless frame source: ``frames[order[k % len(order)]]`` is frame ``k``.

    Attributes:
        frames: ``(N, H, W)`` RF frames, any real dtype.
        geometry: placement of every frame.
        order: indices into ``frames`` of one period.
    """

    frames: np.ndarray
    geometry: FrameGeometry
    order: np.ndarray

    def frame(self, k: int) -> np.ndarray:
        """Frame ``k`` of the endless stream, ``(H, W)``."""
        return self.frames[self.order[k % len(self.order)]]

    def as_dtype(self, dtype: str) -> LoopedFrames:
        """The same source sending ``dtype``; int16 scales every frame by one factor (max |rf| -> 32767)."""
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if dtype == "float32":
            frames = self.frames.astype(np.float32, copy=False)
        elif self.frames.dtype == np.int16:
            frames = self.frames
        else:
            peak = float(np.abs(self.frames).max()) or 1.0
            frames = np.round(self.frames * (32767.0 / peak)).astype(np.int16)
        return LoopedFrames(frames, self.geometry, self.order)


def replay_source(path: str | Path) -> LoopedFrames:
    """The frames of an RF sequence file ``(frames, axial samples, lines)``, in a loop."""
    from deepultrasound.io import read_sequence

    image = read_sequence(path)
    geometry = FrameGeometry(
        (image.lateral_spacing_mm, image.axial_spacing_mm), (image.origin[0], image.origin[1], 0.0)
    )
    return LoopedFrames(image.array, geometry, np.arange(image.array.shape[0]))


def cyclic_order(ramp_frames: int) -> np.ndarray:
    """Indices of a compression ramp played up and down: ``0 .. n-1, n-2 .. 1`` (period ``2 (n - 1)``)."""
    if ramp_frames < 2:
        raise InputError(f"a compression cycle needs at least 2 ramp frames, got {ramp_frames}")
    return np.concatenate([np.arange(ramp_frames), np.arange(ramp_frames - 2, 0, -1)])


def phantom_source(config=None, seed: int = 0, phantom=None):
    """A simulated phantom under cyclic compression, and its simulated ramp (with the truth).

    Args:
        config: :class:`deepultrasound.simulation.SimulationConfig` of the ramp (``n_frames``
            frames from rest to the largest compression); defaults to the in vivo geometry.
        seed: simulation seed.
        phantom: :class:`deepultrasound.simulation.Phantom`; random when None.

    Returns:
        ``(LoopedFrames, SimulatedSequence)``.
    """
    from deepultrasound.simulation import simulate_sequence

    sequence = simulate_sequence(config, seed=seed, phantom=phantom)
    geometry = FrameGeometry(sequence.config.spacing_mm)
    return LoopedFrames(sequence.rf, geometry, cyclic_order(len(sequence.rf))), sequence


def demo_phantom_source(*, ramp_frames: int, height: int, width: int, step_percent: float, seed: int):
    """The demo phantom (:mod:`deepultrasound.simulation.presets`) under cyclic compression, imaged over
    its whole 40 mm depth and 25.6 mm width at ``height`` samples x ``width`` lines.

    Returns:
        ``(LoopedFrames, SimulatedSequence)``, as :func:`phantom_source`.
    """
    from deepultrasound.simulation.presets import demo_config, demo_phantom

    config = demo_config(n_frames=ramp_frames, height=height, width=width, compression_step_percent=step_percent)
    return phantom_source(config, seed=seed, phantom=demo_phantom())


class Scanner:
    """Streams a :class:`LoopedFrames` source over OpenIGTLink at ``rate_hz`` in a background thread.

    Args:
        source: the frames.
        port: TCP port (0: a free one, see :attr:`port`).
        host: address to bind (default loopback only).
        device_name: IMAGE device name.
        rate_hz: frames per second.
        count: stop after sending this many frames (None: until :meth:`stop`).

    Thread ownership: the scanner thread owns the frame counter :attr:`sent`; the server's
    thread sends.
    """

    def __init__(
        self,
        source: LoopedFrames,
        port: int = 0,
        host: str = "127.0.0.1",
        device_name: str = "RF",
        rate_hz: float = 20.0,
        count: int | None = None,
    ) -> None:
        if not rate_hz > 0:
            raise InputError(f"frame rate must be positive, got {rate_hz} Hz")
        self.source = source
        self.device_name = device_name
        self.rate_hz = rate_hz
        self.count = count
        self.sent = 0
        self.server = IgtlServer(port, host)
        self.port = self.server.port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scanner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        due = time.monotonic()
        while not self._stop.is_set() and (self.count is None or self.sent < self.count):
            if not self.server.is_connected():
                self._stop.wait(0.02)  # nobody watches: the probe pauses
                due = time.monotonic()
                continue
            message = image_message(
                self.source.frame(self.sent),
                self.source.geometry,
                self.device_name,
                timestamp=time.time(),
                metadata={FRAME_INDEX_KEY: str(self.sent)},
            )
            self.server.publish(message)
            self.sent += 1
            due += period
            self._stop.wait(max(0.0, due - time.monotonic()))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until ``count`` frames were sent (or :meth:`stop`); False on timeout."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop sending and close the server (the client sees the source go away)."""
        self._stop.set()
        self._thread.join()
        self.server.stop()

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def add_phantom_arguments(parser: argparse.ArgumentParser, *, ramp_frames: int, step_percent: float, seed: int) -> None:
    """Options of the simulated demo phantom under cyclic compression (shared by ``scanner`` and ``demo``)."""
    from deepultrasound.simulation.presets import DEMO_DEPTH_MM, DEMO_WIDTH_MM

    parser.add_argument(
        "--ramp-frames",
        type=int,
        default=ramp_frames,
        help=f"simulated phantom: frames from rest to full compression (default: {ramp_frames})",
    )
    parser.add_argument(
        "--step-percent",
        type=float,
        default=step_percent,
        help=f"simulated phantom: applied strain added per ramp frame in %% (default: {step_percent})",
    )
    parser.add_argument(
        "--height",
        type=int,
        default=2000,
        help=f"simulated phantom: axial samples over its {DEMO_DEPTH_MM:g} mm depth (default: 2000)",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=128,
        help=f"simulated phantom: lines over its {DEMO_WIDTH_MM:g} mm width (default: 128)",
    )
    parser.add_argument("--seed", type=int, default=seed, help=f"simulated phantom: seed (default: {seed})")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", nargs="?", type=Path, help="RF sequence file to replay in a loop (default: a simulated phantom)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for every interface (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_SOURCE_PORT, help=f"TCP port (default: {DEFAULT_SOURCE_PORT})"
    )
    parser.add_argument("--device-name", default="RF", help="IMAGE device name (default: RF)")
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second (default: 20)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="sample type sent (default: float32)")
    parser.add_argument(
        "--count", type=int, default=None, help="stop after this many frames (default: run until Ctrl-C)"
    )
    add_phantom_arguments(parser, ramp_frames=6, step_percent=0.5, seed=0)


def run(args: argparse.Namespace) -> int:
    if args.input is not None:
        source = replay_source(args.input)
        what = f"{args.input} ({len(source.order)} frames, looped)"
    else:
        print(f"simulating a {args.ramp_frames}-frame compression ramp of {args.height} x {args.width} ...", flush=True)
        source, _ = demo_phantom_source(
            ramp_frames=args.ramp_frames,
            height=args.height,
            width=args.width,
            step_percent=args.step_percent,
            seed=args.seed,
        )
        what = f"simulated phantom, cycle of {len(source.order)} frames"
    scanner = Scanner(source.as_dtype(args.dtype), args.port, args.host, args.device_name, args.rate, args.count)
    print(
        f"serving {what} as {args.dtype} IMAGE '{args.device_name}' on {args.host}:{scanner.port} at {args.rate} Hz "
        "(Ctrl-C stops)",
        flush=True,
    )
    try:
        while not scanner.wait(1.0):
            pass
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        scanner.stop()
    print(f"sent {scanner.sent} frames", flush=True)
    return 0
