"""Atomic file output: readers never see a half-written file.

Usage::

    with atomic_write(out_path) as tmp:
        save_somehow(tmp)          # may also create companion files beside tmp (e.g. .mhd + .raw)

The block writes into a fresh hidden folder beside the target, under the target's own file name,
so formats whose header names a companion file (MetaImage ``.mhd`` -> ``.raw``) already hold the
final name. On success every file is flushed to disk and moved into place with ``os.replace``,
companions first and the target last; on failure the staging folder is deleted and any existing
target is left untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a staging path with ``path``'s name; move it (and its companions) onto ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        staged = staging / target.name
        yield staged
        produced = sorted(p for p in staging.iterdir() if p != staged) + [staged]
        for file in produced:
            _fsync(file)
        for file in produced:
            os.replace(file, target.parent / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a written file's data to disk, so the rename never exposes unwritten blocks."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
