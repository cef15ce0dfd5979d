"""The per-frame quality of a tracked sequence: similarity, folding, and the flag."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from deepultrasound.cli import main
from deepultrasound.io import Image, write_image
from deepultrasound.registration.baselines import BASELINES
from deepultrasound.registration.quality import (
    MIN_SIMILARITY,
    frame_quality,
    heart_region,
    normalised_cross_correlation,
)
from deepultrasound.registration.tracking import track_sequence
from deepultrasound.simulation.echo import EchoConfig, EchoSimulator


@pytest.fixture(scope="module")
def cine() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """(frames, ED labels, true displacements onto ED) of 4 simulated frames ED -> ES, 96 x 96 pixels."""
    simulator = EchoSimulator(EchoConfig(height=96, width=96), seed=5)
    phases = np.linspace(0.0, simulator.config.es_phase, 4)
    frames = np.stack([simulator.frame(float(phase)).image for phase in phases]).astype(np.float32)
    truth = np.stack([simulator.displacement(float(phase), 0.0) for phase in phases])
    return frames, simulator.labels(0.0), truth, simulator.sector.pixel_mm


def test_cross_correlation_known_answers():
    rng = np.random.default_rng(0)
    image = rng.random((20, 20))
    region = np.zeros((20, 20), bool)
    region[5:15, 5:15] = True
    assert normalised_cross_correlation(image, 3 * image + 1, region) == pytest.approx(1.0)
    assert normalised_cross_correlation(image, -image, region) == pytest.approx(-1.0)
    assert np.isnan(normalised_cross_correlation(image, np.ones((20, 20)), region))
    other = image.copy()
    other[~region] = 0  # only the region counts
    assert normalised_cross_correlation(image, other, region) == pytest.approx(1.0)


def test_heart_region_covers_the_cavity_and_myocardium_with_a_margin(cine):
    labels = cine[1]
    region = heart_region(labels)
    assert region[np.isin(labels, (1, 2))].all()
    assert region.sum() > np.isin(labels, (1, 2)).sum()
    assert not region[labels == 3].all()  # the atrium beyond the margin is left out


def test_the_true_motion_is_trusted_and_a_wrong_frame_or_folding_is_flagged(cine):
    frames, ed_labels, truth, _ = cine
    labels = np.stack([ed_labels] * len(frames))
    good = frame_quality(frames, labels, truth, 0)
    assert good.similarity[0] == pytest.approx(1.0)
    assert (good.similarity[1:] > MIN_SIMILARITY).all() and not good.flagged.any()
    assert good.flagged_frames == []

    wrong = frames.copy()
    wrong[2] = np.random.default_rng(1).random(frames.shape[1:]).astype(np.float32)  # not the heart at all
    bad = frame_quality(wrong, labels, truth, 0)
    assert bad.similarity[2] < MIN_SIMILARITY and bad.flagged_frames == [2]

    folded = truth.copy()
    rows = np.arange(frames.shape[1], dtype=np.float32)[:, None]
    folded[3, 1] += 3.0 * np.sin(rows / 1.5)  # a field that turns back on itself every few rows
    folding = frame_quality(frames, labels, folded, 0)
    assert folding.folding_percent[3] > 0.5 and folding.flagged[3] and not folding.flagged[:3].any()


def test_tracking_reports_the_quality_of_every_frame(cine):
    frames, ed_labels, truth, spacing = cine
    known = {frame.tobytes(): field for frame, field in zip(frames, truth, strict=True)}

    def true_motion(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
        """The simulator's motion of a frame onto end-diastole; nothing left once it is applied."""
        return known[fixed.tobytes()] if moving.tobytes() == frames[0].tobytes() else np.zeros_like(truth[0])

    result = track_sequence(frames, ed_labels, 0, true_motion, spacing)
    assert result.quality.similarity[0] == pytest.approx(1.0) and (result.quality.similarity > MIN_SIMILARITY).all()
    assert not result.quality.flagged.any()
    farneback = track_sequence(frames, ed_labels, 0, BASELINES["farneback"], spacing).quality
    assert farneback.flagged_frames == [int(t) for t in np.flatnonzero(farneback.folding_percent > 0.5)]


def test_track_writes_the_quality_and_names_the_flagged_frames(cine, tmp_path, capsys):
    frames, ed_labels, _, spacing = cine
    frames = frames.copy()
    frames[3] = np.random.default_rng(2).random(frames.shape[1:]).astype(np.float32)
    write_image(tmp_path / "sequence.mha", Image(frames, (*spacing, 0.05)))
    write_image(tmp_path / "labels.mha", Image(ed_labels, spacing))
    out = tmp_path / "tracked"
    argv = ["track", str(tmp_path / "sequence.mha"), "--labels", str(tmp_path / "labels.mha"), "-o", str(out)]
    assert main([*argv, "--method", "farneback"]) == 0
    stdout = capsys.readouterr().out
    with open(out / "strain.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["flagged"]) for row in rows] == [0, 0, 0, 1]
    assert float(rows[0]["similarity"]) == pytest.approx(1.0) and float(rows[3]["similarity"]) < MIN_SIMILARITY
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flagged_frames"] == [3] and summary["quality_thresholds"]["min_similarity"] == MIN_SIMILARITY
    assert "FLAGGED frames [3]" in stdout
