"""Which DeepUSE model bundle to run: a bundle folder, a bundled model's name, or the preferred bundled model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deepultrasound.errors import BundleError
from deepultrasound.runtime import find_bundles, model_directories

DEEPUSE_ARCHITECTURES = ("reusenet", "usenet")
"""Registered architectures of the DeepUSE networks, in order of preference for the default model:
refined against the reference (the offline default), the shipped ReUSENet scored better than the
shipped USENet on every simulated figure of ``deepultrasound bench strain`` (strain NRMSE 0.057
against 0.072, CNRe 21.3 against 18.5; in vivo SNRe 1.55 against 1.64; the manifests hold the
figures)."""

HOW_TO_GET_A_MODEL = (
    "import the original DeepUSE weights with 'deepultrasound import-deepuse <epoch>_net_ReUSENet.pth "
    "-o BUNDLE' or train one with 'deepultrasound train CONFIG', then pass --model BUNDLE "
    "(or use --baseline for block matching without a network)"
)


def _bundled_deepuse_models() -> list[tuple[Path, dict[str, object]]]:
    """(folder, manifest) of the bundled DeepUSE models, preferred first (:data:`DEEPUSE_ARCHITECTURES`, then by name).

    Manifests are only peeked at here; the chosen bundle is verified when it is loaded.
    """
    found = []
    for folder in find_bundles(model_directories()):
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("architecture") in DEEPUSE_ARCHITECTURES:
            found.append((folder, manifest))
    return sorted(found, key=lambda item: (DEEPUSE_ARCHITECTURES.index(item[1]["architecture"]), item[0].name))


def resolve_model(model: str | os.PathLike[str] | None = None) -> Path:
    """The bundle folder of ``model``: an existing path, else a bundled model of that (folder or
    manifest) name; None gives the preferred bundled DeepUSE model.

    Raises:
        BundleError: nothing matches; the message lists the bundled models and how to get one.
    """
    bundled = _bundled_deepuse_models()
    if model is not None:
        path = Path(model)
        if path.exists():
            return path
        for folder, manifest in bundled:
            if str(model) in (folder.name, manifest.get("name")):
                return folder
        names = ", ".join(folder.name for folder, _ in bundled) or "none"
        raise BundleError(
            f"model {str(model)!r} is neither a bundle folder nor a bundled model (bundled: {names}); "
            + HOW_TO_GET_A_MODEL
        )
    if not bundled:
        looked = ", ".join(str(folder) for folder in model_directories())
        raise BundleError(f"no DeepUSE model is installed (looked in {looked}); " + HOW_TO_GET_A_MODEL)
    return bundled[0][0]
