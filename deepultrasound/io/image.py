"""The in-memory image: a numpy array plus its geometry.

Axis conventions (followed by every reader and writer in ``deepultrasound.io``):

- a 2D image array is ``(rows, cols)`` = ``(axial / depth, lateral)``;
- a sequence is a 3D array ``(frames, rows, cols)``; on disk it is a 3D volume whose third
  (slowest) axis is the frame axis;
- a multichannel image (RGB video, vector field) adds one trailing axis:
  ``(rows, cols, C)`` or ``(frames, rows, cols, C)``.

Geometry is kept in SimpleITK order, i.e. reversed with respect to the array axes:
``spacing = (x, y[, z]) = (lateral mm per col, axial mm per row[, seconds per frame])``,
``origin`` in the same order and units, ``direction`` a row-major flattened ``ndim x ndim`` matrix.
Named properties (``lateral_spacing_mm``, ``axial_spacing_mm``, ``frame_interval``) spare callers
the index arithmetic. Files that do not know their frame interval store 1 on the frame axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deepultrasound.errors import InputError


@dataclass(frozen=True, eq=False)
class Image:
    """An image or image sequence with its geometry.

    Args:
        array: ``(rows, cols)`` or ``(frames, rows, cols)``, plus a trailing channel axis when
            ``multichannel``. Any numeric dtype.
        spacing: ``(lateral_mm, axial_mm[, frame_interval_s])``; empty means 1 on every axis.
        origin: position of the first sample, same order and units; empty means zeros.
        direction: row-major ``ndim x ndim`` direction cosines; empty means identity.
        multichannel: the last array axis holds channels (RGB, vector components).

    ``dataclasses.replace(image, array=new)`` gives a new image on the same geometry.
    """

    array: np.ndarray
    spacing: tuple[float, ...] = ()
    origin: tuple[float, ...] = ()
    direction: tuple[float, ...] = ()
    multichannel: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise InputError(f"Image array must be a numpy array, got {type(self.array).__name__}")
        ndim = self.array.ndim - int(self.multichannel)
        if ndim not in (2, 3):
            raise InputError(
                f"Image array of shape {self.array.shape} (multichannel={self.multichannel}) has "
                f"{ndim} spatial axes; expected 2 (rows, cols) or 3 (frames, rows, cols)"
            )
        spacing = _floats("spacing", self.spacing or (1.0,) * ndim, ndim)
        if not all(s > 0 for s in spacing):
            raise InputError(f"Image spacing must be positive, got {spacing}")
        origin = _floats("origin", self.origin or (0.0,) * ndim, ndim)
        direction = _floats("direction", self.direction or tuple(np.eye(ndim).ravel()), ndim * ndim)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @property
    def ndim(self) -> int:
        """Number of spatial axes: 2 for an image, 3 for a sequence."""
        return len(self.spacing)

    @property
    def is_sequence(self) -> bool:
        """True for a ``(frames, rows, cols)`` sequence."""
        return self.ndim == 3

    @property
    def lateral_spacing_mm(self) -> float:
        """Distance between neighbouring columns (beam lines), mm."""
        return self.spacing[0]

    @property
    def axial_spacing_mm(self) -> float:
        """Distance between neighbouring rows (depth samples), mm."""
        return self.spacing[1]

    @property
    def frame_interval(self) -> float | None:
        """Time between frames in seconds for a sequence, None for a 2D image."""
        return self.spacing[2] if self.is_sequence else None

    def frame(self, index: int) -> Image:
        """Frame ``index`` of a sequence as a 2D image with the in-plane geometry."""
        if not self.is_sequence:
            raise InputError("frame() needs a (frames, rows, cols) sequence, got a 2D image")
        count = self.array.shape[0]
        if not -count <= index < count:
            raise InputError(f"frame index {index} is out of range for a sequence of {count} frames")
        direction = np.asarray(self.direction).reshape(3, 3)[:2, :2]
        return Image(self.array[index], self.spacing[:2], self.origin[:2], tuple(direction.ravel()), self.multichannel)


def _floats(name: str, values: tuple[float, ...], length: int) -> tuple[float, ...]:
    """Check a geometry tuple's length and finiteness; return it as plain floats."""
    result = tuple(float(v) for v in values)
    if len(result) != length or not all(math.isfinite(v) for v in result):
        raise InputError(f"Image {name} must hold {length} finite numbers, got {values}")
    return result
