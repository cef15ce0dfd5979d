"""Label maps in, synthetic B-mode samples out, on the label map's grid; the ``deepultrasound synth`` command line.

Labels are ``(K, H, W)``: K label frames (slices), H axial (J) and W lateral (I) pixels; 0 is background.
They come from a label map volume, or from a segmentation exported onto its reference image grid with
each segment's label value (the value it holds in the segmentation's labelmap, which Slicer keeps from an
imported label map and numbers 1, 2, ... for segments drawn in the Segment Editor).

The engine draws N samples for each label frame and writes the ``K N`` images slice-major (frame 0's N
samples, then frame 1's ...); :func:`samplesOfStack` turns them into N samples of K frames, each of which
lies on the label map's grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
from DeepUltrasoundCommonLib import EngineMethod, VolumeGeometry, labelMapToArray, volumeToArray

#: probe of the B-map forward process; "default": the chosen model's, or the engine's default (echo) model's
PROBES = ("default", "linear", "sector")


def synthesisInput(labelsNode: slicer.vtkMRMLNode) -> tuple[np.ndarray, VolumeGeometry]:
    """Label frames ``(K, H, W)`` int32 and their geometry, from a label map volume or a segmentation.

    Raises:
        ValueError: no node, neither a label map nor a segmentation, negative labels, a segmentation without
            segments, reference geometry or distinct label values, or only background (nothing to condition on).
    """
    if labelsNode is None:
        raise ValueError("Select a label map or a segmentation")
    if labelsNode.IsA("vtkMRMLSegmentationNode"):
        labels, geometry = segmentationLabels(labelsNode)
    else:
        labels, geometry = labelMapToArray(labelsNode)
    if not np.any(labels):
        raise ValueError(f"'{labelsNode.GetName()}' contains only background (label 0): draw or load anatomy labels")
    return labels, geometry


def segmentationLabels(segmentation: slicer.vtkMRMLSegmentationNode) -> tuple[np.ndarray, VolumeGeometry]:
    """Labels ``(K, H, W)`` int32 of ``segmentation`` on its reference image grid, each segment drawn with its
    label value (where segments overlap, the higher value wins).

    Slicer's export numbers the exported segments 1, 2, ... in the order given; the segments are given in the
    order of their label values and the numbers mapped back to those values.

    Raises:
        ValueError: no segments, no reference image grid, two segments with one label value, or a failed export.
    """
    name, segments = segmentation.GetName(), segmentation.GetSegmentation()
    ids = [segments.GetNthSegmentID(n) for n in range(segments.GetNumberOfSegments())]
    if not ids:
        raise ValueError(f"Segmentation '{name}' has no segments: draw anatomy in the Segment Editor")
    geometryParameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    if not segments.GetConversionParameter(geometryParameter):
        raise ValueError(
            f"Segmentation '{name}' has no reference image grid: draw it in the Segment Editor on an image, or "
            "export it to a label map in the Segmentations module"
        )
    values = {segmentId: segments.GetSegment(segmentId).GetLabelValue() for segmentId in ids}
    if len(set(values.values())) < len(ids):
        shared = sorted({value for value in values.values() if list(values.values()).count(value) > 1})
        raise ValueError(
            f"Several segments of '{name}' share the label value {', '.join(map(str, shared))} (they lie on "
            "separate layers): export it to a label map in the Segmentations module and choose that label map"
        )
    ordered = sorted(ids, key=values.get)
    scene = segmentation.GetScene()
    colours = {node.GetID() for node in scene.GetNodesByClass("vtkMRMLColorNode")}
    staging = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"exporting {name}")
    try:
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation, ordered, staging, None, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not exported or staging.GetImageData() is None:
            raise ValueError(f"Could not export the segments of '{name}' to a label map")
        numbers, geometry = volumeToArray(staging)
    finally:
        for node in scene.GetNodesByClass("vtkMRMLColorNode"):  # the export's colour table, made for the staging node
            if node.GetID() not in colours:
                scene.RemoveNode(node)
        displays = [staging.GetNthDisplayNode(index) for index in range(staging.GetNumberOfDisplayNodes())]
        for node in [*displays, staging]:
            scene.RemoveNode(node)
    lookup = np.array([0] + [values[segmentId] for segmentId in ordered], dtype=np.int32)
    return lookup[numbers], geometry


@dataclass(frozen=True)
class SynthesisSettings:
    """How the engine samples (see ``deepultrasound synth --help``).

    Attributes:
        samples: N images drawn per label frame.
        steps: denoising steps; 0: the model's ``sampling_steps``.
        guidance: classifier-free guidance weight; 0: the model's ``guidance_scale`` (a weight of 0 would ignore
            the labels, so it is never asked for).
        seed: random seed (same seed, labels, model and settings: same images).
        probe: one of :data:`PROBES`.
        method: model (``""``: the engine's default synthesis model) and device.
    """

    samples: int = 1
    steps: int = 0
    guidance: float = 0.0
    seed: int = 0
    probe: str = "default"
    method: EngineMethod = field(default_factory=EngineMethod)

    def __post_init__(self) -> None:
        if self.samples < 1 or self.steps < 0 or self.guidance < 0 or self.seed < 0:
            raise ValueError(
                f"Samples must be >= 1 and steps, guidance and seed >= 0; got samples {self.samples}, steps "
                f"{self.steps}, guidance {self.guidance}, seed {self.seed}"
            )
        if self.probe not in PROBES:
            raise ValueError(f"Unknown probe '{self.probe}': choose one of {', '.join(PROBES)}")

    @classmethod
    def fromParameterNode(cls, parameterNode) -> SynthesisSettings:
        """The settings a ``USSynthParameterNode`` holds (``samples``, ``samplingSteps``, ``guidance``, ``seed``,
        ``probe``, ``modelName``); the device is the engine's choice."""
        return cls(
            samples=parameterNode.samples,
            steps=parameterNode.samplingSteps,
            guidance=parameterNode.guidance,
            seed=parameterNode.seed,
            probe=parameterNode.probe,
            method=EngineMethod(model=parameterNode.modelName),
        )


def synthesisArguments(labelsPath: Path, outputPath: Path, settings: SynthesisSettings) -> list[str]:
    """The ``deepultrasound synth`` command line of ``settings`` for these files (model defaults left out)."""
    arguments = ["synth", str(labelsPath), "-o", str(outputPath), "--n", str(settings.samples)]
    if settings.steps:
        arguments += ["--steps", str(settings.steps)]
    if settings.guidance:
        arguments += ["--guidance", f"{settings.guidance:g}"]
    if settings.probe != "default":
        arguments += ["--probe", settings.probe]
    arguments += ["--seed", str(settings.seed)]
    if settings.method.model:
        arguments += ["--model", settings.method.model]
    return arguments + ["--device", settings.method.device]


def samplesOfStack(stack: np.ndarray, frames: int, samples: int) -> np.ndarray:
    """The engine's slice-major stack ``(K N, H, W)`` (frame k's sample n at ``k N + n``) as ``(N, K, H, W)``.

    Raises:
        ValueError: the stack does not hold ``frames * samples`` images.
    """
    if stack.ndim != 3 or stack.shape[0] != frames * samples:
        raise ValueError(
            f"The engine wrote {stack.shape[0] if stack.ndim == 3 else stack.shape} image(s); expected {frames} "
            f"frame(s) x {samples} sample(s) = {frames * samples}"
        )
    return np.ascontiguousarray(stack.reshape(frames, samples, *stack.shape[1:]).transpose(1, 0, 2, 3))
