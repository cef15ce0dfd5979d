"""Lateral super-resolution of whole images and sequences: a bundled network run in overlapping tiles, or a
classical interpolation, with the input's values mapped to the network's B-mode range and back.

Shapes: a frame is ``(H, W)``, H rows (depth), W lines (lateral, x); a sequence ``(K, H, W)``. Every
method returns ``(..., H, W F)`` on the fine grid of :mod:`deepultrasound.superres.degradation`
(phase 0: input line k is output line k F).

**Tiles.** :class:`SuperResolver` cuts a frame into tiles of at most ``tile`` rows by ``tile`` lines,
runs each with a margin of :func:`receptive_radius` rows and lines of its neighbours (where the frame
has them), and keeps only the tile's own part of the output. An output pixel depends on input pixels
within the receptive radius only, so the tiled result equals the untiled one (to float rounding,
the convolutions of different sizes sum in different orders) while memory stays bounded by the tile
size, whatever the size of the frame. For SRResNet the radius is, in rows, 4 (head) + 2 per residual
block + 1 (body) + 1 per upsampling step + 4 (tail) and, in input lines, the same counted back
through each pixel shuffle (rounded up): x4 with 16 blocks, 43 rows and 40 lines; with 6 blocks, 23
and 20; the cubic skip path reaches 2 lines.

**Narrow frames.** Frames narrower than the network's receptive field (``2 r + 1`` lines) are padded
with copies of their edge lines to that width and the output cropped back (a logged warning, once
per width and resolver).

**Values** (:class:`ValueMapping`): the networks take and return B-mode in [0, 1] (manifest
normalisation ``bmode_unit``). uint8 input is mapped by its dtype range (value / 255, the display
values the networks were trained on); floating-point values within [0, 1] as they are (B-mode in
[0, 1] already); every other input by the minimum and maximum of its values (all frames together),
because 10- to 14-bit scanner data stored in 16 bits would fill only a sliver of the dtype range.
The output is mapped back by the same affine map and returned in the input's dtype: floats
unclipped, integers rounded and clipped to the dtype's range. The classical methods are
affine-equivariant, so for them the mapping changes nothing but float rounding.
NaN and infinite values are refused with their count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from deepultrasound.errors import BundleError, InputError
from deepultrasound.io.image import Image
from deepultrasound.runtime import (
    AUTO_BACKEND,
    Bundle,
    Manifest,
    build_architecture,
    create_predictor,
    find_bundles,
    load_bundle,
    model_directories,
)
from deepultrasound.runtime.inference_specs import SuperResolutionInference
from deepultrasound.runtime.manifest import MANIFEST_NAME
from deepultrasound.superres.degradation import METHODS, PHASE, check_factor, interpolation_kernel, upsample_lines
from deepultrasound.superres.networks import GENERATOR, LateralPixelShuffle
from deepultrasound.superres.training_task import NORMALISATION

logger = logging.getLogger(__name__)

DEFAULT_TILE = 256
"""Largest tile, in input rows and input lines: a feature map of a 64-channel SRResNet x4 then holds at most
64 x (256 + 2 x 43) x 4 (256 + 2 x 40) floats (120 MB). Measured on 2 CPU cores (ONNX Runtime), 2000 x 128
-> 2000 x 512 with an untrained 32-channel, 6-block SRResNet x4: peak memory 130 MB above the loaded model
(untiled: 425 MB)."""
TASK = "superres"
"""The ``task`` of super-resolution bundles, as model selectors filter it."""


def receptive_radius(model: nn.Module) -> tuple[int, int]:
    """(rows, input lines) on each side of an output pixel that it may depend on, for an :class:`SRResNet`.

    Counted from the output back to the input over the network's convolutions in reverse order of
    registration (SRResNet registers its layers in the order it runs them): each convolution adds
    its reach; a :class:`LateralPixelShuffle` of step s turns a reach of r fine lines into
    ceil(r / s) coarse ones. Residual additions add nothing beyond their longer branch, which is
    counted; the cubic skip path reaches 2 input lines.
    """
    rows = lines = 0
    for module in reversed(list(model.modules())):
        if isinstance(module, nn.Conv2d):
            reach = [
                max(padding, size - 1 - padding) * dilation
                for size, padding, dilation in zip(module.kernel_size, module.padding, module.dilation)
            ]
            rows, lines = rows + reach[0], lines + reach[1]
        elif isinstance(module, LateralPixelShuffle):
            lines = math.ceil(lines / module.factor)
    if getattr(model, "skip", False):
        factor = model.factor
        lines = max(lines, (interpolation_kernel(factor, "cubic").numel() + 1) // (2 * factor))
    return rows, lines


def tile_spans(length: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis of ``length`` pixels: ``(start, stop, first, last)`` each, the tile's own pixels
    ``start:stop`` (at most ``tile``, sizes within one of each other, covering the axis once) and the
    pixels ``first:last`` run with it (``margin`` more on each side, within the axis)."""
    count = -(-length // tile)
    edges = np.linspace(0, length, count + 1).round().astype(int).tolist()
    return [(a, b, max(0, a - margin), min(length, b + margin)) for a, b in zip(edges[:-1], edges[1:])]


@dataclasses.dataclass(frozen=True)
class ValueMapping:
    """The affine map from an input's values to B-mode in [0, 1] (``(value - low) / (high - low)``) and back.

    Attributes:
        low, high: the values mapped to 0 and 1 (see the module docstring); a constant input gets
            ``high = low + 1``.
        dtype: the input's dtype, which :meth:`from_unit` returns.
        basis: how ``low`` and ``high`` were chosen, for the log.
    """

    low: float
    high: float
    dtype: np.dtype
    basis: str

    @classmethod
    def of(cls, array: np.ndarray) -> ValueMapping:
        """The mapping of ``array`` (any shape, integer or floating point).

        Raises:
            InputError: an empty array, a dtype that is not a real number, or NaN/infinite values.
        """
        dtype = array.dtype
        if array.size == 0:
            raise InputError(f"the image is empty (shape {array.shape})")
        if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise InputError(f"the image has dtype {dtype}; expected integer or floating-point values")
        if dtype == np.uint8:
            return cls(0.0, 255.0, dtype, "uint8 range: value / 255")
        if np.issubdtype(dtype, np.floating):
            nan, infinite = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            if nan or infinite:
                raise InputError(
                    f"the image holds {nan} NaN and {infinite} infinite value(s) of {array.size}; "
                    "replace them (e.g. by the nearest valid value) before super-resolution"
                )
        low, high = float(array.min()), float(array.max())
        if np.issubdtype(dtype, np.floating) and low >= 0.0 and high <= 1.0:
            return cls(0.0, 1.0, dtype, "identity: floating-point values within [0, 1] are B-mode in [0, 1]")
        return cls(low, high if high > low else low + 1.0, dtype, f"its {dtype} minimum {low:g} and maximum {high:g}")

    @property
    def _unit_dtype(self) -> type[np.floating]:
        return np.float64 if self.dtype == np.float64 else np.float32

    def to_unit(self, array: np.ndarray) -> np.ndarray:
        """``array`` mapped to [0, 1]: float32 (float64 for float64 input)."""
        unit = (array.astype(np.float64) - self.low) / (self.high - self.low)
        return unit.astype(self._unit_dtype)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """``unit`` mapped back to the input's values and dtype (integers rounded and clipped to their range)."""
        values = unit.astype(np.float64) * (self.high - self.low) + self.low
        if np.issubdtype(self.dtype, np.integer):
            bounds = np.iinfo(self.dtype)
            return np.clip(np.rint(values), bounds.min, bounds.max).astype(self.dtype)
        return values.astype(self.dtype)


def installed_models(directories: list[Path] | None = None) -> dict[int, list[tuple[Path, str]]]:
    """Installed super-resolution bundles by factor: (folder, manifest name) each, in the order found (the
    folders of ``directories`` in order, bundles by folder name within each).

    Only manifests are read (the chosen bundle is verified when it is loaded); folders whose manifest
    cannot be read are skipped.

    Args:
        directories: where to look; None: :func:`deepultrasound.runtime.model_directories`.
    """
    found: dict[int, list[tuple[Path, str]]] = {}
    for folder in find_bundles(model_directories() if directories is None else directories):
        try:
            manifest = Manifest.model_validate_json((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if manifest.task == TASK and isinstance(manifest.inference, SuperResolutionInference):
            found.setdefault(manifest.inference.factor, []).append((folder, manifest.name))
    return dict(sorted(found.items()))


def resolve_model(model: str | os.PathLike[str] | None, factor: int, directories: list[Path] | None = None) -> Path:
    """The bundle folder to run: ``model`` as an existing path, else an installed super-resolution bundle of
    that folder or manifest name; None: the first installed bundle of ``factor`` (the package's own models
    come first, then those of ``DEEPULTRASOUND_MODELS``).

    Args:
        directories: where bundles are installed (see :func:`installed_models`).

    Raises:
        BundleError: nothing matches; the message lists the factors that have models and suggests a
            classical method.
    """
    installed = installed_models(directories)
    have = ", ".join(f"x{f} ({', '.join(path.name for path, _ in models)})" for f, models in installed.items())
    have = have or "none"
    if model is not None:
        if Path(model).exists():
            return Path(model)
        for path, name in (entry for models in installed.values() for entry in models):
            if str(model) in (path.name, name):
                return path
        raise BundleError(
            f"model {str(model)!r} is neither a bundle folder nor an installed super-resolution model "
            f"(installed: {have}); pass a bundle folder, or use --method cubic for a classical interpolation"
        )
    if factor not in installed:
        raise BundleError(
            f"no super-resolution model for factor {factor} is installed (models exist for: {have}); "
            f"use --method cubic (or linear) for a classical interpolation, or pass --model BUNDLE"
        )
    return installed[factor][0][0]


class SuperResolver:
    """A super-resolution bundle, run on frames in overlapping tiles (see the module docstring).

    Args:
        bundle: a loaded bundle, or a bundle folder (loaded and verified).
        factor: the factor asked for; it must be the bundle's (None: the bundle's).
        tile: largest tile, in input rows and lines (>= 1).
        backend, device: as :func:`deepultrasound.runtime.create_predictor` takes them.

    Attributes:
        factor: the lateral factor F.
        blur_sigma_lines: (lowest, highest) beam-profile blur of the degradations the model was trained to
            undo (Gaussian sigma in fine lines; 0: pure line decimation).
        margin: (rows, lines) of context run with each tile: :func:`receptive_radius`.
        name: the bundle's name and version, for logs.

    Raises:
        BundleError: not a super-resolution bundle of an architecture whose receptive field is known,
            or one that takes other values than B-mode in [0, 1].
        InputError: a factor other than the bundle's, or a tile below 1.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        factor: int | None = None,
        tile: int = DEFAULT_TILE,
        backend: str = AUTO_BACKEND,
        device: str | torch.device | None = None,
    ) -> None:
        bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = bundle.manifest
        inference = manifest.inference
        if not isinstance(inference, SuperResolutionInference):
            kind = inference.kind if inference is not None else "none"
            raise BundleError(f"bundle {bundle.path} is not a super-resolution model (inference kind {kind!r})")
        if inference.phase != PHASE or manifest.architecture != GENERATOR:
            raise BundleError(
                f"bundle {bundle.path}: phase {inference.phase} and architecture {manifest.architecture!r} are not "
                f"supported; this engine runs {GENERATOR!r} with phase {PHASE}"
            )
        if manifest.normalisation.get("kind") != NORMALISATION["kind"]:
            raise BundleError(
                f"bundle {bundle.path} has normalisation {manifest.normalisation.get('kind')!r}; "
                f"super-resolution runs {NORMALISATION['kind']!r} models (B-mode in [0, 1])"
            )
        if factor is not None and factor != inference.factor:
            raise InputError(
                f"model {manifest.name} upsamples x{inference.factor}, not x{factor}; "
                f"choose a model of factor {factor} or use --factor {inference.factor}"
            )
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise InputError(f"the tile size must be a positive number of pixels, got {tile!r}")
        self.factor = inference.factor
        self.blur_sigma_lines: tuple[float, float] = tuple(inference.blur_sigma_lines)
        self.tile = int(tile)
        self._padded_widths: set[int] = set()
        self.margin = receptive_radius(build_architecture(manifest.architecture, manifest.architecture_args))
        self.name = f"{manifest.name} {manifest.version}"
        self.predictor = create_predictor(bundle, backend=backend, device=device)

    def tiles_per_frame(self, shape: tuple[int, int]) -> int:
        """Number of tiles a frame of ``shape`` (rows, lines) is run in."""
        rows, lines = shape[0], max(shape[1], self.min_lines)
        return -(-rows // self.tile) * -(-lines // self.tile)

    @property
    def min_lines(self) -> int:
        """Frames narrower than this (the receptive field, ``2 r + 1`` lines) are padded to it."""
        return 2 * self.margin[1] + 1

    def __call__(self, frames: np.ndarray, progress: Callable[[], object] | None = None) -> np.ndarray:
        """``frames`` ``(K, H, W)`` B-mode in [0, 1] -> ``(K, H, W F)`` float32, ``progress()`` called per tile."""
        _, _, lines = frames.shape
        pad = max(0, self.min_lines - lines)
        if pad and lines not in self._padded_widths:  # once per width: a data set of such images warns once
            self._padded_widths.add(lines)
            logger.warning(
                "the image has %d line(s), fewer than the %d of the network's receptive field: padded with copies of "
                "its edge lines to %d and the output cropped back",
                lines,
                self.min_lines,
                self.min_lines,
            )
        left = pad // 2
        padded = np.pad(frames, ((0, 0), (0, 0), (left, pad - left)), mode="edge")
        fine = np.empty((*padded.shape[:2], padded.shape[2] * self.factor), np.float32)
        for frame, out in zip(padded, fine):
            self._frame(frame.astype(np.float32), out, progress)
        return fine[..., left * self.factor : (left + lines) * self.factor]

    def _frame(self, low: np.ndarray, fine: np.ndarray, progress: Callable[[], object] | None) -> None:
        """One frame ``(H, W)`` into ``fine`` ``(H, W F)``, tile by tile."""
        rows, lines = low.shape
        factor = self.factor
        for top, bottom, first_row, last_row in tile_spans(rows, self.tile, self.margin[0]):
            for left, right, first_line, last_line in tile_spans(lines, self.tile, self.margin[1]):
                (window,) = self.predictor.predict(low[None, None, first_row:last_row, first_line:last_line])
                fine[top:bottom, left * factor : right * factor] = window[
                    0,
                    0,
                    top - first_row : bottom - first_row,
                    (left - first_line) * factor : (right - first_line) * factor,
                ]
                if progress is not None:
                    progress()


def superresolve(
    array: np.ndarray,
    factor: int,
    model: SuperResolver | str | os.PathLike[str] | None = None,
    method: str | None = None,
    tile: int = DEFAULT_TILE,
    device: str | torch.device | None = None,
    backend: str = AUTO_BACKEND,
    progress: bool = False,
) -> np.ndarray:
    """Upsample the lines of a grey frame ``(H, W)`` or sequence ``(K, H, W)`` ``factor`` times: ``(..., H, W F)``
    in the input's dtype (see the module docstring for the value mapping).

    Args:
        model: a :class:`SuperResolver`, a bundle folder or installed model name, or None for the
            installed model of ``factor`` (:func:`resolve_model`).
        method: "linear" or "cubic" interpolation (:func:`upsample_lines`) instead of a network.
        tile, device, backend: how a network runs (:class:`SuperResolver`).
        progress: show a progress bar over tiles (or frames, for a classical method).

    Raises:
        InputError: a factor below 2, an unknown method, both a model and a method, not a 2D or 3D array,
            NaN or infinite values.
        BundleError: no model for ``factor``, or an unusable bundle.
    """
    check_factor(factor)
    if method is not None and method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method is not None and model is not None:
        raise InputError(f"give a model or a method, not both (model {model!r}, method {method!r})")
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise InputError(f"expected a grey (H, W) image or (K, H, W) sequence, got shape {array.shape}")
    mapping = ValueMapping.of(array)
    logger.info("values mapped to [0, 1] by %s, and back", mapping.basis)
    frames = mapping.to_unit(array.reshape(-1, *array.shape[-2:]))
    if method is not None:
        bar = tqdm(frames, desc=method, unit="frame", disable=not progress or len(frames) < 2, leave=False)
        fine = np.stack([upsample_lines(torch.from_numpy(frame), factor, method).numpy() for frame in bar])
    else:
        if not isinstance(model, SuperResolver):
            model = SuperResolver(resolve_model(model, factor), factor, tile, backend, device)
        if model.factor != factor:
            raise InputError(f"model {model.name} upsamples x{model.factor}, not x{factor}")
        total = len(frames) * model.tiles_per_frame(frames.shape[-2:])
        with tqdm(total=total, desc=model.name, unit="tile", disable=not progress or total < 2, leave=False) as bar:
            fine = model(frames, bar.update)
    return mapping.from_unit(fine).reshape(*array.shape[:-1], array.shape[-1] * factor)


def to_grey(image: Image) -> Image:
    """A colour (RGB or RGBA) image as grey: the mean of R, G and B (alpha ignored), in the input's dtype
    (integers rounded), with a logged warning; a grey image as it is.

    Raises:
        InputError: a multichannel image of other than 3 or 4 channels.
    """
    if not image.multichannel:
        return image
    channels = image.array.shape[-1]
    if channels not in (3, 4):
        raise InputError(f"the image has {channels} channels per pixel; expected grey, RGB or RGBA")
    logger.warning("colour image (%d channels) converted to grey: the mean of R, G and B; the output is grey", channels)
    grey = image.array[..., :3].mean(axis=-1)
    if np.issubdtype(image.array.dtype, np.integer):
        grey = np.rint(grey)
    return dataclasses.replace(image, array=grey.astype(image.array.dtype), multichannel=False)


def superresolve_image(image: Image, factor: int, **options: object) -> Image:
    """:func:`superresolve` on an image or sequence with geometry (colour converted by :func:`to_grey`): the
    output lies on the fine grid, x spacing divided by ``factor``, same origin (input line k is output line
    k F) and direction; ``options`` are those of :func:`superresolve`."""
    grey = to_grey(image)
    fine = superresolve(grey.array, factor, **options)
    spacing = (grey.spacing[0] / factor, *grey.spacing[1:])
    return dataclasses.replace(grey, array=fine, spacing=spacing)
