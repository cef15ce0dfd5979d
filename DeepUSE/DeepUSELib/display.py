"""How strain and B-mode volumes look: colour map, window/level in %, and a colour legend.

These set display nodes only, so they run on any scene. Which layer of the slice views shows
which volume, and the strain layer's opacity, belong to the application's slice views and are
set by the module widget (``slicer.util.setSliceViewerLayers``).
"""

from __future__ import annotations

import slicer

#: colour maps tried for strain, in order (Slicer's colour logic provides them by these names)
STRAIN_COLOR_MAP_NAMES = ("Viridis", "Rainbow")
#: B-mode display range below each frame's brightest sample, dB (as ``bmode_db`` clips it)
BMODE_DYNAMIC_RANGE_DB = 60.0
STRAIN_LEGEND_TITLE = "Axial strain (%)"
#: legend title while the shown strain is flagged (its colours are greyed out)
FLAGGED_LEGEND_TITLE = "Axial strain (%): FLAGGED, do not trust"


def defaultStrainColorNode(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorNode:
    """The first colour node of :data:`STRAIN_COLOR_MAP_NAMES` present in ``scene``.

    Raises:
        ValueError: none of them is in the scene.
    """
    for name in STRAIN_COLOR_MAP_NAMES:
        node = scene.GetFirstNode(name, "vtkMRMLColorNode")
        if node is not None:
            return node
    raise ValueError(
        f"No colour map named {' or '.join(STRAIN_COLOR_MAP_NAMES)} in the scene: choose a strain colour map"
    )


def showStrain(
    strainVolume: slicer.vtkMRMLScalarVolumeNode,
    colorNode: slicer.vtkMRMLColorNode,
    rangePercent: tuple[float, float],
    legend: bool = True,
    flagged: bool = False,
) -> None:
    """Colour ``strainVolume`` with ``colorNode`` over ``rangePercent`` = (low, high) strain in %.

    Values at or below ``low`` take the first colour, at or above ``high`` the last. With
    ``legend`` a colour legend titled "Axial strain (%)" is shown beside the views. A ``flagged``
    strain (its quality figure says not to trust it) is greyed out: the scene's "Grey" colour map
    instead of ``colorNode``, and the legend title says so.

    Raises:
        ValueError: no volume or colour map, or ``low >= high``.
    """
    low, high = (float(value) for value in rangePercent)
    if strainVolume is None:
        raise ValueError("No strain volume to display: run live or offline strain first")
    if colorNode is None:
        raise ValueError("Choose a colour map for the strain")
    if not low < high:
        raise ValueError(f"The strain display range needs minimum < maximum, got {low} % .. {high} %")
    if flagged:
        colorNode = _greyColorNode(strainVolume.GetScene())
    strainVolume.CreateDefaultDisplayNodes()
    display = strainVolume.GetDisplayNode()
    with slicer.util.NodeModify(display):
        display.SetAndObserveColorNodeID(colorNode.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(low, high)
    strainLegend = colorLegend(strainVolume)
    if strainLegend is None and legend:
        strainLegend = strainVolume.GetScene().AddNewNodeByClass("vtkMRMLColorLegendDisplayNode")
        strainLegend.SetLabelFormat("%.2f")
        strainVolume.AddAndObserveDisplayNodeID(strainLegend.GetID())
        strainLegend.SetAndObservePrimaryDisplayNode(display)
    if strainLegend is not None:
        strainLegend.SetTitleText(FLAGGED_LEGEND_TITLE if flagged else STRAIN_LEGEND_TITLE)
        strainLegend.SetVisibility(legend)


def colorLegend(volumeNode: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkMRMLColorLegendDisplayNode | None:
    """The colour legend display node of ``volumeNode``, or None when it has none."""
    for index in range(volumeNode.GetNumberOfDisplayNodes()):
        display = volumeNode.GetNthDisplayNode(index)
        if display is not None and display.IsA("vtkMRMLColorLegendDisplayNode"):
            return display
    return None


def showBMode(bmodeVolume: slicer.vtkMRMLScalarVolumeNode, dynamicRangeDb: float = BMODE_DYNAMIC_RANGE_DB) -> None:
    """Grey B-mode over ``[-dynamicRangeDb, 0]`` dB.

    Raises:
        ValueError: no volume, no grey colour map in the scene, or a non-positive range.
    """
    if bmodeVolume is None:
        raise ValueError("No B-mode volume to display")
    if not dynamicRangeDb > 0:
        raise ValueError(f"The B-mode dynamic range must be a positive number of dB, got {dynamicRangeDb}")
    grey = _greyColorNode(bmodeVolume.GetScene())
    bmodeVolume.CreateDefaultDisplayNodes()
    display = bmodeVolume.GetDisplayNode()
    with slicer.util.NodeModify(display):
        display.SetAndObserveColorNodeID(grey.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(-dynamicRangeDb, 0.0)


def _greyColorNode(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorNode:
    """The scene's "Grey" colour map (B-mode, and flagged strain).

    Raises:
        ValueError: the scene has none.
    """
    grey = scene.GetFirstNode("Grey", "vtkMRMLColorNode")
    if grey is None:
        raise ValueError("The scene has no 'Grey' colour map")
    return grey
