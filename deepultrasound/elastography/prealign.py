"""Uniform-strain pre-alignment of RF frame pairs, so a network only estimates the residual.

An RF similarity has a basin of about a quarter carrier period (2-4 samples here), while the
axial displacement between frames reaches 20 samples per 1 % compression at 4 cm depth.
:func:`uniform_strain_fit` fits a uniform-strain field ``a + b z`` (pixels) to row-block
cross-correlation lags (no truth used; :func:`linear_prealignment` is that field). The fit is
robust (:func:`robust_uniform_strain_fit`): normalised block correlations, a plausible strain
range per frame pair (:data:`MAX_PAIR_STRAIN`), a consensus line the blocks must agree on, and no
pre-alignment (zero, flagged in :class:`UniformStrainFit`) where they do not - bright specular
reflectors once made an unnormalised fit lock onto -20 % between frames 0.1 % apart. A network then
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

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

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
MAX_PAIR_STRAIN = 0.03
"""Largest axial strain magnitude (fraction: 0.03 = 3 %) a fit of one frame pair may find. In
quasi-static freehand elastography consecutive frames rarely differ by more than 2-3 % (the in
vivo DeepUSE sequences: 0.2-0.4 % per 43 ms frame interval); a larger global strain is a
correlation peak of the wrong echo (e.g. a bright specular reflector matched to its neighbour).
Pass a larger bound to fit pairs further apart (a reference and frame k directly)."""
AMBIGUOUS_NCC = 0.05
"""A block matches the line when its NCC peak there is within this of its highest peak anywhere:
a flat specular reflector also matches its neighbour echo, almost as well as itself."""
MIN_CONSISTENT_FRACTION = 0.5
"""Fewest blocks (fraction) that must match within :data:`LINE_TOLERANCE` samples of the fitted
line for the fit to be used; otherwise the blocks disagree (decorrelated frames, a large lateral
shift, echoes matched to the wrong echo) and the fit falls back to zero."""
MIN_LINE_NCC = 0.3
"""Mean block NCC along the fitted line below which the frames count as unrelated (fallback):
independent speckle reaches ~0.1, consecutive in vivo frames 0.6-0.9."""
LINE_TOLERANCE = 2.0
"""Samples (about a quarter of a carrier period at 4.4 MHz and 0.02 mm) around the consensus line
where each block's correlation peak is searched, and how far it may lie from the final line."""


@dataclass(frozen=True)
class UniformStrainFit:
    """A :func:`robust_uniform_strain_fit` of a batch of frame pairs (all tensors on the frames' device).

    Attributes:
        coefficients: ``(B, 2)`` offset ``a`` (pixels, at row 0) and slope ``b`` (pixels per row,
            the axial strain as a fraction) of ``u_axial = a + b z``; zeros where not ``plausible``.
        plausible: ``(B,)`` bool: the blocks agree on a strain within the bound (else the fallback:
            no pre-alignment).
        consistent_fraction: ``(B,)`` fraction of the row blocks that match on the fitted line.
        ncc: ``(B,)`` mean block NCC along the fitted line (before the fallback), in [-1, 1].
    """

    coefficients: torch.Tensor
    plausible: torch.Tensor
    consistent_fraction: torch.Tensor
    ncc: torch.Tensor


def _block_correlations(
    fixed: torch.Tensor, moving: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Correlations of half-overlapping row blocks with the moving frame at every axial lag.

    Over :data:`PREALIGN_LINES` evenly spaced lines, block ``k`` of ``fixed`` (rows ``k block/2``
    onwards) is correlated with ``moving`` shifted by each lag in ``[-L, L]``, ``L`` a quarter of
    the height (rows outside the frame count as zeros), one short FFT each.

    Returns:
        ``centres (K,)`` block centre rows, ``correlation (B, K, 2L+1)`` the sums
        ``sum f(z) m(z + lag)`` over the block and lines, and ``ncc (B, K, 2L+1)`` the same
        normalised by the energies of the block and of the moving window it meets (in [-1, 1]:
        a bright reflector scores no higher than the speckle it replaces).
    """
    step = -(-fixed.shape[-1] // PREALIGN_LINES)
    lines_fixed = fixed[:, 0, :, ::step].transpose(1, 2)  # (B, lines, H): FFTs along contiguous rows
    lines_moving = moving[:, 0, :, ::step].transpose(1, 2)
    height = fixed.shape[-2]
    max_lag = height // 4
    blocks = lines_fixed.unfold(-1, block, block // 2)  # (B, lines, K, block)
    padded = torch.nn.functional.pad(lines_moving, (max_lag, max_lag))  # (B, lines, H + 2L)
    segments = padded.unfold(-1, block + 2 * max_lag, block // 2)
    size = 1 << (block + 2 * max_lag - 1).bit_length()  # no wrap-around for lags in [-max_lag, max_lag]
    cross = torch.fft.rfft(blocks, n=size).conj() * torch.fft.rfft(segments, n=size)
    correlation = torch.fft.irfft(cross.sum(1), n=size)[..., : 2 * max_lag + 1]  # (B, K, lags -max_lag..max_lag)
    starts = torch.arange(blocks.shape[-2], device=fixed.device) * (block // 2)
    window_energy = block * torch.nn.functional.avg_pool1d(padded.square().sum(1, keepdim=True), block, stride=1)[:, 0]
    moving_energy = window_energy[:, starts[:, None] + torch.arange(2 * max_lag + 1, device=fixed.device)]
    fixed_energy = blocks.square().sum((1, -1))[..., None]  # (B, K, 1)
    floor = 1e-3 * fixed_energy.mean(1, keepdim=True)  # windows (nearly) outside the frame: FFT noise, not echoes
    ncc = (correlation / (fixed_energy * moving_energy).sqrt().clamp(min=floor)).clamp(-1.0, 1.0)
    return starts.to(fixed.dtype) + (block - 1) / 2, correlation, ncc


@functools.lru_cache(maxsize=16)
def _candidate_lines(
    blocks: int, lags: int, block_step: int, max_strain: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lines searched by :func:`_consensus_line` for ``blocks`` blocks ``block_step`` rows apart.

    Returns:
        ``slopes (S,)`` (steps that move the end blocks by half a sample, up to ``max_strain``)
        and ``index (S x C, K)``: for slope ``s`` and lag ``c - L`` at the middle block, the
        nearest lag of each block as an index into its NCC curve padded with one zero on each
        side (flattened over blocks; lags outside the curve hit a zero).
    """
    max_lag = lags // 2
    offsets = (torch.arange(blocks, device=device) - (blocks - 1) / 2) * block_step  # rows from the middle block
    half_extent = max((blocks - 1) * block_step / 2, 1.0)
    steps = math.ceil(max_strain * half_extent / 0.5)
    slopes = torch.linspace(-1.0, 1.0, 2 * steps + 1, device=device) * (0.5 * steps / half_extent)
    middle_lags = torch.arange(-max_lag, max_lag + 1, device=device)
    line = middle_lags[None, :, None] + slopes[:, None, None] * offsets  # (S, C, K) lags
    padded_index = (line.round().long() + max_lag + 1).clamp(0, lags + 1)
    flat = torch.arange(blocks, device=device) * (lags + 2) + padded_index
    return slopes, flat.reshape(-1, blocks)


def _consensus_line(
    centres: torch.Tensor, ncc: torch.Tensor, max_strain: float, block_step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The line ``lag(z)`` of slope at most ``max_strain`` along which the blocks correlate best on average.

    A grid search over the lag at the middle block (every lag) and the slope (steps that move
    the end blocks by half a sample, :func:`_candidate_lines`): every block votes with its whole
    NCC curve, so a block whose highest peak is a wrong echo still supports the line through its
    true one. The candidate lines depend on the sizes only (cached, no host synchronisation).

    Args:
        centres: ``(K,)`` block centre rows, ``block_step`` apart.
        ncc: ``(B, K, 2L+1)`` block NCC at lags ``-L..L``.
        max_strain: largest slope magnitude searched.
        block_step: rows between block centres.

    Returns:
        ``(B, 2)`` intercept (lag at row 0) and slope of the line, and ``(B,)`` its mean NCC.
    """
    batch, blocks, lags = ncc.shape
    slopes, index = _candidate_lines(blocks, lags, block_step, max_strain, ncc.device)
    padded = torch.nn.functional.pad(ncc, (1, 1)).reshape(batch, -1)
    score = padded[:, index].sum(-1) / blocks  # (B, S x C)
    best_score, best = score.max(-1)
    slope = slopes.to(ncc.dtype)[best // lags]
    middle_lag = (best % lags - lags // 2).to(ncc.dtype)
    return torch.stack([middle_lag - slope * centres.mean(), slope], 1), best_score


def _lags_near(
    line: torch.Tensor, centres: torch.Tensor, correlation: torch.Tensor, ncc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each block's correlation peak within :data:`LINE_TOLERANCE` samples of ``line``.

    The integer peak is the NCC maximum there, refined by a parabola through the (unnormalised)
    correlation, as a plain correlation peak search would.

    Returns:
        ``lags (B, K)`` in samples and ``matches (B, K)`` bool: that peak is within
        :data:`AMBIGUOUS_NCC` of the block's highest NCC over all lags.
    """
    lags = ncc.shape[-1]
    max_lag = lags // 2
    reach = math.ceil(LINE_TOLERANCE)
    nearest = (line[:, :1] + line[:, 1:] * centres).round().long() + max_lag  # (B, K)
    window = (nearest[..., None] + torch.arange(-reach, reach + 1, device=ncc.device)).clamp(0, lags - 1)
    peak_ncc, where = ncc.gather(-1, window).max(-1)
    matches = peak_ncc >= ncc.amax(-1) - AMBIGUOUS_NCC
    peak = window.gather(-1, where[..., None])[..., 0].clamp(1, lags - 2)
    minus, centre, plus = (correlation.gather(-1, (peak + d)[..., None])[..., 0] for d in (-1, 0, 1))
    offset = (0.5 * (minus - plus) / (minus - 2 * centre + plus).clamp(max=-1e-12)).clamp(-0.5, 0.5)
    return peak - max_lag + offset, matches


def robust_uniform_strain_fit(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    block_rows: int = PREALIGN_BLOCK_ROWS,
    max_strain: float = MAX_PAIR_STRAIN,
) -> UniformStrainFit:
    """The uniform-strain displacement ``u_axial = a + b z`` between two frames, checked for plausibility.

    1. Row blocks are correlated with the moving frame at every lag, normalised (NCC), and the
       line of slope at most ``max_strain`` along which they correlate best is found
       (:func:`_consensus_line`).
    2. Each block's peak near that line gives its lag; ``a, b`` are a least-squares line through
       the lags of the blocks that match there (a peak within :data:`AMBIGUOUS_NCC` of their
       highest), refitted twice without the blocks more than max(1, 2 x median) samples off the
       line (a peak one carrier cycle away).
    3. The fit is plausible when at least :data:`MIN_CONSISTENT_FRACTION` of the blocks match
       within :data:`LINE_TOLERANCE` samples of it, the mean NCC along it is at least
       :data:`MIN_LINE_NCC` and its slope is within ``max_strain``; otherwise (decorrelated
       frames, a large lateral shift, echoes that disagree) the coefficients fall back to zero:
       no pre-alignment, and ``plausible`` says so.

    On well-behaved pairs step 2 finds the blocks' own highest correlation peaks, so the fit is
    the plain least-squares fit of those. Same convention as the networks:
    ``moving(p + u(p)) ~ fixed(p)``; ``b`` is the axial strain as a fraction (-0.01 for 1 %
    compression). Element-wise tensor work only (no host synchronisation).

    Args:
        fixed, moving: ``(B, 1, H, W)`` RF frames, H >= 8.
        block_rows: rows per block (halved until at least three blocks fit).
        max_strain: largest plausible strain magnitude of the pair (fraction), see :data:`MAX_PAIR_STRAIN`.

    Raises:
        InputError: frames of other shapes, fewer than 8 rows, or a ``max_strain`` outside (0, 1).
    """
    if fixed.ndim != 4 or fixed.shape != moving.shape or fixed.shape[-2] < 8:
        raise InputError(
            f"expected two (B, 1, H, W) frames with H >= 8, got {tuple(fixed.shape)} and {tuple(moving.shape)}"
        )
    if not 0 < max_strain < 1:
        raise InputError(f"max_strain is a strain fraction in (0, 1) (0.03 = 3 %), got {max_strain}")
    block = min(block_rows, fixed.shape[-2] // 2)
    centres, correlation, ncc = _block_correlations(fixed, moving, block)
    consensus, line_ncc = _consensus_line(centres, ncc, max_strain, block // 2)
    lags, matches = _lags_near(consensus, centres, correlation, ncc)
    matched = matches.to(lags)
    weight = matched
    for _ in range(3):
        line = _weighted_line(centres, lags, weight)
        error = (lags - line[:, :1] - line[:, 1:] * centres).abs()
        weight = matched * (error <= (2 * error.median(1, keepdim=True).values).clamp(min=1.0)).to(lags)
    consistent = (matched * (error <= LINE_TOLERANCE).to(lags)).mean(1)
    plausible = (
        (consistent >= MIN_CONSISTENT_FRACTION) & (line_ncc >= MIN_LINE_NCC) & (line[:, 1].abs() <= max_strain * 1.05)
    )
    coefficients = torch.where(plausible[:, None], line, torch.zeros_like(line))
    return UniformStrainFit(coefficients, plausible, consistent, line_ncc)


def uniform_strain_fit(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    block_rows: int = PREALIGN_BLOCK_ROWS,
    max_strain: float = MAX_PAIR_STRAIN,
) -> torch.Tensor:
    """The ``(B, 2)`` coefficients ``(a, b)`` of :func:`robust_uniform_strain_fit`: offset in pixels at
    row 0 and slope in pixels per row; zeros (no pre-alignment) where the fit is implausible.

    Raises:
        InputError: see :func:`robust_uniform_strain_fit`.
    """
    return robust_uniform_strain_fit(fixed, moving, block_rows, max_strain).coefficients


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
    fixed: torch.Tensor,
    moving: torch.Tensor,
    block_rows: int = PREALIGN_BLOCK_ROWS,
    max_strain: float = MAX_PAIR_STRAIN,
) -> torch.Tensor:
    """:func:`uniform_strain_fit` as a ``(B, 2, H, W)`` displacement in pixels, channel 0 lateral (zero), 1 axial."""
    return uniform_strain_displacement(uniform_strain_fit(fixed, moving, block_rows, max_strain), *fixed.shape[-2:])


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
