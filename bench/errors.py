"""The one exception type for a user's mistake.

Anything a user can get wrong (a suite field, a plugin name, a data folder, an output folder)
raises :class:`UserError` with a one-line message. The CLI prints it on stderr and exits with
status 2, without a traceback and before any result file is written.
"""


class UserError(Exception):
    """A mistake in the user's input, reported as one line (no traceback)."""

    exit_code = 2
