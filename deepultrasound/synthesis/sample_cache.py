"""Synthesised image stacks kept on disk chunk by chunk, so that a long benchmark resumes where it stopped.

A stack is identified by the model (:attr:`~deepultrasound.synthesis.inference.Synthesizer.digest`,
over a manifest that holds the SHA-256 of every weight file) and the backend that runs it, the label
maps, the sampling settings and :data:`~deepultrasound.synthesis.model.SAMPLING_REVISION`. Its file
``<folder>/<model name>-<key>.npy`` holds the images synthesised so far, ``(n, S, S)`` float32, rewritten
atomically after each chunk of ``batch`` maps. Chunk ``c`` draws its noise from ``(seed, c)`` whichever call
synthesises it, so a stack finished across several runs equals the stack synthesised in one call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from deepultrasound.io import atomic_write
from deepultrasound.synthesis.inference import Synthesizer
from deepultrasound.synthesis.model import SAMPLING_REVISION

logger = logging.getLogger(__name__)


def stack_key(model: Synthesizer, labels: np.ndarray, settings: dict[str, object]) -> str:
    """Hex SHA-256 of the model's digest and backend, the label maps (shape, dtype and values), ``settings`` and
    the sampling revision."""
    digest = hashlib.sha256(model.digest.encode())
    described = {
        "shape": labels.shape,
        "dtype": str(labels.dtype),
        "backend": model.backend,
        "revision": SAMPLING_REVISION,
        **settings,
    }
    digest.update(json.dumps(described, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


class SampleCache:
    """Image stacks of :class:`~deepultrasound.synthesis.inference.Synthesizer` runs, stored in ``folder``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, model: Synthesizer, labels: np.ndarray, settings: dict[str, object]) -> Path:
        """The file of the stack of ``labels`` synthesised by ``model`` with ``settings``."""
        name = model.name.replace(" ", "-").replace(os.sep, "-")
        return self.folder / f"{name}-{stack_key(model, labels, settings)[:24]}.npy"

    def synthesise(
        self,
        model: Synthesizer,
        labels: np.ndarray,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        batch: int = 8,
        progress: bool = False,
    ) -> np.ndarray:
        """``model(labels, ...)`` ``(N, S, S)``, reusing the chunks a previous run stored and storing each new one.

        Arguments as :meth:`Synthesizer.__call__` takes them; a stored file of another shape is replaced.
        """
        settings = {"sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed, "batch": batch}
        path = self.path(model, labels, settings)
        images = np.empty(labels.shape, np.float32)
        done = 0
        if path.is_file():
            stored = np.load(path)
            if stored.ndim == 3 and stored.shape[1:] == labels.shape[1:] and len(stored) <= len(labels):
                done = len(stored)
                images[:done] = stored
                logger.info("%s: %d of %d image(s) from %s", model.name, done, len(labels), path)
        with tqdm(total=len(labels), initial=done, desc=model.name, unit="image", disable=not progress) as bar:
            for start in range(done, len(labels), batch):
                chunk = labels[start : start + batch]
                images[start : start + len(chunk)] = model(chunk, first_chunk=start // batch, **settings)
                with atomic_write(path) as staged, staged.open("wb") as stream:
                    np.save(stream, images[: start + len(chunk)])
                bar.update(len(chunk))
        return images
