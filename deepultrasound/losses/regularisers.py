"""Regularisers of a ``(B, 2, H, W)`` displacement in pixels, channel 0 lateral (x), channel 1 axial (y).

MONAI's ``BendingEnergyLoss`` (squared second derivatives, mixed ones included) and
``DiffusionLoss`` (squared first derivatives: first-order smoothness), given the field in MONAI's
channel order: with ``normalize=True`` they scale channel i by the image size along spatial axis
i, and MONAI's channel 0 runs along H where the project's runs along W. Both are zero for a
translation; bending energy is also zero for any affine displacement.
"""

from __future__ import annotations

import torch
from monai.losses import BendingEnergyLoss, DiffusionLoss

from deepultrasound.spatial import check_displacement, to_monai_order


class BendingEnergy(BendingEnergyLoss):
    """Mean squared second derivatives ``u_xx^2 + 2 u_xy^2 + u_yy^2`` of a displacement (pixels^-2 units).

    Args:
        normalize: scale each derivative by the image size (roughly resolution-independent).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per interior pixel, ``(B, 2, H-2, W-2)``).
    """

    def forward(self, displacement: torch.Tensor) -> torch.Tensor:
        """``displacement``: ``(B, 2, H, W)`` in pixels, H, W >= 3."""
        check_displacement(displacement)
        return super().forward(to_monai_order(displacement))


class FirstOrderSmoothness(DiffusionLoss):
    """Mean squared first derivatives ``|grad u_x|^2 + |grad u_y|^2`` of a displacement (central differences).

    Args:
        normalize: scale each derivative by the image size (roughly resolution-independent).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per interior pixel, ``(B, 2, H-2, W-2)``).
    """

    def forward(self, displacement: torch.Tensor) -> torch.Tensor:
        """``displacement``: ``(B, 2, H, W)`` in pixels, H, W >= 3."""
        check_displacement(displacement)
        return super().forward(to_monai_order(displacement))
