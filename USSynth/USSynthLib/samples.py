"""Synthetic samples as MRML nodes, for browsing: one volume, and a Sequence when there are several.

Each sample is a scalar volume of K frames on the label map's grid, so the label map overlays every sample
exactly and scrolling its slices goes through the label frames as in the label map itself. The output volume
holds sample 0. With several samples, the output volume is also the proxy of a Sequence of the samples
(index "sample", values 0 .. N-1) in a browser of its own: the Sequences toolbar's slider (or Play) steps
the same view through the samples, where a stack of K N slices would move them off the labels' planes and
N separate volumes would have to be picked one by one. A sequence saves as one file, for a training set.

A sequence made here carries :data:`SAMPLES_ATTRIBUTE`; a later run into the same output volume refills it.
An output volume that shows a sequence of other data (a recording) is refused, so that nothing is overwritten.
Browsers need the Sequences node classes in the scene (the application's Sequences logic registers them).
"""

from __future__ import annotations

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, sequenceOfProxy

#: node attribute that marks a sequence of synthetic samples made by this module
SAMPLES_ATTRIBUTE = "USSynth.Samples"


def samplesBrowsing(
    outputVolume: slicer.vtkMRMLScalarVolumeNode,
) -> tuple[slicer.vtkMRMLSequenceBrowserNode, slicer.vtkMRMLSequenceNode] | None:
    """``(browser, sequence)`` of the samples ``outputVolume`` shows, or None when it is no proxy node.

    Raises:
        ValueError: ``outputVolume`` is the proxy of a sequence that holds other data.
    """
    found = sequenceOfProxy(outputVolume)
    if found is not None and found[1].GetAttribute(SAMPLES_ATTRIBUTE) is None:
        raise ValueError(
            f"'{outputVolume.GetName()}' shows an item of sequence '{found[1].GetName()}', which synthesis would "
            "overwrite: choose or create another output volume"
        )
    return found


def storeSamples(
    samples: np.ndarray, outputVolume: slicer.vtkMRMLScalarVolumeNode, geometry: VolumeGeometry
) -> slicer.vtkMRMLSequenceBrowserNode | None:
    """Store ``samples`` ``(N, K, H, W)`` float32 on ``geometry`` (see the module docstring); the samples' browser,
    or None for a single sample into a volume that shows no samples sequence.

    Raises:
        ValueError: ``outputVolume`` shows a sequence of other data, or the scene has no Sequences node classes.
    """
    found = samplesBrowsing(outputVolume)
    arrayToVolume(samples[0], outputVolume, geometry)
    if found is None and len(samples) == 1:
        return None
    scene = outputVolume.GetScene()
    if found is None:
        name = f"{outputVolume.GetName()} samples"
        sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        sequence.SetAttribute(SAMPLES_ATTRIBUTE, "1")
        sequence.SetIndexName("sample")
        sequence.SetIndexUnit("")
        sequence.SetIndexType(sequence.NumericIndex)
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name)
        if browser is None:
            scene.RemoveNode(sequence)
            raise ValueError("This scene cannot hold sequence browsers: load the Sequences module")
        browser.AddProxyNode(outputVolume, sequence, False)  # before the master: no proxy of its own is made
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    else:
        browser, sequence = found
    sequence.RemoveAllDataNodes()
    item = slicer.vtkMRMLScalarVolumeNode()  # staging node outside the scene; the sequence keeps copies
    for number, sample in enumerate(samples):
        arrayToVolume(sample, item, geometry)
        sequence.SetDataNodeAtValue(item, str(number))
    browser.SetSelectedItemNumber(0)
    return browser
