"""Errors that carry a message meant for the user (no traceback needed)."""


class SegGradCAMError(Exception):
    """A problem with the user's input, model or environment.

    The message names the problem and what to do about it. Front ends show it as
    one line (the CLI exits with code 2); it is never a programming error.
    """


class CancelledError(SegGradCAMError):
    """The user cancelled a long computation."""
