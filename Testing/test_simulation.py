"""Tests of the elastography simulator against analytic mechanics, speckle theory and pymust."""

from __future__ import annotations

import importlib.util

import numpy as np
import pydantic
import pytest
from scipy.ndimage import map_coordinates
from scipy.signal import hilbert

from deepultrasound.errors import InputError
from deepultrasound.simulation import (
    Inclusion,
    Layer,
    Phantom,
    SimulationConfig,
    Transducer,
    beamformed_rf,
    random_phantom,
    save_sequence,
    simulate_sequence,
    solve_compression,
)

RAYLEIGH_SNR = 1.91  # mean / std of a Rayleigh-distributed envelope (fully developed speckle)

SMALL = dict(
    height=400,
    width=64,
    n_frames=3,
    mesh_cells=(24, 24),
    compression_step_percent=2.0,
    snr_db=None,
    decorrelation=0.0,
    focal_depth_mm=4.0,
)


def _small_phantom(inclusions=()) -> Phantom:
    return Phantom(depth_mm=400 * 0.02, width_mm=64 * 0.2, inclusions=tuple(inclusions))


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _warp(image: np.ndarray, displacement_px: np.ndarray) -> np.ndarray:
    """Resample ``image`` (H, W) at ``p + u(p)``; ``u`` is (2, H, W), channel 0 lateral."""
    rows, cols = np.meshgrid(np.arange(image.shape[0]), np.arange(image.shape[1]), indexing="ij")
    coords = np.stack([rows + displacement_px[1], cols + displacement_px[0]])
    return map_coordinates(image, coords, order=3, mode="nearest")


def _envelope_stats(rf: np.ndarray) -> tuple[float, float, float]:
    """Envelope SNR and the FWHM (samples, lines) of the envelope autocovariance, axially and laterally."""
    env = np.abs(hilbert(rf, axis=0))
    e = env - env.mean()

    def fwhm(axis: int) -> float:
        n = 2 * e.shape[axis]
        ac = np.fft.ifft(np.abs(np.fft.fft(e, n=n, axis=axis)) ** 2, axis=axis).real.mean(axis=1 - axis)
        ac = ac / ac[0]
        k = int(np.argmax(ac < 0.5))
        return 2.0 * (k - 1 + (ac[k - 1] - 0.5) / (ac[k - 1] - ac[k]))

    return float(env.mean() / env.std()), fwhm(0), fwhm(1)


# ---------------------------------------------------------------- phantom


def test_phantom_rasterises_regions_in_paint_order():
    layer = Layer(2.0, 4.0, stiffness=0.5, echogenicity=2.0)
    inc = Inclusion((5.0, 3.0), (1.0, 0.5), stiffness=3.0, angle_deg=90.0)
    ph = Phantom(depth_mm=8.0, width_mm=10.0, layers=(layer,), inclusions=(inc,))
    x = np.array([5.0, 5.0, 5.7, 1.0, 1.0])
    z = np.array([3.0, 3.9, 3.0, 3.0, 6.0])  # centre, rotated long axis, outside rotated ellipse, layer, bg
    np.testing.assert_allclose(ph.stiffness_at(x, z), [3.0, 3.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(ph.echogenicity_at(x, z), [1.0, 1.0, 2.0, 2.0, 1.0])
    masks = ph.inclusion_masks(x, z)
    assert masks.shape == (1, 5) and masks[0].tolist() == [True, True, False, False, False]
    assert ph.background_mask(x, z).tolist() == [False, False, False, False, True]
    assert ph.rasterise((16, 20)).shape == (16, 20)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(center_mm=(1, 1), semi_axes_mm=(1, 1), stiffness=6.0), "stiffness"),
        (dict(center_mm=(1, 1), semi_axes_mm=(0, 1), stiffness=2.0), "semi-axis"),
    ],
)
def test_bad_inclusion_is_rejected(kwargs, match):
    with pytest.raises(InputError, match=match):
        Inclusion(**kwargs)


def test_random_phantom_respects_ranges():
    rng = np.random.default_rng(3)
    for _ in range(50):
        ph = random_phantom(rng)
        assert len(ph.inclusions) <= 3 and len(ph.layers) <= 1
        for region in ph.inclusions + ph.layers:
            assert 0.2 <= region.stiffness <= 5.0
        for inc in ph.inclusions:
            (cx, cz), (a, b) = inc.center_mm, inc.semi_axes_mm
            assert b <= a and a <= cx <= ph.width_mm - a and cz <= ph.depth_mm - a


# ---------------------------------------------------------------- mechanics


@pytest.mark.parametrize("poisson", [0.3, 0.495])
def test_homogeneous_block_matches_plane_strain_analytic(poisson):
    # Uniaxial compression, free sides, plane strain: eps_zz = -d/D, eps_xx = -nu/(1-nu) eps_zz.
    depth, width = 10.0, 8.0
    sol = solve_compression(Phantom(depth, width), (0.0, width), depth, (8, 8), poisson, "slip")
    rng = np.random.default_rng(0)
    x, z = rng.uniform(0, width, 200), rng.uniform(0, depth, 200)
    u = sol.displacement_at(x, z)
    eps_zz = -1.0 / depth
    eps_xx = -poisson / (1.0 - poisson) * eps_zz
    np.testing.assert_allclose(u[1], eps_zz * z, atol=1e-8)
    np.testing.assert_allclose(u[0], eps_xx * (x - width / 2), atol=1e-8)


def test_bonded_probe_holds_surface_laterally():
    sol = solve_compression(Phantom(10.0, 8.0), (0.0, 8.0), 10.0, (8, 8), 0.495, "bonded")
    x = np.linspace(0.0, 8.0, 9)
    u_top = sol.displacement_at(x, np.zeros_like(x))
    np.testing.assert_allclose(u_top, 0.0, atol=1e-10)
    u_bottom = sol.displacement_at(x, np.full_like(x, 10.0))
    np.testing.assert_allclose(u_bottom[1], -1.0, atol=1e-10)
    assert np.abs(u_bottom[0]).max() > 0.05  # the bottom still expands laterally (barrelling)


def test_nearly_incompressible_bonded_block_does_not_lock():
    # Bonded probe: the side bulges (barrelling). A locking discretisation would bulge far less on a
    # coarse mesh; quadratic triangles agree with a fine mesh within 3 % already at 6 x 6 cells.
    points = (np.array([8.0, 8.0]), np.array([5.0, 9.0]))
    coarse, fine = (
        solve_compression(Phantom(10.0, 8.0), (0.0, 8.0), 10.0, m, 0.495, "bonded").displacement_at(*points)
        for m in ((6, 6), (40, 40))
    )
    np.testing.assert_allclose(coarse[0], fine[0], rtol=0.03)
    assert fine[0].min() > 0.4  # about nu / (1 - nu) * applied strain * half width = 0.39, plus the barrel


def test_probe_matrix_matches_scikit_fem_probes():
    ph = Phantom(10.0, 8.0, inclusions=(Inclusion((4.0, 5.0), (2.0, 1.5), stiffness=4.0),))
    sol = solve_compression(ph, (-1.0, 9.0), 11.0, (10, 9))
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(-1, 9, 300), rng.uniform(0, 11, 300)])
    reference = (sol.basis.probes(pts) @ sol.dofs).reshape(2, -1)
    np.testing.assert_allclose(sol.displacement_at(pts[0], pts[1]), reference, atol=1e-12)


def test_bad_transducer_is_rejected():
    with pytest.raises(InputError, match="f_number"):
        Transducer(f_number=0.0)


def test_points_outside_the_domain_are_rejected():
    sol = solve_compression(Phantom(4.0, 4.0), (0.0, 4.0), 4.0, (2, 2))
    with pytest.raises(InputError, match="mechanical domain"):
        sol.displacement_at(np.array([5.0]), np.array([1.0]))


# ---------------------------------------------------------------- sequences


@pytest.fixture(scope="module")
def inclusion_sequence():
    inc = Inclusion((6.4, 4.0), (1.5, 1.5), stiffness=3.0)
    return simulate_sequence(SimulationConfig(**SMALL), seed=5, phantom=_small_phantom([inc]))


def test_sequence_shapes_units_and_scaling(inclusion_sequence):
    seq = inclusion_sequence
    n, h, w = 3, 400, 64
    assert seq.rf.shape == (n, h, w) and seq.rf.dtype == np.float32
    np.testing.assert_allclose(np.abs(seq.rf).max(axis=(1, 2)), 1.0, rtol=1e-6)
    for field in (seq.displacement_px, seq.displacement_mm, seq.frame_displacement_px):
        assert field.shape == (n - 1, 2, h, w)
    assert seq.strain_percent.shape == seq.frame_strain_percent.shape == (n - 1, h, w)
    np.testing.assert_allclose(seq.displacement_px[:, 0], seq.displacement_mm[:, 0] / 0.2, rtol=1e-5)
    np.testing.assert_allclose(seq.displacement_px[:, 1], seq.displacement_mm[:, 1] / 0.02, rtol=1e-5)
    np.testing.assert_allclose(seq.applied_strain_percent, [0.0, -2.0, -4.0])
    assert seq.inclusion_masks.shape == (1, h, w) and seq.inclusion_masks.any()
    assert not (seq.inclusion_masks[0] & seq.background_mask).any()
    np.testing.assert_allclose(seq.stiffness[seq.inclusion_masks[0]], 3.0)


def test_stiff_inclusion_strains_less_than_background(inclusion_sequence):
    seq = inclusion_sequence
    strain = seq.strain_percent[-1]
    inside = np.abs(strain[seq.inclusion_masks[0]]).mean()
    outside = np.abs(strain[seq.background_mask]).mean()
    assert inside < 0.6 * outside
    assert np.all(strain[seq.background_mask] < 0)  # compression everywhere in the background


def test_truth_strain_equals_fem_displacement_gradient(inclusion_sequence):
    seq = inclusion_sequence
    basis = seq.mechanics.basis
    grad = basis.interpolate(seq.mechanics.dofs).grad  # (2 components, 2 derivatives, elements, qp)
    xq, zq = np.asarray(basis.global_coordinates())
    inside = (xq > 0.5) & (xq < 12.3) & (zq > 0.5) & (zq < 7.5)
    fem = 100.0 * seq.compression_mm[2] * grad[1, 1][inside]  # d u_z / d z, %
    coords = np.stack([zq[inside] / 0.02 - 0.5, xq[inside] / 0.2 - 0.5])
    ours = map_coordinates(seq.strain_percent[1], coords, order=1)
    assert np.median(np.abs(ours - fem)) < 0.01 * np.abs(fem).mean()
    assert np.percentile(np.abs(ours - fem), 90) < 0.05 * np.abs(fem).mean()


def test_homogeneous_phantom_gives_applied_strain_everywhere():
    seq = simulate_sequence(SimulationConfig(**SMALL), seed=2, phantom=_small_phantom())
    for k in range(2):
        np.testing.assert_allclose(seq.strain_percent[k], seq.applied_strain_percent[k + 1], rtol=1e-4)
    # frame k-1 -> k on the compressed frame k-1 grid: the step over the remaining length
    expected = (seq.applied_strain_percent[2] - seq.applied_strain_percent[1]) / (
        1 + seq.applied_strain_percent[1] / 100
    )
    np.testing.assert_allclose(seq.frame_strain_percent[1], expected, rtol=2e-3)


def test_warping_by_truth_aligns_speckle(inclusion_sequence):
    seq = inclusion_sequence
    crop = (slice(20, -60), slice(8, -8))  # away from tissue entering at the bottom and the side lines
    warped = _warp(seq.rf[1], seq.displacement_px[0])
    assert _ncc(warped[crop], seq.rf[0][crop]) > 0.9
    assert _ncc(seq.rf[1][crop], seq.rf[0][crop]) < 0.5
    step = _warp(seq.rf[2], seq.frame_displacement_px[1])
    assert _ncc(step[crop], seq.rf[1][crop]) > 0.9


def test_same_seed_same_sequence_and_other_seed_differs():
    config = SimulationConfig(height=200, width=32, n_frames=2, mesh_cells=(8, 8), decorrelation=0.1)
    a, b = simulate_sequence(config, seed=7), simulate_sequence(config, seed=7)
    c = simulate_sequence(config, seed=8)
    np.testing.assert_array_equal(a.rf, b.rf)
    np.testing.assert_array_equal(a.displacement_px, b.displacement_px)
    assert a.phantom == b.phantom
    assert not np.array_equal(a.rf, c.rf)


def test_decorrelation_and_noise_lower_frame_correlation():
    base = dict(
        height=300,
        width=32,
        n_frames=2,
        mesh_cells=(8, 8),
        compression_step_percent=0.1,
        max_inclusions=0,
        layer_probability=0.0,
    )
    clean = simulate_sequence(SimulationConfig(**base, snr_db=None, decorrelation=0.0), seed=1)
    noisy = simulate_sequence(SimulationConfig(**base, snr_db=5.0, decorrelation=0.5), seed=1)
    warped = [_warp(s.rf[1], s.displacement_px[0]) for s in (clean, noisy)]
    assert _ncc(warped[0], clean.rf[0]) > 0.95
    assert _ncc(warped[1], noisy.rf[0]) < 0.6


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_frames=1),
        dict(compression_step_percent=5.0),
        dict(unknown=1),
        dict(poisson=0.5),
        dict(mesh_cells=(1, 8)),
        dict(transmit="diverging"),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(pydantic.ValidationError):
        SimulationConfig(**bad)


def test_save_sequence_writes_mha_with_in_vivo_spacing(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    seq = simulate_sequence(SimulationConfig(height=100, width=16, n_frames=2, mesh_cells=(4, 4)), seed=0)
    paths = save_sequence(seq, tmp_path / "out" / "seq")
    assert [p.name for p in paths] == [
        "seq_rf.mha",
        "seq_displacement.mha",
        "seq_strain.mha",
        "seq_stiffness.mha",
        "seq_inclusions.mha",
    ]
    rf = sitk.ReadImage(str(paths[0]))
    assert rf.GetSpacing() == pytest.approx((0.2, 0.02, 1.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(rf), seq.rf)
    disp = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[1])))
    np.testing.assert_array_equal(disp, seq.displacement_px.transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- speckle statistics


def test_fully_developed_speckle_is_rayleigh_with_predicted_size():
    tr = Transducer(transmit="plane_wave")
    rng = np.random.default_rng(0)
    h, w, pitch, dz = 1200, 96, 0.2, 0.02
    n = int(15 * (h * dz) * (w * pitch) / tr.resolution_cell_mm2())
    x, z = rng.uniform(-1, w * pitch + 1, n), rng.uniform(-1, h * dz + 1, n)
    rf = beamformed_rf(x, z, rng.standard_normal(n), tr, (h, w), (pitch, dz))
    snr, fwhm_axial, fwhm_lateral = _envelope_stats(rf)
    assert snr == pytest.approx(RAYLEIGH_SNR, rel=0.10)
    # envelope autocovariance of a Gaussian PSF has the PSF's amplitude FWHM
    assert fwhm_axial * dz == pytest.approx(2.355 * tr.axial_sigma_mm, rel=0.15)
    assert fwhm_lateral * pitch == pytest.approx(2.355 * float(tr.lateral_sigma_mm(10.0)), rel=0.2)


@pytest.mark.skipif(importlib.util.find_spec("pymust") is None, reason="pymust is not installed")
def test_speckle_matches_pymust_plane_wave():
    """Same scatterers, matched f0 / bandwidth / pitch / sampling / receive F-number, plane-wave transmit.

    Tolerances: envelope SNR within 20 % of Rayleigh for both (a small region holds few hundred
    speckles); speckle FWHM axially within 30 % and laterally within 35 % of pymust's.
    """
    import pymust

    f0, fbw, pitch, fs, c, fnum = 4.4e6, 0.5, 0.2e-3, 38.5e6, 1540.0, 2.0
    param = pymust.utils.Param()
    param.fc, param.pitch, param.width, param.Nelements = f0, pitch, 0.9 * pitch, 48
    param.bandwidth, param.fs, param.c, param.radius, param.attenuation = 100 * fbw, fs, c, np.inf, 0.0
    param.fnumber = fnum
    rng = np.random.default_rng(4)
    n = 5000
    x, z, amp = rng.uniform(-3.6e-3, 3.6e-3, n), rng.uniform(7e-3, 15e-3, n), rng.standard_normal(n)
    options = pymust.utils.Options()
    options.dBThresh = -6
    element_rf, _ = pymust.simus(x, z, amp, np.zeros((1, param.Nelements)), param, options)
    dz = c / (2 * fs)
    lines = (np.arange(24) - 11.5) * pitch
    depths = 8e-3 + np.arange(300) * dz
    xg, zg = np.meshgrid(lines, depths)
    das = pymust.dasmtx(np.array(element_rf.shape), xg, zg, np.zeros((1, param.Nelements)), param)
    theirs = (das @ element_rf.flatten(order="F")).reshape(xg.shape, order="F").real

    tr = Transducer(f0 / 1e6, fbw, fnum, transmit="plane_wave", sound_speed_m_s=c)
    x0, z0 = lines[0] - 0.5 * pitch, depths[0] - 0.5 * dz  # our pixel-centre origin
    ours = beamformed_rf((x - x0) * 1e3, (z - z0) * 1e3, amp, tr, xg.shape, (pitch * 1e3, dz * 1e3))

    snr_t, ax_t, lat_t = _envelope_stats(theirs)
    snr_o, ax_o, lat_o = _envelope_stats(ours)
    assert snr_t == pytest.approx(RAYLEIGH_SNR, rel=0.2)
    assert snr_o == pytest.approx(RAYLEIGH_SNR, rel=0.2)
    assert ax_o == pytest.approx(ax_t, rel=0.30)
    assert lat_o == pytest.approx(lat_t, rel=0.35)
