"""Recordings kept in Slicer's Sequences: the sequence behind a proxy volume, the item it shows, its frames.

A recording loaded into the Sequences module is a sequence node of single-slice volumes, one per
frame, each with its index value (a time, a frame number); a sequence browser copies the selected
item into a proxy node, which is the volume a module's selector offers. These helpers go from the
proxy back to the sequence and read its frames as one array with the geometry of each.
"""

from __future__ import annotations

import numpy as np
import slicer

from .volumes import VolumeGeometry, volumeToArray


def sequenceOfProxy(
    volumeNode: slicer.vtkMRMLVolumeNode,
) -> tuple[slicer.vtkMRMLSequenceBrowserNode, slicer.vtkMRMLSequenceNode] | None:
    """``(browser, sequence)`` when ``volumeNode`` is the proxy node of a sequence browser, else None."""
    scene = volumeNode.GetScene()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(index, "vtkMRMLSequenceBrowserNode")
        if browser.IsProxyNodeID(volumeNode.GetID()):
            return browser, browser.GetSequenceNode(volumeNode)
    return None


def shownItemNumber(browser: slicer.vtkMRMLSequenceBrowserNode, sequence: slicer.vtkMRMLSequenceNode) -> int:
    """Item of ``sequence`` at the index value ``browser`` shows now (its master's selected item), or -1 when
    nothing is selected or ``sequence`` has no item at that value."""
    master = browser.GetMasterSequenceNode()
    selected = browser.GetSelectedItemNumber()
    if master is None or selected < 0:
        return -1
    return sequence.GetItemNumberFromIndexValue(master.GetNthIndexValue(selected))


def framesOfSequence(
    sequence: slicer.vtkMRMLSequenceNode, purpose: str, minimumFrames: int = 2, colour: bool = False
) -> tuple[np.ndarray, list[VolumeGeometry], list[str]]:
    """The frames of ``sequence`` stacked, the geometry of each and their index values.

    Args:
        sequence: items are single-slice volumes of one size.
        purpose: what the frames are for, as the error messages say it (e.g. ``"strain"``).
        minimumFrames: fewest items accepted.
        colour: accept vector (colour) volumes too; otherwise scalar volumes only.

    Returns:
        ``(frames, geometries, values)``: frames ``(N, H, W)``, or ``(N, H, W, C)`` for colour items, in
        the items' dtype; the IJK-to-RAS geometry of each item; the N index values.

    Raises:
        ValueError: no sequence, fewer than ``minimumFrames`` items, an item that is not a single-slice
            volume of an accepted kind, or items of different sizes.
    """
    if sequence is None:
        raise ValueError("No sequence selected")
    name, count = sequence.GetName(), sequence.GetNumberOfDataNodes()
    if count < minimumFrames:
        raise ValueError(f"Sequence '{name}' holds {count} frame(s): {purpose} needs at least {minimumFrames}")
    frames, geometries, values = [], [], []
    for item in range(count):
        node = sequence.GetNthDataNode(item)
        value = sequence.GetNthIndexValue(item)
        image = node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
        if not image or (node.IsA("vtkMRMLVectorVolumeNode") and not colour):
            kind = "an image volume" if colour else "a scalar volume"
            raise ValueError(f"Item {value} of sequence '{name}' is not {kind}")
        voxels, geometry = volumeToArray(node)
        if voxels.shape[0] != 1:
            raise ValueError(f"Item {value} of sequence '{name}' has {voxels.shape[0]} slices: expected one frame")
        if frames and voxels.shape[1:] != frames[0].shape:
            raise ValueError(
                f"Item {value} of sequence '{name}' is {voxels.shape[1]} x {voxels.shape[2]}, "
                f"the first is {frames[0].shape[0]} x {frames[0].shape[1]}: all frames must have the same size"
            )
        frames.append(voxels[0])
        geometries.append(geometry)
        values.append(value)
    return np.stack(frames), geometries, values
