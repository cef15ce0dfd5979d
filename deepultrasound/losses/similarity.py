"""Image similarity losses for registration on 2D images (MONAI's, set up for 2D).

- :class:`LocalNCCLoss`: MONAI's ``LocalNormalizedCrossCorrelationLoss``, which defaults to 3D,
  with ``spatial_dims=2``. It is minus the *squared* local correlation, so -1 for identical images
  and also for inverted ones: fit for B-mode, not RF (RF matched half a carrier period off would
  score as well as the true match; DeepUSE keeps its signed tile NCC,
  :func:`deepultrasound.elastography.losses.local_ncc`).
- ``GlobalMutualInformationLoss``: MONAI's, re-exported. Its Parzen bins span [0, 1]: scale the
  images to [0, 1] first (e.g. B-mode dB over the dynamic range).
"""

from __future__ import annotations

from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss

__all__ = ["GlobalMutualInformationLoss", "LocalNCCLoss"]


class LocalNCCLoss(LocalNormalizedCrossCorrelationLoss):
    """Minus the mean squared local normalised cross-correlation of two ``(B, C, H, W)`` images, in [-1, 0].

    Args:
        kernel_size: side of the square window in pixels, odd.
        kernel_type: ``"rectangular"``, ``"triangular"`` or ``"gaussian"`` window.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pixel, ``(B, C, H, W)``).
    """

    def __init__(self, kernel_size: int = 9, kernel_type: str = "rectangular", reduction: str = "mean") -> None:
        super().__init__(spatial_dims=2, kernel_size=kernel_size, kernel_type=kernel_type, reduction=reduction)
