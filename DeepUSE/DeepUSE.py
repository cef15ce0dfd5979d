"""DeepUSE: quasi-static strain elastography from ultrasound RF frames, live over OpenIGTLink or offline.

Live: a ``deepultrasound stream`` process, started with Slicer's Python, reads the scanner's RF
frames (OpenIGTLink IMAGE messages of device ``RF``) and serves each frame's axial strain and
B-mode; OpenIGTLinkIF's connector receives them into the volumes ``Strain`` and ``BMode``, shown as
a coloured layer over the B-mode that follows the probe. Offline: a loaded RF recording (frames
along K) becomes a strain volume on the same grid in a background process with progress and
Cancel; an RF sequence becomes a strain sequence.

Batch use without the GUI goes through :class:`DeepUSELogic` (see
``Testing/Python/batch_example.py``)::

    Slicer --no-main-window --python-script DeepUSE/Testing/Python/batch_example.py rf.mha strain.nrrd --baseline

Needs Slicer 5.10 or later; on an older Slicer the panel says so (this file loads on Python 3.9).
"""

from __future__ import annotations

from typing import Annotated

import ctk
import numpy as np
import qt
import slicer
import vtk
from DeepUltrasoundCommonLib import (
    MINIMUM_SLICER_VERSION,
    VolumeGeometry,
    arrayToVolume,
    unsupportedPythonMessage,
    volumeToArray,
)
from DeepUltrasoundCommonLib.moduleWidget import DeepUltrasoundWidget
from DeepUSELib import (
    DEFAULT_WINDOW_MM,
    DeepUSESession,
    StrainMethod,
    connectionState,
    connectToScanner,
    defaultStrainColorNode,
    disconnectFromScanner,
    incomingVolume,
    sequenceOfProxy,
    showBMode,
    showStrain,
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
            "networks, or NCC block matching. Live: enter the scanner's OpenIGTLink server and start; a background "
            "process computes the strain, which is shown over the B-mode and can be recorded. Offline: "
            "choose a loaded RF recording (one frame per slice, or an RF sequence) and press Apply. "
            "Needs 3D Slicer {version} or later. "
            '<a href="https://github.com/deepultrasound/SlicerDeepUltrasound#deepuse">Documentation</a>.'
        ).format(version=MINIMUM_SLICER_VERSION)
        unsupported = unsupportedPythonMessage()
        if unsupported:
            self.parent.helpText = unsupported
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
    modelName - model bundle chosen in the model list ("": the engine's default); modelPath - a bundle
        folder, used instead when set (a str, so that an unset folder shows empty rather than ".").
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
    modelPath: str = ""
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
    #: how often the live and offline processes are polled, ms
    pollIntervalMs = 100

    def setup(self) -> None:
        super().setup()
        if self.logic is None:  # an unsupported Slicer: the panel shows why
            return
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs  # a bundle is a folder
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self._layersShown = False
        self._shownFlagged = False  # whether the strain layer is greyed out (see onParameterNodeModified)
        self._observedBrowser = None
        self.ui.connectButton.connect("clicked(bool)", self.onConnectButton)
        self.ui.startLiveButton.connect("clicked(bool)", self.onStartLiveButton)
        self.timer = qt.QTimer()  # runs while connected or live; see onTimer
        self.timer.setInterval(self.pollIntervalMs)
        self.timer.connect("timeout()", self.onTimer)

    def cleanup(self) -> None:
        """Application exit or module reload: nothing may outlive the panel (no orphan process)."""
        if self.logic is not None:
            self.timer.stop()
            self.logic.stopEverything()
        super().cleanup()

    def exit(self) -> None:
        """Leaving the module stops live strain (its process and connection); offline strain goes on."""
        if self.logic is not None and self.logic.liveStream.running:
            self.logic.stopLiveStream()
            self.ui.startLiveButton.text = _("Start live strain")
        super().exit()

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
        """Offline strain of the selected RF recording in the background: Apply turns into Cancel, and
        :meth:`onTimer` shows the progress and then the result (:meth:`showOfflineResult`)."""
        self.ensureEngine()
        self.logic.processParameterNode(parameterNode, waitForCompletion=False)
        self.ui.applyButton.text = _("Cancel")
        self.timer.start()
        return _("Computing strain...")

    def onApplyButton(self) -> None:
        if self.logic.offlineJob is None:
            super().onApplyButton()
            return
        self.logic.cancelOffline()
        self.ui.applyButton.text = _("Apply")
        self.ui.statusLabel.text = _("Strain computation cancelled")

    def showOfflineProgress(self) -> None:
        """Progress of the offline strain, and its result once the process has ended."""
        job = self.logic.offlineJob
        if job.poll():
            if job.progress is not None:
                self.ui.statusLabel.text = _("Computing strain: pair {done} of {total}").format(
                    done=job.progress[0], total=job.progress[1]
                )
            return
        self.ui.applyButton.text = _("Apply")
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.finishOffline()
            if self._parameterNode:
                self.showOfflineResult(self._parameterNode)

    def showOfflineResult(self, parameterNode: DeepUSEParameterNode) -> None:
        """The offline strain over its B-mode (volume), or the strain sequence's proxy over the RF (sequence)."""
        browser = self.logic.offlineBrowser
        if browser is None:
            self.showLayers(self.logic.bmodeVolume, fit=True)
            return
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
        if self._observedBrowser is not None:
            self.removeObserver(self._observedBrowser, vtk.vtkCommand.ModifiedEvent, self.onStrainQualityChanged)
        self._observedBrowser = browser  # browsing to a flagged item greys it out
        self.addObserver(browser, vtk.vtkCommand.ModifiedEvent, self.onStrainQualityChanged)
        parameterNode.strainVolume = browser.GetProxyNode(self.logic.strainSequence)
        self.onParameterNodeModified()
        slicer.util.setSliceViewerLayers(
            foreground=parameterNode.strainVolume, foregroundOpacity=parameterNode.overlayOpacity
        )

    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = path

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Keep the model folder, the recording and the strain display in step with the parameter node."""
        parameterNode = self._parameterNode
        if parameterNode is None:
            return
        if self.ui.modelPathLineEdit.currentPath != parameterNode.modelPath:
            self.ui.modelPathLineEdit.currentPath = parameterNode.modelPath
        self.logic.setRecording(parameterNode.record)
        if parameterNode.strainVolume and parameterNode.strainVolume.GetImageData():
            self._shownFlagged = self.logic.strainFlagged()
            try:
                showStrain(
                    parameterNode.strainVolume,
                    parameterNode.strainColorMap,
                    (parameterNode.strainMinPercent, parameterNode.strainMaxPercent),
                    parameterNode.showColorLegend,
                    flagged=self._shownFlagged,
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
            if self.logic.liveStream.running:
                self.logic.stopLiveStream()
            else:
                self.ensureEngine()
                self.logic.startLiveStreamOf(self._parameterNode)
                self._layersShown = False
                self.timer.start()
            self.ui.liveStatusLabel.text = self.logic.liveStream.status
            self.ui.startLiveButton.text = (
                _("Stop live strain") if self.logic.liveStream.running else _("Start live strain")
            )

    def onTimer(self) -> None:
        """Follow the connections and the live strain process: its status line, the served volumes."""
        state = connectionState(self.logic.connector)
        self.ui.connectionStateLabel.text = state
        self.ui.connectButton.text = _("Connect") if state == "off" else _("Disconnect")
        parameterNode = self._parameterNode  # None while the module is not shown: live goes on, nothing to show
        if parameterNode and not parameterNode.rfVolume:
            incoming = incomingVolume(self.logic.connector)
            if incoming is not None:
                parameterNode.rfVolume = incoming
        if self.logic.offlineJob is not None:
            self.showOfflineProgress()
        liveStream = self.logic.liveStream
        if liveStream.process is None:
            if state == "off" and self.logic.offlineJob is None:
                self.timer.stop()
            return
        if liveStream.poll():
            self.ui.liveStatusLabel.text = liveStream.status
        if not liveStream.running:
            self.logic.stopLiveStream()  # it ended by itself: its last lines say why
            self.ui.startLiveButton.text = _("Start live strain")
            return
        if self.logic.followServedVolumes() and parameterNode and not self._layersShown:
            parameterNode.strainVolume = liveStream.strainVolume
            self.showLayers(liveStream.bmodeVolume, fit=True)
            self._layersShown = True
        self.onStrainQualityChanged()

    def onStrainQualityChanged(self, caller=None, event=None) -> None:
        """Grey the strain layer out while its quality figure says not to trust it, and restore it after."""
        if self._parameterNode and self.logic.strainFlagged() != self._shownFlagged:
            self.onParameterNodeModified()

    def showLayers(self, bmodeVolume: vtkMRMLScalarVolumeNode, fit: bool) -> None:
        """B-mode in the background and strain in the foreground of the slice views; with ``fit`` the
        views turn to the image plane and fit it."""
        parameterNode = self._parameterNode
        showBMode(bmodeVolume)
        self.onParameterNodeModified()
        slicer.util.setSliceViewerLayers(
            background=bmodeVolume,
            foreground=parameterNode.strainVolume,
            foregroundOpacity=parameterNode.overlayOpacity,
            fit=fit,
            rotateToVolumePlane=fit,
        )


#
# DeepUSELogic
#


class DeepUSELogic(ScriptedLoadableModuleLogic, DeepUSESession):
    """Strain elastography on the application's scene, driven by the module's parameter node; runs without the
    widget (scripts, tests). Everything but the parameter node is :class:`DeepUSELib.DeepUSESession`'s."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        DeepUSESession.__init__(self, slicer.mrmlScene)

    def getParameterNode(self) -> DeepUSEParameterNode:
        return DeepUSEParameterNode(super().getParameterNode())

    @staticmethod
    def strainMethod(parameterNode: DeepUSEParameterNode) -> StrainMethod:
        """Model (bundle folder when set, else the chosen bundle), baseline and window of the parameter node."""
        return StrainMethod(
            model=parameterNode.modelPath or parameterNode.modelName,
            baseline=parameterNode.useBaseline,
            windowMm=parameterNode.strainWindowMm,
        )

    def processParameterNode(self, parameterNode: DeepUSEParameterNode, waitForCompletion: bool = True) -> str:
        """:meth:`process` on the parameter node's inputs (creates the strain volume when none is selected)."""
        rfVolume = parameterNode.rfVolume
        if rfVolume is not None and sequenceOfProxy(rfVolume) is None:
            parameterNode.strainVolume = self.outputVolume(parameterNode.strainVolume, f"{rfVolume.GetName()} strain")
        method = self.strainMethod(parameterNode)
        return self.process(
            rfVolume, parameterNode.strainVolume, method, parameterNode.pairWithPrevious, waitForCompletion
        )

    def startLiveStreamOf(self, parameterNode: DeepUSEParameterNode) -> None:
        """:meth:`startLiveStream` on the parameter node's scanner, model, reference policy and recording."""
        self.startLiveStream(
            parameterNode.host,
            parameterNode.port,
            self.strainMethod(parameterNode),
            parameterNode.referenceEvery,
            parameterNode.referenceMinNcc,
            parameterNode.record,
        )


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
