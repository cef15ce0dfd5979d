"""Resampling displacement fields between grids of one field of view (image pyramids)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepultrasound.errors import InputError
from deepultrasound.spatial.warp import check_displacement


def resize_displacement(displacement: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The same displacement on a ``size = (H', W')`` grid over the same field of view, in the new pixels.

    Pixels are areas (``align_corners=False``, the geometry of average-pooled pyramid levels): an
    ``(H, W)`` grid and an ``(H', W')`` grid cover the same extent, and a length of one old pixel
    along W is ``W' / W`` new pixels, so channel 0 (lateral) is scaled by ``W' / W`` and channel 1
    (axial) by ``H' / H``. Values are bilinear; near the borders a non-constant field is held at
    its edge value when up-sampling.

    Args:
        displacement: ``(B, 2, H, W)`` in pixels, channel 0 lateral, channel 1 axial.
        size: ``(H', W')``, both >= 1.

    Returns:
        ``(B, 2, H', W')`` in pixels of the new grid.
    """
    check_displacement(displacement)
    height, width = size
    if height < 1 or width < 1:
        raise InputError(f"size must be two positive integers (H, W), got {size}")
    scale = displacement.new_tensor([width / displacement.shape[-1], height / displacement.shape[-2]])
    resized = F.interpolate(displacement, size=(height, width), mode="bilinear", align_corners=False)
    return resized * scale.view(1, 2, 1, 1)
