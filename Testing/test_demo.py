"""``deepultrasound demo`` end to end at a small size: the output folder holds what it promises,
and the strain it reports agrees with the FEM truth of the simulated phantom."""

from __future__ import annotations

import json

import numpy as np

from deepultrasound.cli import main
from deepultrasound.io import read_sequence


def test_demo_writes_strain_figures_and_a_truthful_summary(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--frames", "3", "--model", "baseline", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "block matching" and len(summary["pairs"]) == 2
    for name in ("rf.mha", "strain.mha", "truth_strain.mha", "strain_01.png", "strain_02.png"):
        assert (out / name).stat().st_size > 0, name

    rf, strain, truth = (read_sequence(out / name) for name in ("rf.mha", "strain.mha", "truth_strain.mha"))
    assert rf.array.shape == (3, 2000, 128)
    assert strain.array.shape == truth.array.shape == (2, 1600, 128)
    assert strain.spacing == rf.spacing
    assert strain.origin[1] == rf.origin[1] + 100 * rf.axial_spacing_mm  # rows 100:-300, as the paper crops

    # the stiff inclusion strains less than the background, the soft one more (compression < 0)
    assert all(pair["nrmse"] < 0.5 for pair in summary["pairs"])
    assert all(pair["cnr_e_stiff"] > 1.0 and pair["cnr_e_soft"] > 1.0 for pair in summary["pairs"])
    applied = np.array([pair["applied_strain_percent"] for pair in summary["pairs"]])
    assert np.all(np.diff(applied) < 0), "compression increases frame by frame"
