"""The one exception type users see: a one-line message, printed by the CLI without a traceback."""


class PipelineError(Exception):
    """A problem the user can fix (bad input, unreachable service, missing data)."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, as schedulers and Kubernetes stop jobs): handled
    as Ctrl-C is, with exit status 143."""


EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C, SIGINT (128 + 2)
