"""Classical registration baselines: elastix B-spline (itk-elastix) and dense optical flow (OpenCV).

Every method takes two frames ``(H, W)`` of one grid (any real dtype, any range; each is scaled to
[0, 1] by :func:`~deepultrasound.registration.preprocessing.normalise_frame`, as the network's
frames are) and returns the displacement ``(2, H, W)`` float32 in pixels in the project convention:
channel 0 lateral x (along W), channel 1 axial y (along H), ``moving(p + u(p)) ~ fixed(p)``.

- ``elastix``: elastix's default B-spline parameter map (``GetDefaultParameterMap("bspline")``:
  4 resolutions with smoothing pyramids, Mattes mutual information + bending energy penalty of
  weight 1, adaptive stochastic gradient descent with 256 iterations per resolution on 2048 random
  samples, final control-point spacing 10 units refined by the schedule 2.83/2/1.41/1), run on the
  frames in pixel units (spacing 1), so the final control points lie 10 pixels apart. Only the
  result image is switched off (not used) and the sampler seeded, for repeatable runs. Its
  transform maps a fixed point to the moving image, so transformix's deformation field is the
  displacement in our convention. Needs the optional package itk-elastix
  (``pip install "deepultrasound[baselines]"``); :func:`unavailable` says so when it is absent.
- ``farneback``: OpenCV's Farneback dense flow from fixed to moving (:data:`FARNEBACK`), on the
  frames as 8-bit grey; ``fixed(p) ~ moving(p + flow(p))`` is our convention.
- ``tvl1``: OpenCV's dual TV-L1 flow, only where ``cv2.optflow`` exists (opencv-contrib);
  opencv-python-headless has no such module, and :func:`unavailable` reports it.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from types import ModuleType

import cv2
import numpy as np

from deepultrasound.errors import InputError
from deepultrasound.registration.preprocessing import normalise_frame

PairMethod = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(fixed (H, W), moving (H, W)) -> (2, H, W)`` float32 displacement in pixels, channel 0 lateral."""

ELASTIX_SEED = 0
"""Seed of elastix's random sampler."""
FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 4,
    "winsize": 15,
    "iterations": 5,
    "poly_n": 7,
    "poly_sigma": 1.5,
    "flags": cv2.OPTFLOW_FARNEBACK_GAUSSIAN,
}
"""Farneback settings: a 4-level pyramid (a motion of tens of pixels at 224 x 224 reaches the
coarsest level as a few pixels), 15-pixel Gaussian-weighted windows, polynomial expansion over 7
pixels (smoother than 5 on speckle)."""


@functools.cache
def _itk() -> ModuleType | None:
    """The ``itk`` module when itk-elastix is installed, else None (imported once: it takes seconds)."""
    try:
        import itk

        itk.ParameterObject  # noqa: B018 - the elastix wrapping is loaded lazily; touch it to know it is there
    except (ImportError, AttributeError):
        return None
    return itk


def unavailable(method: str) -> str | None:
    """Why the baseline ``method`` cannot run here (a sentence with what to install), or None when it can."""
    if method not in BASELINES:
        raise InputError(f"unknown baseline {method!r}; use one of {', '.join(BASELINES)}")
    if method == "elastix" and _itk() is None:
        return 'elastix is unavailable: itk-elastix is not installed (pip install "deepultrasound[baselines]")'
    if method == "tvl1" and not hasattr(cv2, "optflow"):
        return "TV-L1 is unavailable: this OpenCV has no cv2.optflow module (install opencv-contrib-python for it)"
    return None


def _require(method: str) -> None:
    reason = unavailable(method)
    if reason is not None:
        raise InputError(reason)


def _unit_pair(fixed: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both frames as float32 ``(H, W)`` in [0, 1]; refuses frames of different shapes."""
    if np.shape(fixed) != np.shape(moving):
        raise InputError(f"fixed {np.shape(fixed)} and moving {np.shape(moving)} frames differ in shape")
    return normalise_frame(fixed).numpy(), normalise_frame(moving).numpy()


def elastix_parameters() -> object:
    """The elastix ``ParameterObject`` used (see the module docstring)."""
    _require("elastix")
    itk = _itk()
    parameters = itk.ParameterObject.New()
    bspline = parameters.GetDefaultParameterMap("bspline")
    bspline["WriteResultImage"] = ["false"]
    bspline["RandomSeed"] = [str(ELASTIX_SEED)]
    parameters.AddParameterMap(bspline)
    return parameters


def register_elastix(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """elastix B-spline registration of ``moving`` onto ``fixed`` (see the module docstring), ``(2, H, W)`` pixels."""
    _require("elastix")
    itk = _itk()
    fixed_unit, moving_unit = _unit_pair(fixed, moving)
    fixed_image, moving_image = itk.image_from_array(fixed_unit), itk.image_from_array(moving_unit)
    _, transform = itk.elastix_registration_method(
        fixed_image, moving_image, parameter_object=elastix_parameters(), log_to_console=False
    )
    with tempfile.TemporaryDirectory(prefix="transformix-") as folder:  # transformix writes its field to a file too
        field = itk.transformix_deformation_field(
            moving_image, transform, output_directory=folder, log_to_console=False
        )
        field = itk.array_from_image(field)  # (H, W, 2): x, y; a copy
    return np.ascontiguousarray(np.moveaxis(field, -1, 0), dtype=np.float32)


def _grey8(frame: np.ndarray) -> np.ndarray:
    return np.rint(frame * 255.0).astype(np.uint8)


def register_farneback(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Farneback dense optical flow from ``fixed`` to ``moving`` (:data:`FARNEBACK`), ``(2, H, W)`` pixels."""
    fixed_unit, moving_unit = _unit_pair(fixed, moving)
    flow = cv2.calcOpticalFlowFarneback(_grey8(fixed_unit), _grey8(moving_unit), None, **FARNEBACK)
    return np.ascontiguousarray(np.moveaxis(flow, -1, 0), dtype=np.float32)


def register_tvl1(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Dual TV-L1 optical flow (OpenCV defaults) from ``fixed`` to ``moving``, ``(2, H, W)`` pixels."""
    _require("tvl1")
    fixed_unit, moving_unit = _unit_pair(fixed, moving)
    flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(_grey8(fixed_unit), _grey8(moving_unit), None)
    return np.ascontiguousarray(np.moveaxis(flow, -1, 0), dtype=np.float32)


BASELINES: dict[str, PairMethod] = {
    "elastix": register_elastix,
    "farneback": register_farneback,
    "tvl1": register_tvl1,
}
"""The classical methods by name."""
