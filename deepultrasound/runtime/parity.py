"""Parity between a bundle's backends: the same inputs through each, compared with a reference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepultrasound.errors import BundleError, InputError
from deepultrasound.runtime.backends import Predictor, RecurrentPredictor, available_backends, create_predictor
from deepultrasound.runtime.bundle import Bundle, load_bundle
from deepultrasound.runtime.manifest import MAIN_NETWORK, TensorSpec


@dataclass
class ParityReport:
    """Largest absolute difference of each output of each backend from the reference backend.

    Attributes:
        bundle: name and version of the bundle, and the network checked when not the main one.
        reference: the backend the others are compared with (torch when it is checked).
        atol: the tolerance of :attr:`ok`.
        steps: number of consecutive steps run (more than one for recurrent models, whose
            states each backend carries itself).
        input_shapes: shapes of the data inputs of each step.
        differences: backend -> output name -> max abs difference over all steps.
    """

    bundle: str
    reference: str
    atol: float
    steps: int
    input_shapes: list[tuple[int, ...]]
    differences: dict[str, dict[str, float]] = field(default_factory=dict)

    def max_difference(self, backend: str) -> float:
        """Largest difference of any output of ``backend`` from the reference."""
        return float(np.max(list(self.differences[backend].values()), initial=0.0))  # NaN propagates

    @property
    def ok(self) -> bool:
        """Whether every output of every backend is within ``atol`` of the reference."""
        return all(self.max_difference(backend) <= self.atol for backend in self.differences)

    def __str__(self) -> str:
        shapes = ", ".join(str(shape) for shape in self.input_shapes)
        lines = [
            f"parity of {self.bundle}: {'OK' if self.ok else 'FAILED'} (reference {self.reference}, "
            f"atol {self.atol:g}, {self.steps} step(s), inputs {shapes})"
        ]
        for backend, outputs in self.differences.items():
            verdict = "ok" if self.max_difference(backend) <= self.atol else "FAIL"
            details = ", ".join(f"{name} {value:.2e}" for name, value in outputs.items())
            lines.append(f"  {backend:<12} max abs diff {self.max_difference(backend):.2e}  {verdict}  ({details})")
        return "\n".join(lines)


def check_parity(
    bundle: Bundle | str | os.PathLike[str],
    backends: Sequence[str] | None = None,
    inputs: Sequence[np.ndarray] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
    steps: int = 3,
    device: str | torch.device | None = "cpu",
    network: str | None = None,
) -> ParityReport:
    """Run each backend on the same data inputs and compare every output with the torch backend
    (the first backend when torch is not among them).

    Args:
        backends: the backends to compare; None: every backend the bundle ships a file for
            (torch from the weights, TorchScript and ONNX Runtime from their graphs).
        inputs: data inputs (not states); ``None`` draws arrays of the manifest's example shapes
            from ``seed``, each fitting its TensorSpec (:func:`draw_input`).
        steps: for recurrent models, the number of consecutive steps (new inputs each step,
            states carried by each backend from zeros); all outputs and states are compared.
            Models without states run one step.
        device: where the backends run (see :func:`choose_device`).
        network: which network of the bundle; None: the main one.

    Raises:
        InputError: fewer than two backends (a bundle of weights alone has nothing to compare).
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    manifest = bundle.manifest
    network = network or MAIN_NETWORK
    spec = manifest.network(network)
    backends = list(available_backends(bundle, network) if backends is None else backends)
    if len(backends) < 2:
        raise InputError(f"parity needs at least two backends, got {backends}")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    steps = steps if spec.states else 1
    rng = np.random.default_rng(seed)
    shapes = spec.example_shapes if inputs is None else [np.shape(array) for array in inputs]
    sequence = [[draw_input(tensor, shape, rng) for tensor, shape in zip(spec.inputs, shapes)] for _ in range(steps)]
    if inputs is not None:
        sequence[0] = [np.asarray(array) for array in inputs]
    results = {
        backend: _run_steps(create_predictor(bundle, backend, device, network=network), sequence)
        for backend in backends
    }
    reference = "torch" if "torch" in backends else backends[0]
    report = ParityReport(
        bundle=f"{manifest.name} {manifest.version}" + ("" if network == MAIN_NETWORK else f" ({network})"),
        reference=reference,
        atol=atol,
        steps=steps,
        input_shapes=[tuple(shape) for shape in shapes],
    )
    names = [tensor.name for tensor in spec.graph_outputs()]
    for backend in backends:
        if backend != reference:
            pairs = list(zip(results[backend], results[reference]))
            report.differences[backend] = {
                name: float(np.max([_difference(ours[i], ref[i]) for ours, ref in pairs]))
                for i, name in enumerate(names)
            }
    return report


def draw_input(spec: TensorSpec, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Random data of ``shape`` fitting ``spec``: one of its ``values``, an integer or a uniform
    float within its ``range``, else standard normal floats; in its dtype."""
    if spec.values is not None:
        data = rng.choice(np.asarray(spec.values), size=tuple(shape))
    elif spec.range is not None and not spec.is_float:
        data = rng.integers(int(np.ceil(spec.range[0])), int(np.floor(spec.range[1])), size=tuple(shape), endpoint=True)
    elif spec.range is not None:
        data = rng.uniform(spec.range[0], spec.range[1], size=tuple(shape))
    else:
        data = rng.standard_normal(tuple(shape))
    return data.astype(spec.dtype)


def _difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Max abs difference (in float64, so integer outputs cannot wrap); infinite when the shapes
    differ, NaN when either holds NaN."""
    if ours.shape != theirs.shape:
        return float("inf")
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)), initial=0.0))


def _run_steps(predictor: Predictor, sequence: list[list[np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
    """All graph outputs (data outputs, then states) of each step; states carried from zeros."""
    if not predictor.spec.states:
        return [predictor.predict(*data) for data in sequence]
    recurrent = RecurrentPredictor(predictor)
    return [recurrent.step(*data) + recurrent.states for data in sequence]


def verify_parity(bundle: Bundle, atol: float) -> dict[str, dict[str, dict[str, float]]]:
    """Parity of every network of ``bundle`` over the backends it ships, on the example shapes:
    ``{"parity": {network: {backend: largest difference from torch}}}`` (networks shipped as
    weights alone have nothing to compare and are left out). A ``verify`` step of :func:`save_bundle`.

    Raises:
        BundleError: a difference above ``atol`` (the message holds the report).
    """
    figures = {}
    for network in bundle.manifest.network_names():
        if len(available_backends(bundle, network)) < 2:
            continue
        report = check_parity(bundle, atol=atol, network=network)
        if not report.ok:
            raise BundleError(f"the exported graphs disagree with the network:\n{report}\nleave that format out")
        figures[network] = {backend: report.max_difference(backend) for backend in report.differences}
    return {"parity": figures}
