"""Engine commands in a background process: ``PythonSlicer -m deepultrasound <command> ...``.

Anything heavier than a frame copy runs outside the Slicer process, so that the application stays
responsive (the Python interpreter of the application does not share its lock well with worker
threads). :class:`EngineProcess` starts one engine command with Slicer's Python, collects its
output lines (stdout and stderr together; a carriage return ends a line too, so progress bars
arrive as lines) for a timer to read, and stops the whole process tree.

The engine (the ``deepultrasound`` package) is installed with the extension beside the modules;
the process finds it through ``PYTHONPATH``, set to the folder that holds the package here.

Thread ownership: the reader thread owns the pipe; :meth:`EngineProcess.lines` hands its lines to
the caller under ``_lock``; everything else belongs to the thread that started the process.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

#: seconds a stopped process gets to finish on its own (it prints its final figures) before it is killed
STOP_GRACE_S = 5.0
_LINE_END = re.compile(rb"[\r\n]")


@contextmanager
def _interruptibleChildren():
    """Processes started meanwhile can be interrupted (Cancel) even where this one ignores SIGINT.

    An ignored signal stays ignored across ``exec``, so the engine would start deaf to the
    interrupt, as every job of a shell's background job does; a handled one is reset to the
    default. While processes start, SIGINT is handled here by a handler that does nothing.
    """
    if (
        sys.platform == "win32"
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    ):
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


_PROGRESS = re.compile(r"(\d+)/(\d+) \[")


def pythonExecutable() -> str:
    """Slicer's ``PythonSlicer`` where the application puts it on ``PATH``, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def engineLocation() -> Path:
    """The folder that holds the ``deepultrasound`` package (the extension's scripted-modules folder).

    Raises:
        ValueError: the engine is not installed (a damaged extension).
    """
    spec = importlib.util.find_spec("deepultrasound")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("The DeepUltrasound engine (package 'deepultrasound') is missing: reinstall the extension")
    return Path(list(spec.submodule_search_locations)[0]).parent


def progressOf(line: str) -> tuple[int, int] | None:
    """``(done, total)`` of a progress-bar line such as ``" 40%|####  | 2/5 [00:01<00:02]"``, else None."""
    match = _PROGRESS.search(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


class EngineProcess:
    """One ``deepultrasound`` command running in a process of its own.

    Args:
        arguments: the command line after ``deepultrasound``, e.g. ``["stream", "--port", "18944"]``.
        python: interpreter to run it with (default: :func:`pythonExecutable`).
    """

    def __init__(self, arguments: list[str], python: str | None = None) -> None:
        self.arguments = list(arguments)
        self.python = python or pythonExecutable()
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._lines: list[str] = []

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return None if self._process is None else self._process.poll()

    def start(self) -> EngineProcess:
        """Start the command in a new process group (so that :meth:`stop` reaches its children too).

        Raises:
            ValueError: already started, or the engine is missing.
            OSError: the interpreter cannot be started.
        """
        if self._process is not None:
            raise ValueError("This engine process was already started; create a new one")
        environment = dict(os.environ)
        paths = [str(engineLocation()), environment.get("PYTHONPATH", "")]
        environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
        environment["PYTHONUNBUFFERED"] = "1"
        if sys.platform == "win32":
            newGroup = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        else:
            newGroup = {"start_new_session": True}
        with _interruptibleChildren():
            self._process = subprocess.Popen(
                [self.python, "-m", "deepultrasound", *self.arguments],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
                **newGroup,
            )
        self._reader = threading.Thread(target=self._read, name="deepultrasound output", daemon=True)
        self._reader.start()
        return self

    def lines(self) -> list[str]:
        """The output lines that arrived since the last call (non-empty lines, without line ends)."""
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def wait(self, timeoutS: float | None = None) -> int | None:
        """Wait until the process ends; its exit status, or None when still running after ``timeoutS``.

        Children it left behind are ended with it: nothing outlives the command.
        """
        if self._process is None:
            return None
        try:
            code = self._process.wait(timeoutS)
        except subprocess.TimeoutExpired:
            return None
        self._signalGroup(interrupt=False)
        self._reader.join()  # the pipe closes with the last process of the group: every line is in by now
        return code

    def stop(self, graceS: float = STOP_GRACE_S) -> int | None:
        """End the process and its children: an interrupt first (the command finishes cleanly), then a kill.

        Returns the exit status (None when it was never started).
        """
        if self._process is None:
            return None
        if self.running:
            self._signalGroup(interrupt=True)
            try:
                self._process.wait(graceS)
            except subprocess.TimeoutExpired:
                pass  # killed with the rest of the group below
        self._signalGroup(interrupt=False)
        return self.wait()

    def _signalGroup(self, interrupt: bool) -> None:
        pid = self._process.pid
        try:
            if sys.platform == "win32":
                if interrupt:
                    self._process.send_signal(signal.CTRL_BREAK_EVENT)
                else:
                    subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
            else:
                os.killpg(pid, signal.SIGINT if interrupt else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # every process of the group has ended

    def _read(self) -> None:
        pending = b""
        for chunk in iter(lambda: self._process.stdout.read1(65536), b""):
            *complete, pending = _LINE_END.split(pending + chunk)
            self._append(complete)
        self._append([pending])
        self._process.stdout.close()

    def _append(self, raw: list[bytes]) -> None:
        lines = [text for text in (line.decode("utf-8", "replace").strip() for line in raw) if text]
        if lines:
            with self._lock:
                self._lines.extend(lines)
