"""Error types, each carrying the process exit code it maps to.

Exit codes: 0 every shard complete; 1 incomplete (a shard failed or could not be proven
complete, or the run was stopped: a re-run resumes); 2 bad usage or input; 3 authentication
or permission refused; 4 any other fatal error (host unreachable, disk, lake locked).
"""

from __future__ import annotations

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_AUTH, EXIT_FATAL = 0, 1, 2, 3, 4


class HarvestError(Exception):
    """Base class: a one-line message meant for the operator."""

    exit_code = EXIT_FATAL


class UsageError(HarvestError):
    """Bad flags or input values."""

    exit_code = EXIT_USAGE


class AuthError(HarvestError):
    """401 or 403 from the API."""

    exit_code = EXIT_AUTH


class Unreachable(HarvestError):
    """The host cannot be reached (DNS, refused, TLS) after bounded retries."""


class ApiError(HarvestError):
    """A non-retryable HTTP answer (400, 404, 422 …)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.detail = message


class NotFound(ApiError):
    """404."""


class RetriesExhausted(HarvestError):
    """A request still failed after every retry; fails one shard, not the run."""

    exit_code = EXIT_INCOMPLETE


class LakeError(HarvestError):
    """The output cannot be used (locked, another scope, not writable, disk full)."""
