"""Simulated apical echocardiography: labels, fan, EF, displacement truth, speckle motion, realism figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from deepultrasound.errors import InputError
from deepultrasound.simulation.echo import EchoConfig, EchoSimulator
from deepultrasound.simulation.echo_stats import fan_mask_of, grey_levels, speckle_size
from deepultrasound.spatial import compose_displacements, labels_to_one_hot, warp_image

SIZE = 128


@pytest.fixture(scope="module")
def simulator() -> EchoSimulator:
    return EchoSimulator(EchoConfig(view="4CH", ejection_fraction=55.0, height=SIZE, width=SIZE), seed=1)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _warp(moving: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` sampled at ``p + u(p)`` (bilinear)."""
    warped = warp_image(torch.from_numpy(moving[None]).float(), torch.from_numpy(displacement[None]))
    return warped[0].numpy()


def test_labels_and_fan(simulator: EchoSimulator) -> None:
    frame = simulator.frame(0.0)
    sector = simulator.sector
    x, z = sector.pixel_grid_mm()
    inside = (np.hypot(x, z) <= sector.depth_mm) & (np.abs(np.arctan2(x, z)) <= sector.angle_rad / 2)
    np.testing.assert_array_equal(frame.fan_mask, inside)
    assert set(np.unique(frame.labels)) == {0, 1, 2, 3}
    assert not frame.labels[~frame.fan_mask].any() and not frame.image[~frame.fan_mask].any()
    assert frame.image.shape == (SIZE, SIZE) and 0.0 <= frame.image.min() and frame.image.max() <= 1.0
    rows = np.arange(SIZE)[:, None]
    cavity_row = rows.repeat(SIZE, 1)[frame.labels == 1].mean()
    atrium_row = rows.repeat(SIZE, 1)[frame.labels == 3].mean()
    assert cavity_row < atrium_row  # apex at the top, atrium below the ventricle
    # the cavity is dark and the myocardium bright, as in echo
    assert frame.image[frame.labels == 1].mean() + 0.1 < frame.image[frame.labels == 2].mean()


@pytest.mark.parametrize("ejection_fraction", [35.0, 62.0])
def test_ejection_fraction_from_label_maps(ejection_fraction: float) -> None:
    """Method of discs on the rasterised cavities (axis vertical: one disc per row) gives the requested EF."""
    config = EchoConfig(ejection_fraction=ejection_fraction, tilt_deg=(0.0, 0.0), height=256, width=256)
    sim = EchoSimulator(config, seed=4)
    dx, dz = sim.sector.pixel_mm

    def volume(labels: np.ndarray) -> float:
        diameters = (labels == 1).sum(axis=1) * dx
        return float(np.sum(np.pi * (diameters / 2) ** 2 * dz))

    measured = 100.0 * (1.0 - volume(sim.labels(config.es_phase)) / volume(sim.labels(0.0)))
    assert measured == pytest.approx(ejection_fraction, abs=2.0)
    assert sim.ejection_fraction == pytest.approx(ejection_fraction, abs=0.1)
    assert -30.0 < sim.global_longitudinal_strain() < -5.0


def test_displacement_truth_carries_labels(simulator: EchoSimulator) -> None:
    """Frame B's labels warped by the truth A -> B overlap frame A's labels."""
    phase_a, phase_b = 0.0, simulator.config.es_phase
    labels_a, labels_b = simulator.labels(phase_a), simulator.labels(phase_b)
    u = simulator.displacement(phase_a, phase_b)
    assert np.abs(u).max() > 3.0  # a real motion, not an identity
    one_hot_b = labels_to_one_hot(torch.from_numpy(labels_b[None, None].astype(np.int64)), 4)[0].numpy()
    warped = _warp(one_hot_b, u).argmax(0)
    for label in (1, 2):
        assert _dice(warped == label, labels_a == label) >= 0.9
        assert _dice(labels_b == label, labels_a == label) < _dice(warped == label, labels_a == label)


def test_displacement_round_trip_and_identity(simulator: EchoSimulator) -> None:
    """u(A -> B) composed with u(B -> A) is the identity; u(A -> A) is zero."""
    forward = torch.from_numpy(simulator.displacement(0.05, 0.3)[None])
    backward = torch.from_numpy(simulator.displacement(0.3, 0.05)[None])
    round_trip = compose_displacements(forward, backward)[0].numpy()
    error = np.hypot(*round_trip)[10:-10, 10:-10]  # away from the border, where the warp repeats edge values
    # bilinear resampling of the field is exact but where the field bends sharply (at the apex)
    assert np.percentile(error, 95) < 0.05 and error.max() < 0.5
    assert np.abs(forward.numpy()).max() > 3.0
    np.testing.assert_allclose(simulator.displacement(0.2, 0.2), 0.0, atol=1e-3)


def test_speckle_follows_tissue(simulator: EchoSimulator) -> None:
    """Speckle (the image less its 3-pixel local mean) of frame B warped back by the truth matches frame A
    where the tissue moved more than 2 pixels; unwarped, it does not."""
    phase_a, phase_b = 0.1, 0.16
    frame_a, frame_b = simulator.frame(phase_a), simulator.frame(phase_b)
    u = simulator.displacement(phase_a, phase_b)
    warped = _warp(frame_b.image[None], u)[0]
    moved = frame_a.fan_mask & np.isin(frame_a.labels, (0, 2)) & (np.hypot(*u) > 2.0)
    assert moved.sum() > 500

    def speckle(image: np.ndarray) -> np.ndarray:
        return (image - gaussian_filter(image, 3.0))[moved]

    tracked = _ncc(speckle(frame_a.image), speckle(warped))
    untracked = _ncc(speckle(frame_a.image), speckle(frame_b.image))
    assert tracked > 0.3 and tracked > 3.0 * untracked


def test_determinism_by_seed() -> None:
    config = EchoConfig(view="2CH", height=64, width=64)
    a, b, c = EchoSimulator(config, seed=7), EchoSimulator(config, seed=7), EchoSimulator(config, seed=8)
    np.testing.assert_array_equal(a.frame(0.3).image, b.frame(0.3).image)
    np.testing.assert_array_equal(a.displacement(0.0, 0.3), b.displacement(0.0, 0.3))
    assert not np.array_equal(a.frame(0.3).labels, c.frame(0.3).labels)


@pytest.mark.parametrize(
    "kwargs, value",
    [
        ({"ejection_fraction": 120.0}, "120.0"),
        ({"ejection_fraction": -5.0}, "-5.0"),
        ({"ejection_fraction": 0.0}, "0.0"),
        ({"height": 0}, "0"),
        ({"lv_length_mm": (0.0, 0.0)}, "(0.0, 0.0)"),
        ({"depth_mm": (0.0, 150.0)}, "(0.0, 150.0)"),
        ({"view": "3CH"}, "3CH"),
    ],
)
def test_bad_parameters(kwargs: dict, value: str) -> None:
    with pytest.raises(ValueError, match=value.replace("(", r"\(").replace(")", r"\)")) as error:
        EchoConfig(**kwargs)
    assert isinstance(error.value, InputError)


def test_unreachable_ejection_fraction() -> None:
    with pytest.raises(InputError, match="97.0"):
        EchoSimulator(EchoConfig(ejection_fraction=97.0, height=32, width=32), seed=0)


def test_speckle_size_of_known_texture() -> None:
    """Gaussian-filtered white noise (sigma s) has a Gaussian autocorrelation of FWHM 2.355 s sqrt(2)."""
    rng = np.random.default_rng(0)
    sigma_rows, sigma_cols = 1.2, 2.0
    image = gaussian_filter(rng.standard_normal((256, 256)), (sigma_rows, sigma_cols))
    labels, fan = np.zeros((256, 256), np.uint8), np.ones((256, 256), bool)
    size = speckle_size([image], [labels], [fan])
    fwhm = 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.sqrt(2.0)
    assert size["axial_px"] == pytest.approx(fwhm * sigma_rows, rel=0.12)
    assert size["lateral_px"] == pytest.approx(fwhm * sigma_cols, rel=0.12)


def test_grey_levels_and_fan_of_known_image() -> None:
    image = np.zeros((8, 8))
    image[2:6, 1:7] = 0.5
    image[3, 2:4] = 0.25
    labels = np.zeros((8, 8), np.uint8)
    labels[3, 2:4] = 1
    fan = fan_mask_of(image)
    assert fan.sum() == 24
    levels = grey_levels([image], [labels], [fan])
    assert levels["cavity"]["mean"] == pytest.approx(0.25) and levels["other"]["mean"] == pytest.approx(0.5)
    assert sum(levels["other"]["histogram"]) == pytest.approx(1.0)
    assert "myocardium" not in levels
