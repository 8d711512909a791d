"""Every error the harvester raises, as one tree, each class carrying its process exit code.

Exit codes: 0 every shard complete; 1 incomplete (a shard failed or could not be proven
complete, or the run was stopped: a re-run resumes); 2 bad usage or input; 3 authentication
or permission refused; 4 any other fatal error (host unreachable, disk, lake locked).

::

    HarvestError                      one-line message for the operator
    ├── UsageError            (2)     a flag, a config value, a customer id: fix the command
    ├── AuthError             (3)     401 / 403
    ├── Unreachable           (4)     DNS, refused, TLS: no request got an answer
    ├── LakeError             (4)     the output cannot be used (locked, unwritable, disk full)
    │   └── LockHeld                  a live run holds the lake's (or a day's) lock
    ├── ListingError          (4)     the customer listing cannot be trusted (shape, bounds)
    ├── DecodeError                   a body that is not a page (not JSON, cut short): the
    │                                 request is retried; never seen outside the client
    └── ShardError            (1)     fails one shard; the run goes on with the others
        ├── RetriesExhausted          still failing after every retry
        ├── ApiError                  a non-retryable answer (400, 404, 410, 422, a redirect …)
        │   └── NotFound              404
        ├── BadResponse               an answer that is not a page we can trust (too large,
        │                             contradicts itself or page 1, a value that cannot be stored)
        └── StorageError              a storage operation still failed after its retries

Whether an error fails a shard or the run is decided by its class alone, never by flags.
"""

from __future__ import annotations

import re

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


class LakeError(HarvestError):
    """The output cannot be used (locked, another scope, not writable, disk full)."""


class LockHeld(LakeError):
    """A live run holds the lake's lock (or a day's): the one error worth waiting out."""


class ListingError(HarvestError):
    """The partner's customer listing is malformed, unbounded or never consistent."""


class DecodeError(HarvestError):
    """The body is not a CDR page (not JSON, truncated, wrong shape): worth a retry."""


class ShardError(HarvestError):
    """Fails one shard (reported; exit 1), never the run."""

    exit_code = EXIT_INCOMPLETE


class RetriesExhausted(ShardError):
    """A request still failed after every retry."""


class ApiError(ShardError):
    """A non-retryable HTTP answer (400, 404, 410, 422, a redirect …)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.detail = message


class NotFound(ApiError):
    """404."""


class BadResponse(ShardError):
    """An answer the harvester will not trust or store: larger than the body cap, pages that
    contradict each other, a value no column can hold. Retrying does not change it."""


class StorageError(ShardError):
    """A storage operation still failed after its retries."""


# -- text from outside, made safe to print ---------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def clean(text: object, limit: int = 200) -> str:
    """Text a server or a user sent, fit for one log line or terminal line: control
    characters (escape codes, CR/LF that would forge a log line, bidi overrides) become one
    space, runs of blanks are collapsed, and it is cut to ``limit`` characters."""
    s = _CONTROL.sub(" ", str(text))
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def shown(value: object, limit: int = 60) -> str:
    """A user- or server-given value quoted for an error message (``'…'``), made safe by
    :func:`clean`, so the message names the value without carrying anything hostile."""
    return repr(clean(value, limit))
