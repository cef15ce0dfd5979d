"""Live strain in a background process: ``deepultrasound stream`` started with Slicer's Python.

The process reads RF frames from the scanner's OpenIGTLink server and serves ``Strain`` (float32,
%) and ``BMode`` (float32, dB) IMAGE messages on its own port on this computer; Slicer's
OpenIGTLinkIF connector, a client of that port, writes them into volume nodes named ``Strain``
and ``BMode``. :class:`LiveStream` starts and stops the process, hands its output lines (the
status line with frames per second, latency, sent, dropped and rejected frames) to the module,
follows the served volumes (counts and optionally records every strain frame) and stops
everything when the scene closes, so that no process outlives the scene that shows its frames.

Thread ownership: the main thread owns everything here; :class:`EngineProcess` reads the
process's output in a thread of its own.
"""

from __future__ import annotations

import slicer
import vtk
from DeepUltrasoundCommonLib import newFrameTime
from DeepUltrasoundCommonLib.process import EngineProcess

from .engine import StrainMethod
from .recording import StrainRecorder

STRAIN_DEVICE_NAME = "Strain"
BMODE_DEVICE_NAME = "BMode"
#: port ``deepultrasound stream`` serves Strain and BMode on (its own default)
DEFAULT_SERVE_PORT = 18945
#: STATUS error names the process sends (device ``Strain``) when its strain becomes flagged or trustworthy again
LOW_QUALITY_STATUS, QUALITY_OK_STATUS = "LowQuality", "QualityOK"


def qualityFlagOf(errorName: str | None, flagged: bool) -> bool:
    """Whether the strain is flagged after a STATUS message named ``errorName``, ``flagged`` before it (other
    STATUS messages, e.g. a reconnection, leave it as it was)."""
    return {LOW_QUALITY_STATUS: True, QUALITY_OK_STATUS: False}.get(errorName or "", flagged)


def streamArguments(
    host: str,
    port: int,
    servePort: int,
    method: StrainMethod,
    referenceEvery: int = 10,
    referenceMinNcc: float = 0.0,
) -> list[str]:
    """The ``deepultrasound stream`` command line that reads RF from ``host:port`` and serves on ``servePort``.

    Args:
        referenceEvery: a new reference frame every this many frames (0: never by count).
        referenceMinNcc: also a new reference below this correlation with the reference (0: off).

    Raises:
        ValueError: an empty host, or a port outside 1..65535.
    """
    if not host.strip():
        raise ValueError("Enter the scanner's host name or address, e.g. 127.0.0.1")
    for name, value in (("scanner", port), ("strain", servePort)):
        if not 1 <= value <= 65535:
            raise ValueError(f"The {name} port {value} is outside 1..65535")
    arguments = [
        "stream",
        *("--host", host.strip(), "--port", str(port)),
        *("--serve-host", "127.0.0.1", "--serve-port", str(servePort)),
        *("--backend", method.backend, "--device", method.device, "--window-mm", f"{method.windowMm:g}"),
        *("--reference-every", str(referenceEvery)),
    ]
    if referenceMinNcc > 0:
        arguments += ["--reference-min-ncc", f"{referenceMinNcc:g}"]
    if method.baseline:
        arguments.append("--baseline")
    elif method.model:
        arguments += ["--model", method.model]
    return arguments


class LiveStream(slicer.util.VTKObservationMixin):
    """The ``deepultrasound stream`` process of a scene, and the strain volume it fills.

    Attributes:
        process: the running process, or None.
        status: the process's last output line (its status line once frames flow).
        strainVolume: the served strain volume followed by :meth:`follow`, or None.
        framesShown: strain frames that arrived in :attr:`strainVolume` since :meth:`start`.
        recorder: records each arriving strain (and B-mode) frame while set.
        qualityFlagged: whether the process's last quality STATUS said its strain is not to be trusted.
    """

    def __init__(self, python: str | None = None) -> None:
        slicer.util.VTKObservationMixin.__init__(self)
        self.python = python
        self.process: EngineProcess | None = None
        self.scene: slicer.vtkMRMLScene | None = None
        self.status = ""
        self.strainVolume = None
        self.bmodeVolume = None
        self.framesShown = 0
        self.recorder: StrainRecorder | None = None
        self.qualityFlagged = False
        self.statusNode = None
        self._lastImageMTime = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def start(self, scene: slicer.vtkMRMLScene, arguments: list[str]) -> None:
        """Start ``deepultrasound`` with ``arguments`` (see :func:`streamArguments`), stopping a previous run.

        Raises:
            ValueError: the engine is missing.
            OSError: the interpreter cannot be started.
        """
        self.stop()
        self.scene = scene
        self.addObserver(scene, slicer.vtkMRMLScene.StartCloseEvent, self._onSceneClose)
        self.status = "starting"
        self.framesShown = 0
        self.qualityFlagged = False
        self.process = EngineProcess(arguments, self.python).start()

    def follow(self, strainVolume, bmodeVolume=None) -> None:
        """Count (and record, see :attr:`recorder`) every frame the connector writes into ``strainVolume``."""
        if strainVolume is self.strainVolume:
            return
        if self.strainVolume is not None:
            self.removeObserver(self.strainVolume, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._onStrain)
        self.strainVolume, self.bmodeVolume = strainVolume, bmodeVolume
        self.addObserver(strainVolume, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._onStrain)

    def followStatus(self, statusNode) -> None:
        """Follow the process's STATUS messages (a ``vtkMRMLIGTLStatusNode`` the connector fills): each one
        updates :attr:`qualityFlagged`."""
        if statusNode is self.statusNode:
            return
        if self.statusNode is not None:
            self.removeObserver(self.statusNode, vtk.vtkCommand.ModifiedEvent, self._onStatus)
        self.statusNode = statusNode
        self.addObserver(statusNode, vtk.vtkCommand.ModifiedEvent, self._onStatus)
        self._onStatus(statusNode, None)

    def poll(self) -> list[str]:
        """The process's new output lines; the last one becomes :attr:`status`, and the exit when it ended."""
        if self.process is None:
            return []
        lines = self.process.lines()
        if lines:
            self.status = lines[-1]
        if not self.process.running and self.process.returncode:
            self.status = f"live strain stopped (exit status {self.process.returncode}): {self.status}"
        return lines

    def stop(self) -> None:
        """Stop the process (and its children) and forget the scene's nodes; the nodes stay in the scene."""
        if self.process is not None:
            self.process.stop()
            self.poll()
            self.process = None
        self.removeObservers()
        self.scene = self.strainVolume = self.bmodeVolume = self.recorder = self.statusNode = None

    def _onStrain(self, volumeNode, event) -> None:
        frameTime = newFrameTime(volumeNode, self._lastImageMTime)
        if frameTime is None:
            return
        self._lastImageMTime = frameTime
        self.framesShown += 1
        if self.recorder is not None and self.bmodeVolume is not None:
            self.recorder.add(self.framesShown, self.strainVolume, self.bmodeVolume)

    def _onStatus(self, statusNode, event) -> None:
        self.qualityFlagged = qualityFlagOf(statusNode.GetErrorName(), self.qualityFlagged)

    def _onSceneClose(self, caller, event) -> None:
        self.stop()
