"""What the registration network sees: frames resampled to its grid and scaled to [0, 1], label maps alike.

Training and inference call the same functions, so a bundle's ``normalisation`` entry
(:data:`NORMALISATION`) describes both. Grids cover the same field of view at any size (pixels are
areas, ``align_corners=False``, as :func:`~deepultrasound.spatial.resize_displacement`); images are
resampled bilinearly with anti-aliasing when reduced, label maps as soft one-hot (area-weighted class
fractions) and then their argmax, so no label is invented between two others.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deepultrasound.errors import InputError
from deepultrasound.spatial import labels_to_one_hot

NORMALISATION = {
    "kind": "minmax_per_frame",
    "description": "each frame resampled to input_size (bilinear, anti-aliased, pixel areas over the same field "
    "of view), then scaled by its own minimum and maximum to [0, 1] (a constant frame gives zeros)",
}
"""The ``normalisation`` manifest entry of registration bundles."""

Size = tuple[int, int]


def _as_float_frame(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(H, W)`` array or tensor of any real dtype -> float32 tensor, refusing other shapes and non-finite values."""
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if tensor.ndim != 2:
        raise InputError(f"a frame must be a 2D (H, W) image, got shape {tuple(tensor.shape)}")
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise InputError(f"a frame must hold real numbers, got dtype {tensor.dtype}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise InputError("a frame holds NaN or infinite values")
    return tensor


def _check_size(size: Size) -> Size:
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"size must be two positive integers (H, W), got {size}")
    return int(size[0]), int(size[1])


def resize_frame(image: np.ndarray | torch.Tensor, size: Size) -> torch.Tensor:
    """``(H, W)`` frame -> ``(H', W')`` float32 on the same field of view (bilinear, anti-aliased when reduced)."""
    frame = _as_float_frame(image)
    height, width = _check_size(size)
    if tuple(frame.shape) == (height, width):
        return frame
    return F.interpolate(frame[None, None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)[
        0, 0
    ]


def normalise_frame(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(H, W)`` frame -> ``(H, W)`` float32 scaled by its minimum and maximum to [0, 1] (zeros if constant)."""
    frame = _as_float_frame(image)
    low, high = frame.min(), frame.max()
    return (frame - low) / (high - low) if high > low else torch.zeros_like(frame)


def prepare_frame(image: np.ndarray | torch.Tensor, size: Size) -> torch.Tensor:
    """A frame as the network takes it: :func:`resize_frame` then :func:`normalise_frame`, ``(1, H', W')``."""
    return normalise_frame(resize_frame(image, size))[None]


def resize_labels(labels: np.ndarray | torch.Tensor, size: Size, num_classes: int) -> torch.Tensor:
    """``(H, W)`` integer label map -> ``(H', W')`` int64: the class covering most of each new pixel.

    The one-hot channels are resampled as the images are (area fractions when reduced, bilinear when
    enlarged) and the argmax taken.
    """
    tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.ndim != 2:
        raise InputError(f"a label map must be 2D (H, W), got shape {tuple(tensor.shape)}")
    height, width = _check_size(size)
    one_hot = labels_to_one_hot(tensor.long()[None, None], num_classes)
    if tuple(tensor.shape) != (height, width):
        one_hot = F.interpolate(one_hot, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return one_hot[0].argmax(0)
