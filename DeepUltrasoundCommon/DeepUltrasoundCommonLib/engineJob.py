"""An engine command on volume files in a background process: inputs out, process, results back in.

A module's offline computation is the same four steps whatever it computes: write the input
volumes to a temporary folder, run one ``deepultrasound`` command on them in a background
process (:class:`DeepUltrasoundCommonLib.process.EngineProcess`: Slicer's Python, whole process
tree stopped on Cancel), follow its progress lines from a timer, and read the files it wrote back
into the output volumes, removing the folder. :class:`EngineJob` does the steps; a module's job
derives from it and says which files and arguments (:meth:`EngineJob.writeInputs`) and how the
results go into its nodes (:meth:`EngineJob.readResults`). :func:`writeVolumeFile` and
:func:`readVolumeFile` move a volume node to and from a file (NRRD, with its geometry);
:func:`writeArrayFile` and :func:`readVolumeArray` move voxels and geometry to and from a file
without touching any node the user sees. :class:`BackgroundJobLogic` is the part of a module's logic
that holds its one job: started, finished or cancelled, and cancelled when the scene closes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import slicer

from .process import EngineProcess, progressOf
from .volumes import VolumeGeometry, arrayToVolume, volumeToArray

#: output lines of a failed process shown in the error message
ERROR_LINES = 5


@contextmanager
def _storageNode(scene: slicer.vtkMRMLScene, path: Path):
    """A volume archetype storage node for ``path``, in ``scene`` while the block runs (files written
    uncompressed: they are temporary)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.UseCompressionOff()
    scene.AddNode(storage)
    try:
        yield storage
    finally:
        scene.RemoveNode(storage)


def writeVolumeFile(volumeNode: slicer.vtkMRMLVolumeNode, path: Path) -> None:
    """Write the voxels and geometry of ``volumeNode`` (scalar or vector) to ``path`` (format from its suffix).

    Raises:
        OSError: the file cannot be written.
    """
    with _storageNode(volumeNode.GetScene(), path) as storage:
        if not storage.WriteData(volumeNode):
            raise OSError(f"Could not write '{volumeNode.GetName()}' to {path}")


def writeArrayFile(
    array: np.ndarray,
    geometry: VolumeGeometry,
    path: Path,
    scene: slicer.vtkMRMLScene,
    className: str = "vtkMRMLScalarVolumeNode",
) -> None:
    """Write voxels ``(K, J, I)`` (``(K, J, I, C)`` for a vector ``className``) placed at ``geometry`` to
    ``path``, through a staging volume node of ``className`` that is in ``scene`` only meanwhile.

    Raises:
        ValueError: the array does not fit the node class (see :func:`.volumes.arrayToVolume`).
        OSError: the file cannot be written.
    """
    staging = scene.AddNewNodeByClass(className, f"writing {path.name}")
    try:
        arrayToVolume(array, staging, geometry)
        writeVolumeFile(staging, path)
    finally:
        scene.RemoveNode(staging)


def readVolumeFile(path: Path, volumeNode: slicer.vtkMRMLVolumeNode) -> None:
    """Replace the voxels and geometry of ``volumeNode`` with those of the image file ``path``.

    Raises:
        ValueError: the file is missing or cannot be read.
    """
    with _storageNode(volumeNode.GetScene(), path) as storage:
        if not storage.ReadData(volumeNode):
            raise ValueError(f"Could not read the computed {path.name}")


def readVolumeArray(
    path: Path, scene: slicer.vtkMRMLScene, className: str = "vtkMRMLScalarVolumeNode"
) -> tuple[np.ndarray, VolumeGeometry]:
    """Voxels ``(K, J, I)`` (``(K, J, I, C)`` with ``className="vtkMRMLVectorVolumeNode"``) and geometry of
    the image file ``path``, read through a staging volume node of ``className`` that is in ``scene`` only
    meanwhile. Vector components are returned as stored: the file's LPS components are not turned into RAS.

    Raises:
        ValueError: the file is missing or cannot be read.
    """
    staging = scene.AddNewNodeByClass(className, f"reading {path.name}")
    try:
        readVolumeFile(path, staging)
        return volumeToArray(staging)
    finally:
        scene.RemoveNode(staging)


class EngineJob:
    """One engine command on files in a temporary folder, run in a background process.

    Subclasses implement :meth:`writeInputs` and :meth:`readResults`, and name the computation in
    :attr:`description`. Use: :meth:`start`, then :meth:`poll` from a timer until it returns False,
    then :meth:`finish`; or :meth:`cancel`; or :meth:`run` to wait (scripts and tests).

    Args:
        python: interpreter of the process (default: Slicer's ``PythonSlicer``).

    Attributes:
        progress: ``(done, total)`` of the last progress line (see :func:`.process.progressOf`), or None.
        output: the process's output lines so far (stdout and stderr).
        process: the running command, once started.
    """

    #: what the job computes, as its error messages name it
    description = "Computation"

    def __init__(self, python: str | None = None) -> None:
        self.python = python
        self.progress: tuple[int, int] | None = None
        self.output: list[str] = []
        self.process: EngineProcess | None = None
        self._folder: Path | None = None

    # What a job computes.

    def writeInputs(self, folder: Path) -> list[str]:
        """Write the input files into ``folder``; the engine command line (after ``deepultrasound``)."""
        raise NotImplementedError

    def readResults(self, folder: Path):
        """Read the files the command wrote into ``folder`` into the output nodes; the job's result."""
        raise NotImplementedError

    # Running it.

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def start(self) -> EngineJob:
        """Write the inputs and start the process (the folder is removed again if either fails).

        Raises:
            ValueError: the engine is missing, or the job was already started.
            OSError: the inputs cannot be written or the interpreter cannot be started.
        """
        if self._folder is not None:
            raise ValueError(f"This {self.description.lower()} was already started; create a new job")
        self._folder = Path(tempfile.mkdtemp(prefix=f"{type(self).__name__}-"))
        try:
            self.process = EngineProcess(self.writeInputs(self._folder), self.python).start()
        except BaseException:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        return self

    def poll(self) -> bool:
        """Take the process's new output (progress included); whether it still runs."""
        for line in self.process.lines():
            self.output.append(line)
            self.progress = progressOf(line) or self.progress
        return self.process.running

    def finish(self):
        """Wait for the process, then :meth:`readResults`; removes the temporary files.

        Raises:
            ValueError: the process failed or was cancelled (the message holds its last output
                lines), or its results cannot be read.
        """
        code = self.process.wait()
        self.poll()
        try:
            if code != 0:
                tail = "\n".join(self.output[-ERROR_LINES:])
                raise ValueError(f"{self.description} failed (exit status {code}):\n{tail}")
            return self.readResults(self._folder)
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    def cancel(self) -> None:
        """End the process and its children and remove the temporary files; the output nodes keep what they held."""
        if self.process is not None:
            self.process.stop()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def run(self, timeoutS: float | None = None):
        """:meth:`start`, wait, :meth:`finish` (cancelled after ``timeoutS`` seconds, then raises ValueError)."""
        self.start()
        if self.process.wait(timeoutS) is None:
            self.cancel()
        return self.finish()


class BackgroundJobLogic:
    """A module logic's engine job: one at a time, in the background, cancelled when the scene closes.

    The logic's ``process`` calls :meth:`runJob`; without waiting, a widget polls :attr:`job` and calls
    :meth:`finish` when it has ended, or :meth:`cancel`.

    Attributes:
        job: the job running in the background, or None.
    """

    def __init__(self) -> None:
        self.job: EngineJob | None = None
        slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.cancel()

    def runJob(self, makeJob: Callable[[], EngineJob], waitForCompletion: bool) -> str:
        """Cancel the running job, start the one ``makeJob`` makes (which checks its inputs first); its summary
        (:meth:`finish`) when ``waitForCompletion``, else ""."""
        self.cancel()
        self.job = makeJob().start()
        return self.finish() if waitForCompletion else ""

    def finish(self) -> str:
        """Wait for :attr:`job` and read its results into the output nodes; its summary.

        Raises:
            ValueError: the computation failed; the message holds the process's last output lines.
        """
        job, self.job = self.job, None
        return job.finish().summary()

    def cancel(self) -> None:
        """End the job running in the background, if any (the whole process tree)."""
        if self.job is not None:
            self.job.cancel()
            self.job = None
