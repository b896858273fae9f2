"""The one error type the package raises for problems a user can fix.

The CLI turns an :class:`S2SDError` into a one-line message and its ``exit_code``; a traceback
is shown only when the environment variable ``S2SD_DEBUG`` is set.
"""


class S2SDError(Exception):
    """A problem with the user's input or environment; the message says what to do."""

    exit_code = 2


class MissingDependencyError(S2SDError):
    """An optional component (GPU, TensorRT, faiss-gpu, ...) is not available here."""

    exit_code = 3


class TrainingDiverged(S2SDError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""

    exit_code = 4


class Interrupted(S2SDError):
    """Ctrl-C: the message says what was kept and how to continue."""

    exit_code = 130
