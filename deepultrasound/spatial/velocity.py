"""Diffeomorphic displacements from stationary velocity fields (scaling and squaring, MONAI's ``DVF2DDF``)."""

from __future__ import annotations

import warnings

import torch
from monai.networks.blocks import DVF2DDF

from deepultrasound.errors import InputError
from deepultrasound.spatial.warp import check_displacement, to_monai_order

DEFAULT_INTEGRATION_STEPS = 7
"""Squarings: the velocity is divided by 2^7 = 128 before the first, MONAI's default."""


def integrate_velocity(velocity: torch.Tensor, steps: int = DEFAULT_INTEGRATION_STEPS) -> torch.Tensor:
    """Displacement ``exp(v)`` of a stationary velocity field by scaling and squaring.

    ``v / 2^steps`` is composed with itself ``steps`` times (MONAI's ``DVF2DDF``, bilinear, border
    padding as :func:`~deepultrasound.spatial.warp.warp_image`). A smooth velocity gives a
    displacement without folds, and ``-v`` its inverse.

    Args:
        velocity: ``(B, 2, H, W)`` in pixels (per unit time), channel 0 lateral, channel 1 axial.
        steps: number of squarings, >= 1.

    Returns:
        ``(B, 2, H, W)`` displacement in pixels, same channel order.
    """
    check_displacement(velocity, "velocity")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    with warnings.catch_warnings():  # Warp announces its fallback to torch's grid_sample, which is what we use
        warnings.simplefilter("ignore", UserWarning)
        integrate = DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="border")
    return to_monai_order(integrate(to_monai_order(velocity)))
