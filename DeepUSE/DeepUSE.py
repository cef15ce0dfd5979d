"""DeepUSE: quasi-static strain elastography from ultrasound RF frames, live over OpenIGTLink or offline.

Live: the scanner streams RF frames (OpenIGTLink IMAGE messages of device ``RF``) into a volume
node; each frame's axial strain is shown as a coloured layer over its B-mode and follows the
probe. Offline: a loaded RF recording (frames along K, or an RF sequence) becomes a strain
volume or sequence on the same grid.

Batch use without the GUI goes through :class:`DeepUSELogic` (see
``Testing/Python/batch_example.py``)::

    Slicer --no-main-window --python-script DeepUSE/Testing/Python/batch_example.py rf.mha strain.nrrd --baseline
"""

from pathlib import Path
from typing import Annotated

import ctk
import numpy as np
import qt
import slicer
import vtk
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray
from DeepUltrasoundCommonLib.moduleWidget import DeepUltrasoundWidget
from DeepUSELib import (
    DEFAULT_WINDOW_MM,
    LiveStrainLogic,
    StrainMethod,
    StrainRecorder,
    connectionState,
    connectToScanner,
    createEstimator,
    createLiveProcessor,
    defaultStrainColorNode,
    disconnectFromScanner,
    incomingRfVolume,
    sequenceOfProxy,
    showBMode,
    showStrain,
    strainOfSequence,
    strainOfVolume,
)
from slicer import vtkMRMLColorNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

#
# DeepUSE
#


class DeepUSE(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DeepUSE Strain Elastography")
        self.parent.categories = ["Ultrasound"]
        self.parent.dependencies = ["DeepUltrasoundCommon"]
        self.parent.contributors = ["DeepUltrasound contributors"]
        self.parent.helpText = _(
            "Axial strain (%) from ultrasound RF frames with the recurrent ReUSENet or the USENet displacement "
            "networks, or NCC block matching. Live: connect to the scanner's OpenIGTLink server, choose the "
            "incoming RF volume and start; the strain is shown over the B-mode and can be recorded. Offline: "
            "choose a loaded RF recording (one frame per slice, or an RF sequence) and press Apply. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#deepuse">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Based on DeepUSE: R. Delaunay, Y. Hu, T. Vercauteren, 'An unsupervised learning approach to "
            "ultrasound strain elastography with spatio-temporal consistency', Phys. Med. Biol. 2021."
        )


#
# DeepUSEParameterNode
#


@parameterNodeWrapper
class DeepUSEParameterNode:
    """
    host, port - the scanner's OpenIGTLink server.
    rfVolume - RF frames: the incoming stream (one slice per update) or a recording (one frame per
        slice, or the proxy volume of an RF sequence). Axial samples along J, beam lines along I.
    strainVolume - output: axial strain in %, on the RF grid.
    modelName - model bundle chosen in the model list; modelPath - a bundle folder, used instead when set.
    useBaseline - NCC block matching instead of a network.
    strainWindowMm - axial least-squares strain window.
    referenceEvery - live: a new reference frame every N frames (0: never by count).
    referenceMinNcc - live: also when the correlation with the reference drops below this (0: never).
    record - live: keep the shown strain and B-mode frames in sequences.
    pairWithPrevious - offline: pair each frame with the previous one instead of the first.
    strainColorMap, strainMinPercent, strainMaxPercent, overlayOpacity, showColorLegend - strain display.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, WithinRange(1, 65535)] = 18944
    rfVolume: vtkMRMLScalarVolumeNode
    strainVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""
    modelPath: Path = Path()
    useBaseline: bool = False
    strainWindowMm: Annotated[float, WithinRange(0.5, 20.0)] = DEFAULT_WINDOW_MM
    referenceEvery: Annotated[int, WithinRange(0, 1000)] = 10
    referenceMinNcc: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    record: bool = False
    pairWithPrevious: bool = False
    strainColorMap: vtkMRMLColorNode
    strainMinPercent: Annotated[float, WithinRange(-50.0, 50.0)] = -2.0
    strainMaxPercent: Annotated[float, WithinRange(-50.0, 50.0)] = 0.0
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    showColorLegend: bool = True


#
# DeepUSEWidget
#


class DeepUSEWidget(DeepUltrasoundWidget):
    bundleTask = "elastography"
    #: how often finished live frames are shown, ms
    pollIntervalMs = 20

    def setup(self) -> None:
        super().setup()
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs  # a bundle is a folder
        self._layersShown = False
        self._ticks = 0
        self.ui.connectButton.connect("clicked(bool)", self.onConnectButton)
        self.ui.startLiveButton.connect("clicked(bool)", self.onStartLiveButton)
        self.timer = qt.QTimer()  # runs while connected or live; see onTimer
        self.timer.setInterval(self.pollIntervalMs)
        self.timer.connect("timeout()", self.onTimer)

    def cleanup(self) -> None:
        self.timer.stop()
        self.logic.stopLive()
        disconnectFromScanner(self.logic.connector)
        super().cleanup()

    def createLogic(self):
        return DeepUSELogic()

    def initializeParameterNode(self) -> None:
        super().initializeParameterNode()
        if self._parameterNode and not self._parameterNode.strainColorMap:
            try:
                self._parameterNode.strainColorMap = defaultStrainColorNode(slicer.mrmlScene)
            except ValueError as error:  # the user then chooses one
                self.ui.statusLabel.text = str(error)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        super().setParameterNode(parameterNode)
        if self._parameterNode:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def missingInputs(self, parameterNode: DeepUSEParameterNode) -> str:
        if not parameterNode.rfVolume:
            return _("Select an RF volume")
        return ""

    def apply(self, parameterNode: DeepUSEParameterNode) -> str:
        """Offline strain of the selected RF recording, then shown over its B-mode (or beside the RF sequence)."""
        self.ensureEngine()
        summary = self.logic.processParameterNode(parameterNode)
        sequence = sequenceOfProxy(parameterNode.rfVolume)
        if sequence is None:
            self.showLayers(fit=True)
        else:
            browser = sequence[0]
            slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
            parameterNode.strainVolume = browser.GetProxyNode(self.logic.strainSequence)
            slicer.util.setSliceViewerLayers(
                foreground=parameterNode.strainVolume, foregroundOpacity=parameterNode.overlayOpacity
            )
        return summary

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Keep the buttons, the recording and the strain display in step with the parameter node."""
        parameterNode = self._parameterNode
        self.ui.startLiveButton.enabled = bool(parameterNode.rfVolume) or self.logic.live.running
        self.logic.setRecording(parameterNode.record)
        if parameterNode.strainVolume and parameterNode.strainVolume.GetImageData():
            try:
                showStrain(
                    parameterNode.strainVolume,
                    parameterNode.strainColorMap,
                    (parameterNode.strainMinPercent, parameterNode.strainMaxPercent),
                    parameterNode.showColorLegend,
                )
            except ValueError as error:  # shown beside the controls while the user edits them
                self.ui.statusLabel.text = str(error)
            slicer.util.setSliceViewerLayers(foregroundOpacity=parameterNode.overlayOpacity)

    def onConnectButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to connect to the scanner."), waitCursor=True):
            if connectionState(self.logic.connector) == "off":
                self.logic.connector = connectToScanner(
                    slicer.mrmlScene, self._parameterNode.host, self._parameterNode.port, self.logic.connector
                )
            else:
                disconnectFromScanner(self.logic.connector)
            self.timer.start()

    def onStartLiveButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start live strain."), waitCursor=True):
            if self.logic.live.running:
                self.logic.stopLive()
                self.ui.statusLabel.text = self.logic.live.statusText()
            else:
                self.ensureEngine()
                self.logic.startLiveFromParameterNode(self._parameterNode)
                self._layersShown = False
                self.timer.start()
            self.ui.startLiveButton.text = _("Stop live strain") if self.logic.live.running else _("Start live strain")

    def onTimer(self) -> None:
        """Show finished live frames and the counters; follow the connection and pick the incoming RF volume."""
        state = connectionState(self.logic.connector)
        self.ui.connectionStateLabel.text = state
        self.ui.connectButton.text = _("Connect") if state == "off" else _("Disconnect")
        if self._parameterNode and not self._parameterNode.rfVolume:
            incoming = incomingRfVolume(self.logic.connector)
            if incoming is not None:
                self._parameterNode.rfVolume = incoming
        live = self.logic.live
        if not live.running:
            if state == "off":
                self.timer.stop()
            return
        self._ticks += 1
        shown = live.poll()
        if shown and not self._layersShown:
            self.showLayers(fit=True)
            self._layersShown = True
        if shown or self._ticks % 25 == 0:  # counters and errors twice a second even when nothing is shown
            self.ui.liveStatusLabel.text = live.statusText()

    def showLayers(self, fit: bool) -> None:
        """B-mode in the background and strain in the foreground of the slice views; with ``fit`` the
        views turn to the image plane and fit it."""
        parameterNode = self._parameterNode
        showBMode(self.logic.bmodeVolume)
        self.onParameterNodeModified()
        slicer.util.setSliceViewerLayers(
            background=self.logic.bmodeVolume,
            foreground=parameterNode.strainVolume,
            foregroundOpacity=parameterNode.overlayOpacity,
            fit=fit,
            rotateToVolumePlane=fit,
        )


#
# DeepUSELogic
#


class DeepUSELogic(ScriptedLoadableModuleLogic):
    """Strain elastography on MRML volumes; runs without the widget (scripts, tests).

    Attributes:
        live: the live strain of the incoming RF volume.
        connector: the OpenIGTLinkIF connector node to the scanner, once connected.
        bmodeVolume: B-mode shown under the strain (live and offline), created on first use.
        strainSequence: the strain of the last RF sequence processed offline.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.live = LiveStrainLogic()
        self.connector = None
        self.bmodeVolume = None
        self.strainSequence = None

    def getParameterNode(self) -> DeepUSEParameterNode:
        return DeepUSEParameterNode(super().getParameterNode())

    @staticmethod
    def strainMethod(parameterNode: DeepUSEParameterNode) -> StrainMethod:
        """Model (bundle folder when set, else the chosen bundle), baseline and window of the parameter node."""
        modelPath = str(parameterNode.modelPath)
        return StrainMethod(
            model=modelPath if modelPath not in ("", ".") else parameterNode.modelName,
            baseline=parameterNode.useBaseline,
            windowMm=parameterNode.strainWindowMm,
        )

    def outputVolume(self, volume: vtkMRMLScalarVolumeNode | None, name: str) -> vtkMRMLScalarVolumeNode:
        """``volume``, or a new scalar volume named ``name`` when it is None."""
        return volume if volume is not None else slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)

    # Offline.

    def process(
        self,
        rfVolume: vtkMRMLScalarVolumeNode,
        strainVolume: vtkMRMLScalarVolumeNode,
        method: StrainMethod,
        pairWithPrevious: bool = False,
    ) -> str:
        """Offline strain of an RF recording; returns a one-line summary.

        An RF volume (frames along K) gives a strain volume with one frame per pair, written into
        ``strainVolume``, and its B-mode into :attr:`bmodeVolume`. The proxy volume of an RF sequence
        gives a strain sequence, browsed with the RF sequence; ``strainVolume`` is then unused.

        Raises:
            ValueError: invalid frames, no model, or a strain window longer than the frames.
        """
        if rfVolume is None:
            raise ValueError("Select an RF volume")
        sequence = sequenceOfProxy(rfVolume)
        if sequence is not None:
            browser, rfSequence = sequence
            return self.processSequence(browser, rfSequence, method, pairWithPrevious)
        self.bmodeVolume = self.outputVolume(self.bmodeVolume, f"{rfVolume.GetName()} B-mode")
        estimator = createEstimator(method)
        result = strainOfVolume(rfVolume, strainVolume, estimator, method.windowMm, pairWithPrevious, self.bmodeVolume)
        return result.summary()

    def processSequence(self, browser, rfSequence, method: StrainMethod, pairWithPrevious: bool) -> str:
        """Strain of an RF sequence into the sequence "<name> strain", added to ``browser``."""
        name = f"{rfSequence.GetName()} strain"
        scene = slicer.mrmlScene
        self.strainSequence = scene.GetFirstNode(name, "vtkMRMLSequenceNode")
        if self.strainSequence is None:
            self.strainSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        estimator = createEstimator(method)
        result = strainOfSequence(rfSequence, self.strainSequence, estimator, method.windowMm, pairWithPrevious)
        if not browser.IsSynchronizedSequenceNodeID(self.strainSequence.GetID()):
            browser.AddSynchronizedSequenceNodeID(self.strainSequence.GetID())
        return result.summary()

    def processParameterNode(self, parameterNode: DeepUSEParameterNode) -> str:
        """:meth:`process` on the parameter node's inputs (creates the strain volume when none is selected)."""
        rfVolume = parameterNode.rfVolume
        if rfVolume is not None and sequenceOfProxy(rfVolume) is None:
            parameterNode.strainVolume = self.outputVolume(parameterNode.strainVolume, f"{rfVolume.GetName()} strain")
        method = self.strainMethod(parameterNode)
        return self.process(rfVolume, parameterNode.strainVolume, method, parameterNode.pairWithPrevious)

    # Live.

    def startLive(
        self,
        rfVolume: vtkMRMLScalarVolumeNode,
        strainVolume: vtkMRMLScalarVolumeNode,
        method: StrainMethod,
        referenceEvery: int | None = 10,
        referenceMinNcc: float | None = None,
        record: bool = False,
    ) -> None:
        """Strain of every frame that arrives in ``rfVolume``, into ``strainVolume`` and :attr:`bmodeVolume`.

        Call ``self.live.poll()`` regularly (the widget's timer does) to show finished frames.

        Raises:
            ValueError: see :meth:`LiveStrainLogic.start` and :func:`DeepUSELib.createLiveProcessor`.
        """
        if rfVolume is None:
            raise ValueError("Select the incoming RF volume")
        processor = createLiveProcessor(method, referenceEvery, referenceMinNcc)
        self.bmodeVolume = self.outputVolume(self.bmodeVolume, f"{rfVolume.GetName()} B-mode")
        recorder = StrainRecorder(slicer.mrmlScene, rfVolume.GetName()) if record else None
        self.live.start(rfVolume, strainVolume, self.bmodeVolume, processor, recorder)

    def startLiveFromParameterNode(self, parameterNode: DeepUSEParameterNode) -> None:
        """:meth:`startLive` with the parameter node's settings (0 turns a reference rule off)."""
        rfVolume = parameterNode.rfVolume
        if rfVolume is not None:
            parameterNode.strainVolume = self.outputVolume(parameterNode.strainVolume, f"{rfVolume.GetName()} strain")
        self.startLive(
            rfVolume,
            parameterNode.strainVolume,
            self.strainMethod(parameterNode),
            parameterNode.referenceEvery or None,
            parameterNode.referenceMinNcc or None,
            parameterNode.record,
        )

    def setRecording(self, record: bool) -> None:
        """Start or stop recording while live strain runs (recorded sequences stay in the scene)."""
        if not self.live.running:
            return
        if record and self.live.recorder is None:
            self.live.recorder = StrainRecorder(slicer.mrmlScene, self.live.rfVolume.GetName())
        elif not record:
            self.live.recorder = None

    def stopLive(self) -> None:
        self.live.stop()


#
# DeepUSETest
#


class DeepUSETest(ScriptedLoadableModuleTest):
    """Offline and live strain of a small simulated compression with known strain, in the application's scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_OfflineStrainOfARecording()
        self.setUp()
        self.test_LiveStrainFollowsTheFrames()

    @staticmethod
    def simulatedCompression():
        """6 RF frames of 256 x 32 samples of a homogeneous phantom compressed by 0.5 % per frame, with truth."""
        from deepultrasound.simulation import Phantom, SimulationConfig, simulate_sequence

        config = SimulationConfig(
            n_frames=6,
            height=256,
            width=32,
            compression_step_percent=0.5,
            mesh_cells=(16, 8),
            max_inclusions=0,
            layer_probability=0.0,
        )
        sequence = simulate_sequence(config, seed=0, phantom=Phantom(depth_mm=256 * 0.02, width_mm=32 * 0.2))
        geometry = VolumeGeometry.fromSpacingOrigin(spacing=(0.2, 0.02, 1.0), origin=(-3.2, 0.0, 0.0))
        return sequence, geometry

    def test_OfflineStrainOfARecording(self):
        sequence, geometry = self.simulatedCompression()
        rfVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF")
        arrayToVolume(sequence.rf, rfVolume, geometry)
        strainVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Strain")
        logic = DeepUSELogic()
        summary = logic.process(rfVolume, strainVolume, StrainMethod(baseline=True, windowMm=1.0))
        self.assertIn("5 strain frame(s) of 256 x 32", summary)

        strain, strainGeometry = volumeToArray(strainVolume)
        self.assertTrue(strainGeometry.isClose(geometry))
        measured = np.median(strain[:, 60:-60], axis=(1, 2))
        truth = np.median(sequence.strain_percent[:, 60:-60], axis=(1, 2))
        np.testing.assert_allclose(measured, truth, rtol=0.1)
        self.assertEqual(slicer.util.arrayFromVolume(logic.bmodeVolume).shape, (5, 256, 32))

        showStrain(strainVolume, defaultStrainColorNode(slicer.mrmlScene), (-3.0, 0.0))
        self.assertEqual(strainVolume.GetDisplayNode().GetWindowLevelMin(), -3.0)
        self.delayDisplay("Offline strain matches the simulated compression")

    def test_LiveStrainFollowsTheFrames(self):
        sequence, geometry = self.simulatedCompression()
        rfVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF")
        strainVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RF strain")
        logic = DeepUSELogic()
        method = StrainMethod(baseline=True, windowMm=1.0)
        logic.startLive(rfVolume, strainVolume, method, referenceEvery=None, record=True)
        try:
            for frame in sequence.rf:
                # What OpenIGTLinkIF does on each IMAGE message.
                wasModifying = rfVolume.StartModify()
                rfVolume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(geometry.ijkToRas))
                slicer.util.updateVolumeFromArray(rfVolume, frame[np.newaxis])
                rfVolume.EndModify(wasModifying)
                self.assertTrue(logic.live.waitUntilIdle(timeoutS=30.0))
        finally:
            logic.stopLive()

        counters = logic.live.counters
        self.assertEqual((counters.framesIn, counters.framesProcessed, counters.referenceFrames), (6, 6, 1))
        self.assertEqual(logic.live.recorder.frameCount, 5)
        strain, strainGeometry = volumeToArray(strainVolume)
        self.assertTrue(strainGeometry.isClose(geometry))
        truth = np.median(sequence.strain_percent[-1, 60:-60])
        self.assertAlmostEqual(float(np.median(strain[0, 60:-60])), float(truth), delta=0.1 * abs(truth))
        self.delayDisplay("Live strain follows the frames")
