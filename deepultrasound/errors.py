"""Errors the engine raises for problems the user can fix.

The command line prints these as one line (no traceback) and exits with status 2. Each is
also a standard exception type, so library callers can catch ``ValueError`` or ``OSError``.
"""


class DeepUltrasoundError(Exception):
    """Base class: a problem with the user's input, files or environment, with an actionable message."""


class InputError(DeepUltrasoundError, ValueError):
    """Bad input data or arguments: wrong shape, dtype, NaN, too few frames, unknown option."""


class FileFormatError(DeepUltrasoundError, OSError):
    """A file that is missing, empty, truncated or not in the expected format."""


class BundleError(DeepUltrasoundError, OSError):
    """A model bundle that is missing, incomplete, tampered with or of an unknown format."""


class ConfigError(DeepUltrasoundError, ValueError):
    """An invalid training or export configuration (unknown key, out-of-range value)."""
