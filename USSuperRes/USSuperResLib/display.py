"""Input and super-resolved output side by side: Slicer's side-by-side layout, input left, output right.

Both slice views show the image plane of the input (I across the screen, J down: beam lines left to
right, depth downwards), with linked control (slicing, panning and zooming one moves the other) and
the same grey window, so that the two are compared pixel region for pixel region. The layout is
chosen through the scene's layout node, which the application's layout manager follows; fitting the
views to the images is left to the application (``slicer.util.resetSliceViews()``).
"""

from __future__ import annotations

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, volumeGeometry

#: Slicer's layout with two slice views side by side
COMPARE_LAYOUT = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
#: the slice views of :data:`COMPARE_LAYOUT`, left to right, as Slicer's layout logic names them
COMPARE_VIEWS = ("Red", "Yellow")


def imagePlane(geometry: VolumeGeometry) -> np.ndarray:
    """``(4, 4)`` SliceToRAS of a view of frame 0: screen x along I, screen y against J, through voxel (0, 0, 0)."""
    directions = geometry.directions
    across, up = directions[:, 0], -directions[:, 1]
    sliceToRas = np.eye(4)
    sliceToRas[:3, 0], sliceToRas[:3, 1], sliceToRas[:3, 2] = across, up, np.cross(across, up)
    sliceToRas[:3, 3] = geometry.origin
    return sliceToRas


def _viewNode(scene: slicer.vtkMRMLScene, className: str, viewName: str) -> slicer.vtkMRMLNode:
    for node in scene.GetNodesByClass(className):
        if node.GetLayoutName() == viewName:
            return node
    raise ValueError(f"The scene has no {className} of the {viewName} slice view: show the slice views first")


def showSideBySide(inputVolume: slicer.vtkMRMLVolumeNode, outputVolume: slicer.vtkMRMLScalarVolumeNode) -> None:
    """Switch the scene's layout to :data:`COMPARE_LAYOUT`, ``inputVolume`` left and ``outputVolume`` right.

    Raises:
        ValueError: a volume is missing or empty, or the scene has no layout or slice views.
    """
    for volume in (inputVolume, outputVolume):
        if volume is None or volume.GetImageData() is None:
            raise ValueError("Run the super-resolution first: the comparison needs the input and the output image")
    scene = inputVolume.GetScene()
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layoutNode is None:
        raise ValueError("The scene has no view layout")
    layoutNode.SetViewArrangement(COMPARE_LAYOUT)
    for volume in (inputVolume, outputVolume):
        volume.CreateDefaultDisplayNodes()  # keeps a display node that is there
    if not inputVolume.IsA("vtkMRMLVectorVolumeNode"):  # a colour input has no grey window to share
        window, level = inputVolume.GetDisplayNode().GetWindow(), inputVolume.GetDisplayNode().GetLevel()
        outputVolume.GetDisplayNode().AutoWindowLevelOff()
        outputVolume.GetDisplayNode().SetWindowLevel(window, level)
    plane = slicer.util.vtkMatrixFromArray(imagePlane(volumeGeometry(inputVolume)))
    for viewName, volume in zip(COMPARE_VIEWS, (inputVolume, outputVolume)):
        composite = _viewNode(scene, "vtkMRMLSliceCompositeNode", viewName)
        composite.SetBackgroundVolumeID(volume.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
        sliceNode = _viewNode(scene, "vtkMRMLSliceNode", viewName)
        sliceNode.GetSliceToRAS().DeepCopy(plane)
        sliceNode.UpdateMatrices()
