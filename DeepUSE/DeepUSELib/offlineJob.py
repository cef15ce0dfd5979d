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
for the result (scripts and tests). The steps common to every module's job are
:class:`DeepUltrasoundCommonLib.engineJob.EngineJob`'s.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import slicer
from DeepUltrasoundCommonLib import arrayToVolume
from DeepUltrasoundCommonLib.engineJob import EngineJob, readVolumeArray, writeArrayFile

from .engine import StrainMethod
from .logic import rfFramesFromVolume
from .offline import OfflineStrain, rfFramesFromSequence, setQualityAttributes, strainPairs, writeStrainSequence


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


class OfflineStrainJob(EngineJob):
    """One offline strain computation of an RF volume or sequence (see
    :class:`DeepUltrasoundCommonLib.engineJob.EngineJob`).

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
        isSequence: whether the frames come from a sequence.
    """

    description = "Strain computation"

    def __init__(
        self,
        rfNode: slicer.vtkMRMLScalarVolumeNode | slicer.vtkMRMLSequenceNode,
        strainNode: slicer.vtkMRMLScalarVolumeNode | slicer.vtkMRMLSequenceNode,
        bmodeVolume: slicer.vtkMRMLScalarVolumeNode | None,
        method: StrainMethod,
        pairWithPrevious: bool = False,
        python: str | None = None,
    ) -> None:
        super().__init__(python)
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
        self.method, self.pairWithPrevious = method, pairWithPrevious

    def writeInputs(self, folder: Path) -> list[str]:
        writeArrayFile(self.frames, self.geometry, folder / "rf.nrrd", self.rfNode.GetScene())
        return strainArguments(
            folder / "rf.nrrd", folder / "strain.nrrd", folder / "bmode.nrrd", self.method, self.pairWithPrevious
        )

    def readResults(self, folder: Path) -> OfflineStrain:
        scene = self.rfNode.GetScene()
        strain, bmode = (readVolumeArray(folder / name, scene)[0] for name in ("strain.nrrd", "bmode.nrrd"))
        pairs = strainPairs(len(self.frames), self.pairWithPrevious)
        if self.isSequence:
            writeStrainSequence(strain, pairs, self.rfNode, self.geometries, self.values, self.strainNode)
        else:
            arrayToVolume(strain, self.strainNode, self.geometry)
        if self.bmodeVolume is not None:
            arrayToVolume(np.ascontiguousarray(bmode[pairs[:, 0]]), self.bmodeVolume, self.geometry)
        with (folder / "strain_quality.csv").open(newline="") as file:
            rows = list(csv.DictReader(file))
        nccAfter = np.array([float(row["ncc_after"]) for row in rows])
        flagged = np.array([row["flagged"] == "1" for row in rows])
        setQualityAttributes(self.strainNode, nccAfter, flagged)
        reference = "previous" if self.pairWithPrevious else "first"
        return OfflineStrain(strain, self.method.describe(), reference, nccAfter, flagged)
