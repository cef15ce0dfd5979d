"""Offline strain of an RF volume or sequence in a background process, with progress and Cancel.

The frames ``(N, H, W)`` of the RF volume (frames along K) or sequence (N single-slice items) go to
a temporary NRRD file with their geometry; ``deepultrasound strain`` (started with Slicer's Python,
see :class:`DeepUltrasoundCommonLib.process.EngineProcess`) writes the strain ``(N-1, H, W)`` in %
and the B-mode of every frame in dB beside it, and the quality figure of every strain frame
(``strain_quality.csv``); all are read back into the nodes: a strain volume on the RF grid with the
B-mode of each pair's fixed frame under its strain, or a strain sequence laid out as
:func:`.offline.writeStrainSequence` does; the quality as the strain node's attributes. The process
reports one progress line per pair, read by :meth:`OfflineStrainJob.poll` from a timer;
:meth:`OfflineStrainJob.cancel` ends the whole process tree. :meth:`OfflineStrainJob.run` waits
for the result (scripts and tests).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer
from DeepUltrasoundCommonLib import arrayToVolume
from DeepUltrasoundCommonLib.process import EngineProcess, progressOf

from .engine import StrainMethod
from .logic import rfFramesFromVolume
from .offline import OfflineStrain, rfFramesFromSequence, setQualityAttributes, strainPairs, writeStrainSequence

#: output lines of a failed process shown in the error message
ERROR_LINES = 5


def strainArguments(
    rfPath: Path, strainPath: Path, bmodePath: Path, method: StrainMethod, pairWithPrevious: bool = False
) -> list[str]:
    """The ``deepultrasound strain`` command line of ``method`` for these files."""
    arguments = ["strain", str(rfPath), "-o", str(strainPath), "--bmode", str(bmodePath)]
    arguments += ["--reference", "previous" if pairWithPrevious else "first", "--window-mm", f"{method.windowMm:g}"]
    if method.baseline:
        return arguments + ["--baseline", "--device", method.device]
    arguments += ["--backend", method.backend, "--device", method.device]
    return arguments + (["--model", method.model] if method.model else [])


def _storageNode(scene: slicer.vtkMRMLScene, path: Path) -> slicer.vtkMRMLVolumeArchetypeStorageNode:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    scene.AddNode(storage)
    return storage


class OfflineStrainJob:
    """One offline strain computation of an RF volume or sequence.

    Args:
        rfNode: RF frames: a scalar volume ``(N, H, W)``, N >= 2 (frames along K, axial samples along
            J), or a sequence node of N >= 2 single-slice scalar volumes of one size.
        strainNode: output: for a volume, a scalar volume ``(N-1, H, W)`` float32 strain in % with the
            RF volume's geometry; for a sequence, a sequence node (see :func:`.offline.writeStrainSequence`).
        bmodeVolume: output ``(N-1, H, W)`` float32 B-mode in dB of each pair's fixed frame, on the
            first frame's grid; may be None for a sequence.
        method: model or baseline, backend, device and strain window.
        pairWithPrevious: pair each frame with the previous one instead of the first.
        python: interpreter of the process (default: Slicer's ``PythonSlicer``).

    Attributes:
        progress: ``(pairs done, pairs)`` as last reported, or None before the first report.
    """

    def __init__(
        self,
        rfNode: slicer.vtkMRMLScalarVolumeNode | slicer.vtkMRMLSequenceNode,
        strainNode: slicer.vtkMRMLScalarVolumeNode | slicer.vtkMRMLSequenceNode,
        bmodeVolume: slicer.vtkMRMLScalarVolumeNode | None,
        method: StrainMethod,
        pairWithPrevious: bool = False,
        python: str | None = None,
    ) -> None:
        self.isSequence = rfNode is not None and rfNode.IsA("vtkMRMLSequenceNode")
        if strainNode is None or (bmodeVolume is None and not self.isSequence):
            raise ValueError("Select or create the strain and B-mode output volumes")
        if strainNode.IsA("vtkMRMLSequenceNode") != self.isSequence:
            raise ValueError("The strain of an RF sequence is a sequence, and that of an RF volume a volume")
        # Unusable frames are refused here, before any work.
        if self.isSequence:
            self.frames, self.geometries, self.values = rfFramesFromSequence(rfNode)
        else:
            self.frames, geometry = rfFramesFromVolume(rfNode)
            self.geometries, self.values = [geometry], []
        self.geometry = self.geometries[0]
        self.rfNode, self.strainNode, self.bmodeVolume = rfNode, strainNode, bmodeVolume
        self.method, self.pairWithPrevious, self.python = method, pairWithPrevious, python
        self.progress: tuple[int, int] | None = None
        self.process: EngineProcess | None = None
        self._folder: Path | None = None
        self._output: list[str] = []

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def start(self) -> OfflineStrainJob:
        """Write the frames and start the process.

        Raises:
            ValueError: the engine is missing.
            OSError: the frames cannot be written or the interpreter cannot be started.
        """
        self._folder = Path(tempfile.mkdtemp(prefix="DeepUSE-"))
        rfPath = self._folder / "rf.nrrd"
        scene = self.rfNode.GetScene()
        staging = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "DeepUSE RF frames")
        storage = _storageNode(scene, rfPath)
        try:
            arrayToVolume(self.frames, staging, self.geometry)
            if not storage.WriteData(staging):
                raise OSError(f"Could not write the RF frames to {rfPath}")
        finally:
            scene.RemoveNode(storage)
            scene.RemoveNode(staging)
        arguments = strainArguments(
            rfPath, self._folder / "strain.nrrd", self._folder / "bmode.nrrd", self.method, self.pairWithPrevious
        )
        self.process = EngineProcess(arguments, self.python).start()
        return self

    def poll(self) -> bool:
        """Take the process's new output (progress included); whether it still runs."""
        for line in self.process.lines():
            self._output.append(line)
            self.progress = progressOf(line) or self.progress
        return self.process.running

    def finish(self) -> OfflineStrain:
        """Read the results into the output volumes once the process has ended; removes the temporary files.

        Raises:
            ValueError: the process failed or was cancelled; the message holds its last output lines.
        """
        code = self.process.wait()
        self.poll()
        try:
            if code != 0:
                tail = "\n".join(self._output[-ERROR_LINES:])
                raise ValueError(f"Strain computation failed (exit status {code}):\n{tail}")
            return self._readResults()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    def cancel(self) -> None:
        """End the process and its children; the output volumes keep what they held."""
        if self.process is not None:
            self.process.stop()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def run(self, timeoutS: float | None = None) -> OfflineStrain:
        """:meth:`start`, wait, :meth:`finish` (cancelled after ``timeoutS`` seconds, then raises ValueError)."""
        self.start()
        if self.process.wait(timeoutS) is None:
            self.cancel()
        return self.finish()

    def _readResults(self) -> OfflineStrain:
        strain, bmode = (self._readArray(name) for name in ("strain.nrrd", "bmode.nrrd"))
        pairs = strainPairs(len(self.frames), self.pairWithPrevious)
        if self.isSequence:
            writeStrainSequence(strain, pairs, self.rfNode, self.geometries, self.values, self.strainNode)
        else:
            arrayToVolume(strain, self.strainNode, self.geometry)
        if self.bmodeVolume is not None:
            arrayToVolume(np.ascontiguousarray(bmode[pairs[:, 0]]), self.bmodeVolume, self.geometry)
        with (self._folder / "strain_quality.csv").open(newline="") as file:
            rows = list(csv.DictReader(file))
        nccAfter = np.array([float(row["ncc_after"]) for row in rows])
        flagged = np.array([row["flagged"] == "1" for row in rows])
        setQualityAttributes(self.strainNode, nccAfter, flagged)
        reference = "previous" if self.pairWithPrevious else "first"
        return OfflineStrain(strain, self.method.describe(), reference, nccAfter, flagged)

    def _readArray(self, name: str) -> np.ndarray:
        """The ``(K, H, W)`` float32 voxels of the process's output file ``name``."""
        scene = self.rfNode.GetScene()
        readBack = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"DeepUSE {name}")
        storage = _storageNode(scene, self._folder / name)
        try:
            if not storage.ReadData(readBack):
                raise ValueError(f"Could not read the computed {name}")
            return np.array(slicer.util.arrayFromVolume(readBack), dtype=np.float32)
        finally:
            scene.RemoveNode(storage)
            scene.RemoveNode(readBack)
