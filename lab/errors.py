"""Errors the CLI turns into a message and exit code 2."""


class UsageError(ValueError):
    """Bad command-line or environment input; the message says which and why."""


def one_line(exc: object) -> str:
    """A message on one line (the CLI prints exactly one line per error)."""
    return " ".join(str(exc).split())
