"""Install the third-party Python packages of the DeepUltrasound engine, when the user first needs them.

The engine itself (the ``deepultrasound`` package and its bundled models) is installed with the
extension, beside the modules. Its third-party packages (torch, MONAI, ONNX Runtime, ...) are listed
once, in :data:`ENGINE_REQUIREMENTS` (``DeepUltrasoundCommon/Resources/requirements.txt``, the
``[project] dependencies`` of ``pyproject.toml``), and installed from the package index by
``slicer.packaging.pip_ensure``, which asks the user first. :func:`ensureRequirements` is called
right before the first engine call; nothing heavy is imported at module load time.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

#: the engine's third-party requirements: Resources/ beside this package, in the source tree and installed alike
ENGINE_REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


def loadRequirements(path: str | Path) -> list[Requirement]:
    """Requirements listed in a requirements file, one per line.

    Blank lines, ``#`` comments and pip options (lines starting with ``-``) are skipped.

    Raises:
        OSError: the file cannot be read.
        ValueError: a line is not a valid requirement; the message names file and line.
    """
    requirements = []
    for lineNumber, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith(("#", "-")):
            continue
        try:
            requirements.append(Requirement(text))
        except InvalidRequirement as error:
            raise ValueError(f"{path}:{lineNumber}: invalid requirement '{text}': {error}") from error
    return requirements


def isSatisfied(requirement: Requirement) -> bool:
    """Whether ``requirement`` is installed at an accepted version (markers that do not apply count as satisfied)."""
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return requirement.specifier.contains(installed, prereleases=True)


def missingRequirements(requirements: list[Requirement]) -> list[Requirement]:
    """The requirements that are not installed, or installed at a version outside their specifier."""
    return [requirement for requirement in requirements if not isSatisfied(requirement)]


def ensureRequirements(requester: str, requirementsPath: str | Path = ENGINE_REQUIREMENTS) -> None:
    """Make sure the packages in ``requirementsPath`` are installed, installing them after the user agrees.

    Call this from the Slicer application (a widget action) before importing the engine.

    Args:
        requester: module name shown in the confirmation dialog.
        requirementsPath: a requirements file (default: the engine's).

    Raises:
        RuntimeError: the user declined the installation (raised by ``pip_ensure``).
        subprocess.CalledProcessError: pip failed.
    """
    missing = missingRequirements(loadRequirements(requirementsPath))
    if missing:
        from slicer import packaging

        packaging.pip_ensure(missing, requester=requester)
