"""Zero-padding images to a size multiple (for networks that down-sample) and cropping back.

MONAI's ``DivisiblePad`` works on one unbatched channel-first image, returns a ``MetaTensor`` that
records the padding for inversion, and pads both ends by default; a network input is a batch and
pixel (0, 0) must stay put, which ``F.pad`` at the far ends gives in one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepultrasound.errors import InputError


def pad_to_multiple(x: torch.Tensor, multiple: int | tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two axes at their end (bottom rows, right columns) to multiples of ``multiple``.

    Zeros (no echo) add no speckle that could be read as motion, and padding only at the end
    keeps pixel (0, 0) in place, so an output cropped with :func:`crop_to_size` is aligned with
    the input.

    Args:
        x: ``(..., H, W)`` tensor, any H, W >= 1.
        multiple: the size multiple of both axes, or ``(rows, columns)``.

    Returns:
        ``(padded, (H, W))``: ``padded`` is ``(..., H', W')`` with H' and W' the next multiples
        (``x`` itself when already multiples); ``(H, W)`` is the size to crop back to.
    """
    row_multiple, col_multiple = (multiple, multiple) if isinstance(multiple, int) else multiple
    if min(row_multiple, col_multiple) < 1:
        raise InputError(f"pad_to_multiple: multiple must be >= 1, got {multiple}")
    if x.ndim < 2:
        raise InputError(f"pad_to_multiple: expected a tensor (..., H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[-2], x.shape[-1]
    pad_rows, pad_cols = -height % row_multiple, -width % col_multiple
    if pad_rows == 0 and pad_cols == 0:
        return x, (height, width)
    return F.pad(x, (0, pad_cols, 0, pad_rows)), (height, width)


def crop_to_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: ``(..., H', W')`` -> ``(..., H, W)`` for ``size = (H, W)``."""
    return x[..., : size[0], : size[1]]
