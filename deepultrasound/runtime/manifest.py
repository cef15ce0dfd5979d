"""The bundle manifest: what a model is, what it takes and returns, and the checksum of each file.

A bundle holds one main network, described by the manifest's own network fields (architecture,
inputs, outputs, states, ...), and may hold more networks that inference needs beside it
(``components``: a VAE beside a generator, a feature network beside a UNet), each described the
same way (:class:`NetworkSpec`) and addressed by name. The ``inference`` section says how the
capability runs them (:mod:`.inference_specs`).

Format history: 1 kept DeepUSE's frame-pair settings in ``normalisation`` (``pairs``,
``prealign``); 2 moved them to ``inference`` and added ``components``, tensor dtypes and value
domains, and float16 weights. Format-1 manifests are migrated when read (:func:`migrate_manifest`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepultrasound.errors import InputError
from deepultrasound.runtime.architectures import TRUSTED_MODULE_PREFIX
from deepultrasound.runtime.inference_specs import InferenceSpec
from deepultrasound.runtime.shapes import BATCH, Dim, parse_symbol, scaled

FORMAT_VERSION = 2
"""The manifest format this engine writes."""
#: manifest format versions this engine reads (older ones are migrated, see :func:`migrate_manifest`)
SUPPORTED_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
#: file kind -> file name of the main network's file inside a bundle
FILE_NAMES = {"weights": "weights.safetensors", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
MAIN_NETWORK = "main"
"""Name of a bundle's main network (the manifest's own network fields)."""

#: tensor dtypes a TensorSpec may declare (numpy and torch spell them alike)
TENSOR_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "uint8")
FLOAT_DTYPES = ("float32", "float16", "float64")
#: dtypes the weights of a network may be stored in; loading casts them to float32
WEIGHTS_DTYPES = ("float32", "float16")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMPONENT_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")

#: network stride of the DeepUSE networks, the only format-1 elastography bundles (rows multiply by ``axial_fold``)
_FORMAT_1_DEEPUSE_STRIDE = 16


def file_name(kind: str, network: str = MAIN_NETWORK) -> str:
    """Name of the ``kind`` file ("weights", "torchscript", "onnx") of ``network`` inside a bundle:
    ``FILE_NAMES[kind]`` for the main network, ``"<network>.<that name>"`` for a component."""
    if kind not in FILE_NAMES:
        raise InputError(f"unknown bundle file kind {kind!r}; use one of {', '.join(FILE_NAMES)}")
    return FILE_NAMES[kind] if network == MAIN_NETWORK else f"{network}.{FILE_NAMES[kind]}"


def migrate_manifest(raw: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest (one that says ``"format_version": 1``, as every format-1 manifest written
    does) as format 2; others are returned as they are.

    Format 1 kept DeepUSE's frame-pair settings in ``normalisation``: ``pairs`` and ``prealign``
    move to an ``inference`` section of kind ``"elastography"`` (every format-1 elastography
    bundle is a DeepUSE network, whose input multiple follows from its ``axial_fold``).
    """
    if raw.get("format_version") != 1:
        return raw
    migrated = {**raw, "format_version": 2}
    if raw.get("task") == "elastography":
        normalisation = dict(raw.get("normalisation") or {})
        fold = int(dict(raw.get("architecture_args") or {}).get("axial_fold", 1))
        migrated["normalisation"] = normalisation
        migrated["inference"] = {
            "kind": "elastography",
            "pairs": normalisation.pop("pairs", "first"),
            "prealign": normalisation.pop("prealign", None),
            "input_multiple": [_FORMAT_1_DEEPUSE_STRIDE * fold, _FORMAT_1_DEEPUSE_STRIDE],
        }
    return migrated


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    """One input or output tensor: ``shape`` holds fixed sizes and symbols ("B", "H", "H//4", "W*2").

    ``range`` ([low, high], inclusive) and ``values`` (the only values, e.g. the classes of a label
    map) state what an input holds; predictors refuse arrays outside them and parity checks draw
    their data inside them. Integer inputs need one of the two.
    """

    name: str = Field(min_length=1)
    shape: list[int | str]
    dtype: str = "float32"
    range: tuple[float, float] | None = None
    values: list[int] | None = Field(None, min_length=1)

    @field_validator("shape")
    @classmethod
    def _dims_valid(cls, shape: list[Dim]) -> list[Dim]:
        for dim in shape:
            if isinstance(dim, str):
                parse_symbol(dim)
            elif dim < 0:
                raise ValueError(f"negative dimension {dim} in shape {shape}")
        return shape

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str) -> str:
        if dtype not in TENSOR_DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(TENSOR_DTYPES)}")
        return dtype

    @model_validator(mode="after")
    def _domain_valid(self) -> TensorSpec:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range {list(self.range)} of {self.name!r} must be [low, high] with low <= high")
        if self.values is not None and self.is_float:
            raise ValueError(f"values are for integer tensors; {self.name!r} is {self.dtype} (give a range)")
        return self

    @property
    def is_float(self) -> bool:
        """Whether the tensor holds floating-point numbers."""
        return self.dtype in FLOAT_DTYPES


class StateSpec(_Strict):
    """A recurrent state passed explicitly: graph input ``input``, graph output ``output``.

    Its shape is (B, channels, H // stride, W // stride), with B, H, W from the first data
    input; its initial value is zeros.
    """

    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    channels: int = Field(ge=1)
    stride: int = Field(ge=1)


def state_shapes(states: Sequence[StateSpec], first_input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Shapes (B, channels, H // stride, W // stride) of ``states`` for a first data input of
    shape (B, C, H, W) (any number of spatial axes)."""
    batch, spatial = first_input_shape[0], first_input_shape[2:]
    return [(batch, state.channels, *[size // state.stride for size in spatial]) for state in states]


class NetworkSpec(_Strict):
    """One network of a bundle: how to rebuild it, what it takes and returns, how its weights are stored.

    Attributes:
        example_shapes: shape of each data input used at export; parity checks draw inputs of these shapes.
        weights_dtype: dtype of the stored weights; loading casts them to float32.
    """

    architecture: str = Field(min_length=1)
    architecture_module: str
    architecture_args: dict[str, Any]
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    example_shapes: list[list[int]]
    states: list[StateSpec] = []
    weights_dtype: str = "float32"

    @field_validator("architecture_module")
    @classmethod
    def _trusted_module(cls, module: str) -> str:
        if not module.startswith(TRUSTED_MODULE_PREFIX):
            raise ValueError(f"architecture_module {module!r} must be a module of {TRUSTED_MODULE_PREFIX.rstrip('.')}")
        return module

    @field_validator("weights_dtype")
    @classmethod
    def _known_weights_dtype(cls, dtype: str) -> str:
        if dtype not in WEIGHTS_DTYPES:
            raise ValueError(f"weights_dtype {dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
        return dtype

    @model_validator(mode="after")
    def _consistent(self) -> NetworkSpec:
        if len(self.example_shapes) != len(self.inputs):
            raise ValueError(f"example_shapes has {len(self.example_shapes)} entries for {len(self.inputs)} inputs")
        for spec, shape in zip(self.inputs, self.example_shapes):
            if len(spec.shape) != len(shape):
                raise ValueError(f"example shape {shape} of input {spec.name!r} does not have the rank of {spec.shape}")
        for spec in self.inputs:
            if not spec.is_float and spec.range is None and spec.values is None:
                raise ValueError(f"integer input {spec.name!r} needs a range or values (what it may hold)")
        names = [spec.name for spec in self.graph_inputs() + self.graph_outputs()]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tensor names must be unique across inputs, outputs and states: {duplicates}")
        return self

    def state_shape(self, stride: int, channels: int) -> list[Dim]:
        """Symbolic shape (B, channels, H // stride, W // stride) of a state, from the first input."""
        spatial = self.inputs[0].shape[2:]
        scaled_spatial = [scaled(dim, "//", stride) if isinstance(dim, str) else dim // stride for dim in spatial]
        return [BATCH, channels, *scaled_spatial]

    def initial_state_shapes(self, first_input_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Shapes of this model's states for a first data input of ``first_input_shape``."""
        return state_shapes(self.states, first_input_shape)

    def graph_inputs(self) -> list[TensorSpec]:
        """Inputs of the exported graphs: the data inputs, then one per state."""
        return self.inputs + [
            TensorSpec(name=state.input, shape=self.state_shape(state.stride, state.channels)) for state in self.states
        ]

    def graph_outputs(self) -> list[TensorSpec]:
        """Outputs of the exported graphs: the data outputs, then one per state."""
        return self.outputs + [
            TensorSpec(name=state.output, shape=self.state_shape(state.stride, state.channels)) for state in self.states
        ]


class Manifest(NetworkSpec):
    """``manifest.json`` of a bundle: its main network's fields (:class:`NetworkSpec`), then the
    bundle's. Unknown keys are refused; format-1 manifests are migrated on validation.

    Attributes:
        components: further networks by name (lowercase, used in file names), for inference that
            needs several; each file of a component is named ``"<name>.<main file name>"``.
        inference: how the capability runs the network(s), or None for a bare network.
        files: file name (relative to the bundle folder) -> sha256 hex digest.
    """

    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    task: str = Field(min_length=1)
    description: str = ""
    components: dict[str, NetworkSpec] = {}
    inference: InferenceSpec | None = None
    normalisation: dict[str, Any] = {}
    training_config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    files: dict[str, str]
    created_with: str
    created_at: str

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        return migrate_manifest(data) if isinstance(data, dict) else data

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(f"unknown format_version {version}; this engine reads {list(SUPPORTED_FORMAT_VERSIONS)}")
        return version

    @field_validator("components")
    @classmethod
    def _component_names(cls, components: dict[str, NetworkSpec]) -> dict[str, NetworkSpec]:
        for name in components:
            if name == MAIN_NETWORK or not _COMPONENT_NAME.match(name):
                raise ValueError(
                    f"component name {name!r} must be lowercase letters, digits, '_' or '-' and not {MAIN_NETWORK!r}"
                )
        return components

    @field_validator("files")
    @classmethod
    def _files_valid(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not name or "/" in name or "\\" in name or name in {".", "..", MANIFEST_NAME}:
                raise ValueError(f"file name {name!r} must be a plain file name inside the bundle folder")
            if not _SHA256.match(digest):
                raise ValueError(f"sha256 of {name!r} must be 64 lowercase hex digits, got {digest!r}")
        return files

    @model_validator(mode="after")
    def _weights_listed(self) -> Manifest:
        missing = [file_name("weights", network) for network in self.network_names()]
        missing = [name for name in missing if name not in self.files]
        if missing:
            raise ValueError(f"files must list the weights of every network: {missing} missing")
        return self

    def to_json(self) -> str:
        """``manifest.json`` text: the bundle's identity first, then the main network and the rest;
        unset optional values (a tensor's range, a missing inference section) left out."""
        data = self.model_dump(mode="json", exclude_none=True)
        leading = {key: data.pop(key) for key in ("format_version", "name", "version", "task", "description")}
        return json.dumps(leading | data, indent=2) + "\n"

    def network_names(self) -> list[str]:
        """Names of the bundle's networks, the main one first."""
        return [MAIN_NETWORK, *self.components]

    def network(self, name: str | None = None) -> NetworkSpec:
        """The network ``name`` (None: the main one).

        Raises:
            InputError: the bundle has no network of that name.
        """
        if name is None or name == MAIN_NETWORK:
            return self
        if name not in self.components:
            raise InputError(f"bundle {self.name!r} has no network {name!r}; it has {', '.join(self.network_names())}")
        return self.components[name]
