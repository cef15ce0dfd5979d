"""Interoperability with the C++ OpenIGTLink library that 3D Slicer and PLUS use.

The streaming tests have pyigtl on both ends, so a misreading shared by both would go unnoticed.
Here the other end is the reference library (Debian ``libopenigtlink-dev``), through the two
programs in ``Testing/igtl_cpp`` compiled once per session: ``igtl_receive`` reports what the
library decodes (CRC, size, spacing, position, scalar type, byte order, pixels), ``igtl_send``
sends frames the way the library does (header version 1, image data flagged little- or
big-endian). Skipped with the reason where the library or a C++ compiler is missing (``.ci/run``
installs the library).

Truth: the pixels, sizes, spacings and positions sent; the B-mode of the frames sent; the
strain of a rigid shift (0 %). Processes talk over 127.0.0.1 on ports they choose themselves;
waits poll their output with timeouts.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from deepultrasound.io import write_image
from deepultrasound.io.image import Image
from deepultrasound.spatial import bmode_db
from deepultrasound.streaming.igtl import STATUS_CONNECTION_LOST
from deepultrasound.streaming.scanner import replay_source

OPENIGTLINK_INCLUDE = Path("/usr/include/openigtlink")
PROGRAMS = Path(__file__).parent / "igtl_cpp"
ROWS, COLUMNS = 256, 64  # axial samples, lines
LATERAL_MM, AXIAL_MM = 0.3, 0.02
X_MM, Y_MM = 1.5, -2.0  # pixel (0, 0)
SCALAR_TYPES = {4: np.int16, 10: np.float32}  # OpenIGTLink scalar type codes
BIG_ENDIAN = 1
CROP = 8  # rows the stream drops at the top


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C++ programs, built against the installed library."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++) to build the OpenIGTLink test programs")
    if not (OPENIGTLINK_INCLUDE / "igtlImageMessage.h").exists():
        pytest.skip(
            f"the C++ OpenIGTLink library is not installed (no {OPENIGTLINK_INCLUDE}); "
            "Debian/Ubuntu: apt-get install libopenigtlink-dev (.ci/run does)"
        )
    build = tmp_path_factory.mktemp("igtl_cpp")
    built = {}
    for name in ("igtl_receive", "igtl_send"):
        built[name] = build / name
        command = [compiler, "-std=c++11", "-O1", f"-I{OPENIGTLINK_INCLUDE}", str(PROGRAMS / f"{name}.cxx")]
        compiled = subprocess.run(
            [*command, "-o", str(built[name]), "-lOpenIGTLink"], capture_output=True, text=True, check=False
        )
        assert compiled.returncode == 0, f"building {name} failed:\n{compiled.stderr}"
    return built


# ---------------------------------------------------------------- helpers


def _speckle_frames(count: int, seed: int = 0) -> np.ndarray:
    """``(count, ROWS, COLUMNS)`` float32 speckle moved down one sample per frame (a rigid shift)."""
    tall = np.random.default_rng(seed).standard_normal((ROWS + count, COLUMNS)).astype(np.float32)
    return np.stack([tall[count - k : count - k + ROWS] for k in range(count)])


def _engine(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "deepultrasound", *arguments]


@contextmanager
def _running(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """``command`` in the background, its output in ``log``; interrupted (Ctrl-C) on leaving."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for(condition: Callable[[], object], timeout: float, what: str):
    """The first true value of ``condition()``, polled until ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def _port(log: Path, pattern: str) -> int | None:
    """The port a background process printed in ``log`` (``pattern`` captures it), None before."""
    found = re.search(pattern, log.read_text())
    return int(found.group(1)) if found else None


def _reports(text: str) -> list[dict[str, str]]:
    """``igtl_receive`` lines as fields: ``type`` plus every ``key=value`` (a STATUS ``text`` to the end)."""
    reports = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        rest, _, status_text = rest.partition(" text=")
        fields = dict(field.split("=", 1) for field in rest.split())
        reports.append({"type": kind, **fields, **({"text": status_text} if kind == "STATUS" else {})})
    return reports


def _numbers(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(","))


def _pixels(report: dict[str, str]) -> np.ndarray:
    """The ``(rows, cols)`` pixels of a reported IMAGE, read in the byte order its message flags."""
    columns, rows, _ = (int(value) for value in _numbers(report["size"]))
    dtype = np.dtype(SCALAR_TYPES[int(report["scalar"])])
    dtype = dtype.newbyteorder(">" if int(report["endian"]) == BIG_ENDIAN else "<")
    return np.fromfile(report["file"], dtype=dtype).reshape(rows, columns)


def _centre(rows: int, columns: int, top_row: int = 0) -> tuple[float, float, float]:
    """Where OpenIGTLink places an image of our geometry: the centre of its pixel grid."""
    return (
        X_MM + 0.5 * (columns - 1) * LATERAL_MM,
        Y_MM + (top_row + 0.5 * (rows - 1)) * AXIAL_MM,
        0.0,
    )


def _receiver(programs: dict[str, Path], port: int, folder: Path, *wanted: str) -> list[str]:
    folder.mkdir(exist_ok=True)
    return [str(programs["igtl_receive"]), "127.0.0.1", str(port), str(folder), *wanted]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_cpp_library_receives_the_scanners_frames_checksummed_with_their_geometry(
    dtype: str, programs: dict[str, Path], tmp_path: Path
) -> None:
    recording = tmp_path / "rf.mha"
    write_image(recording, Image(_speckle_frames(3), (LATERAL_MM, AXIAL_MM, 0.05), (X_MM, Y_MM, 0.0)))
    sent = replay_source(recording).as_dtype(dtype).frames
    with _running(_engine("scanner", str(recording), "--port", "0", "--dtype", dtype), tmp_path / "scanner.log"):
        port = _wait_for(lambda: _port(tmp_path / "scanner.log", r"on 127\.0\.0\.1:(\d+)"), 60, "the scanner")
        received = subprocess.run(
            _receiver(programs, port, tmp_path / "received", "IMAGE/RF:3"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert received.returncode == 0, received.stderr
    reports = _reports(received.stdout)
    assert len(reports) == 3
    for report in reports:
        assert (report["type"], report["device"], report["crc"]) == ("IMAGE", "RF", "ok")
        assert _numbers(report["size"]) == (COLUMNS, ROWS, 1)
        assert SCALAR_TYPES[int(report["scalar"])] == np.dtype(dtype)
        np.testing.assert_allclose(_numbers(report["spacing"]), (LATERAL_MM, AXIAL_MM, 1.0), rtol=1e-6)
        np.testing.assert_allclose(_numbers(report["origin"]), _centre(ROWS, COLUMNS), atol=1e-4)
        pixels = _pixels(report)
        assert any(np.array_equal(pixels, frame) for frame in sent)


@pytest.mark.parametrize(("dtype", "endian"), [("float32", "little"), ("float32", "big"), ("int16", "big")])
def test_stream_takes_cpp_frames_and_the_cpp_library_reads_its_strain_bmode_and_status(
    dtype: str, endian: str, programs: dict[str, Path], tmp_path: Path
) -> None:
    frames = _speckle_frames(4)
    if dtype == "int16":
        frames = np.round(frames * (32767 / np.abs(frames).max())).astype(np.int16)
    frames.tofile(tmp_path / "frames.raw")  # this machine's (little-endian) byte order
    geometry = [str(value) for value in (LATERAL_MM, AXIAL_MM, X_MM, Y_MM)]
    sender_command = [str(programs["igtl_send"]), str(tmp_path / "frames.raw"), "4", str(ROWS), str(COLUMNS)]
    stream_options = ["--baseline", "--device", "cpu", "--window-mm", "0.5", "--reference-every", "0"]
    with _running([*sender_command, dtype, endian, *geometry], tmp_path / "sender.log") as sender:
        source_port = _wait_for(lambda: _port(tmp_path / "sender.log", r"listening (\d+)"), 30, "the C++ sender")
        stream_command = _engine(
            "stream", "--port", str(source_port), "--serve-port", "0", "--crop", f"{CROP}:", *stream_options
        )
        with _running(stream_command, tmp_path / "stream.log"):
            serve_port = _wait_for(
                lambda: _port(tmp_path / "stream.log", r"on 127\.0\.0\.1:(\d+) \(Ctrl-C"), 120, "the stream"
            )
            wanted = ("IMAGE/Strain:3", "IMAGE/BMode:3", "STATUS/Strain:1")
            with _running(_receiver(programs, serve_port, tmp_path / "received", *wanted), tmp_path / "cpp.log") as cpp:
                _wait_for(
                    lambda: sum(r.get("device") == "BMode" for r in _reports((tmp_path / "cpp.log").read_text())) >= 3,
                    60,
                    "strain and B-mode read by the C++ library",
                )
                sender.terminate()  # the source goes away: the stream reports it
                assert cpp.wait(timeout=30) == 0, (tmp_path / "stream.log").read_text()
    reports = _reports((tmp_path / "cpp.log").read_text())
    assert all(report["crc"] == "ok" for report in reports)
    images = [report for report in reports if report["type"] == "IMAGE"]
    kept_rows = ROWS - CROP
    for image in images:
        assert _numbers(image["size"]) == (COLUMNS, kept_rows, 1) and SCALAR_TYPES[int(image["scalar"])] == np.float32
        np.testing.assert_allclose(_numbers(image["spacing"]), (LATERAL_MM, AXIAL_MM, 1.0), rtol=1e-6)
        np.testing.assert_allclose(_numbers(image["origin"]), _centre(kept_rows, COLUMNS, CROP), atol=1e-4)
    for strain in (image for image in images if image["device"] == "Strain"):
        assert np.median(_pixels(strain)) == pytest.approx(0.0, abs=0.2)  # %: a rigid shift does not strain
    expected_bmode = [bmode_db(frame[CROP:].astype(np.float32)) for frame in frames]
    for bmode in (image for image in images if image["device"] == "BMode"):
        assert any(np.allclose(_pixels(bmode), expected, atol=1e-3) for expected in expected_bmode)
    status = next(report for report in reports if report["type"] == "STATUS")
    assert (int(status["code"]), status["name"]) == (STATUS_CONNECTION_LOST, "ConnectionLost")
    assert f"127.0.0.1:{source_port}" in status["text"]
