"""The one error type shown to users as a single line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or setup; the message says what and how to fix it."""
