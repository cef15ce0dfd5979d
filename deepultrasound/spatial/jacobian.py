"""Jacobian determinant of a 2D transformation ``x -> x + u(x)``: local area change and folding."""

from __future__ import annotations

import torch

from deepultrasound.errors import InputError
from deepultrasound.spatial.warp import check_displacement


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` at every pixel: the transformation's local area ratio.

    Derivatives are central differences inside and one-sided at the borders
    (``torch.gradient``), exact for a displacement linear in (x, y). MONAI has no Jacobian
    determinant of a displacement field.

    Args:
        displacement: ``(B, 2, H, W)`` in pixels, channel 0 lateral (x), channel 1 axial (y);
            H, W >= 2.

    Returns:
        ``(B, 1, H, W)``: 1 preserves area, > 1 expands, <= 0 folds.
    """
    check_displacement(displacement)
    if min(displacement.shape[-2:]) < 2:
        raise InputError(f"displacement needs H, W >= 2 for derivatives, got {tuple(displacement.shape)}")
    dux_dy, dux_dx = torch.gradient(displacement[:, 0], dim=(-2, -1))
    duy_dy, duy_dx = torch.gradient(displacement[:, 1], dim=(-2, -1))
    return ((1 + dux_dx) * (1 + duy_dy) - dux_dy * duy_dx)[:, None]


def folding_fraction(displacement: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels where :func:`jacobian_determinant` is <= 0 (the map folds), ``(B,)`` in [0, 1]."""
    return (jacobian_determinant(displacement) <= 0).flatten(1).to(displacement.dtype).mean(1)
