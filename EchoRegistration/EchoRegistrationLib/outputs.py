"""The tracking's results as MRML nodes: label and transform sequences, a strain table and its plot.

- labels: a sequence of single-slice label map volumes, item t on frame t's grid at frame t's index value;
- displacements: a sequence of grid transforms, item t the resampling transform of frame t onto the
  labelled frame (:func:`.logic.displacementRas`, RAS mm, on frame t's grid);
- strain: a table with the columns of the engine's ``strain.csv`` (numbers as numbers; the time column
  only when the frames have a frame interval), and a chart of the strain curves over time (or frame),
  end-diastole and end-systole marked on the endocardial GLS curve (a table of those two rows).

All of it is MRML: it runs with ``slicer-core``; showing the chart in a view is the application's.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume
from vtk.util import numpy_support

from .inputs import TrackingFrames
from .logic import CAMUS_LABELS, displacementRas

#: the strain columns of ``strain.csv`` drawn in the chart, and their legends
STRAIN_CURVES = {
    "gls_endo_percent": "GLS endocardial",
    "gls_mid_percent": "GLS mid-wall",
    "radial_percent": "radial strain",
}
#: legend of the end-diastole and end-systole marks, and the curve they sit on
PHASE_MARKS = "ED / ES"
PHASE_MARKS_CURVE = "gls_endo_percent"
#: columns of ``strain.csv`` that hold text
TEXT_COLUMNS = ("phase",)
#: the time column of ``strain.csv`` (seconds; the engine counts 1 s per frame without a frame interval)
TIME_COLUMN = "time_s"
#: colour of each curve, RGB 0..1 (Slicer's plot default palette order)
CURVE_COLOURS = ((0.84, 0.15, 0.16), (0.12, 0.47, 0.71), (0.17, 0.63, 0.17))
#: colour of each CAMUS label in the label maps, RGB 0..1
LABEL_COLOURS = {1: (0.86, 0.24, 0.24), 2: (0.29, 0.69, 0.31), 3: (0.25, 0.5, 0.9)}
LABEL_COLOUR_NODE_NAME = "CAMUS labels"


def _prepareSequence(sequence: slicer.vtkMRMLSequenceNode, tracking: TrackingFrames) -> None:
    """Empty ``sequence`` and give it the frames' index (name, unit, and the input sequence's type)."""
    sequence.RemoveAllDataNodes()
    sequence.SetIndexName(tracking.indexName)
    sequence.SetIndexUnit(tracking.indexUnit)
    indexType = tracking.sequence.GetIndexType() if tracking.sequence is not None else sequence.NumericIndex
    sequence.SetIndexType(indexType)


def writeLabelSequence(labels: np.ndarray, tracking: TrackingFrames, sequence: slicer.vtkMRMLSequenceNode) -> None:
    """Replace the items of ``sequence`` by ``labels`` ``(T, H, W)``: item t a label map on frame t's grid."""
    _prepareSequence(sequence, tracking)
    item = slicer.vtkMRMLLabelMapVolumeNode()  # staging node outside the scene; the sequence keeps copies
    for frameLabels, geometry, value in zip(labels, tracking.geometries, tracking.indexValues, strict=True):
        arrayToVolume(frameLabels, item, geometry)
        sequence.SetDataNodeAtValue(item, value)


def setGridTransform(
    transformNode: slicer.vtkMRMLGridTransformNode, displacement: np.ndarray, geometry: VolumeGeometry
) -> None:
    """Make ``transformNode``'s from-parent transform the displacement grid ``(H, W, 3)`` RAS mm on ``geometry``."""
    height, width, _ = displacement.shape
    grid = vtk.vtkImageData()
    grid.SetDimensions(width, height, 1)
    grid.SetOrigin(*geometry.origin)
    grid.SetSpacing(*geometry.spacing)
    vectors = numpy_support.numpy_to_vtk(displacement.reshape(-1, 3), deep=True, array_type=vtk.VTK_DOUBLE)
    grid.GetPointData().SetScalars(vectors)
    directions = np.eye(4)
    directions[:3, :3] = geometry.directions
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(slicer.util.vtkMatrixFromArray(directions))
    transformNode.SetAndObserveTransformFromParent(transform)


def writeDisplacementSequence(
    pixels: np.ndarray, tracking: TrackingFrames, labelledFrame: int, sequence: slicer.vtkMRMLSequenceNode
) -> None:
    """Replace the items of ``sequence`` by grid transforms: item t maps frame t onto the labelled frame.

    Args:
        pixels: ``(T, 2, H, W)`` displacement of each frame onto frame ``labelledFrame``, pixels, channel 0 lateral.
    """
    _prepareSequence(sequence, tracking)
    item = slicer.vtkMRMLGridTransformNode()  # staging node outside the scene; the sequence keeps copies
    labelledGeometry = tracking.geometries[labelledFrame]
    for framePixels, geometry, value in zip(pixels, tracking.geometries, tracking.indexValues, strict=True):
        setGridTransform(item, displacementRas(framePixels, geometry, labelledGeometry), geometry)
        sequence.SetDataNodeAtValue(item, value)


def fillStrainTable(table: slicer.vtkMRMLTableNode, columns: dict[str, list[str]], withTime: bool) -> None:
    """Replace the columns of ``table`` by those of ``strain.csv`` (text in :data:`TEXT_COLUMNS`, numbers
    otherwise; :data:`TIME_COLUMN` only ``withTime``)."""
    content = vtk.vtkTable()
    for name, values in columns.items():
        if name == TIME_COLUMN and not withTime:
            continue
        if name in TEXT_COLUMNS:
            array = vtk.vtkStringArray()
            for value in values:
                array.InsertNextValue(value)
        else:
            array = numpy_support.numpy_to_vtk(np.array(values, dtype=np.float64), deep=True)
        array.SetName(name)
        content.AddColumn(array)
    table.SetAndObserveTable(content)


def fillPhaseMarks(
    marks: slicer.vtkMRMLTableNode, table: slicer.vtkMRMLTableNode, xColumn: str, edFrame: int, esFrame: int
) -> None:
    """Replace the rows of ``marks`` by the ``xColumn`` and :data:`PHASE_MARKS_CURVE` values of ``table``'s
    rows ``edFrame`` and ``esFrame``, with a ``phase`` column naming them (ED, ES)."""
    content = vtk.vtkTable()
    for name in (xColumn, PHASE_MARKS_CURVE):
        column = slicer.util.arrayFromTableColumn(table, name)
        array = numpy_support.numpy_to_vtk(np.asarray(column[[edFrame, esFrame]], np.float64), deep=True)
        array.SetName(name)
        content.AddColumn(array)
    phases = vtk.vtkStringArray()
    phases.SetName("phase")
    for phase in ("ED", "ES"):
        phases.InsertNextValue(phase)
    content.AddColumn(phases)
    marks.SetAndObserveTable(content)


def _chartSeries(chart: slicer.vtkMRMLPlotChartNode, legend: str) -> slicer.vtkMRMLPlotSeriesNode:
    """The series of ``chart`` named ``legend``, made and added when it has none."""
    for n in range(chart.GetNumberOfPlotSeriesNodes()):
        if chart.GetNthPlotSeriesNode(n).GetName() == legend:
            return chart.GetNthPlotSeriesNode(n)
    series = chart.GetScene().AddNewNodeByClass("vtkMRMLPlotSeriesNode", legend)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return series


def fillStrainChart(
    chart: slicer.vtkMRMLPlotChartNode,
    table: slicer.vtkMRMLTableNode,
    marks: slicer.vtkMRMLTableNode,
    xColumn: str,
    title: str,
) -> list[slicer.vtkMRMLPlotSeriesNode]:
    """Plot the :data:`STRAIN_CURVES` of ``table`` and the :data:`PHASE_MARKS` of ``marks`` (from
    :func:`fillPhaseMarks`) against ``xColumn`` in ``chart``, one series node each (reused when the chart
    has one of that name); the series, the marks' last."""
    chart.SetTitle(title)
    chart.SetXAxisTitle("time (s)" if xColumn == TIME_COLUMN else "frame")
    chart.SetYAxisTitle("strain (%)")
    allSeries = []
    for (column, legend), colour in zip(STRAIN_CURVES.items(), CURVE_COLOURS):
        series = _chartSeries(chart, legend)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(xColumn)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(*colour)
        allSeries.append(series)
    series = _chartSeries(chart, PHASE_MARKS)
    series.SetAndObserveTableNodeID(marks.GetID())
    series.SetXColumnName(xColumn)
    series.SetYColumnName(PHASE_MARKS_CURVE)
    series.SetLabelColumnName("phase")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleDiamond)
    series.SetMarkerSize(14)
    series.SetColor(0.0, 0.0, 0.0)
    allSeries.append(series)
    return allSeries


def labelColourNode(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode:
    """The scene's colour table of the CAMUS labels (named :data:`LABEL_COLOUR_NODE_NAME`), made on first use."""
    colours = scene.GetFirstNode(LABEL_COLOUR_NODE_NAME, "vtkMRMLColorTableNode")
    if colours is not None:
        return colours
    colours = scene.AddNewNodeByClass("vtkMRMLColorTableNode", LABEL_COLOUR_NODE_NAME)
    colours.SetTypeToUser()
    colours.SetNumberOfColors(len(CAMUS_LABELS) + 1)
    colours.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for label, name in CAMUS_LABELS.items():
        colours.SetColor(label, name, *LABEL_COLOURS[label], 1.0)
    return colours
