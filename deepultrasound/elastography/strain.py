"""Least-squares axial strain from an axial displacement field.

The strain at a pixel is the slope of a straight line fitted, in the least-squares sense, to the
axial displacement along a window of ``n`` axial samples centred on that pixel (Kallel & Ophir
1997). For an odd window with centre ``z_c`` the slope is a fixed linear combination of the
samples, so the whole image is one 1D convolution along the axial axis with the kernel

    k(z) = (z - z_c) / sum_z (z - z_c)^2.

It is computed from running sums in float64 (``sum u`` and ``sum z u`` over the window, two
cumulative sums), so its cost does not grow with the window: 287 samples cost what 3 do. Devices
without float64 (Apple MPS) run the convolution instead; both give the same slopes.

Units and sign: displacement in pixels (axial samples) over a distance in samples gives a
dimensionless strain, reported in % (``100 * du_axial / dz``). The axial sample spacing only
converts the window length from mm to samples. Axial compression (tissue shortened along the
beam) gives negative strain, extension positive.

Borders: the window shrinks symmetrically near the top and bottom of the image, so a row that is
``m < n // 2`` samples from the edge is fitted on the ``2 m + 1`` samples centred on it. A centred
window keeps the estimate at the row itself: it is exact for displacements up to quadratic in
depth (linear strain) at every row, at the price of more noise near the edges. The first and last
rows use their two nearest samples (a one-sided difference, located half a sample inside the
image). The output has the size of the input.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from deepultrasound.errors import InputError

DEFAULT_WINDOW_MM = 5.74
"""Axial fitting window of the DeepUSE paper: 287 samples at 0.02 mm."""
DEFAULT_AXIAL_SPACING_MM = 0.02
"""Axial sample spacing of the DeepUSE data: 1540 m/s / (2 x 38.5 MHz)."""


def window_samples(window_mm: float, axial_spacing_mm: float = DEFAULT_AXIAL_SPACING_MM) -> int:
    """Length of the fitting window in axial samples.

    ``window_mm / axial_spacing_mm`` is rounded to the nearest integer and, when even, raised to
    the next odd number so that the window has a centre sample (5.74 mm at 0.02 mm -> 287;
    1.0 mm -> 50 -> 51).

    Raises:
        InputError: non-positive spacing, or a window shorter than 3 samples.
    """
    if not np.isfinite(axial_spacing_mm) or axial_spacing_mm <= 0:
        raise InputError(f"axial_spacing_mm must be a positive number of mm, got {axial_spacing_mm}")
    if not np.isfinite(window_mm) or window_mm <= 0:
        raise InputError(f"window_mm must be a positive number of mm, got {window_mm}")
    n = int(round(window_mm / axial_spacing_mm))
    n += 1 - n % 2
    if n < 3:
        raise InputError(
            f"strain window of {window_mm} mm is {n} sample(s) at {axial_spacing_mm} mm spacing; "
            "a line fit needs at least 3 samples: use a longer window"
        )
    return n


def _slope_weights(length: int, centre: float) -> np.ndarray:
    """LSQ slope weights ``(z - centre) / sum (z - centre)^2`` over ``z = 0 .. length - 1``."""
    z = np.arange(length, dtype=np.float64) - centre
    return z / np.sum(z * z)


def _slopes_by_running_sums(axial: torch.Tensor, n: int) -> torch.Tensor:
    """LSQ slopes over every full window of ``n`` (odd) rows: ``(B, 1, H, W)`` -> ``(B, 1, H - n + 1, W)``.

    For the window centred on row c, ``sum_z (z - c) u(z) = sum_z z u(z) - c sum_z u(z)``; both
    sums are differences of cumulative sums, taken in float64 so that they cancel exactly enough
    (relative error ~1e-16 of sums ~1e9).
    """
    values = axial.double()
    height = values.shape[2]
    rows = torch.arange(height, dtype=torch.float64, device=values.device)[:, None]

    def window_sums(cumulative: torch.Tensor) -> torch.Tensor:
        """Sums over rows ``i .. i + n - 1`` from inclusive cumulative sums over rows."""
        sums = cumulative[:, :, n - 1 :].clone()
        sums[:, :, 1:] -= cumulative[:, :, : height - n]
        return sums

    half = n // 2
    slopes = window_sums((values * rows).cumsum(2))
    slopes.addcmul_(rows[half : height - half], window_sums(values.cumsum(2)), value=-1.0)
    squares = half * (half + 1) * (2 * half + 1) / 3  # sum of (z - c)^2 over the window
    return (slopes / squares).to(axial.dtype)


def _slopes_by_convolution(axial: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`_slopes_by_running_sums` as a convolution with the kernel of the module docstring."""
    kernel = torch.from_numpy(_slope_weights(n, float(n // 2))).to(axial)
    # Cross-correlation with k(z) = z - z_c over the window = the LSQ slope at the centre row.
    return F.conv2d(axial, kernel.view(1, 1, n, 1))


@functools.lru_cache(maxsize=16)
def _top_border_weights(half: int) -> np.ndarray:
    """Weights of the rows ``0 .. half - 1`` near the top: (half, L) over the first L input rows.

    Row ``i >= 1`` is fitted on rows ``0 .. 2 i`` (centred window of half-width ``i``); row 0 on
    rows 0 and 1. Cached (read-only): a stream computes the strain of one window size per frame.
    """
    length = max(2 * half - 1, 2)
    weights = np.zeros((half, length))
    weights[0, :2] = _slope_weights(2, 0.5)
    for i in range(1, half):
        weights[i, : 2 * i + 1] = _slope_weights(2 * i + 1, float(i))
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=16)
def _top_border_tensor(half: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`_top_border_weights` as a tensor, cached per device (no host copy per frame on a GPU);
    made outside inference mode, so that training may differentiate through it later."""
    with torch.inference_mode(False):
        return torch.tensor(_top_border_weights(half), dtype=dtype, device=device)


def axial_strain(
    displacement: torch.Tensor,
    window_mm: float = DEFAULT_WINDOW_MM,
    axial_spacing_mm: float = DEFAULT_AXIAL_SPACING_MM,
) -> torch.Tensor:
    """Least-squares axial strain in % of a displacement field.

    Args:
        displacement: ``(B, 2, H, W)`` displacement in pixels (channel 0 lateral, channel 1
            axial; only the axial channel is used) or ``(B, 1, H, W)`` axial displacement in
            pixels. H is the axial (depth) axis. Floating point, on any device.
        window_mm: axial fitting window in mm (default 5.74 mm = 287 samples at 0.02 mm);
            converted with :func:`window_samples`.
        axial_spacing_mm: axial sample spacing in mm (default 0.02).

    Returns:
        ``(B, 1, H, W)`` axial strain in %, same dtype and device as the input; negative in
        compression. See the module docstring for the border rows.

    Raises:
        InputError: wrong rank or channel count, non-floating dtype, NaN/inf values, or a window
            longer than the image height.
    """
    if not isinstance(displacement, torch.Tensor):
        raise InputError(f"displacement must be a torch.Tensor, got {type(displacement).__name__}")
    if displacement.ndim != 4 or displacement.shape[1] not in (1, 2):
        raise InputError(
            f"displacement must be (B, 2, H, W) or (B, 1, H, W) in pixels, got shape {tuple(displacement.shape)}"
        )
    if not displacement.is_floating_point():
        raise InputError(f"displacement must be a floating-point tensor, got {displacement.dtype}")
    n = window_samples(window_mm, axial_spacing_mm)
    height = displacement.shape[2]
    if n > height:
        raise InputError(
            f"strain window of {window_mm} mm ({n} samples at {axial_spacing_mm} mm) is longer than the "
            f"image height of {height} samples: use a shorter window or a taller image"
        )
    axial = displacement[:, -1:]
    if not torch.isfinite(axial).all():
        raise InputError("axial displacement contains NaN or infinite values")
    half = n // 2
    slopes = _slopes_by_convolution if axial.device.type == "mps" else _slopes_by_running_sums
    interior = slopes(axial, n)

    border = _top_border_tensor(half, axial.dtype, axial.device)
    rows = border.shape[1]
    top = torch.einsum("ij,bcjw->bciw", border, axial[:, :, :rows])
    # The bottom rows are the top rows of the flipped image, whose slope has the opposite sign.
    bottom = -torch.einsum("ij,bcjw->bciw", border, axial.flip(2)[:, :, :rows]).flip(2)
    return 100.0 * torch.cat([top, interior, bottom], dim=2)


def axial_strain_np(
    axial_displacement: np.ndarray,
    window_mm: float = DEFAULT_WINDOW_MM,
    axial_spacing_mm: float = DEFAULT_AXIAL_SPACING_MM,
) -> np.ndarray:
    """:func:`axial_strain` for numpy arrays.

    Args:
        axial_displacement: ``(..., H, W)`` axial displacement in pixels (H axial), any number of
            leading dimensions (frames).
        window_mm: axial fitting window in mm.
        axial_spacing_mm: axial sample spacing in mm.

    Returns:
        ``(..., H, W)`` float32 axial strain in %.
    """
    array = np.asarray(axial_displacement)
    if array.ndim < 2:
        raise InputError(f"axial displacement must be (..., H, W), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputError(f"axial displacement must be real numbers, got dtype {array.dtype}")
    frames = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(-1, 1, *array.shape[-2:])
    strain = axial_strain(frames, window_mm, axial_spacing_mm)
    return strain.reshape(array.shape).numpy()
