"""Where the shared development data lives (in vivo RF, the original DeepUSE reference outputs, CAMUS, BUSI).

One place decides, for the benches and the tests alike: the folder named by the environment
variable ``DEEPULTRASOUND_DATA`` when it is set, else ``shared/data`` beside the repository
checkout (``<checkout>/../shared/data``). The data is not installed with the package; whoever
needs a sub-folder checks that it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENVIRONMENT_VARIABLE = "DEEPULTRASOUND_DATA"
BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "data"
"""``../shared/data`` beside the repository checkout that holds this package."""


def shared_data_dir() -> Path:
    """The shared data folder: ``$DEEPULTRASOUND_DATA`` if set (and not empty), else :data:`BESIDE_CHECKOUT`.

    The folder may not exist; check the sub-folder you need.
    """
    configured = os.environ.get(DATA_ENVIRONMENT_VARIABLE)
    return Path(configured).expanduser() if configured else BESIDE_CHECKOUT
