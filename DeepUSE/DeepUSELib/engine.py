"""The engine objects behind the DeepUSE module: a strain method -> an offline estimator or a live processor.

The ``deepultrasound`` engine (torch) is imported inside the functions, so this file loads with
``slicer-core`` alone and the engine is only needed once strain is actually computed.

Model errors of the engine (a missing or tampered bundle, ``BundleError``, an ``OSError``) are
raised again as ``ValueError`` with the same message, so that every module logic failure the
user can fix is a ``ValueError``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

#: least-squares axial strain window of the DeepUSE paper, mm (287 samples at 0.02 mm)
DEFAULT_WINDOW_MM = 5.74


@dataclass(frozen=True)
class StrainMethod:
    """How strain is estimated.

    Attributes:
        model: model bundle folder or bundled model name; ``""`` takes the engine's default
            bundled DeepUSE model. Ignored with ``baseline``.
        baseline: NCC block matching instead of a network (needs no model).
        backend: ``"auto"`` (ONNX Runtime on the CPU when the bundle has a graph),
            ``"torch"``, ``"torchscript"`` or ``"onnxruntime"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        windowMm: axial least-squares strain window in mm.
    """

    model: str = ""
    baseline: bool = False
    backend: str = "auto"
    device: str = "auto"
    windowMm: float = DEFAULT_WINDOW_MM

    def __post_init__(self) -> None:
        if not self.windowMm > 0:
            raise ValueError(f"The strain window must be a positive length in mm, got {self.windowMm}")

    def describe(self) -> str:
        """One line for status messages, e.g. ``"block matching"`` or ``"model 'reusenet'"``."""
        if self.baseline:
            return "block matching"
        return f"model '{self.model}'" if self.model else "the default bundled model"


def createEstimator(method: StrainMethod):
    """The offline estimator of ``method``: ``deepultrasound.elastography.StrainEstimator``
    (a network bundle) or ``BlockMatchingEstimator`` (the baseline).

    Raises:
        ValueError: no such model, or an invalid bundle or device (the message says how to get a model).
    """
    elastography = importlib.import_module("deepultrasound.elastography")
    try:
        if method.baseline:
            return elastography.BlockMatchingEstimator(device=method.device)
        return elastography.StrainEstimator(method.model or None, backend=method.backend, device=method.device)
    except OSError as error:
        raise ValueError(str(error)) from error


def createLiveProcessor(method: StrainMethod, referenceEvery: int | None, referenceMinNcc: float | None):
    """The frame-by-frame processor of ``method``: ``deepultrasound.elastography.live.LiveStrainProcessor``.

    Args:
        method: model or baseline, backend, device and strain window.
        referenceEvery: a new reference frame every this many frames (>= 2); None: never by count.
        referenceMinNcc: also a new reference when the frame's normalised correlation with the
            reference falls below this value in (-1, 1]; None: never by correlation.

    Raises:
        ValueError: no such model, an invalid bundle or device, or an invalid reference policy.
    """
    streaming = importlib.import_module("deepultrasound.elastography.live")
    try:
        return streaming.LiveStrainProcessor(
            method.model or None,
            backend=method.backend,
            device=method.device,
            baseline=method.baseline,
            reference_every=referenceEvery,
            reference_min_ncc=referenceMinNcc,
            window_mm=method.windowMm,
        )
    except OSError as error:
        raise ValueError(str(error)) from error
