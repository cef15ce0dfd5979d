"""The lateral degradation model of ultrasound super-resolution and the classical upsamplers that invert it.

An ultrasound image is formed line by line, so a low-resolution acquisition fires fewer beam lines:
it loses lines across x and keeps every sample along depth. The degradation keeps every ``F``-th
line of the fine (high-resolution) grid, optionally after a lateral blur that models the wider
beam profile of a sparser acquisition.

Sub-sampling phase (the convention of every function here, of the networks and of the bundles'
``inference.phase = 0``): line ``k`` of the low-resolution image sits at line ``k F`` of the
high-resolution one. A fine grid of ``W`` lines therefore keeps ``ceil(W / F)`` lines, and an
upsampler that receives ``n`` lines returns ``n F`` lines, the last ``F - 1`` of them right of
the last acquired line (extrapolated from the edge line repeated). In physical units: the low-resolution x spacing
is ``F`` times the fine one and the origin (the position of line 0) is the same.

Arrays are ``(..., H, W)`` torch tensors: H axial samples (depth), W lines (lateral, x). The
same operations apply to beam-space data (RF, IQ magnitude, envelope, B-mode before scan
conversion) and to scan-converted linear-probe images, whose columns are the lines; for images
with geometry use :func:`degrade_image` and :func:`upsample_image`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d
from monai.networks.layers.simplelayers import separable_filtering

from deepultrasound.errors import InputError
from deepultrasound.io.image import Image

PHASE = 0
"""Which of every ``F`` fine lines the low-resolution image keeps: line ``k`` sits at fine line ``k F + PHASE``."""

Method = Literal["linear", "cubic"]
METHODS: tuple[str, ...] = ("linear", "cubic")

_KEYS_A = -0.5
"""Keys' cubic convolution parameter (Keys 1981; MATLAB's ``imresize`` bicubic): reproduces quadratics exactly."""


def check_factor(factor: int) -> None:
    """Raise :class:`InputError` unless ``factor`` is an integer of at least 2."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
        raise InputError(f"the lateral factor must be an integer of at least 2, got {factor!r}")


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim < 2 or not image.is_floating_point():
        described = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"expected a floating-point (..., H, W) tensor, lines along W; got {described}")


def lateral_blur(image: torch.Tensor, sigma_lines: float) -> torch.Tensor:
    """Gaussian beam-profile blur across lines: ``(..., H, W)`` -> same shape, mirrored at the sides.

    Args:
        image: ``(..., H, W)`` floating point, lines along W.
        sigma_lines: standard deviation of the Gaussian in fine lines; 0 returns the image unchanged.
    """
    _check_image(image)
    if not np.isfinite(sigma_lines) or sigma_lines < 0:
        raise InputError(f"sigma_lines must be a finite non-negative number of lines, got {sigma_lines!r}")
    if sigma_lines == 0:
        return image
    kernel = gaussian_1d(torch.tensor(float(sigma_lines)), truncated=3.0, normalize=True).to(image)
    if (kernel.numel() - 1) // 2 >= image.shape[-1]:
        raise InputError(
            f"a lateral blur of sigma {sigma_lines} lines needs more than {image.shape[-1]} lines; use a wider image"
        )
    flat = image.reshape(-1, 1, *image.shape[-2:])
    identity = torch.ones(1, dtype=image.dtype, device=image.device)
    return separable_filtering(flat, [identity, kernel], mode="reflect").reshape(image.shape)


def decimate_lines(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Keep every ``factor``-th line: ``(..., H, W)`` -> ``(..., H, ceil(W / factor))``, line k = fine line k F."""
    _check_image(image)
    check_factor(factor)
    return image[..., PHASE::factor]


def degrade(image: torch.Tensor, factor: int, blur_sigma_lines: float = 0.0) -> torch.Tensor:
    """The degradation model: lateral beam-profile blur, then line decimation (see the module docstring).

    Args:
        image: ``(..., H, W)`` fine-grid image, lines along W.
        factor: lateral factor F >= 2.
        blur_sigma_lines: Gaussian blur across lines before decimation, in fine lines (0: none).

    Returns:
        ``(..., H, ceil(W / F))`` in the image's dtype.
    """
    return decimate_lines(lateral_blur(image, blur_sigma_lines), factor)


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel at offsets ``t`` (in coarse lines)."""
    t = t.abs()
    a = _KEYS_A
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def interpolation_kernel(factor: int, method: Method) -> torch.Tensor:
    """Weights ``(2 r F - 1,)`` float64 of fine-grid offsets ``-(r F - 1) .. r F - 1`` from a coarse line
    (``r`` = 1 for linear, 2 for cubic): the transposed-convolution kernel of :func:`upsample_lines`."""
    check_factor(factor)
    if method not in METHODS:
        raise InputError(f"unknown interpolation method {method!r}; use one of {', '.join(METHODS)}")
    reach = 1 if method == "linear" else 2
    offsets = torch.arange(-(reach * factor - 1), reach * factor, dtype=torch.float64) / factor
    return (1 - offsets.abs()).clamp(min=0) if method == "linear" else _cubic_weights(offsets)


def upsample_lines(low: torch.Tensor, factor: int, method: Method = "cubic") -> torch.Tensor:
    """Interpolate across lines to the fine grid: ``(..., H, n)`` -> ``(..., H, n F)``, with the phase of
    :func:`decimate_lines` (coarse line k lands on fine line k F unchanged).

    Linear or cubic (Keys, a = -0.5) interpolation along x only; depth is untouched. Lines beyond
    the image are the edge line repeated (so, with linear interpolation, the ``F - 1`` fine lines
    right of the last coarse line repeat it). Computed as one transposed convolution with a fixed kernel
    (:func:`interpolation_kernel`), the same operation the generators use as their skip path.
    """
    _check_image(low)
    kernel = interpolation_kernel(factor, method).to(low)
    reach = (kernel.numel() + 1) // (2 * factor)
    flat = low.reshape(-1, 1, *low.shape[-2:])
    padded = F.pad(flat, (reach, reach, 0, 0), mode="replicate")
    fine = F.conv_transpose2d(padded, kernel.reshape(1, 1, 1, -1), stride=(1, factor))
    start = kernel.numel()  # fine position 0 (coarse line 0) after the `reach` padded lines
    width = low.shape[-1] * factor
    return fine[..., start : start + width].reshape(*low.shape[:-1], width)


def _with_x_spacing_scaled(image: Image, array: np.ndarray, scale: float) -> Image:
    spacing = (image.spacing[0] * scale, *image.spacing[1:])
    return dataclasses.replace(image, array=array, spacing=spacing)


def _lines_last(image: Image, operation: str) -> torch.Tensor:
    """The image's array as a tensor, float64 kept and any other dtype as float32."""
    if image.multichannel:
        raise InputError(f"{operation} needs a single-channel image; convert colour images to grey first")
    dtype = np.float64 if image.array.dtype == np.float64 else np.float32
    return torch.from_numpy(np.ascontiguousarray(image.array, dtype=dtype))


def degrade_image(image: Image, factor: int, blur_sigma_lines: float = 0.0) -> Image:
    """:func:`degrade` on an image with geometry: x spacing times F, same origin and direction.

    ``image`` is a 2D image ``(rows, lines)`` or a sequence ``(frames, rows, lines)``, single
    channel; float64 stays float64, any other dtype becomes float32.
    """
    low = degrade(_lines_last(image, "degrade_image"), factor, blur_sigma_lines)
    return _with_x_spacing_scaled(image, low.numpy(), factor)


def upsample_image(image: Image, factor: int, method: Method = "cubic") -> Image:
    """:func:`upsample_lines` on an image with geometry: x spacing divided by F, same origin and direction."""
    fine = upsample_lines(_lines_last(image, "upsample_image"), factor, method)
    return _with_x_spacing_scaled(image, fine.numpy(), 1 / factor)
