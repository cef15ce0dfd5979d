"""``deepultrasound demo`` end to end at a small size: scanner -> OpenIGTLink -> live strain -> output
folder; the folder holds what it promises and the strain agrees with the FEM truth of the phantom.
The scanner simulates the same phantom, over the depth its help states."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepultrasound.cli import main
from deepultrasound.errors import InputError
from deepultrasound.io import read_sequence
from deepultrasound.streaming.scanner import demo_phantom_source


def test_demo_streams_strain_figures_and_a_truthful_summary(tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo",
        "-o",
        str(out),
        "--frames",
        "3",
        "--ramp-frames",
        "4",
        "--step-percent",
        "0.5",
        "--height",
        "1000",
        "--width",
        "64",
        "--rate",
        "8",
        "--model",
        "baseline",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "block matching" and summary["frames"] == 3 == len(summary["results"])
    for name in ("strain.mha", "truth_strain.mha", "latency.png", "strain_01.png", "strain_03.png"):
        assert (out / name).stat().st_size > 0, name
    assert summary["viewer_received"] >= 1 and summary["latency_p50_ms"] > 0
    assert summary["received"] >= summary["frames"] + summary["dropped"]

    strain, truth = (read_sequence(out / name) for name in ("strain.mha", "truth_strain.mha"))
    assert strain.array.shape == truth.array.shape == (3, 800, 64)  # rows 50:-150 of 1000, as the paper crops
    np.testing.assert_allclose(strain.spacing[:2], (0.4, 0.04), rtol=1e-5)
    assert abs(strain.origin[1] - 50 * 0.04) < 1e-4

    # pairs under compression: close to the truth, stiff and soft inclusions stand out (compression < 0)
    # (which frames arrive depends on the machine's speed: the latest frame wins)
    scored = [r for r in summary["results"] if r["nrmse"] is not None]
    assert scored and all(r["nrmse"] < 0.5 for r in scored), summary["results"]
    assert all(r["cnr_e_stiff"] > 1.0 for r in scored), summary["results"]


def test_scanner_images_the_demo_phantom_over_the_depth_its_help_states(capsys):
    """``--height`` is the number of samples over the phantom's 40 mm depth and ``--width`` the lines
    over its 25.6 mm, in the help and in what is streamed."""
    with pytest.raises(SystemExit):
        main(["scanner", "--help"])
    assert "samples over its 40 mm depth" in capsys.readouterr().out
    source, sequence = demo_phantom_source(ramp_frames=2, height=500, width=64, step_percent=0.5, seed=0)
    assert source.frames.shape[1:] == (500, 64)
    lateral_mm, axial_mm = source.geometry.spacing
    assert (500 * axial_mm, 64 * lateral_mm) == pytest.approx((40.0, 25.6))
    assert sequence.stiffness.max() == pytest.approx(3.0) and sequence.stiffness.min() == pytest.approx(0.4)


def test_scanner_refuses_a_size_too_coarse_for_the_simulation():
    with pytest.raises(InputError, match=r"40 x 25.6 mm demo phantom .* 100 samples x 64 lines: axial_spacing_mm"):
        demo_phantom_source(ramp_frames=2, height=100, width=64, step_percent=0.5, seed=0)
