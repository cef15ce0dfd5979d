"""``python -m deepultrasound`` is the ``deepultrasound`` command."""

import signal
import sys

# An interrupt (a module's Cancel) ends the command even where the launcher left SIGINT ignored, as a
# non-interactive shell does for the jobs it starts in the background.
signal.signal(signal.SIGINT, signal.default_int_handler)

from deepultrasound.cli import main  # noqa: E402

sys.exit(main())
