"""The one exception the API turns into an error response."""

from __future__ import annotations


class ApiError(Exception):
    """An error the API reports as `{code, data: null, message}` with an HTTP status."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
