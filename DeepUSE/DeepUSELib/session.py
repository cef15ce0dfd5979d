"""The state of a DeepUSE session in a scene: offline and live strain, their processes, connections and nodes.

:class:`DeepUSESession` holds what the module's logic works with - the offline job, the live strain
process and its connector, the in-process live strain, the B-mode and strain-sequence outputs -
and forgets all of it when the scene closes (the nodes are gone with the scene; the processes are
stopped first, so none outlives it). The module's logic is a session bound to the application's
scene and its parameter node; scripts and tests use a session on any scene.
"""

from __future__ import annotations

import slicer
from DeepUltrasoundCommonLib import sequenceOfProxy

from .connection import (
    STRAIN_CONNECTOR_NAME,
    connectToScanner,
    disconnectFromScanner,
    incomingStatus,
    incomingVolume,
)
from .engine import StrainMethod, createLiveProcessor
from .live import LiveStrainLogic
from .liveStream import BMODE_DEVICE_NAME, DEFAULT_SERVE_PORT, STRAIN_DEVICE_NAME, LiveStream, streamArguments
from .offline import shownItemFlagged
from .offlineJob import OfflineStrainJob
from .recording import StrainRecorder


class DeepUSESession(slicer.util.VTKObservationMixin):
    """Strain elastography on the MRML volumes of ``scene``; closing the scene stops live and offline strain and
    forgets every node below.

    Args:
        scene: the scene whose nodes the session reads and writes.
        python: interpreter of the background processes (default: Slicer's ``PythonSlicer``).

    Attributes:
        liveStream: live strain in a ``deepultrasound stream`` process (the module's live path).
        live: live strain inside this process, of frames written into an RF volume node (scripts).
        connector: the OpenIGTLinkIF connector node to the scanner, once connected.
        strainConnector: the connector node that receives Strain and BMode from :attr:`liveStream`.
        bmodeVolume: B-mode shown under the offline strain, created on first use.
        strainSequence: the strain of the last RF sequence processed offline.
        offlineBrowser: the browser of the RF sequence processed offline, if it was a sequence.
        offlineJob: the offline strain computing in the background, or None.
    """

    def __init__(self, scene: slicer.vtkMRMLScene, python: str | None = None) -> None:
        slicer.util.VTKObservationMixin.__init__(self)
        self.scene = scene
        self.python = python
        self.liveStream = LiveStream(python)
        self.live = LiveStrainLogic()
        self.connector = None
        self.strainConnector = None
        self.bmodeVolume = None
        self.strainSequence = None
        self.offlineBrowser = None
        self.offlineJob = None
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.stopEverything()
        self.connector = self.strainConnector = self.bmodeVolume = self.strainSequence = self.offlineBrowser = None

    def stopEverything(self) -> None:
        """Stop live strain (process and in-process), offline strain and both connections."""
        self.cancelOffline()
        self.stopLiveStream()
        self.stopLive()
        disconnectFromScanner(self.connector)

    def outputVolume(self, volume: slicer.vtkMRMLScalarVolumeNode | None, name: str) -> slicer.vtkMRMLScalarVolumeNode:
        """``volume``, or a new scalar volume named ``name`` when it is None."""
        return volume if volume is not None else self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)

    # Offline.

    def process(
        self,
        rfVolume: slicer.vtkMRMLScalarVolumeNode,
        strainVolume: slicer.vtkMRMLScalarVolumeNode,
        method: StrainMethod,
        pairWithPrevious: bool = False,
        waitForCompletion: bool = True,
    ) -> str:
        """Offline strain of an RF recording in a background process (:attr:`offlineJob`); returns a one-line
        summary ("" while it runs in the background).

        An RF volume (frames along K) gives a strain volume with one frame per pair, written into
        ``strainVolume``, and its B-mode into :attr:`bmodeVolume`. The proxy volume of an RF sequence
        gives a strain sequence (:attr:`strainSequence`, "<name> strain"), browsed with the RF sequence;
        ``strainVolume`` is then unused. Without ``waitForCompletion`` this returns at once: poll the job
        and call :meth:`finishOffline` when it has ended, or :meth:`cancelOffline`.

        Raises:
            ValueError: invalid frames, no model, or a strain window longer than the frames.
        """
        if rfVolume is None:
            raise ValueError("Select an RF volume")
        self.cancelOffline()
        sequence = sequenceOfProxy(rfVolume)
        self.offlineBrowser = None if sequence is None else sequence[0]
        if sequence is None:
            self.bmodeVolume = self.outputVolume(self.bmodeVolume, f"{rfVolume.GetName()} B-mode")
            self.offlineJob = OfflineStrainJob(
                rfVolume, strainVolume, self.bmodeVolume, method, pairWithPrevious, self.python
            )
        else:
            rfSequence = sequence[1]
            name = f"{rfSequence.GetName()} strain"
            self.strainSequence = self.scene.GetFirstNode(name, "vtkMRMLSequenceNode")
            if self.strainSequence is None:
                self.strainSequence = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
            self.offlineJob = OfflineStrainJob(
                rfSequence, self.strainSequence, None, method, pairWithPrevious, self.python
            )
        self.offlineJob.start()
        return self.finishOffline() if waitForCompletion else ""

    def finishOffline(self) -> str:
        """Wait for :attr:`offlineJob`, read its results into the nodes (a strain sequence joins the RF
        sequence's browser); its summary.

        Raises:
            ValueError: the computation failed; the message holds the process's last output lines.
        """
        job, self.offlineJob = self.offlineJob, None
        summary = job.finish().summary()
        browser = self.offlineBrowser
        if job.isSequence and not browser.IsSynchronizedSequenceNodeID(self.strainSequence.GetID()):
            browser.AddSynchronizedSequenceNodeID(self.strainSequence.GetID())
        return summary

    def cancelOffline(self) -> None:
        """End the offline computation running in the background, if any (the whole process tree)."""
        if self.offlineJob is not None:
            self.offlineJob.cancel()
            self.offlineJob = None

    def startLive(
        self,
        rfVolume: slicer.vtkMRMLScalarVolumeNode,
        strainVolume: slicer.vtkMRMLScalarVolumeNode,
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
        recorder = StrainRecorder(self.scene, rfVolume.GetName()) if record else None
        self.live.start(rfVolume, strainVolume, self.bmodeVolume, processor, recorder)

    def setRecording(self, record: bool) -> None:
        """Start or stop recording while live strain runs (recorded sequences stay in the scene)."""
        if self.liveStream.running:
            if record and self.liveStream.recorder is None:
                self.liveStream.recorder = StrainRecorder(self.scene, STRAIN_DEVICE_NAME)
            elif not record:
                self.liveStream.recorder = None
        if self.live.running:
            if record and self.live.recorder is None:
                self.live.recorder = StrainRecorder(self.scene, self.live.rfVolume.GetName())
            elif not record:
                self.live.recorder = None

    def stopLive(self) -> None:
        self.live.stop()

    # Live, in a background process.

    def startLiveStream(
        self,
        host: str,
        port: int,
        method: StrainMethod,
        referenceEvery: int = 10,
        referenceMinNcc: float = 0.0,
        record: bool = False,
    ) -> None:
        """Start ``deepultrasound stream`` on the scanner at ``host:port`` with ``method`` and the reference policy
        (see :func:`.liveStream.streamArguments`), and receive its Strain and BMode through
        :attr:`strainConnector` (see :meth:`followServedVolumes`).

        Raises:
            ValueError: invalid settings, or the engine is missing.
        """
        arguments = streamArguments(host, port, DEFAULT_SERVE_PORT, method, referenceEvery, referenceMinNcc)
        self.liveStream.start(self.scene, arguments)
        self.strainConnector = connectToScanner(
            self.scene, "127.0.0.1", DEFAULT_SERVE_PORT, self.strainConnector, STRAIN_CONNECTOR_NAME
        )
        self.setRecording(record)

    def followServedVolumes(self) -> bool:
        """Follow the Strain and BMode volumes once the connector has created them; whether it has."""
        statusNode = incomingStatus(self.strainConnector, STRAIN_DEVICE_NAME)
        if statusNode is not None:
            self.liveStream.followStatus(statusNode)
        strainVolume = incomingVolume(self.strainConnector, STRAIN_DEVICE_NAME)
        bmodeVolume = incomingVolume(self.strainConnector, BMODE_DEVICE_NAME)
        if strainVolume is None or bmodeVolume is None:
            return False
        self.liveStream.follow(strainVolume, bmodeVolume)
        return True

    def strainFlagged(self) -> bool:
        """Whether the strain shown now is not to be trusted: the live process's last quality STATUS, the last
        frame of live strain in this process, or the item of the offline strain sequence the browser shows."""
        if self.liveStream.running:
            return self.liveStream.qualityFlagged
        if self.live.running:
            return self.live.lastQuality is not None and bool(self.live.lastQuality.flagged)
        if self.offlineBrowser is not None and self.strainSequence is not None:
            return shownItemFlagged(self.offlineBrowser, self.strainSequence)
        return False

    def stopLiveStream(self) -> None:
        """Stop the process (and its children) and the connection to it; the received volumes stay."""
        self.liveStream.stop()
        disconnectFromScanner(self.strainConnector)
