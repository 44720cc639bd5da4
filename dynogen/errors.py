"""Every error dynogen raises, rooted in one class.

The tree is split by what the caller should do about it::

    DynogenError                      root; ``str(err)`` is one actionable line
    ├── UserError                     the user can fix it; fail fast, before money is spent
    │   ├── ConfigError               bad flag, config file, or missing API key
    │   ├── UnknownPriceError         no price for the model in any table (or one several
    │   │                             providers' keys end in: the message lists them)
    │   ├── SourceError               a metadata source that cannot be read at all
    │   ├── RunDirError               an output directory we cannot use or must not resume
    │   │   └── LockedError           another process is writing to it (one writer per directory)
    │   ├── StorageError              a write failed (disk full, quota, I/O error, read-only fs)
    │   ├── LocalServerError          the bundled llama.cpp server would not start
    │   └── PublishError              the Hub refused or could not be reached while publishing
    │       └── RestrictedLicenseError a public push of sources whose licences may not allow it
    ├── MetadataError                 one dataset's metadata cannot be read (a counted skip)
    │   ├── CardError                 a card whose YAML header is unreadable (io.cards)
    │   └── FeaturesError             a features block that is not a datasets schema

    ├── APIError                      the LLM server answered, or failed to answer
    │   ├── RetryableError            retrying (after a pause) can help
    │   │   ├── RateLimitError        429 (kind: "requests" | "tokens" | "unknown")
    │   │   ├── ServerError           5xx
    │   │   ├── APITimeoutError       no answer in time
    │   │   ├── APIConnectionError    refused, reset, DNS
    │   │   ├── ResponseTooLargeError an answer larger than max_response_bytes (cut off unread)
    │   │   └── InvalidResponseError  a 200 whose body is not JSON or not a completion
    │   ├── RequestFailed             retries (or batch rounds) ran out; counted by reason
    │   └── FatalAPIError             retrying cannot help; stop the run
    │       ├── AuthenticationError   401/403
    │       ├── InsufficientQuotaError 429 insufficient_quota: the account is out of money
    │       └── BadRequestError       400/404/422 on a request we built (a bug or a server mismatch)
    ├── BudgetExceeded                the next request would cross --budget-usd
    └── Stopped                       the run is stopping; the request was not sent

Only ``RetryableError`` is ever retried; programming errors are never caught
and retried as if they were network faults.
"""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceeded",
    "ConfigError",
    "DynogenError",
    "FatalAPIError",
    "InsufficientQuotaError",
    "InvalidResponseError",
    "LocalServerError",
    "LockedError",
    "MetadataError",
    "PublishError",
    "RateLimitError",
    "RequestFailed",
    "ResponseTooLargeError",
    "RestrictedLicenseError",
    "RetryableError",
    "RunDirError",
    "ServerError",
    "SourceError",
    "Stopped",
    "StorageError",
    "UnknownPriceError",
    "UserError",
]


class DynogenError(Exception):
    """Root of every error dynogen raises on purpose."""


class UserError(DynogenError):
    """Something the user can fix; reported as one line, never a traceback."""


class ConfigError(UserError):
    pass


class UnknownPriceError(UserError):
    pass


class SourceError(UserError):
    pass


class RunDirError(UserError):
    pass


class LocalServerError(UserError):
    pass


class PublishError(UserError):
    """``dynogen publish``: the Hub refused (token, permission, a changed repository) or
    could not be reached. What was uploaded stays there: the same command resumes."""


class RestrictedLicenseError(PublishError):
    """A public push of data from sources that are non-commercial, no-derivatives, ``other``
    or of unknown licence, without ``allow_restricted_licenses``; nothing was uploaded."""


class MetadataError(DynogenError, ValueError):
    """One dataset's metadata is unusable: the source counts it as a skip and goes on."""


class LockedError(RunDirError):
    """Another live process holds the directory's (or file's) write lock."""


class StorageError(UserError):
    """A write the run depends on failed; the run stops as if interrupted and resumes later.

    Raised by ``dynogen.store`` only, with the directory and the errno, so
    one line can say what to free or fix. Exit code: that of an interrupted run.
    """

    def __init__(self, message: str, *, path: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class APIError(DynogenError):
    """An answer (or its absence) from the LLM server.

    ``body`` is a short excerpt of the answer, never the request (requests carry
    credentials in headers). Some servers echo a refused key in the answer, so
    the dispatcher masks the key out of the body before this error is built.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        self.body = body

    @property
    def reason(self) -> str:
        """A short, stable label used to count failures in the report."""
        return type(self).__name__


class RetryableError(APIError):
    """Retrying after a pause can help."""

    retry_after: float | None = None


class RateLimitError(RetryableError):
    def __init__(
        self,
        message: str,
        *,
        kind: str = "unknown",
        retry_after: float | None = None,
        status: int | None = 429,
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id, body=body)
        self.kind = kind
        self.retry_after = retry_after


class ServerError(RetryableError):
    pass


class APITimeoutError(RetryableError):
    pass


class ResponseTooLargeError(ServerError):
    """A body over the cap: cut off while streaming in, never kept; retried like a 5xx."""


class APIConnectionError(RetryableError):
    pass


class InvalidResponseError(RetryableError):
    """A 2xx answer that is not a usable completion (proxies and overloaded servers do this)."""

    def __init__(self, message: str, *, kind: str, usage: dict[str, object] | None = None,
                 status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.kind = kind
        self.usage = usage

    @property
    def reason(self) -> str:
        return self.kind


class RequestFailed(APIError):
    """A request given up on: retries ran out (online) or batch rounds did (batch).

    ``reason`` is the last error's report label; the unit it belongs to is
    recorded as failed, so a resume tries it again.
    """

    def __init__(self, reason: str, last: BaseException | None = None) -> None:
        super().__init__(f"{reason}: {last}" if last is not None else reason)
        self._reason = reason
        self.last = last

    @property
    def reason(self) -> str:
        return self._reason


class FatalAPIError(APIError):
    """Retrying cannot help: the run stops and says why."""


class AuthenticationError(FatalAPIError):
    pass


class InsufficientQuotaError(FatalAPIError):
    pass


class BadRequestError(FatalAPIError):
    pass


class BudgetExceeded(DynogenError):
    """The next request cannot fit in what is left of --budget-usd."""

    def __init__(self, spent: float, budget: float, needed: float) -> None:
        super().__init__(
            f"budget reached: spent ${spent:.4f} of ${budget:.4f}; the next request "
            f"could cost up to ${needed:.4f}. Resume with a larger --budget-usd to continue."
        )
        self.spent = spent
        self.budget = budget
        self.needed = needed


class Stopped(DynogenError):
    """The run is stopping (signal, budget, fatal error); this request was not sent."""
