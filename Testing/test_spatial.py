"""Shared spatial operations against known answers: warp convention, composition, velocity integration,
Jacobian determinant, label warping, padding, displacement resampling and B-mode."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from deepultrasound.errors import InputError
from deepultrasound.spatial import (
    bmode_db,
    compose_displacements,
    crop_to_size,
    envelope,
    folding_fraction,
    integrate_velocity,
    jacobian_determinant,
    labels_to_one_hot,
    pad_to_multiple,
    resize_displacement,
    to_monai_order,
    warp_image,
    warp_labels,
    warp_soft_labels,
)


def _grid(height: int, width: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, x)`` pixel coordinates, each ``(H, W)``."""
    return torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")


def _field(lateral: torch.Tensor, axial: torch.Tensor) -> torch.Tensor:
    """``(1, 2, H, W)`` displacement from its two ``(H, W)`` components."""
    return torch.stack([lateral, axial])[None]


def _translation(lateral: float, axial: float, height: int, width: int) -> torch.Tensor:
    y, _ = _grid(height, width)
    return _field(torch.full_like(y, lateral), torch.full_like(y, axial))


def _smooth_image(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.sin(0.4 * y + 0.3 * x) + torch.cos(0.25 * x - 0.2 * y)


def _monai_warp(image: torch.Tensor, monai_ddf: torch.Tensor) -> torch.Tensor:
    from monai.networks.blocks import Warp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's note on its grid_sample fallback
        return Warp(mode="bilinear", padding_mode="border")(image, monai_ddf)


# ---------------------------------------------------------------- warp and convention


@pytest.mark.parametrize(
    ("lateral", "axial", "rows", "cols"),
    [(1, 0, slice(None), slice(0, -1)), (0, 2, slice(0, -2), slice(None)), (1, 2, slice(0, -2), slice(0, -1))],
)
def test_translation_samples_moving_at_p_plus_u_channel_0_lateral(lateral, axial, rows, cols):
    moving = torch.arange(12 * 10, dtype=torch.float32).reshape(1, 1, 12, 10)
    warped = warp_image(moving, _translation(lateral, axial, 12, 10))
    shifted = moving[..., axial:, lateral:]  # moving(y + axial, x + lateral)
    torch.testing.assert_close(warped[..., rows, cols], shifted)


def test_monai_warp_agrees_given_its_channel_order_and_not_without():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 50, 20, generator=generator)
    displacement = 4 * torch.randn(2, 2, 50, 20, generator=generator)  # many samples fall outside: border padding
    ours = warp_image(image, displacement)
    torch.testing.assert_close(ours, _monai_warp(image, to_monai_order(displacement)), rtol=0, atol=1e-4)
    assert (ours - _monai_warp(image, displacement)).abs().max() > 0.5
    assert warp_image(image, displacement.double()).dtype == torch.float32  # a float64 field warps float32 frames


@pytest.mark.parametrize(
    ("moving_shape", "displacement_shape", "message"),
    [
        ((1, 10, 12), (1, 2, 10, 12), "moving image must be"),
        ((1, 1, 10, 12), (1, 3, 10, 12), r"displacement must be \(B, 2, H, W\)"),
        ((2, 1, 10, 12), (1, 2, 10, 12), r"= \(2, 2, 10, 12\)"),
    ],
)
def test_warp_refuses_ill_shapes(moving_shape, displacement_shape, message):
    with pytest.raises(InputError, match=message):
        warp_image(torch.zeros(moving_shape), torch.zeros(displacement_shape))


def test_composition_of_two_translations_is_their_sum():
    first, second = _translation(1.5, -2.0, 20, 16), _translation(-0.25, 3.5, 20, 16)
    torch.testing.assert_close(compose_displacements(first, second), _translation(1.25, 1.5, 20, 16))
    with pytest.raises(InputError, match="differ in shape"):
        compose_displacements(first, second[..., :8])


def _rotation_velocity(angle: float, height: int, width: int) -> torch.Tensor:
    """Velocity ``angle * (-(y - cy), x - cx)``: its exponential is the rotation by ``angle`` about the centre."""
    y, x = _grid(height, width)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    return angle * _field(-(y - cy), x - cx)


def test_velocity_integration_gives_the_rotation_and_a_constant_velocity_its_translation():
    height = width = 41
    angle = 0.2
    displacement = integrate_velocity(_rotation_velocity(angle, height, width))
    y, x = _grid(height, width)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    rotated_x = cx + math.cos(angle) * (x - cx) - math.sin(angle) * (y - cy)
    rotated_y = cy + math.sin(angle) * (x - cx) + math.cos(angle) * (y - cy)
    truth = _field(rotated_x - x, rotated_y - y)
    inside = (x - cx) ** 2 + (y - cy) ** 2 < 15**2  # no path leaves the image
    assert (displacement - truth)[..., inside].abs().max() < 0.02
    translation = _translation(2.5, -1.0, 12, 9)
    torch.testing.assert_close(integrate_velocity(translation), translation)
    with pytest.raises(InputError, match="steps must be"):
        integrate_velocity(translation, steps=0)


def test_warp_by_exp_v_then_exp_minus_v_returns_the_image():
    height, width = 48, 40
    y, x = _grid(height, width)
    image = _smooth_image(y / 2, x / 2)[None, None]  # smooth enough for bilinear sampling to be accurate to 1 %
    velocity = _field(1.5 * torch.sin(y / 9) * torch.cos(x / 11), -2.0 * torch.cos(y / 13 + x / 7))
    forward, backward = integrate_velocity(velocity), integrate_velocity(-velocity)
    round_trip = warp_image(warp_image(image, forward), backward)
    interior = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert (round_trip - image)[interior].abs().max() < 0.03
    assert (warp_image(image, forward) - image)[interior].abs().max() > 0.3  # it did move
    assert compose_displacements(backward, forward)[interior].abs().max() < 0.02  # pixels
    assert folding_fraction(forward).item() == 0.0


# ---------------------------------------------------------------- Jacobian


@pytest.mark.parametrize(
    "matrix",
    [((1.0, 0.0), (0.0, 1.0)), ((1.2, 0.3), (-0.1, 0.9)), ((0.5, 0.0), (0.0, 2.0)), ((-1.0, 0.0), (0.0, 1.0))],
)
def test_affine_map_has_jacobian_det_a_everywhere(matrix):
    a = torch.tensor(matrix, dtype=torch.float64)
    y, x = _grid(9, 7)
    mapped_x, mapped_y = a[0, 0] * x + a[0, 1] * y + 3.0, a[1, 0] * x + a[1, 1] * y - 2.0  # x -> A x + t
    determinant = jacobian_determinant(_field(mapped_x - x, mapped_y - y))
    assert determinant.shape == (1, 1, 9, 7)
    torch.testing.assert_close(determinant, torch.full_like(determinant, float(torch.linalg.det(a))))
    assert folding_fraction(_field(mapped_x - x, mapped_y - y)).item() == float(torch.linalg.det(a) <= 0)


def test_folding_field_has_non_positive_determinant_at_the_fold():
    """``u_x = 8 sin(2 pi x / 32)``: ``d(x + u_x)/dx = 1 + (pi / 2) cos(2 pi x / 32)`` is negative for x = 12..20."""
    y, x = _grid(6, 32)
    displacement = _field(8 * torch.sin(2 * math.pi * x / 32), torch.zeros_like(y))
    determinant = jacobian_determinant(displacement)[0, 0]
    folded = 1 + (math.pi / 2) * np.cos(2 * np.pi * np.arange(32) / 32) <= 0
    np.testing.assert_array_equal((determinant <= 0).numpy(), np.broadcast_to(folded, (6, 32)))
    assert folding_fraction(displacement).item() == pytest.approx(folded.mean()) == pytest.approx(9 / 32)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((1, 3, 8, 8), torch.float32, r"\(B, 2, H, W\)"),
        ((1, 2, 8, 8), torch.int64, "floating point"),
        ((1, 2, 1, 8), torch.float32, "H, W >= 2"),
    ],
)
def test_jacobian_refuses_ill_fields(shape, dtype, message):
    with pytest.raises(InputError, match=message):
        jacobian_determinant(torch.zeros(shape, dtype=dtype))


# ---------------------------------------------------------------- labels


def test_half_pixel_shift_between_labels_gives_one_of_them_never_the_label_between():
    labels = torch.zeros(1, 1, 4, 6, dtype=torch.int64)
    labels[..., :3] = 1
    labels[..., 3:] = 3  # bilinear interpolation of the integers would give 2 at the boundary
    warped = warp_labels(labels, _translation(0.5, 0.0, 4, 6).float(), num_classes=4)
    assert warped.dtype == torch.int64 and set(warped.unique().tolist()) == {1, 3}
    torch.testing.assert_close(warp_labels(labels, _translation(1.0, 0.0, 4, 6).float(), 4)[..., :5], labels[..., 1:])
    soft = warp_soft_labels(labels_to_one_hot(labels, 4), _translation(0.5, 0.3, 4, 6).float())
    torch.testing.assert_close(soft.sum(1), torch.ones(1, 4, 6))
    torch.testing.assert_close(soft[0, :, 0, 2], torch.tensor([0.0, 0.5, 0.0, 0.5]))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.zeros(1, 1, 4, 4), "must hold integers"),
        (torch.full((1, 1, 4, 4), 4), r"\[0, 4\).*4\.\.4"),
        (torch.zeros(1, 2, 4, 4, dtype=torch.int64), r"\(B, 1, H, W\)"),
    ],
)
def test_label_warping_refuses_bad_labels(labels, message):
    with pytest.raises(InputError, match=message):
        warp_labels(labels, torch.zeros(1, 2, 4, 4), num_classes=4)


# ---------------------------------------------------------------- padding and resampling


@pytest.mark.parametrize(("multiple", "padded_size"), [(16, (48, 32)), ((8, 4), (40, 20)), (1, (37, 19))])
def test_pad_to_multiple_keeps_pixel_origin_and_crops_back(multiple, padded_size):
    x = torch.randn(2, 3, 37, 19)
    padded, size = pad_to_multiple(x, multiple)
    assert padded.shape[-2:] == padded_size and size == (37, 19)
    torch.testing.assert_close(crop_to_size(padded, size), x)
    assert padded[..., 37:, :].abs().sum() == 0 and padded[..., 19:].abs().sum() == 0
    aligned = torch.zeros(1, 16, 32)
    assert pad_to_multiple(aligned, 16)[0] is aligned
    with pytest.raises(InputError, match="multiple must be >= 1"):
        pad_to_multiple(x, (0, 4))


def test_resized_displacement_is_the_same_motion_in_new_pixels():
    torch.testing.assert_close(
        resize_displacement(_translation(2.0, -1.0, 16, 8), (32, 24)), _translation(6.0, -2.0, 32, 24)
    )
    # a linear field keeps its physical slope: u_y = 0.1 y_mm, with pixel centres at (i + 0.5) old pixels
    y, x = _grid(16, 8)
    coarse = _field(torch.zeros_like(x), 0.1 * (y + 0.5))
    fine = resize_displacement(coarse, (32, 16))
    y_fine, _ = _grid(32, 16)
    expected_axial = 2 * 0.1 * (y_fine + 0.5) / 2  # in fine pixels: twice the coarse-pixel value
    torch.testing.assert_close(fine[0, 1, 1:-1], expected_axial[1:-1])
    with pytest.raises(InputError, match="size must be"):
        resize_displacement(coarse, (0, 4))


# ---------------------------------------------------------------- B-mode


def test_envelope_equals_the_analytic_signal_magnitude():
    from scipy.signal import hilbert

    rng = np.random.default_rng(4)
    for height in (64, 65):  # even and odd: the Nyquist bin is kept once, or absent
        rf = rng.standard_normal((2, height, 3)).astype(np.float32)
        np.testing.assert_allclose(envelope(rf), np.abs(hilbert(rf.astype(np.float64), axis=-2)), atol=1e-5)
    depth = np.arange(400)
    modulation = np.exp(-(((depth - 200) / 40.0) ** 2))
    pulse = (modulation * np.cos(0.9 * depth))[:, None]
    np.testing.assert_allclose(envelope(pulse)[100:300, 0], modulation[100:300], atol=1e-3)


@pytest.mark.parametrize("dynamic_range_db", [40.0, 60.0])
def test_bmode_is_db_below_each_frame_peak_clipped_at_the_dynamic_range(dynamic_range_db):
    rf = np.zeros((2, 64, 3), dtype=np.float32)
    rf[0, 32, 1] = 1.0
    rf[0, 32, 0] = 0.1  # 20 dB below the peak
    rf[0, 32, 2] = 1e-4  # 80 dB below: clipped
    image = bmode_db(rf, dynamic_range_db)
    assert image.dtype == np.float32 and image.shape == rf.shape
    assert image[0, 32, 1] == 0.0 and image[0, 32, 0] == pytest.approx(-20.0, abs=1e-3)
    assert image[0, 32, 2] == -dynamic_range_db and (image[1] == -dynamic_range_db).all()  # a frame without echo
    with pytest.raises(InputError, match="dynamic_range_db"):
        bmode_db(rf, 0.0)
    with pytest.raises(InputError, match=r"\(\.\.\., H, W\)"):
        bmode_db(np.zeros(8))
