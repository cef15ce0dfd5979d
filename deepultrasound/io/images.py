"""Read and write images and sequences with their geometry (SimpleITK).

Formats: MetaImage ``.mha`` and ``.mhd`` (+ ``.raw``), NRRD ``.nrrd``, NIfTI ``.nii`` and
``.nii.gz``; ``.png`` is readable too (no geometry: spacing 1). Arrays follow the conventions of
``deepultrasound.io.image``: ``(rows, cols)`` = ``(axial, lateral)`` and ``(frames, rows, cols)``
with spacing ``(lateral mm, axial mm[, frame interval s])``.

Writes are atomic and keep the dtype (uint8, int16, float32, ...). Geometry round-trips exactly
through MetaImage and NRRD; NIfTI stores it as float32 (relative error below 1e-7).
Problems with a file raise ``FileFormatError`` naming it; problems with the data (wrong
dimensionality, NaN/Inf when finite data was asked for) raise ``InputError``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deepultrasound.errors import FileFormatError, InputError
from deepultrasound.io.atomic import atomic_write
from deepultrasound.io.image import Image
from deepultrasound.io.integrity import check_image_file, sitk_reason

WRITE_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nii", ".nii.gz")
READ_SUFFIXES = (*WRITE_SUFFIXES, ".png")
WRITE_DTYPES = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"))


def image_suffix(path: str | os.PathLike[str], allowed: tuple[str, ...] = READ_SUFFIXES) -> str:
    """The lower-case format suffix of ``path`` (``".nii.gz"`` counts as one), checked against ``allowed``."""
    name = Path(path).name.lower()
    for suffix in sorted(allowed, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise FileFormatError(f"{path} has an unsupported extension; use one of {', '.join(allowed)}")


def from_sitk(sitk_image: sitk.Image) -> Image:
    """Convert a SimpleITK image (2D or 3D, scalar or vector pixels) to an ``Image``."""
    return Image(
        sitk.GetArrayFromImage(sitk_image),
        sitk_image.GetSpacing(),
        sitk_image.GetOrigin(),
        sitk_image.GetDirection(),
        multichannel=sitk_image.GetNumberOfComponentsPerPixel() > 1,
    )


def to_sitk(image: Image) -> sitk.Image:
    """Convert an ``Image`` to a SimpleITK image with the same geometry and dtype."""
    if image.array.dtype not in WRITE_DTYPES:
        raise InputError(
            f"cannot store an image of dtype {image.array.dtype}; convert it to one of "
            f"{', '.join(str(d) for d in WRITE_DTYPES)} (e.g. bool -> uint8, float16 -> float32)"
        )
    result = sitk.GetImageFromArray(image.array, isVector=image.multichannel)
    result.SetSpacing(image.spacing)
    result.SetOrigin(image.origin)
    result.SetDirection(image.direction)
    return result


def read_image(path: str | os.PathLike[str], *, ndim: int | None = None, require_finite: bool = False) -> Image:
    """Read a 2D image or a 3D sequence with its geometry.

    Args:
        path: an image file (see ``READ_SUFFIXES``); for ``.mhd`` the header.
        ndim: required number of spatial axes (2 or 3); None accepts both. With ``ndim=2`` a
            3D file holding a single slice (as CAMUS ``.mhd`` images are stored) is read as 2D.
        require_finite: raise InputError if the pixels hold NaN or Inf.

    Returns:
        ``Image`` with array ``(rows, cols)`` or ``(frames, rows, cols)`` in the file's dtype.
    """
    path = Path(path)
    suffix = image_suffix(path)
    check_image_file(path, suffix)
    try:
        image = from_sitk(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise FileFormatError(f"{path} could not be read as {suffix}: {sitk_reason(exc)}") from exc
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    if ndim == 2 and image.ndim == 3 and image.array.shape[0] == 1:
        image = image.frame(0)
    if ndim is not None and image.ndim != ndim:
        wanted = "a 2D (rows, cols) image" if ndim == 2 else "a 3D (frames, rows, cols) sequence"
        raise InputError(f"{path} holds a {image.ndim}D image of shape {image.array.shape}; expected {wanted}")
    if require_finite:
        _require_finite(image.array, path)
    return image


def read_sequence(path: str | os.PathLike[str], *, min_frames: int = 1, require_finite: bool = False) -> Image:
    """Read a ``(frames, rows, cols)`` sequence stored as a 3D volume whose third axis is time.

    Args:
        path: the sequence file.
        min_frames: fewest frames accepted (e.g. 2 for motion estimation).
        require_finite: raise InputError if the pixels hold NaN or Inf.
    """
    image = read_image(path, ndim=3, require_finite=require_finite)
    if image.array.shape[0] < min_frames:
        raise InputError(f"{path} holds {image.array.shape[0]} frame(s); at least {min_frames} are needed")
    return image


def write_image(path: str | os.PathLike[str], image: Image) -> Path:
    """Write ``image`` atomically with its geometry and dtype; return the written path.

    A ``.mhd`` target gets its ``.raw`` data file beside it, both moved into place together; the
    header names the final data file. Missing parent folders are created.
    """
    path = Path(path)
    image_suffix(path, WRITE_SUFFIXES)
    sitk_image = to_sitk(image)
    with atomic_write(path) as staged:
        try:
            sitk.WriteImage(sitk_image, str(staged))
        except RuntimeError as exc:
            raise FileFormatError(f"could not write {path}: {sitk_reason(exc)}") from exc
    return path


def _require_finite(array: np.ndarray, path: Path) -> None:
    """Raise InputError naming ``path`` if ``array`` holds NaN or Inf."""
    if np.issubdtype(array.dtype, np.floating):
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        if nan or inf:
            raise InputError(f"{path} holds {nan} NaN and {inf} infinite value(s); finite data is required")
