"""The extension ships its own engine; pip installs only third-party packages from the package index.

What CMake installs is staged here without CMake, from the same lists: each module's
``MODULE_PYTHON_SCRIPTS`` and ``MODULE_PYTHON_RESOURCES`` (``slicerMacroBuildScriptedModule`` installs
them, relative paths kept, into the extension's ``qt-scripted-modules`` folder) and the engine
folder of the top-level ``install(DIRECTORY ...)``. The staged engine then runs with the
interpreter at hand, and its requirements resolve for Python 3.12 (Slicer 5.10) from the package
index alone.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "DeepUltrasoundCommon"))  # as Slicer puts every scripted module folder on sys.path

from DeepUltrasoundCommonLib import ENGINE_REQUIREMENTS, loadRequirements  # noqa: E402

MODULE_FOLDERS = ["DeepUltrasoundCommon", "DeepUSE", "EchoRegistration", "USSynth", "USSuperRes"]
MODULES_DIR = "lib/Slicer-5.10/qt-scripted-modules"  # Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR


def cmakeList(cmakeText: str, variable: str, moduleName: str) -> list[str]:
    """The entries of ``set(<variable> ...)``, with ``${MODULE_NAME}`` replaced."""
    match = re.search(rf"set\({variable}\s+(.*?)\)", cmakeText, re.DOTALL)
    assert match, f"no set({variable} ...)"
    return [entry.replace("${MODULE_NAME}", moduleName) for entry in match.group(1).split()]


def installedFiles() -> dict[str, Path]:
    """What the extension installs into its scripted-modules folder: relative path -> source file."""
    files = {}
    for folder in MODULE_FOLDERS:
        text = (ROOT / folder / "CMakeLists.txt").read_text()
        for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
            for relative in cmakeList(text, variable, folder):
                assert relative not in files, f"{relative} is installed by two modules (one overwrites the other)"
                files[relative] = ROOT / folder / relative
    for source in (ROOT / "deepultrasound").rglob("*"):
        if source.is_file() and "__pycache__" not in source.parts:
            files[str(source.relative_to(ROOT))] = source
    return files


@pytest.fixture(scope="module")
def stagedExtension(tmp_path_factory) -> Path:
    """The extension's scripted-modules folder as CMake installs it."""
    modules = tmp_path_factory.mktemp("extension") / MODULES_DIR
    for relative, source in installedFiles().items():
        (modules / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, modules / relative)
    return modules


def test_engine_requirements_are_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = sorted(str(Requirement(text)) for text in project["dependencies"])
    assert sorted(str(r) for r in loadRequirements(ENGINE_REQUIREMENTS)) == declared
    assert all(r.url is None for r in loadRequirements(ENGINE_REQUIREMENTS)), "only package-index requirements"


def test_cmake_installs_the_engine_beside_the_modules_and_one_requirements_file():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "set(DEEPULTRASOUND_ENGINE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/deepultrasound)" in text
    install = re.search(r"install\(DIRECTORY \$\{DEEPULTRASOUND_ENGINE_DIR\}(.*?)\)", text, re.DOTALL)
    assert install and "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in install.group(1)
    assert 'PATTERN "__pycache__" EXCLUDE' in install.group(1)
    writers = [relative for relative in installedFiles() if relative.endswith("requirements.txt")]
    assert writers == ["Resources/requirements.txt"]
    assert installedFiles()["Resources/requirements.txt"] == ENGINE_REQUIREMENTS


def test_staged_engine_and_its_models_run_from_the_extension_folder(stagedExtension, tmp_path):
    """The installed engine (not this checkout's) computes strain with the environment's third-party packages."""
    from deepultrasound.io import Image, read_sequence, write_image
    from deepultrasound.simulation import SimulationConfig, simulate_sequence

    config = SimulationConfig(n_frames=3, height=256, width=32, mesh_cells=(16, 8), max_inclusions=0)
    write_image(tmp_path / "rf.mha", Image(simulate_sequence(config, seed=0).rf, spacing=(0.2, 0.02, 0.05)))
    environment = {**os.environ, "PYTHONPATH": str(stagedExtension)}
    where = subprocess.run(
        [sys.executable, "-c", "import deepultrasound.runtime as r; print(r.__file__); print(len(r.list_bundles()))"],
        env=environment,
        cwd=tmp_path,  # not the checkout: it would come first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(stagedExtension)
    assert int(where[1]) >= 1, "the bundled models are installed with the engine"
    command = [sys.executable, "-m", "deepultrasound", "strain", str(tmp_path / "rf.mha"), "-o"]
    subprocess.run(
        [*command, str(tmp_path / "strain.mha"), "--baseline", "--window-mm", "1"],
        env=environment,
        cwd=tmp_path,
        check=True,
    )
    strain = read_sequence(tmp_path / "strain.mha").array
    assert strain.shape == (2, 256, 32) and np.isfinite(strain).all()


def python312() -> str | None:
    """A Python 3.12 interpreter (Slicer 5.10's): $DEEPULTRASOUND_PYTHON312, python3.12 on PATH, or pyenv's."""
    candidates = [os.environ.get("DEEPULTRASOUND_PYTHON312"), shutil.which("python3.12")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
        if probe.returncode == 0 and probe.stdout.strip() == b"(3, 12)":
            return candidate
    return None


#: what pip prints when it cannot reach the package index at all
OFFLINE_SIGNS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable", "ProxyError")


@pytest.mark.slow
def test_engine_installs_into_python_312_from_the_extension_and_the_package_index(stagedExtension, tmp_path):
    """Resolution of every third-party requirement for Python 3.12 from the package index (no git, no URL),
    and the staged engine imported and compiled by that interpreter.

    A full install is not made here: on Linux the index's torch for 3.12 is the multi-GB CUDA build.
    """
    interpreter = python312()
    if interpreter is None:
        pytest.skip("no Python 3.12 interpreter: set DEEPULTRASOUND_PYTHON312 to one")
    subprocess.run([interpreter, "-m", "venv", str(tmp_path / "venv")], check=True)
    venvPython = str(tmp_path / "venv" / "bin" / "python")
    report = tmp_path / "report.json"
    requirements = stagedExtension / "Resources" / "requirements.txt"
    resolved = subprocess.run(
        [venvPython, "-m", "pip", "install", "--quiet", "--dry-run", "--prefer-binary", "--report", str(report)]
        + ["--requirement", str(requirements)],
        capture_output=True,
        text=True,
    )
    if resolved.returncode != 0 and any(sign in resolved.stderr for sign in OFFLINE_SIGNS):
        pytest.skip("the Python package index is not reachable from this machine")
    assert resolved.returncode == 0, resolved.stderr
    installs = json.loads(report.read_text())["install"]
    names = {item["metadata"]["name"].lower() for item in installs}
    assert {r.name.lower() for r in loadRequirements(requirements)} <= names
    assert not [item for item in installs if "vcs_info" in item["download_info"]], "nothing from a repository"
    assert not [item for item in installs if "github" in item["download_info"]["url"]]
    environment = {**os.environ, "PYTHONPATH": str(stagedExtension)}
    imported = subprocess.run(
        [venvPython, "-c", "import deepultrasound; print(deepultrasound.__file__)"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(imported.stdout.strip()).is_relative_to(stagedExtension)
    subprocess.run([venvPython, "-m", "compileall", "-q", str(stagedExtension)], check=True)
