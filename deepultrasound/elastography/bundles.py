"""DeepUSE networks as model bundles: the graph's names, recurrent states and export example.

A DeepUSE bundle (``task="elastography"``) takes ``pair`` ``(B, 2, H, W)`` = cat[fixed, moving]
RF (then, for ReUSENet, its ten states) and returns ``displacement`` ``(B, 2, H, W)`` in pixels
(then the next states). Its manifest's ``inference`` section (:func:`deepuse_inference`) says
which frame pairs the network was trained on, whether they are pre-aligned and the multiple
frames are padded to. Imported checkpoints, trained models and tests all save through
:func:`save_deepuse_bundle` or, inside the trainer, use :func:`deepuse_state_specs`,
:func:`deepuse_inference` and these names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError

from deepultrasound.elastography.frames import DEEPUSE_NORMALISATION
from deepultrasound.elastography.networks import ReUSENet, USENet, input_multiple
from deepultrasound.errors import InputError
from deepultrasound.runtime import StateSpec, save_bundle
from deepultrasound.runtime.bundle import EXPORT_FORMATS
from deepultrasound.runtime.inference_specs import ElastographyInference

TASK = "elastography"
"""``task`` of DeepUSE bundles."""
ARCHITECTURE_MODULE = "deepultrasound.elastography.networks"
INPUT_NAME = "pair"
OUTPUT_NAME = "displacement"
EXAMPLE_SIZE = (1600, 128)
"""(H, W) of the example input at export: the paper's cropped in vivo frames."""


def deepuse_state_specs(model: USENet | ReUSENet) -> list[StateSpec]:
    """The recurrent states of ``model`` as graph inputs ``NAME`` and outputs ``next_NAME`` (none for USENet)."""
    if not isinstance(model, ReUSENet):
        return []
    return [
        StateSpec(input=name, output=f"next_{name}", channels=channels, stride=stride)
        for name, (channels, stride) in zip(model.state_names(), model.state_specs())
    ]


def deepuse_inference(
    model: USENet | ReUSENet, pairs: Literal["first", "previous"] = "first", prealign: str | None = None
) -> ElastographyInference:
    """The manifest's ``inference`` section of ``model``: its training pairs, pre-alignment and input multiple.

    Raises:
        InputError: an unknown pairing or pre-alignment, or pre-alignment without frame-to-frame pairs.
    """
    try:
        return ElastographyInference(pairs=pairs, prealign=prealign, input_multiple=input_multiple(model.axial_fold))
    except ValidationError as error:
        problems = "; ".join(item["msg"] for item in error.errors())
        raise InputError(f"cannot describe the DeepUSE inference of this model: {problems}") from error


def save_deepuse_bundle(
    model: USENet | ReUSENet,
    directory: str | os.PathLike[str],
    *,
    name: str,
    version: str = "1",
    description: str = "",
    example_size: tuple[int, int] = EXAMPLE_SIZE,
    formats: Sequence[str] = EXPORT_FORMATS,
    normalisation: Mapping[str, Any] = DEEPUSE_NORMALISATION,
    pairs: Literal["first", "previous"] = "first",
    prealign: str | None = None,
    weights_dtype: str = "float32",
    training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Save a USENet or ReUSENet as a bundle (``task="elastography"``); returns the folder.

    The graph takes ``pair`` ``(B, 2, H, W)`` = cat[fixed, moving] (then, for ReUSENet, the ten
    states named by :meth:`ReUSENet.state_names`) and returns ``displacement`` ``(B, 2, H, W)``
    in pixels (then the ``next_<state>`` tensors). H and W are dynamic multiples of
    :func:`~deepultrasound.elastography.networks.input_multiple` (16, H of 16 x ``axial_fold``).

    Args:
        model: the network (its norm kind and sizes are recorded as architecture arguments).
        directory: bundle folder to write (atomically).
        name, version, description: manifest fields.
        example_size: (H, W) of the example input used for tracing and for parity checks.
        formats: exported graphs besides the weights ("torchscript", "onnx").
        normalisation: the manifest's input normalisation (see :data:`~.frames.NORMALISATIONS`).
        pairs, prealign: what the network was trained on (see :func:`deepuse_inference`).
        weights_dtype: "float32", or "float16" for weights half the size (see :func:`save_bundle`).
        training_config, metrics: recorded in the manifest.

    Raises:
        InputError: an example size that is not a positive multiple of the network's input multiple,
            or inconsistent ``pairs`` and ``prealign``.
        BundleError: the export failed (nothing is written).
    """
    height, width = example_size
    rows, lines = input_multiple(model.axial_fold)
    if height < rows or width < lines or height % rows or width % lines:
        raise InputError(f"example size must be positive multiples of ({rows}, {lines}), got {example_size}")
    architecture = "reusenet" if isinstance(model, ReUSENet) else "usenet"
    inference = deepuse_inference(model, pairs, prealign)
    return save_bundle(
        directory,
        model,
        name=name,
        version=version,
        task=TASK,
        architecture=architecture,
        architecture_module=ARCHITECTURE_MODULE,
        architecture_args=model.get_config(),
        example_inputs=(torch.randn(1, model.in_channels, height, width, generator=torch.Generator().manual_seed(0)),),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        states=deepuse_state_specs(model),
        normalisation=normalisation,
        inference=inference,
        weights_dtype=weights_dtype,
        training_config=training_config,
        metrics=metrics,
        description=description,
        formats=formats,
    )
