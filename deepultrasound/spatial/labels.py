"""Warping label maps: as soft one-hot probabilities, never by interpolating integer labels.

Bilinear interpolation of integer labels invents classes between neighbours (between labels
1 and 3 it gives 2); warping each class's one-hot channel gives a probability per class, and
its argmax is the nearest label.
"""

from __future__ import annotations

import torch
from monai.networks.utils import one_hot

from deepultrasound.errors import InputError
from deepultrasound.spatial.warp import warp_image


def labels_to_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, H, W)`` integer labels in ``[0, num_classes)`` -> ``(B, num_classes, H, W)`` float32 one-hot."""
    if labels.ndim != 4 or labels.shape[1] != 1:
        raise InputError(f"labels must be (B, 1, H, W), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must hold integers, got dtype {labels.dtype}")
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got values {int(labels.min())}..{int(labels.max())}"
        )
    return one_hot(labels.long(), num_classes, dtype=torch.float32, dim=1)


def warp_soft_labels(probabilities: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Warp per-class probabilities (e.g. one-hot) ``(B, K, H, W)`` by ``(B, 2, H, W)`` pixels.

    Bilinear weights are convex, so every pixel's warped probabilities still sum to one and stay in
    [0, 1]; differentiable in the displacement (a Dice loss on warped labels trains a registration).
    """
    return warp_image(probabilities, displacement)


def warp_labels(labels: torch.Tensor, displacement: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Nearest label after warping: argmax of the warped soft one-hot.

    Args:
        labels: ``(B, 1, H, W)`` integer labels in ``[0, num_classes)``.
        displacement: ``(B, 2, H, W)`` in pixels, channel 0 lateral, channel 1 axial; the label at
            ``p + u(p)`` is brought to ``p``.
        num_classes: number of classes, background included.

    Returns:
        ``(B, 1, H, W)`` int64 labels.
    """
    warped = warp_soft_labels(labels_to_one_hot(labels, num_classes), displacement)
    return warped.argmax(1, keepdim=True)
