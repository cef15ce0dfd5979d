"""Engine commands in a background process (``DeepUltrasoundCommonLib.process``): output, progress, stop."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "DeepUltrasoundCommon"))  # as Slicer puts every scripted module folder on sys.path

from DeepUltrasoundCommonLib.process import EngineProcess, progressOf  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and /proc of POSIX")
#: a stream whose source never answers: it runs until stopped
IDLE_STREAM = ["stream", "--baseline", "--port", "1", "--serve-port", "0", "--status-every", "0.2"]


@pytest.mark.parametrize(
    ("line", "progress"),
    [
        ("block matching:  40%|####      | 2/5 [00:01<00:02,  1.9pair/s]", (2, 5)),
        ("reusenet: 100%|##########| 12/12 [00:06<00:00]", (12, 12)),
        ("wrote strain.nrrd: 5 strain frame(s) of 256 x 32", None),
    ],
)
def test_progress_lines(line, progress):
    assert progressOf(line) == progress


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def endsWithin(pid: int, seconds: float = 10.0) -> bool:
    """Whether ``pid`` has ended within ``seconds``: a killed process closes its files (the engine's output pipe)
    a moment before the kernel marks it ended, a moment that lasts longer on a loaded machine."""
    tick = threading.Event()
    for _ in range(int(seconds / 0.05)):
        if not alive(pid):
            return True
        tick.wait(0.05)
    return not alive(pid)


def pythonWithAChild(folder: Path, ignoreInterrupt: bool = False) -> tuple[str, Path]:
    """An interpreter wrapper that leaves a child process running beside the engine (as a worker would); with
    ``ignoreInterrupt`` it starts the engine with SIGINT ignored, as a shell does for its background jobs."""
    childPid = folder / "child.pid"
    wrapper = folder / "python"
    trap = "trap '' INT\n" if ignoreInterrupt else ""
    wrapper.write_text(f'#!/bin/sh\n{trap}sleep 600 &\necho $! > "{childPid}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper), childPid


@pytest.mark.parametrize(
    ("graceS", "ignoreInterrupt"),
    [(30.0, False), (30.0, True), (0.0, False)],
    ids=["interrupted", "interrupted-where-the-launcher-ignores-SIGINT", "killed"],
)
def test_stop_ends_the_whole_process_tree(tmp_path, graceS, ignoreInterrupt):
    python, childPid = pythonWithAChild(tmp_path, ignoreInterrupt)
    process = EngineProcess(IDLE_STREAM, python=python).start()
    lines, tick = [], threading.Event()
    for _ in range(1200):  # until the engine is up and reporting, at most 60 s
        lines += process.lines()
        if any("fps" in line for line in lines) or not process.running:
            break
        tick.wait(0.05)
    assert process.running and any("fps" in line for line in lines), lines
    child = int(childPid.read_text())
    assert alive(child)
    code = process.stop(graceS=graceS)
    assert not process.running and endsWithin(child)
    if graceS:  # the interrupt lets the command finish: exit 0 and its final figures
        assert code == 0
        assert json.loads(process.lines()[-1])["sent"] == 0
    else:
        assert code == -9


def test_output_of_a_failing_command_and_no_second_start(tmp_path):
    process = EngineProcess(["strain", str(tmp_path / "missing.mha"), "-o", str(tmp_path / "s.mha")]).start()
    assert process.wait(60.0) not in (0, None)
    assert any("missing.mha" in line for line in process.lines())
    with pytest.raises(ValueError, match="already started"):
        process.start()
    assert os.listdir(tmp_path) == []
