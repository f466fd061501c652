"""Errors the CLI turns into a message and exit code 2."""


class UsageError(ValueError):
    """Bad command-line or environment input; the message says which and why."""
