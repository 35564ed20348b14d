"""The one exception type users see: a one-line message, printed by the CLI without a traceback."""


class PipelineError(Exception):
    """A problem the user can fix (bad input, unreachable service, missing data)."""
