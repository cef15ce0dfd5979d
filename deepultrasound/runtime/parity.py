"""Parity between a bundle's backends: the same inputs through each, compared with a reference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepultrasound.errors import InputError
from deepultrasound.runtime.backends import Predictor, RecurrentPredictor, create_predictor
from deepultrasound.runtime.bundle import Bundle, load_bundle


@dataclass
class ParityReport:
    """Largest absolute difference of each output of each backend from the reference backend.

    Attributes:
        bundle: name and version of the bundle.
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
    backends: Sequence[str] = ("torch", "torchscript", "onnxruntime"),
    inputs: Sequence[np.ndarray] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
    steps: int = 3,
    device: str | torch.device | None = "cpu",
) -> ParityReport:
    """Run each backend on the same data inputs and compare every output with the torch backend
    (the first backend when torch is not among them).

    Args:
        inputs: data inputs (not states); ``None`` draws standard normal arrays of the
            manifest's example shapes from ``seed``.
        steps: for recurrent models, the number of consecutive steps (new inputs each step,
            states carried by each backend from zeros); all outputs and states are compared.
            Models without states run one step.
        device: where the backends run (see :func:`choose_device`).
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    manifest = bundle.manifest
    if len(backends) < 2:
        raise InputError(f"parity needs at least two backends, got {list(backends)}")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    steps = steps if manifest.states else 1
    rng = np.random.default_rng(seed)
    shapes = manifest.example_shapes if inputs is None else [np.shape(array) for array in inputs]
    sequence = [[rng.standard_normal(shape).astype(np.float32) for shape in shapes] for _ in range(steps)]
    if inputs is not None:
        sequence[0] = [np.asarray(array, dtype=np.float32) for array in inputs]
    results = {backend: _run_steps(create_predictor(bundle, backend, device), sequence) for backend in backends}
    reference = "torch" if "torch" in backends else backends[0]
    report = ParityReport(
        bundle=f"{manifest.name} {manifest.version}",
        reference=reference,
        atol=atol,
        steps=steps,
        input_shapes=[tuple(shape) for shape in shapes],
    )
    names = [spec.name for spec in manifest.graph_outputs()]
    for backend in backends:
        if backend != reference:
            pairs = list(zip(results[backend], results[reference]))
            report.differences[backend] = {
                name: float(np.max([_difference(ours[i], ref[i]) for ours, ref in pairs]))
                for i, name in enumerate(names)
            }
    return report


def _difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Max abs difference; infinite when the shapes differ, NaN when either holds NaN."""
    if ours.shape != theirs.shape:
        return float("inf")
    return float(np.max(np.abs(ours - theirs), initial=0.0))


def _run_steps(predictor: Predictor, sequence: list[list[np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
    """All graph outputs (data outputs, then states) of each step; states carried from zeros."""
    if not predictor.bundle.manifest.states:
        return [predictor.predict(*data) for data in sequence]
    recurrent = RecurrentPredictor(predictor)
    return [recurrent.step(*data) + recurrent.states for data in sequence]
