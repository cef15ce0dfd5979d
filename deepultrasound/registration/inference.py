"""Registering two frames of any size: the bundled network (:class:`Registrar`) or a classical baseline.

Every method is a :data:`~deepultrasound.registration.baselines.PairMethod`: ``(fixed (H, W),
moving (H, W))`` of one grid -> ``(2, H, W)`` float32 displacement in pixels of that grid
(channel 0 lateral, ``moving(p + u(p)) ~ fixed(p)``).

The network runs on its own grid (the manifest's ``input_size`` (S, S)): both frames are resampled
to it and scaled to [0, 1] exactly as in training
(:func:`~deepultrasound.registration.preprocessing.prepare_frame`), the displacement predicted there
(in pixels of the S grid) is resized back to the frames' grid and rescaled to its pixels
(:func:`~deepultrasound.spatial.resize_displacement`; both grids cover the same field of view).
:func:`register_images` adds the geometry: the moving image resampled onto the fixed grid first.

Models: :func:`resolve_model` takes a bundle folder or an installed model's name; with none it
takes the installed bundle named :data:`DEFAULT_MODEL` (else the first installed registration
bundle). When no registration model is installed it says so and suggests a classical method.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from deepultrasound.errors import BundleError, InputError
from deepultrasound.io import Image
from deepultrasound.registration.baselines import BASELINES, PairMethod, unavailable
from deepultrasound.registration.images import check_frames, resample_onto
from deepultrasound.registration.preprocessing import NORMALISATION, prepare_frame
from deepultrasound.runtime import (
    AUTO_BACKEND,
    Bundle,
    Manifest,
    create_predictor,
    find_bundles,
    load_bundle,
    model_directories,
)
from deepultrasound.runtime.inference_specs import RegistrationInference
from deepultrasound.runtime.manifest import MANIFEST_NAME
from deepultrasound.spatial import resize_displacement

TASK = "echo-registration"
"""The ``task`` of registration bundles."""
DEFAULT_MODEL = "echo-registration"
"""Name (folder or manifest) of the installed model used when none is named."""
NETWORK = "network"
METHODS = (NETWORK, *BASELINES)
"""``--method`` choices: the network, or a classical baseline."""
HOW_TO_DO_WITHOUT = (
    "use --method elastix or --method farneback for a classical registration, or pass --model BUNDLE "
    "(a bundle trained with 'deepultrasound train' on an echo-registration config)"
)


def installed_models(directories: list[Path] | None = None) -> list[tuple[Path, str]]:
    """Installed registration bundles: (folder, manifest name) each, in the order found (manifests only read).

    Args:
        directories: where to look; None: :func:`deepultrasound.runtime.model_directories`.
    """
    found = []
    for folder in find_bundles(model_directories() if directories is None else directories):
        try:
            manifest = Manifest.model_validate_json((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if manifest.task == TASK and isinstance(manifest.inference, RegistrationInference):
            found.append((folder, manifest.name))
    return found


def resolve_model(model: str | os.PathLike[str] | None = None, directories: list[Path] | None = None) -> Path:
    """The bundle folder of ``model`` (an existing path, or an installed model's folder or manifest name); None:
    :data:`DEFAULT_MODEL` if installed, else the first installed registration bundle.

    Raises:
        BundleError: nothing matches; the message lists the installed models and suggests a classical method.
    """
    installed = installed_models(directories)
    names = ", ".join(folder.name for folder, _ in installed) or "none"
    if model is not None and Path(model).exists():
        return Path(model)
    wanted = DEFAULT_MODEL if model is None else str(model)
    for folder, name in installed:
        if wanted in (folder.name, name):
            return folder
    if model is None and installed:
        return installed[0][0]
    if model is None:
        raise BundleError(f"no registration model is installed; {HOW_TO_DO_WITHOUT}")
    raise BundleError(
        f"model {wanted!r} is neither a bundle folder nor an installed registration model (installed: {names}); "
        + HOW_TO_DO_WITHOUT
    )


class Registrar:
    """A registration bundle run on frame pairs of any size (see the module docstring); a ``PairMethod``.

    Args:
        bundle: a loaded bundle, or a bundle folder (loaded and verified).
        backend, device: as :func:`deepultrasound.runtime.create_predictor` takes them.

    Attributes:
        size: the network's grid (S_rows, S_columns).
        name: the bundle's name and version.

    Raises:
        BundleError: not a registration bundle, or one taking other inputs than [fixed, moving] frames
            normalised as :data:`~deepultrasound.registration.preprocessing.NORMALISATION`.
    """

    def __init__(
        self, bundle: Bundle | str | os.PathLike[str], backend: str = AUTO_BACKEND, device: str | None = None
    ) -> None:
        bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = bundle.manifest
        inference = manifest.inference
        if manifest.task != TASK or not isinstance(inference, RegistrationInference):
            kind = inference.kind if inference is not None else "none"
            raise BundleError(
                f"bundle {bundle.path} is not a registration model (task {manifest.task!r}, inference {kind!r})"
            )
        if list(inference.channel_order) != ["fixed", "moving"]:
            raise BundleError(f"bundle {bundle.path} takes channels {inference.channel_order}; expected fixed, moving")
        if manifest.normalisation.get("kind") != NORMALISATION["kind"]:
            raise BundleError(
                f"bundle {bundle.path} has normalisation {manifest.normalisation.get('kind')!r}; this engine prepares "
                f"frames as {NORMALISATION['kind']!r}"
            )
        self.size: tuple[int, int] = tuple(inference.input_size)
        self.name = f"{manifest.name} {manifest.version}"
        self.predictor = create_predictor(bundle, backend=backend, device=device)

    def __call__(self, fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
        """``(H, W)`` fixed and moving frames (any real dtype and range) -> ``(2, H, W)`` float32 pixels."""
        if np.shape(fixed) != np.shape(moving) or np.ndim(fixed) != 2:
            raise InputError(f"fixed {np.shape(fixed)} and moving {np.shape(moving)} must be 2D frames of one shape")
        pair = torch.cat([prepare_frame(fixed, self.size), prepare_frame(moving, self.size)])[None]
        (field,) = self.predictor.predict(pair.numpy())
        resized = resize_displacement(torch.from_numpy(np.asarray(field, dtype=np.float32)), np.shape(fixed))
        return resized[0].numpy()


def pair_method(
    method: str = NETWORK,
    model: str | os.PathLike[str] | None = None,
    backend: str = AUTO_BACKEND,
    device: str | None = None,
) -> tuple[PairMethod, str]:
    """The registration to run and its description: a :class:`Registrar` of ``model`` for ``"network"``, else
    the baseline of that name.

    Raises:
        InputError: an unknown method, a model with a baseline, or a baseline that is unavailable here.
        BundleError: see :func:`resolve_model`.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method != NETWORK:
        if model is not None:
            raise InputError(f"--model names a network; it cannot be used with --method {method}")
        reason = unavailable(method)
        if reason is not None:
            raise InputError(reason)
        return BASELINES[method], method
    registrar = Registrar(resolve_model(model), backend=backend, device=device)
    return registrar, f"model {registrar.name} ({registrar.predictor.backend}, {registrar.predictor.device})"


def register_images(fixed: Image, moving: Image, method: PairMethod) -> tuple[np.ndarray, Image]:
    """Register two 2D images of any grids: ``((2, H, W) pixels on the fixed grid, moving on the fixed grid)``.

    Both are checked (grey, at least 32 pixels per axis, finite; colour converted to grey) and the moving
    image resampled onto the fixed grid where their geometries differ.
    """
    fixed, moving = check_frames(fixed, "fixed image"), check_frames(moving, "moving image")
    if fixed.ndim != 2 or moving.ndim != 2:
        raise InputError(f"register takes 2D images; got arrays of shape {fixed.array.shape} and {moving.array.shape}")
    moving = resample_onto(moving, fixed)
    return method(fixed.array, moving.array), moving
