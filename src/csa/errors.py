"""The one exception type for mistakes a user can fix.

The CLI prints its message without a traceback and exits 2; the server maps it to a
4xx JSON body ``{"error": ..., "detail": ...}`` with ``http_status``.
"""
from __future__ import annotations


class CsaError(Exception):
    """A user error: the message says what was wrong and what to do about it."""

    def __init__(self, message: str, *, http_status: int = 400, kind: str = "bad_input") -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.kind = kind


# Exit codes shared by every command (ARCHITECTURE.md).
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130
