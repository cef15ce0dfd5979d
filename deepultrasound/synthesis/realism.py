"""Realism figures of a set of B-mode images against a reference set (e.g. synthetic against held-out real).

Images are ``(N, H, W)`` B-mode in [0, 1] with, per image, :class:`Regions` (where the figures look);
images synthesised from label maps may also come as ``(K, N, H, W)``, ``K`` draws of each of the ``N`` maps of the
regions (a model picks a different gain, a different speckle with each draw), and every figure then pools the
``K N`` images, the bootstrap intervals redrawing maps with all their draws:

- **depth-intensity profile** (:func:`depth_profile`): mean intensity per bin of normalised depth
  (0 at the probe, 1 at the deepest imaged point) inside the imaged region, pooled over images;
  :func:`profile_error` is the mean absolute difference of two profiles over the bins both have,
  in image units (B-mode in [0, 1]), with a bootstrap interval over pairs of images (one of each set,
  of the same label map: :func:`profile_error_interval`), and the difference of two sets' errors with its
  interval, the maps redrawn for both sets at once (:func:`profile_error_difference`). It holds both the overall
  brightness and how it changes with depth; :func:`profile_shape_error` is the error of the profiles each
  divided by its own mean over the bins (dimensionless): the change with depth alone, whatever the gain.
  ``mean_intensity`` is the mean of every pixel inside the imaged regions (image units): the gain alone;
  ``mean_intensity_sd`` the standard deviation over images of each image's mean there: how much the gain varies
  from image to image (for real images, with the scenes; a model that draws a gain at random shows more).
- **envelope SNR** (:func:`envelope_snr`): mean / std of the envelope inside a tissue region, per
  image, averaged over images. The envelope is recovered from the log compression
  (:func:`envelope_from_bmode`): B-mode ``b`` in [0, 1] spans ``dynamic_range_db`` below the
  brightest sample, so ``envelope = 10 ** ((b - 1) dynamic_range_db / 20)`` relative to it.
  Fully developed speckle (a Rayleigh envelope) has SNR ``sqrt(pi / (4 - pi))`` = 1.91.
- **speckle size** (:func:`speckle_fwhm`): axial (rows) and lateral (columns) full width at half
  maximum, in pixels, of the mean autocorrelation of the envelope over ``patch x patch`` tiles that
  lie wholly in tissue (:func:`~deepultrasound.simulation.echo_stats.autocorrelation`).
- **Frechet distance** (:func:`frechet_distance`) between two sets of feature vectors (MONAI's
  ``FIDMetric``, which takes precomputed features; the features come from a network trained here,
  since no pretrained feature network can be downloaded).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import FIDMetric
from scipy.ndimage import binary_erosion

from deepultrasound.errors import InputError
from deepultrasound.simulation.echo_stats import autocorrelation, half_width
from deepultrasound.spatial.bmode import DEFAULT_DYNAMIC_RANGE_DB

DEPTH_BINS = 16
"""Bins of normalised depth of :func:`depth_profile`."""
SPECKLE_PATCH = 8
"""Side (pixels) of the tissue tiles whose autocorrelation gives the speckle size (64-pixel images hold several)."""
PROFILE_INTERVAL_LEVEL = 0.9
"""Coverage of :func:`profile_error_interval`."""
PROFILE_INTERVAL_DRAWS = 1000
"""Bootstrap draws of :func:`profile_error_interval`."""
RAYLEIGH_SNR = math.sqrt(math.pi / (4.0 - math.pi))
"""Mean / std of a Rayleigh-distributed envelope (fully developed speckle): 1.913."""
_MIN_SNR_PIXELS = 16
"""An image whose SNR region holds fewer pixels gives no SNR."""


@dataclass(frozen=True)
class Regions:
    """Where the figures of ``N`` images of ``(H, W)`` pixels look, each array ``(N, H, W)``.

    Attributes:
        inside: bool, the imaged region (the fan of a sector scan; every pixel of a linear scan).
        depth: float in [0, 1], normalised depth (0 at the probe).
        signal: bool, the tissue region whose envelope SNR is measured (e.g. the myocardium).
        tissue: bool, the tissue region whose speckle size is measured.
    """

    inside: np.ndarray
    depth: np.ndarray
    signal: np.ndarray
    tissue: np.ndarray

    def __post_init__(self) -> None:
        shapes = {name: np.shape(getattr(self, name)) for name in ("inside", "depth", "signal", "tissue")}
        if len(set(shapes.values())) != 1 or len(shapes["inside"]) != 3:
            raise InputError(f"regions must be (N, H, W) arrays of one shape, got {shapes}")

    def repeated(self, draws: int) -> Regions:
        """The regions of ``draws`` images of each map, draw after draw: arrays ``(draws N, H, W)``."""
        return Regions(
            *(np.tile(array, (draws, 1, 1)) for array in (self.inside, self.depth, self.signal, self.tissue))
        )


def check_images(images: np.ndarray, regions: Regions) -> np.ndarray:
    """``images`` ``(N, H, W)`` or ``(K, N, H, W)`` as float64 ``(K, N, H, W)`` (``K`` 1 for the first), refused
    unless finite, in [0, 1] and of the regions' shape."""
    array = np.asarray(images, np.float64)
    if array.shape[-3:] != regions.inside.shape or array.ndim not in (3, 4):
        raise InputError(
            f"images {array.shape} and their regions {regions.inside.shape} differ in shape "
            "(images: (N, H, W) or (K, N, H, W), the regions' (N, H, W))"
        )
    array = array.reshape(-1, *regions.inside.shape)
    if not np.isfinite(array).all() or array.min(initial=0.0) < 0.0 or array.max(initial=0.0) > 1.0:
        raise InputError("B-mode images must hold finite values in [0, 1]")
    return array


def envelope_from_bmode(bmode: np.ndarray, dynamic_range_db: float = DEFAULT_DYNAMIC_RANGE_DB) -> np.ndarray:
    """Envelope relative to the brightest sample, same shape as ``bmode`` (in [0, 1]), by undoing the log
    compression over ``dynamic_range_db`` (see the module docstring)."""
    if not (math.isfinite(dynamic_range_db) and dynamic_range_db > 0):
        raise InputError(f"the dynamic range must be a positive number of dB, got {dynamic_range_db}")
    return 10.0 ** ((np.asarray(bmode, np.float64) - 1.0) * dynamic_range_db / 20.0)


def _binned_by_depth(images: np.ndarray, regions: Regions, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per label map, the sum and the count of the pixels inside the imaged region per equal bin of normalised
    depth over the map's images (``images`` as :func:`check_images` takes them): two ``(N, bins)`` float64
    arrays."""
    draws = check_images(images, regions)
    maps = len(regions.inside)
    index = np.clip((regions.depth * bins).astype(int), 0, bins - 1) + bins * np.arange(maps)[:, None, None]
    inside = regions.inside
    sums = sum(np.bincount(index[inside], weights=draw[inside], minlength=bins * maps) for draw in draws)
    counts = len(draws) * np.bincount(index[inside], minlength=bins * maps).astype(np.float64)
    return sums.reshape(-1, bins), counts.reshape(-1, bins)


def _profile(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(bins,)`` pooled mean per bin of per-image sums and counts ``(N, bins)``; NaN for an empty bin."""
    total = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, sums.sum(axis=0) / total, np.nan)


def depth_profile(images: np.ndarray, regions: Regions, bins: int = DEPTH_BINS) -> np.ndarray:
    """``(bins,)`` mean intensity of the pixels inside the imaged region per equal bin of normalised depth,
    pooled over the images (``(N, H, W)`` or ``(K, N, H, W)``); NaN for a bin without pixels."""
    return _profile(*_binned_by_depth(images, regions, bins))


def profile_error(profile: np.ndarray, reference: np.ndarray) -> float | None:
    """Mean absolute difference of two depth profiles over the bins both have (None if they share none)."""
    both = np.isfinite(profile) & np.isfinite(reference)
    return float(np.abs(profile[both] - reference[both]).mean()) if both.any() else None


def profile_shape_error(profile: np.ndarray, reference: np.ndarray) -> float | None:
    """:func:`profile_error` of the two depth profiles each divided by its mean over the bins both have
    (None if they share none or either mean is 0): an image set twice as bright has shape error 0."""
    both = np.isfinite(profile) & np.isfinite(reference)
    if not both.any() or min(profile[both].mean(), reference[both].mean()) <= 0:
        return None
    return profile_error(profile[both] / profile[both].mean(), reference[both] / reference[both].mean())


def _paired_bootstrap(
    binned: list[tuple[np.ndarray, np.ndarray]],
    statistic: Callable[[list[np.ndarray]], float | None],
    level: float,
    draws: int,
    seed: int,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval (``level``, two-sided) of ``statistic`` of the depth profiles of image sets
    given by their per-image binned sums and counts (``(N, bins)`` each, image ``i`` of every set of the same label
    map): the maps are redrawn with replacement ``draws`` times (seeded by ``seed``), the same maps for every set.
    None if the statistic is undefined in some draw."""
    lengths = {len(sums) for sums, _ in binned}
    if len(lengths) != 1:
        raise InputError(f"paired image sets must be as long, got lengths {sorted(lengths)}")
    count = lengths.pop()
    if not 0 < level < 1 or draws < 2 or not count:
        raise InputError(
            f"a bootstrap interval needs images, 0 < level < 1 and at least 2 draws, got {count} image(s), "
            f"{level} and {draws}"
        )
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        drawn = rng.integers(count, size=count)
        value = statistic([_profile(sums[drawn], counts[drawn]) for sums, counts in binned])
        if value is None:
            return None
        values.append(value)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def profile_error_interval(
    images: np.ndarray,
    regions: Regions,
    reference_images: np.ndarray,
    reference_regions: Regions,
    level: float = PROFILE_INTERVAL_LEVEL,
    draws: int = PROFILE_INTERVAL_DRAWS,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval (``level``, two-sided) of :func:`profile_error` of ``images`` against
    ``reference_images`` when image ``i`` of one set pairs with image ``i`` of the other (e.g. both of one label
    map; either set may hold ``K`` draws of each, ``(K, N, H, W)``): the pairs are redrawn with replacement
    ``draws`` times (seeded by ``seed``). It says how far the error moves with the label maps drawn. None if the
    two profiles share no bin in some draw."""
    binned = [
        _binned_by_depth(images, regions, DEPTH_BINS),
        _binned_by_depth(reference_images, reference_regions, DEPTH_BINS),
    ]
    return _paired_bootstrap(binned, lambda profiles: profile_error(*profiles), level, draws, seed)


def profile_error_difference(
    images: np.ndarray,
    baseline_images: np.ndarray,
    reference_images: np.ndarray,
    regions: Regions,
    level: float = PROFILE_INTERVAL_LEVEL,
    draws: int = PROFILE_INTERVAL_DRAWS,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """(difference, low, high): :func:`profile_error` of ``images`` minus that of ``baseline_images``, both against
    ``reference_images``, with its percentile bootstrap interval (``level``, two-sided) when image ``i`` of the
    three sets is of one label map (its ``regions``): the maps are redrawn together, so the spread the maps
    share (one set of maps being harder than another for both models) cancels out. A positive difference: the
    baseline's profile is the closer. None if the profiles share no bin (in the sets or some draw).

    Args:
        images, baseline_images, reference_images: ``(N, H, W)`` B-mode in [0, 1], or ``(K, N, H, W)``, ``K``
            draws of each map (redrawn with their map).
        regions: of the label maps, ``(N, H, W)`` each.
    """

    def difference(profiles: list[np.ndarray]) -> float | None:
        profile, baseline, reference = profiles
        errors = profile_error(profile, reference), profile_error(baseline, reference)
        return None if None in errors else errors[0] - errors[1]

    binned = [_binned_by_depth(values, regions, DEPTH_BINS) for values in (images, baseline_images, reference_images)]
    value = difference([_profile(*sets) for sets in binned])
    interval = _paired_bootstrap(binned, difference, level, draws, seed)
    return None if value is None or interval is None else (value, *interval)


def _mean_intensity_sd(images: np.ndarray, regions: Regions) -> float | None:
    """Standard deviation over images ``(N, H, W)`` of each one's mean inside its imaged region (images without
    one left out); None for fewer than two images."""
    means = [image[inside].mean() for image, inside in zip(images, regions.inside) if inside.any()]
    return float(np.std(means)) if len(means) >= 2 else None


def envelope_snr(envelopes: np.ndarray, regions: Regions) -> float | None:
    """Mean over images of mean / std of the envelope ``(N, H, W)`` in each image's ``signal`` region.

    Images whose region holds fewer than 16 pixels or has no spread are left out; None if all are.
    """
    ratios = []
    for envelope, region in zip(np.asarray(envelopes, np.float64), regions.signal):
        values = envelope[region]
        if values.size >= _MIN_SNR_PIXELS and values.std() > 0:
            ratios.append(values.mean() / values.std())
    return float(np.mean(ratios)) if ratios else None


def speckle_fwhm(envelopes: np.ndarray, regions: Regions, patch: int = SPECKLE_PATCH) -> tuple[float, float] | None:
    """(axial, lateral) FWHM in pixels of the mean autocorrelation of the envelopes ``(N, H, W)`` over their
    tissue tiles of ``patch x patch`` pixels; None if no tile lies wholly in tissue or all are uniform."""
    with np.errstate(invalid="ignore"):  # an image whose tiles are all uniform has no speckle: 0 / 0
        correlations = [
            correlation
            for envelope, tissue in zip(np.asarray(envelopes, np.float64), regions.tissue)
            if (correlation := autocorrelation(envelope, tissue, patch)) is not None and np.isfinite(correlation).all()
        ]
    if not correlations:
        return None
    mean = np.mean(correlations, axis=0)
    centre = patch - 1
    return 2.0 * half_width(mean[centre:, centre]), 2.0 * half_width(mean[centre, centre:])


def frechet_distance(features: torch.Tensor, reference: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two sets of feature vectors ``(N, F)`` and ``(M, F)``
    (MONAI ``FIDMetric``; squared feature units)."""
    if features.ndim != 2 or reference.ndim != 2 or features.shape[1] != reference.shape[1]:
        raise InputError(
            f"features must be (N, F) and (M, F), got {tuple(features.shape)} and {tuple(reference.shape)}"
        )
    if min(len(features), len(reference)) < 2:
        raise InputError("a Frechet distance needs at least two feature vectors per set")
    return max(0.0, float(FIDMetric()(features.double(), reference.double())))


def eroded(mask: np.ndarray, pixels: int = 1) -> np.ndarray:
    """``(N, H, W)`` bool masks eroded by ``pixels`` in-plane (tiles then keep clear of region borders)."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # no erosion across images
    return binary_erosion(mask, structure, iterations=pixels) if pixels else np.asarray(mask, bool)


def realism(
    images: np.ndarray,
    regions: Regions,
    features: torch.Tensor | None = None,
    reference: tuple[np.ndarray, Regions, torch.Tensor | None] | None = None,
    dynamic_range_db: float = DEFAULT_DYNAMIC_RANGE_DB,
    paired: bool = False,
) -> dict[str, float | None]:
    """The figures of ``images`` ``(N, H, W)`` (or ``(K, N, H, W)``, ``K`` draws of each map, pooled):
    ``mean_intensity``, ``mean_intensity_sd``, ``snr``, ``speckle_axial_px``, ``speckle_lateral_px`` and, with a
    ``reference`` (its images, regions and features; ``features`` of every image, draw after draw), ``profile_error``,
    ``profile_shape_error`` and ``frechet`` (with both features); with a ``paired`` reference (image ``i`` of
    each set of the same label map), ``profile_error_low`` and ``profile_error_high``, the 90 % bootstrap
    interval of the profile error. A figure that is undefined (no tissue, too few images) is None."""
    draws = check_images(images, regions)
    values, pooled = draws.reshape(-1, *draws.shape[2:]), regions.repeated(len(draws))
    envelopes = envelope_from_bmode(values, dynamic_range_db)
    speckle = speckle_fwhm(envelopes, pooled)
    figures: dict[str, float | None] = {
        "mean_intensity": float(values[pooled.inside].mean()) if pooled.inside.any() else None,
        "mean_intensity_sd": _mean_intensity_sd(values, pooled),
        "snr": envelope_snr(envelopes, pooled),
        "speckle_axial_px": None if speckle is None else speckle[0],
        "speckle_lateral_px": None if speckle is None else speckle[1],
    }
    if reference is not None:
        reference_images, reference_regions, reference_features = reference
        profiles = depth_profile(draws, regions), depth_profile(reference_images, reference_regions)
        figures["profile_error"] = profile_error(*profiles)
        if paired:
            interval = profile_error_interval(draws, regions, reference_images, reference_regions)
            figures["profile_error_low"], figures["profile_error_high"] = interval or (None, None)
        figures["profile_shape_error"] = profile_shape_error(*profiles)
        usable = features is not None and reference_features is not None
        usable = usable and min(len(features), len(reference_features)) >= 2
        figures["frechet"] = frechet_distance(features, reference_features) if usable else None
    return figures
