"""Label-conditioned synthesis of a label map in a background process, with progress and Cancel.

The labels (a label map, or a segmentation exported with its label values, see :func:`.logic.synthesisInput`)
go to a temporary NRRD label file with their geometry; ``deepultrasound synth`` (started with Slicer's
Python, see :class:`DeepUltrasoundCommonLib.engineJob.EngineJob`) writes the float32 images in [0, 1] beside
it: one 2-D image for one label frame and one sample, else a stack of K N slices, slice-major. Its progress
over samples and denoising steps arrives as tqdm lines; its last output line is its one-line summary.

The samples are stored on the label map's grid (:mod:`.samples`). A result of another size, or whose pixel
size differs from the labels', is refused (the engine would have resampled); its pose is not compared, as a
2-D image file cannot carry the 3-D pose of an oblique label frame: placing the images is the module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
from DeepUltrasoundCommonLib.engineJob import EngineJob, readVolumeArray, writeArrayFile
from DeepUltrasoundCommonLib.process import progressOf

from .logic import SynthesisSettings, samplesOfStack, synthesisArguments, synthesisInput
from .samples import samplesBrowsing, storeSamples

#: mm within which the engine's pixel size must match the labels'
SPACING_TOLERANCE_MM = 1e-4


@dataclass(frozen=True)
class Synthesis:
    """What a run produced (for the status line).

    Attributes:
        engineSummary: the engine's one-line summary (its last output line that is no progress bar).
        samples: N samples of each label frame.
        outputName: the volume holding sample 0.
        sequenceName: the sequence of the samples, or "" when there is none.
    """

    engineSummary: str
    samples: int
    outputName: str
    sequenceName: str = ""

    def summary(self) -> str:
        where = f"'{self.outputName}'"
        if self.sequenceName:
            where += f", {self.samples} samples browsed in sequence '{self.sequenceName}'"
        return f"{self.engineSummary} -> {where}"


class SynthesisJob(EngineJob):
    """One synthesis run on a label map or segmentation (see :class:`DeepUltrasoundCommonLib.engineJob.EngineJob`).

    The labels are read and checked here, before anything starts.

    Args:
        labelsNode: label map volume or segmentation: K label frames ``(K, H, W)``, 0 background.
        outputVolume: receives sample 0 ``(K, H, W)`` float32 on the label map's grid; with several samples it
            becomes the proxy of their sequence (see :mod:`.samples`).
        settings: samples, sampler settings, model and device.
        python: interpreter of the process (default: Slicer's ``PythonSlicer``).

    Attributes:
        progress: ``(done, total)`` of the engine's last progress line, or None before the first.
    """

    description = "Synthesis"

    def __init__(
        self,
        labelsNode: slicer.vtkMRMLNode,
        outputVolume: slicer.vtkMRMLScalarVolumeNode,
        settings: SynthesisSettings,
        python: str | None = None,
    ) -> None:
        super().__init__(python)
        self.labels, self.geometry = synthesisInput(labelsNode)
        if outputVolume is None:
            raise ValueError("Select or create an output image volume")
        samplesBrowsing(outputVolume)  # refuses a volume that shows other data
        self.labelsNode, self.outputVolume, self.settings = labelsNode, outputVolume, settings

    def writeInputs(self, folder: Path) -> list[str]:
        scene = self.labelsNode.GetScene()
        writeArrayFile(self.labels, self.geometry, folder / "labels.nrrd", scene, "vtkMRMLLabelMapVolumeNode")
        return synthesisArguments(folder / "labels.nrrd", folder / "synthetic.nrrd", self.settings)

    def readResults(self, folder: Path) -> Synthesis:
        """Read the images into the output volume (and the samples' sequence), once checked.

        Raises:
            ValueError: the file cannot be read, or its size or pixel size is not the labels'.
        """
        stack, written = readVolumeArray(folder / "synthetic.nrrd", self.labelsNode.GetScene())
        frames, height, width = self.labels.shape
        if stack.shape[1:] != (height, width):
            raise ValueError(
                f"The engine wrote images of {stack.shape[1:]} pixels (J, I); the labels are {height, width}"
            )
        if not np.allclose(written.spacing[:2], self.geometry.spacing[:2], rtol=0.0, atol=SPACING_TOLERANCE_MM):
            raise ValueError(
                f"The engine wrote pixels of {written.spacing[:2]} mm; the labels' are {self.geometry.spacing[:2]} mm"
            )
        samples = samplesOfStack(stack.astype(np.float32, copy=False), frames, self.settings.samples)
        browser = storeSamples(samples, self.outputVolume, self.geometry)
        summary = next((line for line in reversed(self.output) if progressOf(line) is None), "")
        sequenceName = "" if browser is None else browser.GetMasterSequenceNode().GetName()
        return Synthesis(summary, len(samples), self.outputVolume.GetName(), sequenceName)
