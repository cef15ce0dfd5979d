"""Model bundles: a folder with ``manifest.json``, safetensors weights and exported graphs.

Saving writes the whole folder under a temporary sibling name and renames it into place, so
a reader never sees a half-written bundle. Loading checks the sha256 of every listed file
before anything is deserialised, and nothing is ever unpickled.

Installed bundles are looked for in the package's ``models`` folder and in the folders listed
in the environment variable ``DEEPULTRASOUND_MODELS`` (separated by ``os.pathsep``: ``:`` on
Linux and macOS, ``;`` on Windows); each folder is a bundle or holds bundles as sub-folders.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from deepultrasound.errors import BundleError, InputError
from deepultrasound.io.atomic import atomic_write
from deepultrasound.runtime import export
from deepultrasound.runtime.architectures import (
    build_architecture,
    import_architecture_module,
    registered_architectures,
)
from deepultrasound.runtime.device import choose_device
from deepultrasound.runtime.manifest import (
    FILE_NAMES,
    MANIFEST_NAME,
    SUPPORTED_FORMAT_VERSIONS,
    Manifest,
    StateSpec,
    TensorSpec,
    state_shapes,
)
from deepultrasound.runtime.shapes import name_dims

__all__ = [
    "MODELS_ENVIRONMENT_VARIABLE",
    "Bundle",
    "BundleSummary",
    "Manifest",
    "StateSpec",
    "TensorSpec",
    "bundled_models_dir",
    "find_bundles",
    "list_bundles",
    "load_bundle",
    "model_directories",
    "record_metrics",
    "save_bundle",
]

logger = logging.getLogger(__name__)

#: export formats besides the weights, which every bundle has
EXPORT_FORMATS = ("torchscript", "onnx")
#: folders of installed bundles besides the bundled ones, separated by ``os.pathsep``
MODELS_ENVIRONMENT_VARIABLE = "DEEPULTRASOUND_MODELS"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. Deserialisers read files through :meth:`read`, which checks again."""

    path: Path
    manifest: Manifest

    def file(self, kind: str) -> Path:
        """Path of the file of ``kind`` ("weights", "torchscript" or "onnx").

        Raises:
            BundleError: the bundle was saved without that format.
        """
        if kind not in FILE_NAMES:
            raise InputError(f"unknown bundle file kind {kind!r}; use one of {', '.join(FILE_NAMES)}")
        name = FILE_NAMES[kind]
        if name not in self.manifest.files:
            raise BundleError(f"bundle {self.path} has no {kind} file ({name}); it was saved without that format")
        return self.path / name

    def read(self, kind: str) -> bytes:
        """Contents of the file of ``kind``, verified against the manifest's sha256."""
        path = self.file(kind)
        return _read_verified(path, self.manifest.files[path.name])

    def build_torch_model(self, device: str | torch.device | None = None) -> nn.Module:
        """The network rebuilt from the architecture registry with the bundle's weights, in eval mode.

        Args:
            device: where to put it (see :func:`choose_device`); ``None`` keeps it on the CPU.
        """
        from safetensors.torch import load as load_safetensors

        manifest = self.manifest
        if manifest.architecture not in registered_architectures():
            import_architecture_module(manifest.architecture_module)
            if manifest.architecture not in registered_architectures():
                raise BundleError(
                    f"{manifest.architecture_module} does not register architecture {manifest.architecture!r}; "
                    f"registered: {', '.join(registered_architectures()) or 'none'}"
                )
        model = build_architecture(manifest.architecture, manifest.architecture_args)
        try:
            model.load_state_dict(load_safetensors(self.read("weights")), strict=True)
        except RuntimeError as error:
            raise BundleError(
                f"{self.file('weights')} does not fit architecture {manifest.architecture!r}: {error}"
            ) from error
        return model.to(choose_device(device) if device is not None else torch.device("cpu")).eval()


def _read_verified(path: Path, expected: str) -> bytes:
    """Bytes of ``path`` after checking its sha256; :class:`BundleError` naming the file otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise BundleError(f"bundle file {path} is missing; the bundle is incomplete, export it again") from error
    except OSError as error:
        raise BundleError(f"cannot read bundle file {path}: {error}") from error
    found = _sha256(data)
    if found != expected:
        raise BundleError(
            f"bundle file {path} fails its sha256 check (manifest {expected[:12]}..., file {found[:12]}..., "
            f"{len(data)} bytes): it is truncated or modified; do not use it, export or download the bundle again"
        )
    return data


def _read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a model bundle: {MANIFEST_NAME} is missing")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object, not {type(raw).__name__}")
    version = raw.get("format_version", 1)
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{manifest_path} has unknown format_version {version!r}; this deepultrasound reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}; update deepultrasound"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'manifest'}: {item['msg']}" for item in error.errors()
        )
        raise BundleError(f"{manifest_path} is not a valid manifest: {problems}") from error


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and verify the bundle in folder ``path`` (or its ``manifest.json``).

    Every file the manifest lists is checked against its sha256 before anything is
    deserialised.

    Raises:
        BundleError: missing or invalid manifest, unknown format version, or a listed file that
            is missing, truncated or modified (the message names the file).
    """
    folder = Path(path)
    if folder.name == MANIFEST_NAME and folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise BundleError(f"model bundle {folder} does not exist or is not a folder")
    manifest = _read_manifest(folder)
    for name, digest in manifest.files.items():
        _read_verified(folder / name, digest)
    return Bundle(path=folder, manifest=manifest)


def record_metrics(path: str | os.PathLike[str], key: str, figures: Mapping[str, Any]) -> Manifest:
    """Store ``figures`` as ``metrics[key]`` in the manifest of the bundle in ``path``.

    The bundle is verified first; only ``manifest.json`` changes (its checksums cover the other
    files, which stay as they are) and it is replaced atomically. Returns the new manifest.

    Raises:
        BundleError: as :func:`load_bundle`, or ``figures`` that JSON cannot hold.
    """
    bundle = load_bundle(path)
    metrics = {**bundle.manifest.metrics, key: dict(figures)}
    try:
        text = json.dumps(metrics, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(f"metrics {key!r} cannot be stored in a manifest: {error}") from error
    manifest = bundle.manifest.model_copy(update={"metrics": json.loads(text)})
    with atomic_write(bundle.path / MANIFEST_NAME) as staged:
        staged.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


def find_bundles(directories: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Bundle folders in ``directories``: each directory itself if it is a bundle, else its
    immediate sub-folders that hold a manifest. Missing directories are skipped. Not verified."""
    found: list[Path] = []
    for directory in map(Path, directories):
        if (directory / MANIFEST_NAME).is_file():
            found.append(directory)
        elif directory.is_dir():
            found += sorted(child for child in directory.iterdir() if (child / MANIFEST_NAME).is_file())
    return found


def bundled_models_dir() -> Path:
    """Folder of the bundles shipped with the package (it may not exist)."""
    return Path(__file__).resolve().parent.parent / "models"


def model_directories() -> list[Path]:
    """Where installed bundles are looked for: :func:`bundled_models_dir`, then each folder
    listed in ``DEEPULTRASOUND_MODELS`` (``os.pathsep``-separated; empty entries are ignored)."""
    extra = os.environ.get(MODELS_ENVIRONMENT_VARIABLE, "").split(os.pathsep)
    return [bundled_models_dir(), *(Path(entry) for entry in extra if entry.strip())]


@dataclass(frozen=True)
class BundleSummary:
    """A bundle as a model selector lists it, read from its manifest alone (files not verified)."""

    name: str
    task: str
    version: str
    path: Path
    description: str


def list_bundles(directories: Iterable[str | os.PathLike[str]] | None = None) -> list[BundleSummary]:
    """Summaries of the bundles in ``directories`` (see :func:`find_bundles`), in the order found.

    Only manifests are read, so listing is fast whatever the size of the weights;
    :func:`load_bundle` verifies the checksums when a bundle is used. A folder whose manifest
    is invalid is skipped with a logged warning naming it; a bundle reached twice is listed once.

    Args:
        directories: folders to search; ``None`` gives :func:`model_directories` (the bundled
            models, then the folders in ``DEEPULTRASOUND_MODELS``).
    """
    summaries: list[BundleSummary] = []
    seen: set[Path] = set()
    for folder in find_bundles(model_directories() if directories is None else directories):
        if folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        try:
            manifest = _read_manifest(folder)
        except BundleError as error:
            logger.warning("skipping model bundle %s: %s", folder, error)
            continue
        summaries.append(
            BundleSummary(
                name=manifest.name,
                task=manifest.task,
                version=manifest.version,
                path=folder,
                description=manifest.description,
            )
        )
    return summaries


def save_bundle(
    directory: str | os.PathLike[str],
    model: nn.Module,
    *,
    name: str,
    version: str,
    task: str,
    architecture: str,
    architecture_module: str,
    architecture_args: Mapping[str, Any],
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    states: Sequence[StateSpec] = (),
    normalisation: Mapping[str, Any] | None = None,
    training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    description: str = "",
    formats: Sequence[str] = EXPORT_FORMATS,
    dynamic_spatial: bool = True,
) -> Path:
    """Write ``model`` as a bundle in folder ``directory``, atomically; returns the folder.

    ``model.forward`` takes the data inputs then one tensor per state (as parameters of their
    own or gathered in ``*states``), and returns the data outputs then the updated states.
    ``example_inputs`` are the data inputs only (first one (B, C, H, W), or any rank with batch
    and channel axes first); states start as zeros of shape (B, channels, H // stride,
    W // stride). Input and output axes are named from the
    examples: "B", the channel count, "H"/"W" and scaled forms such as "W*4" or "H//2".

    The architecture must be registered (see :mod:`.architectures`) and rebuild a network whose
    state dict matches ``model``'s. An existing bundle at ``directory`` is replaced only once
    the new one is complete; a folder that is not a bundle is never replaced. ``model`` is put
    in eval mode.

    Raises:
        InputError: inconsistent names, examples, states or formats.
        BundleError: the architecture cannot be rebuilt, or an export failed (nothing is written).
    """
    target = Path(directory)
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise InputError(f"unknown export formats {unknown}; choose from {list(EXPORT_FORMATS)}")
    if target.exists() and not (target / MANIFEST_NAME).is_file() and (target.is_file() or any(target.iterdir())):
        raise BundleError(f"{target} exists and is not a model bundle; choose an empty or new folder")
    if len(input_names) != len(example_inputs) or not example_inputs:
        raise InputError(f"{len(input_names)} input names for {len(example_inputs)} example inputs; give one name each")
    examples = tuple(tensor.detach() for tensor in example_inputs)
    if any(tensor.ndim < 2 for tensor in examples):
        raise InputError(f"example inputs need batch and channel axes; shapes {[tuple(t.shape) for t in examples]}")

    _check_rebuild(model, architecture, architecture_args)
    model.eval()
    graph_inputs, produced = _run_example(model, examples, states, output_names)
    reference = tuple(examples[0].shape)
    fields: dict[str, Any] = dict(
        name=name,
        version=version,
        task=task,
        description=description,
        architecture=architecture,
        architecture_module=architecture_module,
        architecture_args=dict(architecture_args),
        inputs=[_spec(n, t, reference, dynamic_spatial) for n, t in zip(input_names, examples)],
        outputs=[_spec(n, t, reference, dynamic_spatial) for n, t in zip(output_names, produced)],
        example_shapes=[list(tensor.shape) for tensor in examples],
        states=list(states),
        normalisation=dict(normalisation or {}),
        training_config=dict(training_config or {}),
        metrics=dict(metrics or {}),
        created_with=_engine_version(),
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    # the checksums are known once the files are written; validate everything else first
    draft = _validated_manifest({**fields, "files": {FILE_NAMES["weights"]: "0" * 64}})

    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        export.write_weights(model, staging / FILE_NAMES["weights"])
        if "torchscript" in formats:
            export.write_torchscript(model, graph_inputs, staging / FILE_NAMES["torchscript"])
        if "onnx" in formats:
            export.write_onnx(
                model, graph_inputs, staging / FILE_NAMES["onnx"], draft.graph_inputs(), draft.graph_outputs()
            )
        written = sorted(path.name for path in staging.iterdir())
        fields["files"] = {file: _sha256((staging / file).read_bytes()) for file in written}
        manifest = _validated_manifest(fields)
        (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved bundle %s %s to %s (%s)", name, version, target, ", ".join(manifest.files))
    return target


def _run_example(
    model: nn.Module, examples: tuple[torch.Tensor, ...], states: Sequence[StateSpec], output_names: Sequence[str]
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Graph inputs (examples, then zero states) and the model's outputs on them, checked
    against the output names and state specs."""
    initial = tuple(examples[0].new_zeros(shape) for shape in state_shapes(states, examples[0].shape))
    with torch.no_grad():
        produced = model(*examples, *initial)
    produced = tuple(produced) if isinstance(produced, (tuple, list)) else (produced,)
    if len(produced) != len(output_names) + len(states):
        raise InputError(
            f"the model returns {len(produced)} tensors; expected {len(output_names)} outputs "
            f"({', '.join(output_names)}) and {len(states)} states"
        )
    for state, value, zeros in zip(states, produced[len(output_names) :], initial):
        if value.shape != zeros.shape:
            raise InputError(
                f"state output {state.output!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(zeros.shape)} from its StateSpec"
            )
    return examples + initial, produced


def _check_rebuild(model: nn.Module, architecture: str, architecture_args: Mapping[str, Any]) -> None:
    """Refuse to save what :meth:`Bundle.build_torch_model` could not load."""
    rebuilt = build_architecture(architecture, dict(architecture_args))
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as error:
        raise BundleError(
            f"architecture {architecture!r} with arguments {dict(architecture_args)} "
            f"does not rebuild this model: {error}"
        ) from error


def _validated_manifest(fields: dict[str, Any]) -> Manifest:
    try:
        return Manifest.model_validate(fields)
    except ValidationError as error:
        raise InputError(f"cannot describe this model in a manifest: {error}") from error


def _spec(name: str, tensor: torch.Tensor, reference: tuple[int, ...], dynamic_spatial: bool) -> TensorSpec:
    dtype = str(tensor.dtype).removeprefix("torch.")
    return TensorSpec(name=name, shape=name_dims(tuple(tensor.shape), reference, dynamic_spatial), dtype=dtype)


def _engine_version() -> str:
    from deepultrasound import __version__

    return __version__


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` folder to ``target``, replacing an older bundle there."""
    if not target.exists():
        staging.rename(target)
        return
    retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(retired)
    try:
        staging.rename(target)
    except OSError:
        retired.rename(target)
        raise
    shutil.rmtree(retired, ignore_errors=True)
