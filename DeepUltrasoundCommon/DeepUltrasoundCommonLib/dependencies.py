"""Install the Python packages a DeepUltrasound module needs, when the user first needs them.

Each module lists its packages in ``Resources/requirements.txt`` (the ``deepultrasound``
engine, which brings torch and the rest). :func:`ensureRequirements` is called right
before the first engine call; nothing heavy is imported at module load time.

On Slicer >= 5.9 the install goes through ``slicer.packaging.pip_ensure`` (which asks the
user first); older Slicer versions ask with a confirmation dialog here and install with
``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement


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


def ensureRequirements(requirementsPath: str | Path, requester: str) -> None:
    """Make sure the packages in ``requirementsPath`` are installed, installing them after the user agrees.

    Call this from the Slicer application (a widget action) before importing the engine.

    Args:
        requirementsPath: the module's ``Resources/requirements.txt``.
        requester: module name shown in the confirmation dialog.

    Raises:
        RuntimeError: the user declined the installation.
        subprocess.CalledProcessError: pip failed.
    """
    requirements = loadRequirements(requirementsPath)
    missing = missingRequirements(requirements)
    if not missing:
        return
    import slicer

    try:
        from slicer import packaging as slicerPackaging
    except ImportError:
        slicerPackaging = None
    if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):
        slicerPackaging.pip_ensure(missing, requester=requester)
        return
    # Slicer < 5.9: no pip_ensure, so ask here and install with the older helper.
    names = "\n".join(f"  {requirement}" for requirement in missing)
    question = (
        f"{requester} needs these Python packages, which are not installed yet:\n\n{names}\n\n"
        "Install them now? This downloads them and can take several minutes."
    )
    if not slicer.util.confirmOkCancelDisplay(question, windowTitle=f"{requester}: install Python packages"):
        raise RuntimeError(
            f"{requester} cannot run without: {', '.join(str(r) for r in missing)} (installation declined)"
        )
    # A list keeps direct references such as "name @ git+https://..." in one piece.
    slicer.util.pip_install([str(requirement) for requirement in missing])
