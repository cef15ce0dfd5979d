"""Model bundles: a folder with ``manifest.json``, safetensors weights and exported graphs.

A bundle holds a main network and, where inference needs them, further networks
(``components``); each has its safetensors weights (float32, or float16 where the manifest says
``weights_dtype: float16``: loading casts them back) and the graphs chosen at export.

Saving writes the whole folder under a temporary sibling name and renames it into place, so
a reader never sees a half-written bundle. Loading checks the sha256 of every listed file
before anything is deserialised, and nothing is ever unpickled.

Installed bundles are looked for in the package's ``models`` folder and in the folders listed
in the environment variable ``DEEPULTRASOUND_MODELS`` (separated by ``os.pathsep``: ``:`` on
Linux and macOS, ``;`` on Windows); each folder is a bundle or holds bundles as sub-folders.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
from deepultrasound.runtime.inference_specs import InferenceSpec
from deepultrasound.runtime.manifest import (
    MAIN_NETWORK,
    MANIFEST_NAME,
    SUPPORTED_FORMAT_VERSIONS,
    WEIGHTS_DTYPES,
    Manifest,
    NetworkSpec,
    StateSpec,
    TensorSpec,
    file_name,
    state_shapes,
)
from deepultrasound.runtime.shapes import name_dims

__all__ = [
    "MODELS_ENVIRONMENT_VARIABLE",
    "Bundle",
    "BundleSummary",
    "Manifest",
    "NetworkExport",
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

    def file(self, kind: str, network: str | None = None) -> Path:
        """Path of the file of ``kind`` ("weights", "torchscript" or "onnx") of ``network`` (None: the main one).

        Raises:
            InputError: an unknown kind or network.
            BundleError: the bundle was saved without that format.
        """
        self.manifest.network(network)  # refuses an unknown network
        name = file_name(kind, network or MAIN_NETWORK)
        if name not in self.manifest.files:
            raise BundleError(f"bundle {self.path} has no {kind} file ({name}); it was saved without that format")
        return self.path / name

    def read(self, kind: str, network: str | None = None) -> bytes:
        """Contents of the file of ``kind`` of ``network``, verified against the manifest's sha256."""
        path = self.file(kind, network)
        return _read_verified(path, self.manifest.files[path.name])

    def build_torch_model(self, device: str | torch.device | None = None, name: str | None = None) -> nn.Module:
        """The network ``name`` (None: the main one) rebuilt from the architecture registry with the
        bundle's weights (float32 whatever they are stored in), in eval mode.

        Args:
            device: where to put it (see :func:`choose_device`); ``None`` keeps it on the CPU.
            name: a network of :meth:`Manifest.network_names`.
        """
        from safetensors.torch import load as load_safetensors

        spec = self.manifest.network(name)
        if spec.architecture not in registered_architectures():
            import_architecture_module(spec.architecture_module)
            if spec.architecture not in registered_architectures():
                raise BundleError(
                    f"{spec.architecture_module} does not register architecture {spec.architecture!r}; "
                    f"registered: {', '.join(registered_architectures()) or 'none'}"
                )
        model = build_architecture(spec.architecture, spec.architecture_args)
        weights = load_safetensors(self.read("weights", name))
        try:
            model.load_state_dict(_as_float32(weights), strict=True)
        except RuntimeError as error:
            raise BundleError(
                f"{self.file('weights', name)} does not fit architecture {spec.architecture!r}: {error}"
            ) from error
        return model.to(choose_device(device) if device is not None else torch.device("cpu")).eval()


def _as_float32(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors of a state dict as float32 (weights stored in float16); others as they are."""
    return {key: value.float() if value.is_floating_point() else value for key, value in weights.items()}


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
        staged.write_text(manifest.to_json(), encoding="utf-8")
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


def load_network_bundle(source: str | os.PathLike[str], architecture: str, how_to_train: str) -> Bundle:
    """The bundle of a network of ``architecture`` (an auxiliary network such as a frozen shape prior or
    feature network): a bundle folder, or the name (manifest or folder) of an installed bundle.

    Args:
        how_to_train: the command that makes such a bundle, for the error message.

    Raises:
        BundleError: nothing of that name, or a bundle of another architecture.
    """
    path = Path(source)
    if not path.exists():
        named = [summary.path for summary in list_bundles() if str(source) in (summary.name, summary.path.name)]
        if not named:
            raise BundleError(
                f"{str(source)!r} is neither a bundle folder nor an installed bundle; train one with '{how_to_train}'"
            )
        path = named[0]
    bundle = load_bundle(path)
    if bundle.manifest.architecture != architecture:
        raise BundleError(f"bundle {path} holds {bundle.manifest.architecture!r}, not {architecture!r}")
    return bundle


@dataclass(frozen=True)
class NetworkExport:
    """How one network of a bundle is exported; the fields are those of :func:`save_bundle`."""

    architecture: str
    architecture_module: str
    architecture_args: Mapping[str, Any]
    example_inputs: tuple[torch.Tensor, ...]
    input_names: Sequence[str]
    output_names: Sequence[str]
    states: Sequence[StateSpec] = ()
    input_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    input_values: Mapping[str, Sequence[int]] = field(default_factory=dict)
    dynamic_spatial: bool = True
    weights_dtype: str = "float32"


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
    input_ranges: Mapping[str, tuple[float, float]] | None = None,
    input_values: Mapping[str, Sequence[int]] | None = None,
    weights_dtype: str = "float32",
    components: Mapping[str, tuple[nn.Module, NetworkExport]] | None = None,
    inference: InferenceSpec | None = None,
    normalisation: Mapping[str, Any] | None = None,
    training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    description: str = "",
    formats: Sequence[str] = EXPORT_FORMATS,
    dynamic_spatial: bool = True,
    verify: Callable[[Bundle], Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``model`` (and ``components``) as a bundle in folder ``directory``, atomically; returns the folder.

    ``model.forward`` takes the data inputs then one tensor per state (as parameters of their
    own or gathered in ``*states``), and returns the data outputs then the updated states.
    ``example_inputs`` are the data inputs only, in their dtypes: the first one (B, C, *spatial)
    with batch and channel axes; the others may lack the channel axis ((B, *spatial), e.g. a
    label map) or be (B,) (e.g. diffusion timesteps). States start as float32 zeros of shape
    (B, channels, H // stride, W // stride). Axes are named from the examples: "B", then, on
    tensors of the first input's rank, the fixed channel count, and spatial axes "H"/"W" or scaled
    forms such as "W*4" or "H//2".

    Args:
        input_ranges, input_values: per input name, the [low, high] range or the only values it may
            hold (required for integer inputs); recorded in its TensorSpec.
        weights_dtype: "float32", or "float16" to halve the weights file: the weights are rounded
            to float16 once, and every exported graph is traced from the rounded network, so all
            backends agree with each other; loading casts them back to float32.
        components: further networks inference needs, by name: (network, how to export it).
        inference: the capability's ``inference`` section (see :mod:`.inference_specs`).
        formats: exported graphs besides the weights ("torchscript", "onnx"), for every network.
        verify: run on the complete bundle before it is moved into place (e.g.
            :func:`~.parity.verify_parity`); the figures it returns join ``metrics``, and an
            exception it raises fails the save (nothing is written).

    The architectures must be registered (see :mod:`.architectures`) and rebuild networks whose
    state dicts match. An existing bundle at ``directory`` is replaced only once the new one is
    complete; a folder that is not a bundle is never replaced. The networks are put in eval mode.

    Raises:
        InputError: inconsistent names, examples, states, formats or dtypes.
        BundleError: an architecture cannot be rebuilt, or an export failed (nothing is written).
    """
    target = Path(directory)
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise InputError(f"unknown export formats {unknown}; choose from {list(EXPORT_FORMATS)}")
    if target.exists() and not (target / MANIFEST_NAME).is_file() and (target.is_file() or any(target.iterdir())):
        raise BundleError(f"{target} exists and is not a model bundle; choose an empty or new folder")
    main = NetworkExport(
        architecture=architecture,
        architecture_module=architecture_module,
        architecture_args=architecture_args,
        example_inputs=example_inputs,
        input_names=input_names,
        output_names=output_names,
        states=states,
        input_ranges=dict(input_ranges or {}),
        input_values=dict(input_values or {}),
        dynamic_spatial=dynamic_spatial,
        weights_dtype=weights_dtype,
    )
    networks = {MAIN_NETWORK: (model, main), **(components or {})}
    prepared = {network: _prepare(network, *entry) for network, entry in networks.items()}
    fields: dict[str, Any] = dict(
        **prepared[MAIN_NETWORK].spec,
        name=name,
        version=version,
        task=task,
        description=description,
        components={network: entry.spec for network, entry in prepared.items() if network != MAIN_NETWORK},
        inference=inference,
        normalisation=dict(normalisation or {}),
        training_config=dict(training_config or {}),
        metrics=dict(metrics or {}),
        created_with=_engine_version(),
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    # the checksums are known once the files are written; validate everything else first
    draft = _validated_manifest({**fields, "files": {file_name("weights", network): "0" * 64 for network in networks}})

    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for network, entry in prepared.items():
            _write_network(entry, draft.network(network), staging, network, formats)
        written = sorted(path.name for path in staging.iterdir())
        fields["files"] = {file: _sha256((staging / file).read_bytes()) for file in written}
        manifest = _validated_manifest(fields)
        if verify is not None:
            figures = verify(Bundle(path=staging, manifest=manifest))
            manifest = manifest.model_copy(update={"metrics": {**manifest.metrics, **figures}})
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved bundle %s %s to %s (%s)", name, version, target, ", ".join(manifest.files))
    return target


@dataclass(frozen=True)
class _PreparedNetwork:
    """A network ready to write: the model to export (weights rounded to ``weights_dtype``), its
    graph inputs (examples, then zero states) and its manifest fields (:class:`NetworkSpec`)."""

    model: nn.Module
    graph_inputs: tuple[torch.Tensor, ...]
    spec: dict[str, Any]


def _prepare(network: str, model: nn.Module, export: NetworkExport) -> _PreparedNetwork:
    """Check ``export`` against ``model``, run its examples and describe the network."""
    examples = tuple(tensor.detach().cpu() for tensor in export.example_inputs)
    if len(export.input_names) != len(examples) or not examples:
        raise InputError(
            f"network {network!r}: {len(export.input_names)} input names for {len(examples)} example inputs; "
            "give one name each"
        )
    if examples[0].ndim < 2:
        raise InputError(
            f"network {network!r}: the first example input needs batch and channel axes, "
            f"got shape {tuple(examples[0].shape)}"
        )
    unknown = sorted((set(export.input_ranges) | set(export.input_values)) - set(export.input_names))
    if unknown:
        raise InputError(f"network {network!r}: ranges or values given for unknown inputs {unknown}")
    if export.weights_dtype not in WEIGHTS_DTYPES:
        raise InputError(f"weights_dtype {export.weights_dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
    _check_rebuild(model, export.architecture, export.architecture_args)
    model = _rounded_weights(model.eval(), export.weights_dtype)
    graph_inputs, produced = _run_example(model, examples, export.states, export.output_names)
    reference = tuple(examples[0].shape)

    def spec(tensor_name: str, tensor: torch.Tensor) -> TensorSpec:
        return TensorSpec(
            name=tensor_name,
            shape=name_dims(tuple(tensor.shape), reference, export.dynamic_spatial),
            dtype=str(tensor.dtype).removeprefix("torch."),
            range=export.input_ranges.get(tensor_name),
            values=list(export.input_values[tensor_name]) if tensor_name in export.input_values else None,
        )

    fields = dict(
        architecture=export.architecture,
        architecture_module=export.architecture_module,
        architecture_args=dict(export.architecture_args),
        inputs=[spec(n, t) for n, t in zip(export.input_names, examples)],
        outputs=[spec(n, t) for n, t in zip(export.output_names, produced)],
        example_shapes=[list(tensor.shape) for tensor in examples],
        states=list(export.states),
        weights_dtype=export.weights_dtype,
    )
    return _PreparedNetwork(model, graph_inputs, fields)


def _rounded_weights(model: nn.Module, dtype: str) -> nn.Module:
    """``model`` itself for float32; for float16 a copy whose floating-point weights are rounded to
    float16 (and held as float32), so that the weights file and every graph hold the same values.

    Raises:
        InputError: a weight beyond the float16 range (65504).
    """
    if dtype == "float32":
        return model
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for key, tensor in rounded.state_dict().items():
            if tensor.is_floating_point():
                half = tensor.to(torch.float16)
                if not torch.isfinite(half).all() and torch.isfinite(tensor).all():
                    raise InputError(f"weight {key!r} exceeds the float16 range; save it with weights_dtype float32")
                tensor.copy_(half.to(tensor.dtype))
    return rounded


def _write_network(
    entry: _PreparedNetwork, spec: NetworkSpec, staging: Path, network: str, formats: Sequence[str]
) -> None:
    """The weights and the graphs in ``formats`` of one network, into ``staging``."""
    export.write_weights(entry.model, staging / file_name("weights", network), spec.weights_dtype)
    if "torchscript" in formats:
        export.write_torchscript(entry.model, entry.graph_inputs, staging / file_name("torchscript", network))
    if "onnx" in formats:
        export.write_onnx(
            entry.model,
            entry.graph_inputs,
            staging / file_name("onnx", network),
            spec.graph_inputs(),
            spec.graph_outputs(),
        )


def _run_example(
    model: nn.Module, examples: tuple[torch.Tensor, ...], states: Sequence[StateSpec], output_names: Sequence[str]
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Graph inputs (examples, then float32 zero states) and the model's outputs on them, checked
    against the output names and state specs."""
    initial = tuple(torch.zeros(shape, device=examples[0].device) for shape in state_shapes(states, examples[0].shape))
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
