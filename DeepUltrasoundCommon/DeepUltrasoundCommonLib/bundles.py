"""The model bundles the installed ``deepultrasound`` engine provides.

The engine owns bundles (manifest, weights, checksums) and where they are installed (its
``models`` folder and the folders in the environment variable ``DEEPULTRASOUND_MODELS``);
this only asks :func:`deepultrasound.runtime.list_bundles` which exist, so that a module can
offer them in its model selector. The engine is imported inside the function: it brings
torch, which is installed on first use (see :mod:`.dependencies`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class BundleInfo:
    """One installed model bundle, as shown in a module's model selector.

    A plain copy of the engine's ``BundleSummary``, so that importing this module does not import torch.
    """

    name: str
    task: str
    version: str
    path: Path
    description: str = ""


def listBundledModels(task: str = "") -> list[BundleInfo]:
    """Installed model bundles, sorted by name; only those of ``task`` (e.g. ``"elastography"``) unless empty."""
    from deepultrasound.runtime import list_bundles

    bundles = [BundleInfo(b.name, b.task, b.version, b.path, b.description) for b in list_bundles()]
    return sorted((b for b in bundles if not task or b.task == task), key=lambda b: b.name)


#: label of the model choice that leaves the choice to the engine (its default bundled model)
DEFAULT_MODEL_LABEL = "Default"


def modelChoices(bundles: list[BundleInfo]) -> list[tuple[str, str]]:
    """(label, model name) of each entry of a model selector: first the engine's default (name ``""``),
    then each bundle as "name (version)"."""
    return [(DEFAULT_MODEL_LABEL, "")] + [(f"{bundle.name} ({bundle.version})", bundle.name) for bundle in bundles]


@dataclass(frozen=True)
class EngineMethod:
    """How a module's engine command computes: with a network or one of the module's classical methods.

    Subclasses name their :attr:`METHODS` (``"network"`` first), what they compute (:attr:`NOUN`, for
    messages) and how a classical method is described (:attr:`CLASSICAL`, a format of ``method``).

    Attributes:
        method: one of :attr:`METHODS`.
        model: with ``"network"``: an installed model name or bundle folder (``""``: the engine's default model).
        device: where the network runs: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    """

    METHODS: ClassVar[tuple[str, ...]] = ("network",)
    NOUN: ClassVar[str] = "computation"
    CLASSICAL: ClassVar[str] = "{method}"

    method: str = "network"
    model: str = ""
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in self.METHODS:
            raise ValueError(f"Unknown {self.NOUN} method '{self.method}': choose one of {', '.join(self.METHODS)}")

    def describe(self) -> str:
        if self.method != "network":
            return self.CLASSICAL.format(method=self.method)
        return f"model {self.model}" if self.model else "the default model"
