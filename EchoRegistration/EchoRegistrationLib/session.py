"""The state of echo tracking in a scene: the running job and the output nodes, forgotten when the scene closes.

:class:`EchoTrackingSession` runs a :class:`.job.TrackingJob` on an input (a sequence's proxy or a
multi-frame volume) and the labels of one frame, and writes its results into nodes named after the
input, reused by the next run on it:

- ``<input> labels``: the label sequence; ``<input> displacement``: the grid-transform sequence. Both
  join the input's sequence browser; a multi-frame volume gets its own browser, ``<input> tracking``,
  whose master is the label sequence;
- ``<input> strain``: the strain table and the chart of its curves; ``<input> ED-ES``: the table of the
  end-diastole and end-systole marks in the chart.

The module's logic is a session bound to the application's scene; scripts and tests use a session
on any scene. Closing the scene stops the job (the process and its children) and forgets the nodes.
"""

from __future__ import annotations

import slicer

from .inputs import TrackingFrames, framesOfInput, labelledFrameOf
from .job import Tracking, TrackingJob
from .logic import TrackingMethod
from .outputs import (
    TIME_COLUMN,
    fillPhaseMarks,
    fillStrainChart,
    fillStrainTable,
    labelColourNode,
    writeDisplacementSequence,
    writeLabelSequence,
)


class EchoTrackingSession(slicer.util.VTKObservationMixin):
    """Echo tracking on the nodes of ``scene``; closing the scene stops the job and forgets every node below.

    Args:
        scene: the scene whose nodes the session reads and writes.
        python: interpreter of the background process (default: Slicer's ``PythonSlicer``).

    Attributes:
        job: the tracking running in the background, or None.
        labelSequence: the labels of every frame, of the last tracking.
        displacementSequence: the grid transform of every frame onto the labelled frame, of the last tracking.
        strainTable: the strain curves (the columns of the engine's ``strain.csv``).
        phaseMarksTable: the end-diastole and end-systole rows of the strain table, marked in the chart.
        strainChart: the chart of the strain curves.
        browser: the browser of the input's sequence, or the one made for a multi-frame volume.
    """

    def __init__(self, scene: slicer.vtkMRMLScene, python: str | None = None) -> None:
        slicer.util.VTKObservationMixin.__init__(self)
        self.scene = scene
        self.python = python
        self.job = None
        self.forgetOutputs()
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)

    def forgetOutputs(self) -> None:
        self.labelSequence = self.displacementSequence = self.strainTable = self.strainChart = self.browser = None
        self.phaseMarksTable = None

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.cancel()
        self.forgetOutputs()

    def process(
        self,
        inputVolume: slicer.vtkMRMLScalarVolumeNode,
        labelsNode: slicer.vtkMRMLNode,
        labelledFrame: int | None = None,
        method: TrackingMethod = TrackingMethod(),
        waitForCompletion: bool = True,
    ) -> str:
        """Track the labels of one frame through ``inputVolume`` in a background process (:attr:`job`); a one-line
        summary ("" while it runs in the background).

        Args:
            inputVolume: a sequence's proxy volume or a multi-frame volume (see :mod:`.inputs`).
            labelsNode: a segmentation or a CAMUS label map volume on one frame.
            labelledFrame: that frame, from 0; None: the browser's shown item, or a volume's only labelled slice.
            method: how the displacements are computed.
            waitForCompletion: wait and read the results; otherwise poll :attr:`job` and call :meth:`finish`
                when it has ended, or :meth:`cancel`.

        Raises:
            ValueError: unusable frames or labels (see :mod:`.inputs`); the engine failed (with its message).
        """
        self.cancel()
        tracking = framesOfInput(inputVolume)
        frame, labels = labelledFrameOf(tracking, labelsNode, labelledFrame)
        self.job = TrackingJob(tracking, labels, frame, method, self.python).start()
        return self.finish() if waitForCompletion else ""

    def finish(self) -> str:
        """Wait for :attr:`job` and write its results into the output nodes; its summary.

        Raises:
            ValueError: the tracking failed; the message holds the process's last output lines.
        """
        job, self.job = self.job, None
        result = job.finish()
        self.writeOutputs(job.tracking, job.labelledFrame, result)
        return result.summary()

    def cancel(self) -> None:
        """End the tracking running in the background, if any (the whole process tree)."""
        if self.job is not None:
            self.job.cancel()
            self.job = None

    def outputNode(self, className: str, name: str) -> slicer.vtkMRMLNode:
        """The scene's node of ``className`` named ``name``, made when there is none."""
        node = self.scene.GetFirstNode(name, className)
        return node if node is not None else self.scene.AddNewNodeByClass(className, name)

    def writeOutputs(self, tracking: TrackingFrames, labelledFrame: int, result: Tracking) -> None:
        """The label and displacement sequences in the browser, the strain table and chart (module docstring)."""
        name = tracking.node.GetName()
        self.labelSequence = self.outputNode("vtkMRMLSequenceNode", f"{name} labels")
        self.displacementSequence = self.outputNode("vtkMRMLSequenceNode", f"{name} displacement")
        writeLabelSequence(result.labels, tracking, self.labelSequence)
        writeDisplacementSequence(result.displacement, tracking, labelledFrame, self.displacementSequence)

        withTime = tracking.frameIntervalS() is not None
        self.strainTable = self.outputNode("vtkMRMLTableNode", f"{name} strain")
        fillStrainTable(self.strainTable, result.strainColumns, withTime)
        self.strainChart = self.outputNode("vtkMRMLPlotChartNode", f"{name} strain")
        self.phaseMarksTable = self.outputNode("vtkMRMLTableNode", f"{name} ED-ES")
        figures = result.figures
        xColumn = TIME_COLUMN if withTime else "frame"
        fillPhaseMarks(self.phaseMarksTable, self.strainTable, xColumn, figures["ed_frame"], figures["es_frame"])
        ejection = figures.get("ejection_fraction_percent")
        title = f"{name}: strain from end-diastole (ED frame {figures['ed_frame']}, ES frame {figures['es_frame']}"
        title += ")" if ejection is None else f", EF {ejection:.0f} %)"
        fillStrainChart(self.strainChart, self.strainTable, self.phaseMarksTable, xColumn, title)

        self.browser = tracking.browser
        if self.browser is None:
            self.browser = self.outputNode("vtkMRMLSequenceBrowserNode", f"{name} tracking")
            self.browser.SetAndObserveMasterSequenceNodeID(self.labelSequence.GetID())
        for sequence in (self.labelSequence, self.displacementSequence):
            if not self.browser.IsSynchronizedSequenceNodeID(sequence.GetID()):
                self.browser.AddSynchronizedSequenceNodeID(sequence.GetID())
        self.colourLabels()

    def labelProxy(self) -> slicer.vtkMRMLLabelMapVolumeNode | None:
        """The label map the browser shows (None until the Sequences logic has made it)."""
        if self.browser is None or self.labelSequence is None:
            return None
        return self.browser.GetProxyNode(self.labelSequence)

    def colourLabels(self) -> None:
        """Show the browsed label map in the CAMUS colours (once the Sequences logic has made it)."""
        proxy = self.labelProxy()
        if proxy is None:
            return
        proxy.CreateDefaultDisplayNodes()
        proxy.GetDisplayNode().SetAndObserveColorNodeID(labelColourNode(self.scene).GetID())
