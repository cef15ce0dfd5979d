"""The bundle manifest: what a model is, what it takes and returns, and the checksum of each file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepultrasound.runtime.architectures import TRUSTED_MODULE_PREFIX
from deepultrasound.runtime.shapes import BATCH, Dim, parse_symbol, scaled

#: manifest format versions this engine reads
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
#: file kind -> file name inside a bundle
FILE_NAMES = {"weights": "weights.safetensors", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    """One input or output tensor: ``shape`` holds fixed sizes and symbols ("B", "H", "H//4", "W*2")."""

    name: str = Field(min_length=1)
    shape: list[int | str]
    dtype: str = "float32"

    @field_validator("shape")
    @classmethod
    def _dims_valid(cls, shape: list[Dim]) -> list[Dim]:
        for dim in shape:
            if isinstance(dim, str):
                parse_symbol(dim)
            elif dim < 0:
                raise ValueError(f"negative dimension {dim} in shape {shape}")
        return shape


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


class Manifest(_Strict):
    """``manifest.json`` of a bundle. Unknown keys are refused."""

    format_version: int = 1
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    task: str = Field(min_length=1)
    description: str = ""
    architecture: str = Field(min_length=1)
    architecture_module: str
    architecture_args: dict[str, Any]
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    #: shape of each data input used at export; parity checks draw random inputs of these shapes
    example_shapes: list[list[int]]
    states: list[StateSpec] = []
    normalisation: dict[str, Any] = {}
    training_config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    #: file name (relative to the bundle folder) -> sha256 hex digest
    files: dict[str, str]
    created_with: str
    created_at: str

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(f"unknown format_version {version}; this engine reads {list(SUPPORTED_FORMAT_VERSIONS)}")
        return version

    @field_validator("architecture_module")
    @classmethod
    def _trusted_module(cls, module: str) -> str:
        if not module.startswith(TRUSTED_MODULE_PREFIX):
            raise ValueError(f"architecture_module {module!r} must be a module of {TRUSTED_MODULE_PREFIX.rstrip('.')}")
        return module

    @field_validator("files")
    @classmethod
    def _files_valid(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not name or "/" in name or "\\" in name or name in {".", "..", MANIFEST_NAME}:
                raise ValueError(f"file name {name!r} must be a plain file name inside the bundle folder")
            if not _SHA256.match(digest):
                raise ValueError(f"sha256 of {name!r} must be 64 lowercase hex digits, got {digest!r}")
        if FILE_NAMES["weights"] not in files:
            raise ValueError(f"files must list {FILE_NAMES['weights']!r}")
        return files

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(self.example_shapes) != len(self.inputs):
            raise ValueError(f"example_shapes has {len(self.example_shapes)} entries for {len(self.inputs)} inputs")
        for spec, shape in zip(self.inputs, self.example_shapes):
            if len(spec.shape) != len(shape):
                raise ValueError(f"example shape {shape} of input {spec.name!r} does not have the rank of {spec.shape}")
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
