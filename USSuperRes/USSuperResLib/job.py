"""Lateral super-resolution of a volume in a background process, with progress and Cancel.

The input volume (scalar, or a colour vector volume, which the engine turns into grey) goes to a
temporary NRRD file with its geometry; ``deepultrasound superres`` (started with Slicer's Python,
see :class:`DeepUltrasoundCommonLib.engineJob.EngineJob`) writes the upsampled image beside it,
which is read back into the output volume. The engine reports its progress over the frames as
tqdm lines (``"cubic:  40%|####  | 2/5 [00:01<00:02, ...]"``, read by
:func:`DeepUltrasoundCommonLib.process.progressOf`; the last ``n/n`` line may be left out) and its
one-line summary last.

The result must lie on :func:`.logic.superResolvedGeometry` of the input: ``(K, H, F W)`` voxels, lateral
spacing divided by F, same origin and directions. A file that does not is refused (the engine and the
module would disagree on where the lines are), and the output node gets that geometry exactly
(without the rounding of the file's text header).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slicer
from DeepUltrasoundCommonLib import arrayToVolume, volumeGeometry
from DeepUltrasoundCommonLib.engineJob import EngineJob, readVolumeArray, writeVolumeFile

from .logic import SuperResolutionMethod, superResolutionArguments, superResolvedGeometry

#: mm within which the grid of the engine's output must match :func:`.logic.superResolvedGeometry`
GRID_TOLERANCE_MM = 1e-4


@dataclass(frozen=True)
class SuperResolution:
    """What a run produced (for the status line).

    Attributes:
        inputShape: ``(K, H, W)`` frames, axial samples, beam lines of the input.
        factor: lateral factor F; the output is ``(K, H, F W)``.
        method: how the lines were made (:meth:`.logic.SuperResolutionMethod.describe`).
    """

    inputShape: tuple[int, int, int]
    factor: int
    method: str

    def summary(self) -> str:
        frames, height, width = self.inputShape
        return (
            f"{frames} frame(s) of {height} x {width} -> {height} x {width * self.factor} "
            f"(x{self.factor} laterally, {self.method})"
        )


class SuperResolutionJob(EngineJob):
    """One super-resolution run of a volume (see :class:`DeepUltrasoundCommonLib.engineJob.EngineJob`).

    Args:
        inputVolume: frames ``(K, H, W)`` (frames along K, axial samples along J, beam lines along I),
            scalar or colour (vector) voxels.
        outputVolume: output ``(K, H, factor W)`` on :func:`.logic.superResolvedGeometry`; a scalar volume
            other than the input.
        factor: lateral factor (the engine takes integers >= 2).
        method: network (and model) or classical interpolation, and device.
        python: interpreter of the process (default: Slicer's ``PythonSlicer``).

    Attributes:
        progress: ``(frames done, frames)`` as last reported, or None before the first report.
    """

    description = "Super-resolution"

    def __init__(
        self,
        inputVolume: slicer.vtkMRMLScalarVolumeNode,
        outputVolume: slicer.vtkMRMLScalarVolumeNode,
        factor: int,
        method: SuperResolutionMethod,
        python: str | None = None,
    ) -> None:
        super().__init__(python)
        if inputVolume is None or inputVolume.GetImageData() is None:
            raise ValueError("Select an input image that holds voxels")
        if outputVolume is None:
            raise ValueError("Select or create an output image volume")
        if outputVolume is inputVolume:
            raise ValueError("Choose an output volume other than the input: the result would replace the input")
        self.inputVolume, self.outputVolume, self.factor, self.method = inputVolume, outputVolume, factor, method
        width, height, frames = inputVolume.GetImageData().GetDimensions()
        self.inputShape = (frames, height, width)
        self.outputGeometry = superResolvedGeometry(volumeGeometry(inputVolume), factor)  # refuses factor < 1

    def writeInputs(self, folder: Path) -> list[str]:
        writeVolumeFile(self.inputVolume, folder / "input.nrrd")
        return superResolutionArguments(folder / "input.nrrd", folder / "output.nrrd", self.factor, self.method)

    def readResults(self, folder: Path) -> SuperResolution:
        """Read the output image into the output volume, once it is checked to lie on the expected fine grid.

        Raises:
            ValueError: the file cannot be read, or its size or geometry is not the expected one.
        """
        upsampled, written = readVolumeArray(folder / "output.nrrd", self.inputVolume.GetScene())
        frames, height, width = self.inputShape
        expected = (frames, height, width * self.factor)
        if upsampled.shape != expected:
            raise ValueError(f"The engine wrote an image of shape {upsampled.shape}; expected {expected} (K, J, I)")
        if not written.isClose(self.outputGeometry, GRID_TOLERANCE_MM):
            raise ValueError(
                f"The engine wrote the image on another grid (IJK-to-RAS\n{written.ijkToRas.round(6)}) than "
                f"the x{self.factor} grid of the input (\n{self.outputGeometry.ijkToRas.round(6)})"
            )
        arrayToVolume(upsampled, self.outputVolume, self.outputGeometry)
        return SuperResolution(self.inputShape, self.factor, self.method.describe())
