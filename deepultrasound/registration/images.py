"""Images as registration takes and gives them: input checks, grids, displacements in mm, label maps.

- Frames are grey 2D images of at least :data:`MIN_SIZE` pixels per axis with finite values;
  colour (RGB/RGBA, video frames included) becomes grey by luma ``0.299 R + 0.587 G + 0.114 B``
  (OpenCV's), logged as a warning.
- A moving image on another grid than the fixed one is resampled onto the fixed grid (SimpleITK,
  linear; label maps nearest-neighbour) before registration, so every displacement lies on the
  fixed grid.
- A displacement in pixels ``(2, H, W)`` (channel 0 lateral) becomes a physical vector image
  ``(H, W, 2)`` float32 in mm on the fixed grid (the ITK displacement-field convention: the fixed
  point ``x`` maps to ``x + d(x)`` in the moving image): ``d = D diag(spacing) u`` with D the
  image direction.
- Label maps hold CAMUS values only (:class:`~deepultrasound.io.camus.CamusLabel`: 0 background,
  1 LV cavity, 2 myocardium, 3 left atrium) and are warped as the nearest label of the warped soft
  one-hot (:func:`~deepultrasound.spatial.warp_labels`): no value between two others is invented.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import SimpleITK as sitk
import torch

from deepultrasound.errors import InputError
from deepultrasound.io import Image, from_sitk, to_sitk
from deepultrasound.io.camus import CamusLabel
from deepultrasound.spatial import warp_image, warp_labels

logger = logging.getLogger(__name__)

MIN_SIZE = 32
"""Smallest accepted number of rows and of columns of a frame."""
LUMA = np.array([0.299, 0.587, 0.114])
"""Weights of R, G and B in the grey value of a colour pixel."""
LABEL_VALUES = tuple(int(label) for label in CamusLabel)


def grey(image: Image, name: str = "image") -> Image:
    """``image`` with one channel. RGB(A) whose R, G and B agree (grey stored as colour, as decoded videos are)
    keeps one of them; colour is converted by :data:`LUMA` to float32, with a logged warning saying so."""
    if not image.multichannel:
        return image
    channels = image.array.shape[-1]
    if channels not in (3, 4):
        raise InputError(f"the {name} has {channels} channels per pixel; expected grey, RGB or RGBA")
    rgb = image.array[..., :3]
    if (rgb == rgb[..., :1]).all():
        return dataclasses.replace(image, array=np.ascontiguousarray(rgb[..., 0]), multichannel=False)
    logger.warning("the %s is in colour: converted to grey (0.299 R + 0.587 G + 0.114 B)", name)
    values = (rgb.astype(np.float64) @ LUMA).astype(np.float32)
    return dataclasses.replace(image, array=values, multichannel=False)


def check_frames(image: Image, name: str = "image") -> Image:
    """A grey image or sequence whose frames are at least :data:`MIN_SIZE` pixels per axis, finite and real."""
    image = grey(image, name)
    array = image.array
    if array.dtype.kind not in "iuf":  # signed, unsigned integers and floats; not bool or complex
        raise InputError(f"the {name} has dtype {array.dtype}; expected integer or floating-point grey values")
    if min(array.shape[-2:]) < MIN_SIZE:
        raise InputError(
            f"the {name}'s frames are {array.shape[-2]} x {array.shape[-1]} pixels; registration needs at least "
            f"{MIN_SIZE} x {MIN_SIZE}"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"the {name} holds {int((~np.isfinite(array)).sum())} NaN or infinite value(s)")
    return image


def check_labels(labels: Image, shape: tuple[int, int], name: str = "label map") -> np.ndarray:
    """The ``(H, W)`` uint8 CAMUS label array of a 2D label image of ``shape``; InputError otherwise."""
    if labels.multichannel or labels.ndim != 2:
        raise InputError(f"the {name} must be a 2D single-channel image, got array shape {labels.array.shape}")
    if labels.array.shape != tuple(shape):
        raise InputError(
            f"the {name} is {labels.array.shape[0]} x {labels.array.shape[1]} pixels but the image is "
            f"{shape[0]} x {shape[1]}; give labels of the same size"
        )
    values = np.unique(labels.array)
    outside = [v for v in values.tolist() if v not in LABEL_VALUES]
    if outside:
        shown = ", ".join(f"{v:g}" for v in outside[:8])
        raise InputError(
            f"the {name} holds values {shown} outside the CAMUS convention (0 background, 1 LV cavity, "
            "2 myocardium, 3 left atrium)"
        )
    return labels.array.astype(np.uint8)


def same_grid(a: Image, b: Image, tolerance: float = 1e-6) -> bool:
    """True when two 2D images have the same size, spacing, origin and direction."""
    return a.array.shape[:2] == b.array.shape[:2] and all(
        np.allclose(x, y, rtol=tolerance, atol=tolerance)
        for x, y in ((a.spacing, b.spacing), (a.origin, b.origin), (a.direction, b.direction))
    )


def resample_onto(image: Image, reference: Image, labels: bool = False) -> Image:
    """``image`` resampled onto ``reference``'s grid (linear; nearest neighbour for ``labels``), 0 outside."""
    if same_grid(image, reference):
        return image
    logger.info("resampling onto the fixed image's grid (%s)", "nearest neighbour" if labels else "linear")
    source = to_sitk(image if labels else dataclasses.replace(image, array=image.array.astype(np.float32)))
    grid = to_sitk(dataclasses.replace(reference, array=np.zeros(reference.array.shape[:2], np.uint8)))
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    resampled = from_sitk(sitk.Resample(source, grid, sitk.Transform(), interpolator, 0.0))
    return dataclasses.replace(resampled, array=resampled.array.astype(image.array.dtype))


def displacement_in_mm(displacement: np.ndarray, grid: Image) -> Image:
    """Pixels -> physical displacement vector image in mm on ``grid``'s geometry, float32.

    Args:
        displacement: ``(2, H, W)`` on a 2D ``grid``, or ``(T, 2, H, W)`` on a sequence ``grid``; channel 0 lateral.
        grid: the image whose pixels the displacement is given on.

    Returns:
        ``(H, W, 2)`` or ``(T, H, W, 2)`` multichannel image: ``d = D diag(spacing) u`` per pixel (D the
        in-plane direction), with ``grid``'s spacing, origin and direction.
    """
    if (
        displacement.shape[-3] != 2
        or displacement.ndim != grid.ndim + 1
        or displacement.shape[-2:] != grid.array.shape[-2:]
    ):
        raise InputError(f"displacement of shape {displacement.shape} does not fit a grid of {grid.array.shape}")
    direction = np.asarray(grid.direction).reshape(grid.ndim, grid.ndim)[:2, :2]
    scaled = displacement.astype(np.float64) * np.asarray(grid.spacing[:2])[:, None, None]
    physical = np.einsum("ij,...jhw->...hwi", direction, scaled).astype(np.float32)
    return Image(physical, grid.spacing, grid.origin, grid.direction, multichannel=True)


def warp_label_array(labels: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``(H, W)`` CAMUS labels warped by ``(2, H, W)`` pixels (nearest label of the warped soft one-hot), uint8."""
    warped = warp_labels(
        torch.from_numpy(labels.astype(np.int64))[None, None], torch.from_numpy(displacement)[None], len(LABEL_VALUES)
    )
    return warped[0, 0].numpy().astype(np.uint8)


def warp_frame(frame: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``(H, W)`` frame sampled at ``p + u(p)`` (bilinear, border values held), float32."""
    moving = torch.from_numpy(frame.astype(np.float32))[None, None]
    return warp_image(moving, torch.from_numpy(displacement.astype(np.float32))[None])[0, 0].numpy()
