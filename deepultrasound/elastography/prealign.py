"""Uniform-strain pre-alignment of RF frame pairs, so a network only estimates the residual.

An RF similarity has a basin of about a quarter carrier period (2-4 samples here), while the
axial displacement between frames reaches 20 samples per 1 % compression at 4 cm depth.
:func:`uniform_strain_fit` fits a uniform-strain field ``a + b z`` (pixels) to row-block
cross-correlation lags (no truth used; :func:`linear_prealignment` is that field); a network then
estimates the residual between the fixed frame and the moving frame warped by it
(:func:`warp_by_uniform_strain`), and :func:`compose_with_uniform_strain` gives the total. Both
are closed forms of :func:`~deepultrasound.spatial.warp_image` and
:func:`~deepultrasound.spatial.compose_displacements` for this field, a few times cheaper on every live frame.
For pairs (0, k), :class:`DisplacementChain` composes frame-to-frame estimates (fits, or a
network's), which stay robust where a direct estimate at several % compression does not;
:func:`refined_against_reference` corrects such a chained estimate with one more estimate
made against the reference itself; :func:`prealigned_previous` gives the pre-aligned frames of
frame-to-frame training pairs.

Bundles trained on pre-aligned pairs record ``"prealign": PREALIGN_UNIFORM_STRAIN`` in their
manifest's ``inference`` section; :class:`~deepultrasound.elastography.estimators.StrainEstimator`
then runs them the same way.

All displacements are ``(B, 2, H, W)`` in pixels, channel 0 lateral, channel 1 axial, with
``moving(p + u(p)) ~ fixed(p)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from deepultrasound.errors import InputError
from deepultrasound.spatial import compose_displacements, warp_image

PREALIGN_BLOCK_ROWS = 128
"""Rows of the cross-correlation blocks of :func:`linear_prealignment` (2.56 mm at 0.02 mm)."""
PREALIGN_LINES = 16
"""Lines (evenly spaced) whose correlations :func:`uniform_strain_fit` sums: 16 x 128 rows is
plenty for a correlation peak, and 8x cheaper than all 128 lines (fits differ by < 0.1 sample)."""
PREALIGN_UNIFORM_STRAIN = "uniform_strain"
"""Manifest value (``inference.prealign``) of models trained on residuals after this pre-alignment."""


def _block_lags(fixed: torch.Tensor, moving: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial lag of each half-overlapping row block: ``(centres (K,) rows, lags (B, K) samples)``.

    The lag maximises ``sum f(z) m(z + lag)`` over the block and :data:`PREALIGN_LINES` evenly
    spaced lines (rows outside the frame count as zeros), for lags up to a quarter of the height,
    refined by a parabola through the peak. Each block is correlated with its own segment of
    the moving frame (the block widened by the largest lag on both sides), one short FFT each.
    """
    step = -(-fixed.shape[-1] // PREALIGN_LINES)
    lines_fixed = fixed[:, 0, :, ::step].transpose(1, 2)  # (B, lines, H): FFTs along contiguous rows
    lines_moving = moving[:, 0, :, ::step].transpose(1, 2)
    height = fixed.shape[-2]
    max_lag = height // 4
    blocks = lines_fixed.unfold(-1, block, block // 2)  # (B, lines, K, block)
    segments = torch.nn.functional.pad(lines_moving, (max_lag, max_lag)).unfold(-1, block + 2 * max_lag, block // 2)
    size = 1 << (block + 2 * max_lag - 1).bit_length()  # no wrap-around for lags in [-max_lag, max_lag]
    cross = torch.fft.rfft(blocks, n=size).conj() * torch.fft.rfft(segments, n=size)
    correlation = torch.fft.irfft(cross.sum(1), n=size)[..., : 2 * max_lag + 1]  # (B, K, lags -max_lag..max_lag)
    peak = correlation.argmax(-1).clamp(1, 2 * max_lag - 1)
    minus, centre, plus = (correlation.gather(-1, (peak + d)[..., None])[..., 0] for d in (-1, 0, 1))
    offset = (0.5 * (minus - plus) / (minus - 2 * centre + plus).clamp(max=-1e-12)).clamp(-0.5, 0.5)
    starts = torch.arange(blocks.shape[-2], device=fixed.device, dtype=fixed.dtype) * (block // 2)
    return starts + (block - 1) / 2, peak - max_lag + offset


def uniform_strain_fit(
    fixed: torch.Tensor, moving: torch.Tensor, block_rows: int = PREALIGN_BLOCK_ROWS
) -> torch.Tensor:
    """Coefficients ``(a, b)`` of the uniform-strain displacement ``u_axial = a + b z`` between two frames.

    ``a, b`` are a least-squares line through the lags of half-overlapping row blocks, refitted
    twice without the blocks more than max(1, 2 x median) samples off the line (a peak one
    carrier cycle away). Same convention as the networks: ``moving(p + u(p)) ~ fixed(p)``.
    ``b`` is the axial strain as a fraction (-0.01 for 1 % compression).

    Args:
        fixed, moving: ``(B, 1, H, W)`` RF frames, H >= 8.
        block_rows: rows per block (halved until at least three blocks fit).

    Returns:
        ``(B, 2)``: offset ``a`` in pixels (at row 0) and slope ``b`` in pixels per row.

    Raises:
        InputError: frames of other shapes, or fewer than 8 rows.
    """
    if fixed.ndim != 4 or fixed.shape != moving.shape or fixed.shape[-2] < 8:
        raise InputError(
            f"expected two (B, 1, H, W) frames with H >= 8, got {tuple(fixed.shape)} and {tuple(moving.shape)}"
        )
    block = min(block_rows, fixed.shape[-2] // 2)
    centres, lags = _block_lags(fixed, moving, block)
    weight = torch.ones_like(lags)
    for _ in range(3):
        line = _weighted_line(centres, lags, weight)
        error = (lags - line[:, :1] - line[:, 1:] * centres).abs()
        weight = (error <= (2 * error.median(1, keepdim=True).values).clamp(min=1.0)).to(lags)
    return line


def _weighted_line(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` intercept and slope of the weighted least-squares line through ``(x (K,), y (B, K))``.

    The closed form about the weighted mean of ``x`` (well conditioned in float32 for rows in
    the thousands); element-wise sums only, so a GPU runs it without a solver call or a host
    synchronisation. ``weight`` ``(B, K)`` is non-negative with a positive sum per row.
    """
    total = weight.sum(1, keepdim=True)
    x_mean = (weight * x).sum(1, keepdim=True) / total
    y_mean = (weight * y).sum(1, keepdim=True) / total
    centred = x - x_mean
    slope = (weight * centred * (y - y_mean)).sum(1, keepdim=True) / (weight * centred**2).sum(1, keepdim=True)
    return torch.cat([y_mean - slope * x_mean, slope], 1)


def uniform_strain_displacement(fit: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The ``(B, 2, H, W)`` displacement (lateral 0, axial ``a + b z``) of a ``(B, 2)`` :func:`uniform_strain_fit`."""
    rows = torch.arange(height, device=fit.device, dtype=fit.dtype)
    axial = (fit[:, :1] + fit[:, 1:] * rows)[:, None, :, None].expand(-1, 1, -1, width)
    return torch.cat([torch.zeros_like(axial), axial], 1)


def linear_prealignment(
    fixed: torch.Tensor, moving: torch.Tensor, block_rows: int = PREALIGN_BLOCK_ROWS
) -> torch.Tensor:
    """:func:`uniform_strain_fit` as a ``(B, 2, H, W)`` displacement in pixels, channel 0 lateral (zero), 1 axial."""
    return uniform_strain_displacement(uniform_strain_fit(fixed, moving, block_rows), *fixed.shape[-2:])


def warp_by_uniform_strain(moving: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """``warp_image(moving, uniform_strain_displacement(fit, H, W))`` as a row interpolation.

    Every line is sampled at the same rows ``z + a + b z``, so the bilinear warp reduces to a
    linear interpolation between two gathered rows (border rows repeated, as ``warp_image`` does).

    Args:
        moving: ``(B, C, H, W)`` frames, H >= 2.
        fit: ``(B, 2)`` coefficients of :func:`uniform_strain_fit`.
    """
    batch, channels, height, width = moving.shape
    rows = torch.arange(height, device=moving.device, dtype=moving.dtype).view(1, 1, height, 1)
    fit = fit.to(moving)
    position = (rows + fit[:, :1, None, None] + fit[:, 1:, None, None] * rows).clamp(0, height - 1)  # (B, 1, H, 1)
    below = position.floor().clamp(max=height - 2)
    weight = position - below
    index = below.long().expand(batch, channels, height, width)
    upper, lower = moving.gather(2, index), moving.gather(2, index + 1)
    return upper + weight * (lower - upper)


def compose_with_uniform_strain(inner: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """``compose_displacements(inner, uniform_strain_displacement(fit, H, W))`` in closed form.

    The uniform-strain field is linear in z and constant across lines, so sampling it at
    ``p + inner(p)`` is evaluating ``a + b z`` at the row reached (clamped to the frame, as the
    warp's border padding does).

    Args:
        inner: ``(B, 2, H, W)`` displacement in pixels (e.g. a network's residual).
        fit: ``(B, 2)`` coefficients of :func:`uniform_strain_fit`.
    """
    height = inner.shape[-2]
    rows = torch.arange(height, device=inner.device, dtype=inner.dtype).view(1, 1, height, 1)
    reached = (rows + inner[:, 1:]).clamp(0, height - 1)
    fit = fit.to(inner)
    outer_axial = fit[:, :1, None, None] + fit[:, 1:, None, None] * reached
    return inner + torch.cat([torch.zeros_like(outer_axial), outer_axial], 1)


PairDisplacement = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]
"""``(fixed (B, 1, H, W), moving (B, 1, H, W), starts) -> (B, 2, H, W)`` displacement of one pair;
``starts`` is True for the first pair of a chain (a recurrent network starts from zero states)."""

Refinement = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(fixed (B, 1, H, W), moving (B, 1, H, W), displacement (B, 2, H, W)) -> (B, 2, H, W)``: a
better displacement of the pair than ``displacement`` (see :func:`refined_against_reference`)."""

REFINEMENT_WEIGHT = 0.5
"""Weight of the estimate made against the reference in :func:`refined_against_reference`: 0.5
averages it with the chained one. Their errors differ in kind (steps accumulated along the
chain; decorrelation between the reference and a frame several steps away). On 5 validation
sequences (seeds 1000000..1000004) the ReUSENet then shipped (its first 32 epochs) had strain NRMSE 0.087 chained, and
0.066, 0.061 and 0.059 refined with weights 1, 0.75 and 0.5 (the USENet's 0.074, then 0.064,
0.063 and 0.064), in a trial whose refining pass also pre-aligned the warped frame; as
:class:`~deepultrasound.elastography.estimators.StrainEstimator` refines now (no pre-alignment),
weight 0.5 gave 0.059 and 0.065. After 6 epochs of training on supervised refinement pairs
(``supervised_weight``), weight 0.5 still beat 1: 0.051 against 0.054."""


def refined_against_reference(
    estimate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    fixed: torch.Tensor,
    moving: torch.Tensor,
    displacement: torch.Tensor,
    weight: float = REFINEMENT_WEIGHT,
) -> torch.Tensor:
    """``displacement`` of (``fixed``, ``moving``) corrected by an estimate made against ``fixed`` directly.

    ``moving`` is warped back onto ``fixed`` by ``displacement``; ``estimate(fixed, warped)``
    gives the ``(B, 2, H, W)`` residual, and the residual composed with ``displacement``
    (:func:`compose_displacements`) is a second estimate of the pair's displacement. The result
    moves ``displacement`` by ``weight`` towards it (1: the second estimate alone).

    Args:
        estimate: ``(fixed, moving) -> displacement``, on ``(B, 1, H, W)`` frames.
        fixed, moving: ``(B, 1, H, W)`` RF frames.
        displacement: ``(B, 2, H, W)`` estimate in pixels (e.g. chained frame to frame).
        weight: in (0, 1].
    """
    second = compose_displacements(estimate(fixed, warp_image(moving, displacement)), displacement)
    return displacement + weight * (second - displacement)


def mirror_averaged(estimate: Callable[[torch.Tensor], torch.Tensor], pair: torch.Tensor) -> torch.Tensor:
    """``estimate(pair)`` averaged with its estimate of the laterally mirrored pair, mirrored back.

    Mirroring the lines of a pair mirrors the tissue under the same compression, so the
    displacement estimated on the mirrored pair, mirrored back with its lateral channel negated,
    is a second estimate of the same field. The DeepUSE networks train on mirrored crops
    (``flip_lateral``), so the two agree but for the network's own noise, which the average
    lowers: refining with it took the shipped ReUSENet's strain NRMSE on 5 validation sequences
    (seeds 1000000..1000004) from 0.0507 to 0.0500, the contrast NRMSE from 1.03 to 0.90 and SNRe
    from 30.1 to 33.8, for a second network pass.

    Args:
        estimate: ``(B, 2, H, W)`` pair -> ``(B, 2, H, W)`` displacement in pixels (channel 0 lateral).
        pair: ``(B, 2, H, W)`` = cat[fixed, moving].
    """
    mirrored = estimate(pair.flip(-1)).flip(-1)
    return 0.5 * (estimate(pair) + torch.cat([-mirrored[:, :1], mirrored[:, 1:]], dim=1))


def uniform_strain_pair(fixed: torch.Tensor, moving: torch.Tensor, starts: bool = True) -> torch.Tensor:
    """:func:`linear_prealignment` as a :data:`PairDisplacement` (no state, ``starts`` unused)."""
    return linear_prealignment(fixed, moving)


def prealigned_estimate(
    estimate_residual: Callable[[torch.Tensor], torch.Tensor], fixed: torch.Tensor, moving: torch.Tensor
) -> torch.Tensor:
    """Displacement of (``fixed``, ``moving``) from an estimator of the residual after pre-alignment.

    ``moving`` is warped by :func:`linear_prealignment`, ``estimate_residual`` maps the
    ``(B, 2, H, W)`` pair (fixed, warped moving) to the residual ``(B, 2, H, W)``, and the result is
    the residual composed with the fit (:func:`compose_displacements`).
    """
    fit = uniform_strain_fit(fixed, moving)
    residual = estimate_residual(torch.cat([fixed, warp_by_uniform_strain(moving, fit)], dim=1))
    return compose_with_uniform_strain(residual, fit)


class DisplacementChain:
    """Displacements (reference, frame k) composed from frame-to-frame ones.

    The displacement of (reference, k) is that of (reference, k') for the previous frame k'
    composed with ``pair_displacement(k', k)`` (:func:`compose_displacements`); the first pair
    after :meth:`reset` (or with ``new_reference``) is ``pair_displacement(reference, k)``. Each
    pair's estimate stays as small as one frame step (a few samples), where an RF similarity or
    a frame-to-frame network works, however far frame k has moved from the reference.

    With ``refine``, every (reference, k) estimate is refined (e.g. by
    :func:`refined_against_reference`) before it is returned and carried on, so the errors of
    the frame-to-frame steps do not pile up along the chain.

    State (owned by the caller's thread): the previous moving frame and its displacement, in
    :attr:`buffers` that are updated in place from pair to pair of one size (so a CUDA graph of
    :meth:`step` can replay them, see :class:`~deepultrasound.runtime.graphs.GraphedStep`).

    Args:
        pair_displacement: the frame-to-frame estimate, e.g. :func:`uniform_strain_pair`.
        refine: applied to each (reference, k) estimate; None: none.
    """

    def __init__(self, pair_displacement: PairDisplacement, refine: Refinement | None = None) -> None:
        self.pair_displacement = pair_displacement
        self.refine = refine
        self._previous: torch.Tensor | None = None  # (B, 1, H, W) last moving frame
        self._chained: torch.Tensor | None = None  # (B, 2, H, W) reference -> last moving frame
        self.reset()

    def reset(self) -> None:
        """Forget the previous pair; the next one is estimated directly."""
        self._started = False

    @property
    def buffers(self) -> list[torch.Tensor]:
        """The tensors :meth:`step` updates in place: the last moving frame and its chained displacement."""
        return [tensor for tensor in (self._previous, self._chained) if tensor is not None]

    def step(self, fixed: torch.Tensor, moving: torch.Tensor, new_reference: bool = False) -> torch.Tensor:
        """Displacement of the pair (``fixed``, ``moving``).

        Args:
            fixed, moving: ``(B, 1, H, W)`` RF frames; ``fixed`` is the same frame as in the
                previous call unless ``new_reference``.
            new_reference: the fixed frame changed: start a new chain.

        Returns:
            ``(B, 2, H, W)`` displacement in pixels mapping ``fixed`` to ``moving``.
        """
        if new_reference or not self._started:
            chained = self.pair_displacement(fixed, moving, True)
        else:
            chained = compose_displacements(self._chained, self.pair_displacement(self._previous, moving, False))
        if self.refine is not None:
            chained = self.refine(fixed, moving, chained)
        if self._previous is None or self._previous.shape != moving.shape or self._previous.device != moving.device:
            self._previous, self._chained = moving.clone(), chained.clone()
        else:
            self._previous.copy_(moving)
            self._chained.copy_(chained)
        self._started = True
        return chained


def prealigned_previous(rf: np.ndarray) -> np.ndarray:
    """Each frame warped back onto its predecessor by their :func:`uniform_strain_fit` (all pairs as one batch).

    Args:
        rf: ``(N, H, W)`` float32 frames.

    Returns:
        ``(N-1, H, W)``: entry k - 1 is frame k warped onto frame k - 1.
    """
    frames = torch.from_numpy(rf)[:, None]
    return warp_by_uniform_strain(frames[1:], uniform_strain_fit(frames[:-1], frames[1:]))[:, 0].numpy()
