"""LSQ axial strain, elastography metrics and the NCC block-matching baseline against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepultrasound.elastography.block_matching import BlockMatchingParams, baseline_strain, block_match, match_blocks
from deepultrasound.elastography.metrics import (
    cnr_e,
    cnr_e_db,
    ncc,
    snr_e,
    strain_nrmse,
    strain_nrmse_contrast,
    warped_ncc,
)
from deepultrasound.elastography.strain import (
    _slopes_by_convolution,
    _slopes_by_running_sums,
    axial_strain,
    axial_strain_np,
    window_samples,
)
from deepultrasound.errors import InputError

# ---------------------------------------------------------------- strain


@pytest.mark.parametrize(
    ("window_mm", "spacing_mm", "samples"),
    [(5.74, 0.02, 287), (1.0, 0.02, 51), (0.1, 0.02, 5), (0.12, 0.02, 7), (2.0, 0.1, 21), (0.05, 0.02, 3)],
)
def test_window_mm_to_odd_samples(window_mm, spacing_mm, samples):
    assert window_samples(window_mm, spacing_mm) == samples


@pytest.mark.parametrize(
    ("window_mm", "spacing_mm", "match"),
    [(0.01, 0.02, "at least 3 samples"), (-1.0, 0.02, "window_mm"), (1.0, 0.0, "axial_spacing_mm")],
)
def test_window_rejects_bad_values(window_mm, spacing_mm, match):
    with pytest.raises(InputError, match=match):
        window_samples(window_mm, spacing_mm)


def _depth(height: int, width: int) -> torch.Tensor:
    return torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)


@pytest.mark.parametrize(("height", "window_mm"), [(300, 5.74), (40, 0.3), (9, 0.18)])
def test_linear_displacement_gives_constant_strain_everywhere(height, window_mm):
    strain_value = -0.013
    axial = strain_value * _depth(height, 4) + 2.5  # a rigid offset does not change strain
    displacement = torch.stack([torch.randn(height, 4, dtype=torch.float64), axial])[None].repeat(2, 1, 1, 1)
    strain = axial_strain(displacement, window_mm=window_mm)
    assert strain.shape == (2, 1, height, 4)
    torch.testing.assert_close(strain, torch.full_like(strain, 100 * strain_value), rtol=0, atol=1e-9)


def test_quadratic_displacement_gives_analytic_linear_strain():
    height, curvature = 60, 2e-4
    z = _depth(height, 3)
    strain = axial_strain((curvature * z**2)[None, None], window_mm=0.5)[0, 0]  # 25 samples
    expected = 100 * 2 * curvature * z
    torch.testing.assert_close(strain[1:-1], expected[1:-1], rtol=0, atol=1e-9)
    # The first and last rows are two-sample differences, located half a sample inside.
    torch.testing.assert_close(strain[0], 100 * 2 * curvature * torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(strain[-1], 100 * 2 * curvature * torch.full((3,), height - 1.5, dtype=torch.float64))


def test_strain_matches_per_pixel_line_fit_with_shrinking_border_window():
    height, width, n = 30, 3, 9
    rng = np.random.default_rng(1)
    axial = rng.standard_normal((height, width))
    expected = np.empty_like(axial)
    for row in range(height):
        half = min(n // 2, row, height - 1 - row)
        rows = np.arange(row - half, row + half + 1) if half > 0 else np.array([0, 1]) + min(row, height - 2)
        expected[row] = 100 * np.polyfit(rows, axial[rows], 1)[0]
    strain = axial_strain(torch.from_numpy(axial)[None, None], window_mm=n * 0.02)[0, 0].numpy()
    np.testing.assert_allclose(strain, expected, atol=1e-10)


def test_running_sums_match_the_convolution_on_a_large_float32_field():
    """The O(1)-per-pixel slopes (CPU, CUDA) equal the 287-tap convolution (MPS) on a deep frame
    with a large offset: the float64 sums must not lose the strain under a 100-sample shift."""
    rng = np.random.default_rng(3)
    depth = np.arange(2000, dtype=np.float32)[:, None]
    axial = 100.0 - 0.012 * depth + 0.3 * rng.standard_normal((2000, 16)).cumsum(0) / 40
    field = torch.from_numpy(axial.astype(np.float32))[None, None]
    by_sums, by_convolution = _slopes_by_running_sums(field, 287), _slopes_by_convolution(field, 287)
    assert by_sums.dtype == torch.float32 and by_sums.shape == (1, 1, 2000 - 286, 16)
    torch.testing.assert_close(by_sums, by_convolution, rtol=0, atol=1e-6)


def test_axial_channel_is_used_and_numpy_wrapper_matches():
    rng = np.random.default_rng(2)
    displacement = torch.from_numpy(rng.standard_normal((3, 2, 50, 5)).astype(np.float32))
    from_pair = axial_strain(displacement, window_mm=0.3)
    from_axial = axial_strain(displacement[:, 1:], window_mm=0.3)
    torch.testing.assert_close(from_pair, from_axial)
    from_numpy = axial_strain_np(displacement[:, 1].numpy(), window_mm=0.3)
    assert from_numpy.shape == (3, 50, 5) and from_numpy.dtype == np.float32
    np.testing.assert_allclose(from_numpy, from_axial[:, 0].numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("displacement", "window_mm", "match"),
    [
        (torch.zeros(1, 2, 100, 4), 5.74, "longer than the image height"),
        (torch.zeros(100, 4), 0.3, r"\(B, 2, H, W\)"),
        (torch.zeros(1, 3, 100, 4), 0.3, r"\(B, 2, H, W\)"),
        (torch.zeros(1, 1, 100, 4, dtype=torch.int64), 0.3, "floating-point"),
        (torch.full((1, 1, 100, 4), math.nan), 0.3, "NaN"),
    ],
)
def test_strain_rejects_bad_input(displacement, window_mm, match):
    with pytest.raises(InputError, match=match):
        axial_strain(displacement, window_mm=window_mm)


# ---------------------------------------------------------------- metrics


def test_snre_of_constant_plus_known_noise():
    # Exact: half the samples at c - s, half at c + s -> mean c, std s; outside the mask is ignored.
    values = torch.tensor([-2.1, -1.9] * 50 + [40.0] * 10).reshape(11, 10)
    mask = torch.zeros(11, 10, dtype=torch.bool)
    mask[:10] = True
    assert snr_e(values, mask) == pytest.approx(2.0 / 0.1, rel=1e-5)
    # Statistical: constant -1.5 % plus Gaussian noise of 0.05 %.
    noisy = -1.5 + 0.05 * np.random.default_rng(3).standard_normal((300, 300))
    assert snr_e(noisy) == pytest.approx(30.0, rel=0.02)


def test_cnre_matches_ophir_linear_formula():
    target_mean, target_std, background_mean, background_std = -0.5, 0.1, -2.0, 0.3
    strain = torch.zeros(20, 20, dtype=torch.float64)
    target = torch.zeros(20, 20, dtype=torch.bool)
    target[5:15, 5:15] = True
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(200)
    strain[target] = target_mean + target_std * signs[:100]
    strain[~target] = background_mean + background_std * signs[:300]
    expected = 2 * (background_mean - target_mean) ** 2 / (background_std**2 + target_std**2)
    assert cnr_e(strain, target, ~target) == pytest.approx(expected, rel=1e-9)
    assert cnr_e_db(strain.numpy(), target.numpy(), (~target).numpy()) == pytest.approx(10 * math.log10(expected))


def test_nrmse_is_normalised_by_truth_rms():
    truth = torch.linspace(-2.0, -0.5, 100)
    assert strain_nrmse(truth, truth) == 0.0
    assert strain_nrmse(1.1 * truth, truth) == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(InputError, match="zero everywhere"):
        strain_nrmse(truth, torch.zeros(100))
    with pytest.raises(InputError, match="shape"):
        strain_nrmse(truth, truth[:50])


def test_contrast_nrmse_ignores_the_mean_strain_and_scores_a_uniform_estimate_one():
    # -1 % compression with a +-0.1 % pattern: the mean dominates the RMS of the truth
    pattern = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(50)
    truth = -1.0 + 0.1 * pattern
    uniform = torch.full((100,), -1.0, dtype=torch.float64)
    assert strain_nrmse(uniform, truth) == pytest.approx(0.1 / math.sqrt(1.01), rel=1e-6)
    assert strain_nrmse_contrast(uniform, truth) == pytest.approx(1.0)
    assert strain_nrmse_contrast(truth - 0.3, truth) == pytest.approx(0.0, abs=1e-6)  # off by a constant
    assert strain_nrmse_contrast(-1.0 + 0.15 * pattern, truth) == pytest.approx(0.5, rel=1e-6)  # 1.5 x contrast
    # the mean is taken over the region only: outside values do not shift it
    region = torch.arange(120) < 100
    padded = torch.cat([-1.0 + 0.15 * pattern, torch.full((20,), 50.0, dtype=torch.float64)])
    assert strain_nrmse_contrast(padded, torch.cat([truth, torch.zeros(20)]), region) == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(InputError, match="uniform"):
        strain_nrmse_contrast(truth, torch.full((100,), -1.0))


def test_metric_masks_are_validated():
    with pytest.raises(InputError, match="boolean"):
        snr_e(torch.ones(4, 4), torch.ones(4, 4))
    with pytest.raises(InputError, match="shape"):
        snr_e(torch.ones(4, 4), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="NaN"):
        snr_e(torch.tensor([1.0, math.nan]))


def _smooth_image(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.sin(0.4 * y + 0.3 * x) + torch.cos(0.25 * x - 0.2 * y)


def test_ncc_after_warping_with_true_displacement():
    axial_shift, lateral_shift = -2.3, 1.5
    y, x = torch.meshgrid(torch.arange(48.0), torch.arange(40.0), indexing="ij")
    fixed = _smooth_image(y, x)[None, None]
    moving = _smooth_image(y - axial_shift, x - lateral_shift)[None, None]
    truth = torch.stack([torch.full_like(x, lateral_shift), torch.full_like(y, axial_shift)])[None]
    interior = torch.zeros_like(fixed, dtype=torch.bool)
    interior[..., 4:-4, 4:-4] = True
    aligned = warped_ncc(fixed, moving, truth, interior)
    assert aligned > 0.99
    assert aligned > ncc(fixed, moving, interior) + 0.2
    assert aligned > warped_ncc(fixed, moving, truth.flip(1), interior) + 0.2  # channel order matters
    assert ncc(fixed, fixed) == pytest.approx(1.0)
    assert ncc(fixed, -fixed) == pytest.approx(-1.0)


# ---------------------------------------------------------------- block matching


def _rf_frame(depth: np.ndarray, line: np.ndarray, amplitude: np.ndarray, height: int, width: int) -> torch.Tensor:
    """RF of point scatterers at continuous (depth, line) positions: Gaussian-modulated cosine pulse
    (about 5.5 samples per period, as 7 MHz at 38.5 MHz sampling) times a Gaussian beam across lines."""
    lag = np.arange(height)[:, None] - depth[None, :]
    pulse = np.exp(-(lag**2) / (2 * 3.0**2)) * np.cos(2 * np.pi * lag / 5.5)
    beam = np.exp(-((np.arange(width)[None, :] - line[:, None]) ** 2) / (2 * 0.8**2))
    return torch.from_numpy((pulse * amplitude) @ beam).float()


@pytest.fixture(scope="module")
def scatterers():
    rng = np.random.default_rng(0)
    count, height, width = 3000, 256, 12
    depth = rng.uniform(-15, height + 15, count)
    line = rng.uniform(-3, width + 3, count)
    return depth, line, rng.standard_normal(count), height, width


def _interior(tensor: torch.Tensor, rows: int = 25, cols: int = 1) -> torch.Tensor:
    return tensor[..., rows:-rows, cols:-cols]


@pytest.mark.parametrize("subsample", ["cosine", "parabolic"])
@pytest.mark.parametrize("shift", [0.3, -1.37])
def test_block_matching_recovers_subsample_shift(scatterers, shift, subsample):
    depth, line, amplitude, height, width = scatterers
    pre = _rf_frame(depth, line, amplitude, height, width)
    post = _rf_frame(depth + shift, line, amplitude, height, width)
    params = BlockMatchingParams(axial_kernel=41, axial_search=4, subsample=subsample)
    displacement = block_match(pre, post, params)
    assert displacement.shape == (2, height, width)
    axial_error = _interior(displacement[1] - shift).abs()
    assert float(axial_error.mean()) < 0.05
    assert float(axial_error.quantile(0.9)) < 0.1
    assert float(_interior(displacement[0]).abs().mean()) < 0.15


def test_block_matching_recovers_lateral_shift_in_batches(scatterers):
    depth, line, amplitude, height, width = scatterers
    pre = _rf_frame(depth, line, amplitude, height, width)
    shifted = _rf_frame(depth + 0.6, line + 1.0, amplitude, height, width)
    frames = torch.stack([pre, pre])[:, None]
    displacement = block_match(frames, torch.stack([shifted, pre])[:, None])
    assert displacement.shape == (2, 2, height, width)
    assert float(_interior(displacement[0, 0], cols=2).median()) == pytest.approx(1.0, abs=0.1)
    assert float(_interior(displacement[0, 1], cols=2).median()) == pytest.approx(0.6, abs=0.05)
    # Identical frames: the peak is at zero; only the 3-point fits on one-sided correlations move it.
    assert float(_interior(displacement[1, 1]).abs().mean()) < 0.02
    assert float(_interior(displacement[1, 0]).abs().mean()) < 0.1
    torch.testing.assert_close(displacement[0], block_match(pre, shifted))


def test_guided_search_reaches_beyond_the_search_range(scatterers):
    depth, line, amplitude, height, width = scatterers
    pre = _rf_frame(depth, line, amplitude, height, width)
    post = _rf_frame(depth + 12.4, line, amplitude, height, width)
    params = BlockMatchingParams(axial_kernel=41, axial_search=3, median_size=3)
    guess = torch.zeros(2, height, width)
    guess[1] = 11.8
    guided = block_match(pre, post, params, initial_displacement=guess)
    assert float(_interior(guided[1], rows=30).sub(12.4).abs().median()) < 0.05
    unguided = block_match(pre, post, params)
    assert float(_interior(unguided[1], rows=30).max()) <= 3.5


def test_match_correlation_is_high_for_a_true_match_and_low_without_one(scatterers):
    depth, line, amplitude, height, width = scatterers
    pre = _rf_frame(depth, line, amplitude, height, width)
    shifted = _rf_frame(depth + 2.0, line, amplitude, height, width)
    unrelated = _rf_frame(depth[::-1].copy(), line, amplitude, height, width)  # other speckle
    params = BlockMatchingParams(axial_kernel=41, axial_search=4)
    match = match_blocks(torch.stack([pre, pre])[:, None], torch.stack([shifted, unrelated])[:, None], params)
    assert match.correlation.shape == (2, 1, height, width)
    assert float(_interior(match.correlation[0, 0]).min()) > 0.99  # a pure shift matches exactly
    assert float(_interior(match.correlation[1, 0]).median()) < 0.7
    torch.testing.assert_close(match.displacement[:1], block_match(pre, shifted, params)[None])
    flat = match_blocks(torch.zeros(height, width), pre, params)
    assert float(flat.correlation.abs().max()) == 0.0


def test_uniform_compression_gives_known_strain_and_better_ncc(scatterers):
    depth, line, amplitude, height, width = scatterers
    strain_value = -0.01  # 1 % compression: u_axial(z) = -0.01 z
    pre = _rf_frame(depth, line, amplitude, height, width)
    post = _rf_frame(depth * (1 + strain_value), line, amplitude, height, width)
    params = BlockMatchingParams(axial_kernel=41, axial_search=5)
    strain = baseline_strain(pre, post, params, window_mm=2.0)  # 101 samples
    assert strain.shape == (height, width)
    assert float(_interior(strain, rows=40).mean()) == pytest.approx(100 * strain_value, rel=0.05)
    displacement = block_match(pre, post, params)[None]
    interior = torch.zeros(1, 1, height, width, dtype=torch.bool)
    interior[..., 25:-25, 1:-1] = True
    before = ncc(pre[None, None], post[None, None], interior)
    assert warped_ncc(pre[None, None], post[None, None], displacement, interior) > max(0.95, before + 0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axial_kernel": 40}, "axial_kernel"),
        ({"lateral_kernel": 0}, "lateral_kernel"),
        ({"axial_search": -1}, "axial_search"),
        ({"subsample": "spline"}, "subsample"),
        ({"median_size": 2}, "median_size"),
    ],
)
def test_block_matching_params_are_validated(kwargs, match):
    with pytest.raises(InputError, match=match):
        BlockMatchingParams(**kwargs)


@pytest.mark.parametrize(
    ("pre", "post", "match"),
    [
        (torch.zeros(64, 8), torch.zeros(64, 9), "shape"),
        (torch.zeros(64, 8), torch.full((64, 8), math.nan), "NaN"),
        (torch.zeros(30, 8), torch.zeros(30, 8), "does not fit"),
        (torch.zeros(2, 64, 8), torch.zeros(2, 64, 8), r"\(H, W\) or \(B, 1, H, W\)"),
    ],
)
def test_block_matching_rejects_bad_frames(pre, post, match):
    with pytest.raises(InputError, match=match):
        block_match(pre, post)
