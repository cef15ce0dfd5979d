"""The model bundles the installed ``deepultrasound`` engine provides.

The engine owns bundles (manifest, weights, checksums); this only asks it which exist, so
that a module can offer them in its model selector. The engine is imported inside the
function: it brings torch, which is installed on first use (see :mod:`.dependencies`).

Engine contract: ``deepultrasound.runtime.list_bundles()`` returns the installed bundles,
each with ``name``, ``task``, ``version`` (str) and ``path`` (bundle folder).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundleInfo:
    """One installed model bundle, as shown in a module's model selector."""

    name: str
    task: str
    version: str
    path: Path


def listBundledModels(task: str = "") -> list[BundleInfo]:
    """Installed model bundles, sorted by name; only those of ``task`` (e.g. ``"elastography"``) unless empty.

    Raises:
        ValueError: the installed engine cannot list bundles (too old); the message says how to update.
    """
    runtime = importlib.import_module("deepultrasound.runtime")
    listBundles = getattr(runtime, "list_bundles", None)
    if listBundles is None:
        engine = importlib.import_module("deepultrasound")
        raise ValueError(
            f"The installed deepultrasound engine ({getattr(engine, '__version__', 'unknown version')}) cannot list "
            "model bundles: update it with the module's Resources/requirements.txt"
        )
    bundles = [
        BundleInfo(name=str(b.name), task=str(b.task), version=str(b.version), path=Path(b.path)) for b in listBundles()
    ]
    return sorted((b for b in bundles if not task or b.task == task), key=lambda b: b.name)
