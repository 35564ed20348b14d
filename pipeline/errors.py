"""The one exception type users see: a one-line message, printed by the CLI without a traceback."""


class PipelineError(Exception):
    """A problem the user can fix (bad input, unreachable service, missing data)."""


class StoreUnreachable(PipelineError):
    """A tracking store that does not answer now (a server down or restarting, its database
    away): a later try may work."""


class StoreAway(PipelineError):
    """The tracking store stayed unreachable past `tracking.outage_timeout`: what needed it was
    not done, and the writes it did not get are kept in the spool, for `python -m pipeline sync`
    or `tune --resume`."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, as schedulers and Kubernetes stop jobs): handled
    as Ctrl-C is, with exit status 143."""


EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C, SIGINT (128 + 2)
EXIT_STORE_AWAY = 69  # the tracking store stayed away; its writes are kept (EX_UNAVAILABLE)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an error's message, at most `limit` characters: what a
    one-line error quotes of a library's (often long) message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
