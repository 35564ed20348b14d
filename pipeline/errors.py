"""The one exception type users see: a one-line message, printed by the CLI without a traceback."""


class PipelineError(Exception):
    """A problem the user can fix (bad input, unreachable service, missing data)."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, as schedulers and Kubernetes stop jobs): handled
    as Ctrl-C is, with exit status 143."""
