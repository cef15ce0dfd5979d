"""``python -m deepultrasound`` is the ``deepultrasound`` command."""

import sys

from deepultrasound.cli import main

sys.exit(main())
