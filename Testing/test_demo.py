"""``deepultrasound demo`` end to end at a small size: scanner -> OpenIGTLink -> live strain -> output
folder; the folder holds what it promises and the strain agrees with the FEM truth of the phantom."""

from __future__ import annotations

import json

import numpy as np

from deepultrasound.cli import main
from deepultrasound.io import read_sequence


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
