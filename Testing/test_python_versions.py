"""Which Python each part of the extension claims, checked on every file.

- Slicer module files (``<Module>.py`` and ``<Module>Lib/``): they parse and load on Python 3.9
  (Slicer 5.6-5.8), so that such a Slicer shows the "needs Slicer 5.10" message of
  ``DeepUltrasoundCommonLib.versions`` instead of failing on syntax. Beyond the grammar, nothing
  evaluated at load time may need 3.10: annotations with ``X | Y`` only under
  ``from __future__ import annotations``, no ``dataclass(slots=..., kw_only=...)``.
- Engine files (``deepultrasound/``): Python 3.10, as ``pyproject.toml`` says.

Where a real Python 3.9 is at hand (``$DEEPULTRASOUND_PYTHON39``, ``python3.9`` or pyenv's), the
module files are compiled by it too.
"""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "DeepUltrasoundCommon"))

from DeepUltrasoundCommonLib.versions import MINIMUM_PYTHON, unsupportedPythonMessage  # noqa: E402

MODULE_PYTHON = (3, 9)
MODULE_FOLDERS = ["DeepUltrasoundCommon", "DeepUSE", "EchoRegistration", "USSynth", "USSuperRes"]
MODULE_FILES = sorted(
    path for folder in MODULE_FOLDERS for path in (ROOT / folder).rglob("*.py") if "Testing" not in path.parts
)
ENGINE_FILES = sorted((ROOT / "deepultrasound").rglob("*.py"))


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def annotationsEvaluatedAtLoad(tree: ast.Module) -> list[ast.expr]:
    """Annotations Python evaluates when the file loads (all of them, unless postponed by ``__future__``)."""
    postponed = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )
    if postponed:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            found += [a.annotation for a in arguments if a.annotation is not None]
            found += [node.returns] if node.returns is not None else []
    return found


def loadTimeFeaturesAfter39(path: Path) -> list[str]:
    """What in ``path`` needs Python 3.10 when the file loads, one line each."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=MODULE_PYTHON)
    problems = []
    for annotation in annotationsEvaluatedAtLoad(tree):
        if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation)):
            problems.append(f"line {annotation.lineno}: 'X | Y' annotation evaluated at load time")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "dataclass":
            keywords = {k.arg for k in node.keywords} & {"slots", "kw_only"}
            if keywords:
                problems.append(f"line {node.lineno}: dataclass({', '.join(sorted(keywords))}=...)")
    return problems


@pytest.mark.parametrize("path", MODULE_FILES, ids=relative)
def test_module_files_load_on_python_39(path):
    assert loadTimeFeaturesAfter39(path) == [], relative(path)


@pytest.mark.parametrize("path", ENGINE_FILES, ids=relative)
def test_engine_files_parse_with_the_python_pyproject_claims(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=MINIMUM_PYTHON)


def test_the_claims_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=" + ".".join(map(str, MINIMUM_PYTHON))
    assert project["tool"]["ruff"]["target-version"] == "py" + "".join(map(str, MINIMUM_PYTHON))


def test_a_feature_after_39_is_caught(tmp_path):
    late = tmp_path / "late.py"
    late.write_text("def f(x: int | None) -> None: ...\n")
    assert loadTimeFeaturesAfter39(late) == ["line 1: 'X | Y' annotation evaluated at load time"]
    late.write_text("from __future__ import annotations\ndef f(x: int | None) -> None: ...\n")
    assert loadTimeFeaturesAfter39(late) == []
    late.write_text("match 1:\n    case 1: pass\n")
    with pytest.raises(SyntaxError):
        loadTimeFeaturesAfter39(late)


def python39() -> str | None:
    candidates = [os.environ.get("DEEPULTRASOUND_PYTHON39"), shutil.which("python3.9")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
        if probe.returncode == 0 and probe.stdout.strip() == b"(3, 9)":
            return candidate
    return None


def test_python_39_compiles_the_module_files():
    interpreter = python39()
    if interpreter is None:
        pytest.skip("no Python 3.9 interpreter: set DEEPULTRASOUND_PYTHON39 to one")
    script = "import sys\nfor path in sys.argv[1:]:\n    compile(open(path, encoding='utf-8').read(), path, 'exec')\n"
    result = subprocess.run([interpreter, "-c", script, *map(str, MODULE_FILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("version", "supported"), [((3, 9, 18), False), ((3, 10, 0), True), ((3, 12, 10), True), ((3, 6, 15), False)]
)
def test_older_slicer_gets_a_message_naming_the_minimum(version, supported):
    message = unsupportedPythonMessage(version)
    assert (message == "") == supported
    if not supported:
        assert "3D Slicer 5.10 or later" in message and ".".join(map(str, version)) in message
