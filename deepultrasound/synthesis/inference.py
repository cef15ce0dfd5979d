"""Synthesising images from label maps with an installed or given synthesis bundle.

Shapes: a label map is ``(H, W)`` integers, a stack of them ``(K, H, W)``; the model works on its own
square grid ``(S, S)`` (the manifest's ``image_size``) and returns images ``(B, S, S)`` float32 in [0, 1].

- :func:`installed_models` and :func:`resolve_model` find a bundle: a bundle folder, an installed
  bundle's name, or by default the installed synthesis bundle of a probe (:data:`DEFAULT_MODELS`).
- :func:`prepare_labels` turns a label map of any size into what the model takes: its values are
  checked against the model's classes (echo models take the CAMUS values 0-3 and, optionally, 4 outside
  the fan), a map of another size is resized to ``(S, S)`` as the training pairs were (the class
  covering most of each new pixel: :func:`~deepultrasound.registration.preprocessing.resize_labels`),
  a 3D map gives one image per slice, and a sector model's fan is marked where the map has no
  outside-the-fan class (:func:`training_fan`).
- :class:`Synthesizer` runs DDPM or DDIM (:func:`~deepultrasound.synthesis.model.sample`) in batches, the
  network on any runtime backend (by default ONNX Runtime on the CPU, where the bundle has its graph).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from deepultrasound.errors import BundleError, InputError
from deepultrasound.registration.preprocessing import resize_labels
from deepultrasound.runtime import (
    AUTO_BACKEND,
    Bundle,
    Manifest,
    Predictor,
    create_predictor,
    list_bundles,
    load_bundle,
)
from deepultrasound.runtime.inference_specs import DiffusionInference
from deepultrasound.runtime.manifest import MANIFEST_NAME
from deepultrasound.simulation.echo import EchoConfig
from deepultrasound.synthesis.bmaps import PROBES, SectorGeometry
from deepultrasound.synthesis.model import ARCHITECTURE, NORMALISATION, Sampler, sample, size_multiple

TASK = "synthesis"
"""The ``task`` of synthesis bundles."""
DEFAULT_PROBE = "sector"
DEFAULT_MODELS = {"sector": "ussynth-echo-64", "linear": "ussynth-linear-64"}
"""The bundle used by default for each probe, when installed (else the first installed bundle of that probe)."""
TRAINING_CONFIGS = {
    "sector": "deepultrasound/configs/ussynth_echo_64.yaml",
    "linear": "deepultrasound/configs/ussynth_linear_64.yaml",
}
"""The training config that makes the default model of each probe."""
DEFAULT_BATCH = 8
"""Largest number of images denoised at once by :class:`Synthesizer` (memory stays bounded)."""
SAMPLERS: tuple[str, ...] = get_args(Sampler)
"""The samplers :class:`Synthesizer` runs."""
TRAINING_FAN_ANGLE = math.radians(sum(EchoConfig().sector_angle_deg) / 2.0)
"""Opening angle of :func:`training_fan`: the middle of the echo simulator's range (60-75 degrees; the CAMUS
fans measure 60-70 degrees)."""


def _check_probe(probe: str) -> str:
    if probe not in PROBES:
        raise InputError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")
    return probe


def _probe_of(folder: Path) -> str | None:
    """The B-map probe of the synthesis bundle in ``folder`` (manifest only), None if it is not one."""
    try:
        manifest = Manifest.model_validate_json((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.inference.bmap.probe if isinstance(manifest.inference, DiffusionInference) else None


def installed_models() -> list[tuple[Path, str]]:
    """Installed synthesis bundles (task ``synthesis``): (folder, manifest name) each, in the order
    :func:`~deepultrasound.runtime.list_bundles` finds them (manifests only read)."""
    return [(summary.path, summary.name) for summary in list_bundles() if summary.task == TASK]


def resolve_model(model: str | os.PathLike[str] | None, probe: str | None) -> Path:
    """The bundle folder of ``model`` (an existing folder, or an installed bundle's folder or manifest name);
    None: the installed synthesis bundle of ``probe`` ("sector" or "linear"; None: "sector"), preferring
    :data:`DEFAULT_MODELS`.

    Raises:
        InputError: an unknown probe.
        BundleError: nothing matches; the message lists the installed synthesis models and names the
            training command of the probe's model.
    """
    probe = _check_probe(probe or DEFAULT_PROBE)
    if model is not None and Path(model).exists():
        return Path(model)
    installed = installed_models()
    names = ", ".join(f"{folder.name} ({_probe_of(folder)})" for folder, _ in installed) or "none"
    how_to_train = (
        f"train one with 'deepultrasound train {TRAINING_CONFIGS[probe]}' and install its bundle folder "
        "(in DEEPULTRASOUND_MODELS), or pass --model BUNDLE"
    )
    if model is not None:
        for folder, name in installed:
            if str(model) in (folder.name, name):
                return folder
        raise BundleError(
            f"model {str(model)!r} is neither a bundle folder nor an installed synthesis model (installed: {names}); "
            + how_to_train
        )
    of_probe = [(folder, name) for folder, name in installed if _probe_of(folder) == probe]
    for folder, name in of_probe:
        if DEFAULT_MODELS[probe] in (folder.name, name):
            return folder
    if of_probe:
        return of_probe[0][0]
    raise BundleError(f"no synthesis model for a {probe} probe is installed (installed: {names}); {how_to_train}")


# -- label maps ------------------------------------------------------------------------------------


def training_fan(shape: tuple[int, int]) -> np.ndarray:
    """``shape`` bool: the fan of the training data on a grid of ``shape`` (the echo simulator's and CAMUS's:
    apex at the top centre, the image's height deep, :data:`TRAINING_FAN_ANGLE` wide, not tilted)."""
    height, width = shape
    return SectorGeometry(apex=(-0.5, (width - 1) / 2.0), radius=float(height), angle=TRAINING_FAN_ANGLE).fan(shape)


def _integer_labels(array: np.ndarray) -> np.ndarray:
    """``array`` as int64, refusing values that are not whole numbers."""
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"a label map must hold integers, got dtype {array.dtype}")
    if not np.isfinite(array).all() or (array != np.round(array)).any():
        raise InputError(f"a label map must hold whole numbers; this {array.dtype} map holds fractions, NaN or Inf")
    return array.astype(np.int64)


def _class_names(spec: DiffusionInference) -> str:
    return ", ".join(f"{label.value} {label.name}" for label in spec.label_classes)


def prepare_labels(labels: np.ndarray, spec: DiffusionInference) -> tuple[np.ndarray, list[str]]:
    """Label maps as the model of ``spec`` takes them: ``(K, S, S)`` int64 with (S, S) its grid, and notes.

    Args:
        labels: ``(H, W)`` label map or ``(K, H, W)`` stack (one image per slice), of any size, with
            whole-number values among the model's classes (echo: the CAMUS values 0-3, and 4 outside
            the fan where it is given).
        spec: the bundle's inference section.

    Returns:
        The maps on the model's grid and what was done to them, one sentence each: resized (the class
        covering most of each new pixel, as the training pairs were made), one image per slice, and for
        a sector model a map without the outside-the-fan class given the training data's fan
        (:func:`training_fan`; labels outside it become the outside class, as in training).

    Raises:
        InputError: not 2D or 3D, empty, not whole numbers, values the model does not know (listed with
            the known ones and their names), or a map holding background only.
    """
    array = np.asarray(labels)
    if array.ndim not in (2, 3):
        raise InputError(f"a label map must be (H, W) or a (K, H, W) stack, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"the label map is empty (shape {array.shape})")
    array = _integer_labels(array)
    known = {label.value: label.name for label in spec.label_classes}
    unknown = sorted(set(np.unique(array).tolist()) - set(known))
    if unknown:
        raise InputError(f"label values {unknown} are unknown to the model, which knows {_class_names(spec)}")
    slices = array if array.ndim == 3 else array[None]
    notes = [f"{len(slices)} slices, one image each"] if array.ndim == 3 else []
    size = tuple(spec.image_size)
    if slices.shape[1:] != size:
        slices = np.stack([resize_labels(item, size, max(known) + 1).numpy() for item in slices])
        notes.append(
            f"label maps of {array.shape[-2]} x {array.shape[-1]} pixels resized to the model's grid of "
            f"{size[0]} x {size[1]} (the class covering most of each pixel, as the training pairs were)"
        )
    outside = spec.bmap.outside_label
    background = [value for value, name in known.items() if name == "background" or value == outside]
    empty = [index for index, item in enumerate(slices) if np.isin(item, background).all()]
    if empty:
        where = "the label map holds" if array.ndim == 2 else f"slices {empty} of the label map hold"
        shown = ", ".join(f"{value} {known[value]}" for value in sorted(background))
        raise InputError(f"{where} background only ({shown}) on the model's grid: nothing to synthesise")
    if spec.bmap.probe == "sector" and outside is not None:
        slices, note = _mark_fan(slices, outside, background)
        notes += [note] if note else []
    return slices.astype(np.int64), notes


def _mark_fan(slices: np.ndarray, outside: int, background: list[int]) -> tuple[np.ndarray, str | None]:
    """``(K, S, S)`` maps with ``outside`` set beyond :func:`training_fan` in those that lack that class, and a
    note counting the pixels of other classes than ``background`` so cut off (None if no map lacks it)."""
    lacking = [index for index, item in enumerate(slices) if not (item == outside).any()]
    if not lacking:
        return slices, None
    fan = training_fan(slices.shape[1:])
    marked = slices.copy()
    marked[lacking] = np.where(fan, slices[lacking], outside)
    cut = int((~np.isin(slices[lacking], background) & ~fan).sum())
    degrees = math.degrees(TRAINING_FAN_ANGLE)
    return marked, (
        f"no outside-the-fan class ({outside}) in {len(lacking)} label map(s): the training data's fan is used "
        f"(apex at the top centre, {degrees:g} degrees, the map's height deep); {cut} labelled pixel(s) of the "
        f"model's grid lie outside it and are treated as outside the fan, as in training"
    )


# -- the model -------------------------------------------------------------------------------------


class PredictorDenoiser:
    """A synthesis bundle's network on a runtime backend, as :func:`~deepultrasound.synthesis.model.sample`
    calls it (:class:`~deepultrasound.synthesis.model.Denoiser`).

    Args:
        predictor: the bundle's network (inputs ``x`` ``(B, 1, H, W)``, ``timesteps`` ``(B,)``, ``labels``
            ``(B, H, W)``; output the predicted noise or velocity).
    """

    def __init__(self, predictor: Predictor) -> None:
        architecture = predictor.bundle.manifest.architecture_args
        self.predictor = predictor
        self.null_label: int = architecture["num_classes"]
        self.multiple = size_multiple(architecture["channels"])

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.predictor.predict_tensors(x, timesteps, labels)[0]


class Synthesizer:
    """A synthesis bundle run on label maps of its grid.

    Args:
        bundle: a loaded bundle, or a bundle folder (loaded and verified).
        device: "cpu", "cuda", "cuda:N", "mps", "auto" or None (automatic; see
            :func:`~deepultrasound.runtime.choose_device`).
        backend: "auto" (ONNX Runtime on the CPU when the bundle has an ONNX graph, else torch), "torch",
            "torchscript" or "onnxruntime" (see :func:`~deepultrasound.runtime.create_predictor`).

    Attributes:
        spec: the bundle's inference section (schedule, B-maps, sampler defaults, classes).
        size: the model's grid (S_rows, S_columns).
        label_values: the class values a label map may hold.
        name: the bundle's name and version.
        digest: SHA-256 of the manifest (which holds the SHA-256 of every file of the bundle): the model's identity.
        device, backend: where and on which runtime backend the network runs.

    Raises:
        InputError: an unknown backend or unavailable device.
        BundleError: not a synthesis bundle (task ``synthesis`` with a diffusion inference section, the
            semantic diffusion UNet, images scaled as :data:`~deepultrasound.synthesis.model.NORMALISATION`).
    """

    def __init__(
        self, bundle: Bundle | str | os.PathLike[str], device: str | None = None, backend: str = AUTO_BACKEND
    ) -> None:
        bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = bundle.manifest
        if manifest.task != TASK or not isinstance(manifest.inference, DiffusionInference):
            kind = manifest.inference.kind if manifest.inference is not None else "none"
            raise BundleError(
                f"bundle {bundle.path} is not a synthesis model (task {manifest.task!r}, inference {kind!r})"
            )
        if manifest.architecture != ARCHITECTURE or manifest.normalisation.get("kind") != NORMALISATION["kind"]:
            raise BundleError(
                f"bundle {bundle.path} holds {manifest.architecture!r} with normalisation "
                f"{manifest.normalisation.get('kind')!r}; this engine samples {ARCHITECTURE!r} on images scaled "
                f"as {NORMALISATION['kind']!r}"
            )
        self.spec: DiffusionInference = manifest.inference
        self.size: tuple[int, int] = tuple(self.spec.image_size)
        self.label_values: list[int] = [label.value for label in self.spec.label_classes]
        self.name = f"{manifest.name} {manifest.version}"
        self.digest = hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()
        self.model = PredictorDenoiser(create_predictor(bundle, backend=backend, device=device))

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return self.model.device

    @property
    def backend(self) -> str:
        """The runtime backend that runs the network."""
        return self.model.predictor.backend

    def __call__(
        self,
        labels: np.ndarray,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
        progress: bool = False,
        batch: int = DEFAULT_BATCH,
        first_chunk: int = 0,
    ) -> np.ndarray:
        """Images ``(B, S, S)`` float32 in [0, 1] from label maps ``(B, S, S)`` on the model's grid.

        Args:
            labels: integer maps of the model's classes (see :func:`prepare_labels`).
            steps, guidance, sampler: denoising steps, classifier-free guidance scale and "ddim" or
                "ddpm"; None: the bundle's defaults.
            seed: >= 0; the images depend on it, the labels and ``batch`` only.
            progress: show progress bars over images and denoising steps.
            batch: most images denoised at once; chunk ``c`` draws its noise from ``(seed, c)``.
            first_chunk: the chunk index of the first map (>= 0): a stack synthesised part by part, each
                part starting at chunk ``start // batch``, equals the stack synthesised in one call.

        Pixels of a sector model's outside-the-fan class are 0, as the training images hold there (the known
        background of :func:`~deepultrasound.synthesis.model.sample`).

        Raises:
            InputError: maps of another grid, unknown values, steps outside 1..T, an unknown sampler, a
                negative seed or guidance, a batch below 1, or a fan that cannot be estimated.
        """
        labels = np.asarray(labels)
        if labels.ndim != 3 or labels.shape[1:] != self.size:
            raise InputError(
                f"label maps must be (B, {self.size[0]}, {self.size[1]}) on the model's grid, got shape "
                f"{labels.shape}; prepare them with prepare_labels"
            )
        steps = self.spec.sampling_steps if steps is None else steps
        if not 1 <= steps <= self.spec.schedule.num_train_timesteps:
            raise InputError(f"steps must lie in 1..{self.spec.schedule.num_train_timesteps}, got {steps}")
        if sampler is not None and sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if seed < 0 or batch < 1 or first_chunk < 0:
            raise InputError(
                f"the seed and first chunk must be >= 0 and the batch >= 1, got {seed}, {first_chunk} and {batch}"
            )
        maps = torch.from_numpy(_integer_labels(labels))
        images = np.empty(labels.shape, np.float32)
        with tqdm(total=len(maps), desc=self.name, unit="image", disable=not progress, leave=False) as bar:
            for chunk, start in enumerate(range(0, len(maps), batch), start=first_chunk):
                chunk_seed = int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])
                generated = sample(
                    self.model,
                    maps[start : start + batch],
                    self.spec,
                    sampler=sampler,
                    steps=steps,
                    guidance_scale=guidance,
                    seed=chunk_seed,
                    progress=progress,
                )
                images[start : start + batch] = generated[:, 0].cpu().numpy()
                bar.update(len(generated))
        return images
