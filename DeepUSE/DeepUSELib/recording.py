"""Recording of the live strain and B-mode frames into sequence nodes, for review after the scan.

Each shown frame is copied into two ``vtkMRMLSequenceNode`` (strain, B-mode), indexed by the
frame's arrival number; a ``vtkMRMLSequenceBrowserNode`` plays both together (Sequences module).
Recordings live in memory: a 2000 x 128 frame takes 1 MB per sequence.
"""

from __future__ import annotations

import slicer


class StrainRecorder:
    """Two sequences, strain (%) and B-mode (dB), filled frame by frame, and a browser over them.

    Args:
        scene: the scene that receives the sequence and browser nodes.
        baseName: prefix of the node names, e.g. the RF volume's name.
    """

    def __init__(self, scene: slicer.vtkMRMLScene, baseName: str) -> None:
        self.strainSequence = self._newSequence(scene, f"{baseName} strain recording")
        self.bmodeSequence = self._newSequence(scene, f"{baseName} B-mode recording")
        self.browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{baseName} recording")
        self.browser.SetAndObserveMasterSequenceNodeID(self.strainSequence.GetID())
        self.browser.AddSynchronizedSequenceNodeID(self.bmodeSequence.GetID())

    @staticmethod
    def _newSequence(scene: slicer.vtkMRMLScene, name: str) -> slicer.vtkMRMLSequenceNode:
        sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        sequence.SetIndexName("frame")
        sequence.SetIndexUnit("")
        sequence.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
        return sequence

    @property
    def frameCount(self) -> int:
        """Frames recorded so far."""
        return self.strainSequence.GetNumberOfDataNodes()

    def add(
        self, frameIndex: int, strainVolume: slicer.vtkMRMLScalarVolumeNode, bmodeVolume: slicer.vtkMRMLScalarVolumeNode
    ) -> None:
        """Copy the current voxels and geometry of both volumes into the sequences at index ``frameIndex``."""
        value = str(frameIndex)
        self.strainSequence.SetDataNodeAtValue(strainVolume, value)
        self.bmodeSequence.SetDataNodeAtValue(bmodeVolume, value)
