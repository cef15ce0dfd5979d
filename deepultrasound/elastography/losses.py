"""DeepUSE losses: image similarity after warping, strain smoothness, temporal consistency; a supervised term.

The training loss of DeepUSE (Delaunay, Hu, Vercauteren, PMB 2021) for a sequence with fixed
frame ``f`` and moving frames ``m_t`` whose predicted displacements are ``u_t``::

    L = mean_t [1 - LNCC(warp(m_t, u_t), f)]                     similarity
      + alpha * mean_t smooth(u_t)                               smoothness
      + beta  * mean_t [1 - LNCC(c_{t-1}, c_t)]                  temporal consistency (ReUSENet)

with ``c_t = warp(strain(u_t), u_t)`` the motion-compensated axial strain. In the original
implementation LNCC is the mean zero-normalised cross-correlation over non-overlapping windows
(8 x 8 samples in its in vivo configuration), ``smooth`` the mean absolute second difference of
both displacement components along each axis, and the consistency compares the strain rows
where its least-squares window is complete. The original weights are alpha = 5, beta = 0.1.
:func:`local_ncc` and :func:`smoothness_loss` keep the original's arithmetic (the published
networks' reference tests depend on it) and differ from MONAI's LNCC and bending energy (see
each); the image capabilities use those, from :mod:`deepultrasound.losses`.

Simulated sequences also know their displacement, so :func:`supervised_loss` compares an
estimate with the truth directly (used on refinement pairs, see
:func:`~deepultrasound.elastography.data.refinement_pair`).

Every loss takes ``reduction`` (``"mean"`` -> scalar, ``"none"`` -> per-sample ``(B,)``).
"""

from __future__ import annotations

from typing import Literal

import torch

from deepultrasound.elastography.strain import axial_strain, window_samples
from deepultrasound.errors import InputError
from deepultrasound.spatial import warp_image

Reduction = Literal["mean", "none"]


def _reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise InputError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_pair(a: torch.Tensor, b: torch.Tensor, window: tuple[int, int]) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise InputError(
            f"expected two images of the same shape (B, C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if window[0] < 1 or window[1] < 1 or window[0] > a.shape[-2] or window[1] > a.shape[-1]:
        raise InputError(f"window {tuple(window)} must be positive and fit in the images of size {tuple(a.shape[-2:])}")


def _complete_window_rows(height: int, window_mm: float, axial_spacing_mm: float, at_least: int) -> slice:
    """The rows of an ``height``-row strain image whose least-squares window is complete (half a
    window dropped at each end); an :class:`InputError` if fewer than ``at_least`` are left."""
    half = window_samples(window_mm, axial_spacing_mm) // 2
    if height - 2 * half < at_least:
        left = "none" if at_least == 1 else f"fewer than {at_least} rows"
        raise InputError(
            f"strain images of {height} rows leave {left} once {half} rows are dropped at each end for a "
            f"{window_mm} mm window; use taller patches or a shorter window"
        )
    return slice(half, height - half)


def local_ncc(
    a: torch.Tensor,
    b: torch.Tensor,
    window: tuple[int, int] = (8, 8),
    eps: float = 1e-10,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Mean zero-normalised cross-correlation over non-overlapping windows, in [-1, 1].

    The images are tiled from the top-left corner with ``window`` (rows, columns) tiles (rows
    or columns left over at the bottom and right are not used), the NCC of each tile is taken
    and the tiles and channels are averaged. A tile that is constant in either image scores 0.

    MONAI's LocalNormalizedCrossCorrelationLoss does not fit RF data: it squares the
    correlation, so an RF tile matched half a carrier period off (NCC near -1) would score as
    well as the true match; it also takes only odd, square kernels, and the original's are 8 x 8.

    Args:
        a, b: ``(B, C, H, W)`` images.
        window: tile size (rows, columns) in pixels.
        eps: added to the product of the variances, so constant tiles give 0, not NaN.
        reduction: ``"mean"`` over the batch, or ``"none"`` for ``(B,)``.
    """
    _check_pair(a, b, window)
    rows, cols = window

    def tiles(x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H // rows, W // cols, rows * cols), each tile centred on its mean."""
        batch, channels, height, width = x.shape
        x = x[..., : height - height % rows, : width - width % cols]
        x = x.reshape(batch, channels, height // rows, rows, width // cols, cols).transpose(3, 4).flatten(-2)
        return x - x.mean(-1, keepdim=True)  # centred before the products: no cancellation in float32

    a, b = tiles(a), tiles(b.to(a))
    ncc = (a * b).sum(-1) / torch.sqrt(a.square().sum(-1) * b.square().sum(-1) + eps)
    return _reduce(ncc.flatten(1).mean(1), reduction)


def similarity_loss(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    displacement: torch.Tensor,
    window: tuple[int, int] = (8, 8),
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """``1 - local_ncc(warp_image(moving, displacement), fixed)``: 0 for a perfect match, at most 2.

    Args:
        fixed: ``(B, 1, H, W)`` fixed (reference) frame.
        moving: ``(B, 1, H, W)`` moving frame.
        displacement: ``(B, 2, H, W)`` in pixels, channel 0 lateral, 1 axial, with
            ``moving(p + u(p)) ~ fixed(p)``.
        window: NCC tile size (rows, columns), see :func:`local_ncc`.
        reduction: ``"mean"`` or ``"none"`` (``(B,)``).
    """
    return 1.0 - local_ncc(warp_image(moving, displacement), fixed, window, reduction=reduction)


def smoothness_loss(displacement: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Mean absolute second difference of the displacement along each axis (the original DeepUSE form).

    ``(mean |d2u/dz2| + mean |d2u/dx2|) / 2`` over both components, in pixels per pixel^2: for
    the axial component ``d2u/dz2`` is the axial derivative of the axial strain, so the term
    penalises strain variation and is zero for any displacement linear in (z, x), i.e. uniform
    strain. MONAI's BendingEnergyLoss squares (and mixes) the second derivatives, which punishes
    the strain step at an inclusion border far more than this L1 form.

    Args:
        displacement: ``(B, 2, H, W)`` in pixels (H, W >= 3).
        reduction: ``"mean"`` or ``"none"`` (``(B,)``).
    """
    if displacement.ndim != 4 or displacement.shape[-2] < 3 or displacement.shape[-1] < 3:
        raise InputError(f"displacement must be (B, 2, H, W) with H, W >= 3, got {tuple(displacement.shape)}")
    axial = displacement.diff(n=2, dim=-2).abs().flatten(1).mean(1)
    lateral = displacement.diff(n=2, dim=-1).abs().flatten(1).mean(1)
    return _reduce((axial + lateral) / 2, reduction)


def compensated_strain(displacement: torch.Tensor, window_mm: float, axial_spacing_mm: float) -> torch.Tensor:
    """Motion-compensated axial strain ``warp_image(strain(u), u)`` in %, ``(B, 1, H, W)``.

    Args:
        displacement: ``(B, 2, H, W)`` in pixels.
        window_mm: least-squares strain window (:func:`~deepultrasound.elastography.strain.axial_strain`).
        axial_spacing_mm: axial sample spacing.
    """
    return warp_image(axial_strain(displacement, window_mm, axial_spacing_mm), displacement)


def consistency_loss(
    previous: torch.Tensor,
    current: torch.Tensor,
    window_mm: float,
    axial_spacing_mm: float,
    window: tuple[int, int] = (8, 8),
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Temporal consistency ``1 - local_ncc`` of two motion-compensated strains, on complete-window rows.

    The rows within half a least-squares window of the top and bottom (where
    :func:`~deepultrasound.elastography.strain.axial_strain` shrinks its window) are left out,
    as in the original. Zero when the strain pattern does not change between the two steps.

    Args:
        previous, current: ``(B, 1, H, W)`` :func:`compensated_strain` of consecutive time steps.
        window_mm, axial_spacing_mm: the strain window the strains were computed with.
        window: NCC tile size (rows, columns).
        reduction: ``"mean"`` or ``"none"`` (``(B,)``).
    """
    rows = _complete_window_rows(previous.shape[-2], window_mm, axial_spacing_mm, at_least=window[0])
    return 1.0 - local_ncc(previous[..., rows, :], current[..., rows, :], window, reduction=reduction)


def supervised_loss(
    displacement: torch.Tensor,
    truth: torch.Tensor,
    window_mm: float,
    axial_spacing_mm: float,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Mean absolute error of a displacement (pixels, both channels) plus that of its axial strain (%).

    The strain term (:func:`~deepultrasound.elastography.strain.axial_strain` of the error, the
    estimator being linear) is taken on the rows where its least-squares window is complete, as
    strain is evaluated. Both are mean absolute errors per sample (MONAI has no loss on a
    displacement against its truth); typical errors are 0.1 px and 0.05 %, so neither dominates.

    Args:
        displacement, truth: ``(B, 2, H, W)`` in pixels, channel 0 lateral, 1 axial.
        window_mm, axial_spacing_mm: the least-squares strain window and the axial spacing.
        reduction: ``"mean"`` or ``"none"`` (``(B,)``).
    """
    if displacement.ndim != 4 or displacement.shape != truth.shape or displacement.shape[1] != 2:
        raise InputError(
            f"expected two (B, 2, H, W) displacements, got {tuple(displacement.shape)} and {tuple(truth.shape)}"
        )
    rows = _complete_window_rows(displacement.shape[-2], window_mm, axial_spacing_mm, at_least=1)
    error = displacement - truth
    strain_error = axial_strain(error, window_mm, axial_spacing_mm)[..., rows, :]
    per_sample = error.abs().flatten(1).mean(1) + strain_error.abs().flatten(1).mean(1)
    return _reduce(per_sample, reduction)
