"""The relay's one error tree; every failure a client can see is one of these.

    RelayError                       500 internal_error
    ├── BadRequest                   400 invalid_request_error
    │   ├── RequestTooLarge          413 (a body over RELAY_MAX_BODY_BYTES)
    │   └── RequestTimeout           408 (a body that stopped coming in, or trickled)
    ├── AuthenticationFailed         401 invalid_request_error (OpenAI's type for a bad key)
    ├── PermissionDenied             403 permission_error
    ├── ModelNotFound                404 invalid_request_error (OpenAI's type for it too)
    ├── NotFound                     404 invalid_request_error (a file or batch)
    ├── BudgetExceeded               402 budget_exceeded
    ├── RateLimited                  429 rate_limit_error     (retry_after)
    ├── DeadlineExceeded             504 timeout_error
    ├── NoHealthyVendor              503 overloaded_error
    ├── NoWorker                     503 api_error            (no worker takes requests)
    ├── StoreUnavailable             503 api_error            (the Batch API's Redis is down)
    ├── BatchCancelled               499 cancelled            (a batch line never sent)
    ├── ClientClosed                 499 cancelled            (every client of a stream left)
    └── VendorError                  502 api_error            (retryable)
        ├── VendorRateLimited        429 from the vendor      (retryable, retry_after)
        ├── VendorAuthFailed         401/403 from the vendor  (key is taken out, next key tried)
        ├── VendorBadRequest         400 from the vendor      (the client's fault: not retried)
        │   └── ContentFiltered      400 content_filter       (the vendor's content filter)
        ├── VendorNotFound           404 from the vendor      (no such model or deployment)
        ├── VendorUnavailable        5xx, connect and read failures
        │   ├── VendorOverloaded     503 overloaded_error     (a vendor's 503/529, "overloaded")
        │   └── VendorAnswerUnreadable 502 a batch answer run but unreadable (not retried)
        └── VendorUnsupported        400 this candidate cannot (next one tried; health kept)
            └── VendorRequestTooLarge 413 too large for this vendor (request_too_large)

Each class carries a stable ``code``, the HTTP ``status`` a client sees, the ``type`` of
OpenAI's error body (Anthropic's body takes its type from the status) and whether a
retry on another candidate may help.  The gateway maps them to the OpenAI or Anthropic
error body in one place (``gateway/errors.py``); errors cross Kafka as ``to_dict()``.

A vendor's 400 may also carry the OpenAI-format vendor's own code (``vendor_code``:
``context_length_exceeded``, ``unsupported_parameter``...), which clients branch on, as
may a 400 of the relay's that OpenAI itself gives a code (``unknown_parameter``): the
OpenAI error body says it in place of the class's, while metrics, the ledger and routing
keep reading the stable ``code``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RelayError(Exception):
    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    retryable: ClassVar[bool] = False
    # Retryable on another candidate, but the one that said it would say the same again
    # for this request (no such model, a request it cannot serve, keys it rejects).
    final_for_candidate: ClassVar[bool] = False

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        # The vendor's own error inside a stream it had opened: it did not take the call
        # (nothing to bill), unlike a stream cut by a timeout or a dropped connection.
        self.refused = False
        # The request's trace id, echoed in the error response's x-relay-trace-id header
        # (the client's way to its ledger line), when the gateway knows it.
        self.trace_id: str | None = None
        # A window-batched caller other than the first: the shared call's outcome is the
        # first caller's to report (one vendor call, one health outcome).
        self.rode = False
        # A window-batched caller whose own vendor key the shared call did not go with
        # (it went with the first caller's): a key's refusal or limit is not its key's.
        self.other_key = False
        # OpenAI's own code for the error, for OpenAI-format clients (see above).
        self.vendor_code: str | None = None
        # What the gateway's x-relay-cache header says of it (``miss``, ``coalesced``
        # for a caller that shared another's failed call), when the relay knows; never
        # sent across Kafka.
        self.cache: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "retry_after": self.retry_after,
            "vendor_code": self.vendor_code,
        }

    @property
    def openai_code(self) -> str:
        """The ``code`` an OpenAI-format client is told: the vendor's own, if it gave one."""
        return self.vendor_code or self.code

    def openai_body(self) -> dict[str, Any]:
        """The error in OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.openai_code,
            }
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RelayError:
        cls = _BY_CODE.get(str(data.get("code")), RelayError)
        err = cls(
            str(data.get("message", "")),
            param=data.get("param"),
            retry_after=data.get("retry_after"),
        )
        vendor_code = data.get("vendor_code")
        err.vendor_code = vendor_code if isinstance(vendor_code, str) and vendor_code else None
        return err


class BadRequest(RelayError):
    code = "invalid_request"
    status = 400
    type = "invalid_request_error"


class RequestTooLarge(BadRequest):
    code = "request_too_large"
    status = 413


class RequestTimeout(BadRequest):
    """The client stopped sending its body part-way (nothing came for the gateway's body
    timeout): a connection held open without end, not a request."""

    code = "request_timeout"
    status = 408


class AuthenticationFailed(RelayError):
    code = "invalid_api_key"
    status = 401
    type = "invalid_request_error"  # as OpenAI's 401 says it (Anthropic's body: by status)


class PermissionDenied(RelayError):
    code = "permission_denied"
    status = 403
    type = "permission_error"


class ModelNotFound(RelayError):
    code = "model_not_found"
    status = 404
    type = "invalid_request_error"  # as OpenAI's says it (Anthropic's body: by status)


class NotFound(RelayError):
    code = "not_found"
    status = 404
    type = "invalid_request_error"


class BudgetExceeded(RelayError):
    code = "budget_exceeded"
    status = 402
    type = "budget_exceeded"


class RateLimited(RelayError):
    code = "rate_limited"
    status = 429
    type = "rate_limit_error"


class DeadlineExceeded(RelayError):
    code = "deadline_exceeded"
    status = 504
    type = "timeout_error"


class NoHealthyVendor(RelayError):
    code = "no_healthy_vendor"
    status = 503
    type = "overloaded_error"
    retryable = True


class NoWorker(RelayError):
    """No worker has been consuming requests for a while: the gateway refuses at once
    rather than queueing a request nobody will take before its deadline."""

    code = "no_worker"
    status = 503
    type = "api_error"
    retryable = True


class StoreUnavailable(RelayError):
    code = "store_unavailable"
    status = 503
    type = "api_error"


class BatchCancelled(RelayError):
    """A batch line its batch's cancel stopped before it ran."""

    code = "batch_cancelled"
    status = 499
    type = "cancelled"


class ClientClosed(RelayError):
    """A stream's client went away before its end (a closed stream, a dropped
    connection) and its gateway said so: nobody hears this error, it names the request's
    ledger line.  When no other waiter was left on the call, the vendor call was stopped
    and the line is billed what streamed until then."""

    code = "client_closed"
    status = 499
    type = "cancelled"


class VendorError(RelayError):
    code = "vendor_error"
    status = 502
    type = "api_error"
    retryable = True


class VendorRateLimited(VendorError):
    code = "vendor_rate_limited"
    status = 429
    type = "rate_limit_error"


class VendorAuthFailed(VendorError):
    code = "vendor_auth_failed"
    final_for_candidate = True


class VendorBadRequest(VendorError):
    code = "vendor_bad_request"
    status = 400
    type = "invalid_request_error"
    retryable = False


class ContentFiltered(VendorBadRequest):
    """The vendor's content filter refused the prompt (Azure OpenAI's ``content_filter``
    400): clients branch on this code, so it is kept rather than folded into a 400."""

    code = "content_filter"


class VendorNotFound(VendorError):
    """The vendor has no such model or deployment (not pulled, retired, misnamed in the
    config): that candidate is broken, not the client's request, so the next one is tried."""

    code = "vendor_not_found"
    final_for_candidate = True


class VendorUnavailable(VendorError):
    code = "vendor_unavailable"


class VendorOverloaded(VendorUnavailable):
    """The vendor said it is overloaded (a 503, Anthropic's 529 or its stream's
    ``overloaded_error`` event): retried elsewhere like any outage, and when it is the
    last word a client hears it as such (Anthropic's SDK raises its OverloadedError)."""

    code = "vendor_overloaded"
    status = 503
    type = "overloaded_error"


class VendorAnswerUnreadable(VendorUnavailable):
    """A vendor batch ran the request (and may have billed it), but its answer could not
    be read (a result line in a shape no adapter reads, or none at all): never sent again
    the realtime way, where it would be paid twice."""

    code = "vendor_answer_unreadable"
    retryable = False


class VendorUnsupported(VendorError):
    """This candidate cannot serve this request (a local model without tools or thinking,
    a vendor that cannot fetch image URLs), though another may: the next one is tried, and
    the candidate's health is untouched.  Last of all, the client hears why (400)."""

    code = "vendor_unsupported"
    final_for_candidate = True
    status = 400
    type = "invalid_request_error"


class VendorRequestTooLarge(VendorUnsupported):
    """The vendor's 413 (Anthropic's ``request_too_large``): too large for this vendor,
    though another candidate's limit may take it, so the next one is tried; last of all
    the client hears a 413 (Anthropic's SDK raises its RequestTooLargeError)."""

    code = "vendor_request_too_large"
    status = 413


def answer_lost(exc: BaseException) -> RelayError:
    """What a waiter hears when its answer, paid for, could not be passed back to it (a
    broker refusing it: over a topic's size limit, say)."""
    return RelayError(f"the answer could not be passed back ({type(exc).__name__})")


def _all(cls: type[RelayError]) -> list[type[RelayError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _all(sub))]


def error_classes() -> list[type[RelayError]]:
    """Every error the relay answers with."""
    return _all(RelayError)


_BY_CODE: dict[str, type[RelayError]] = {c.code: c for c in error_classes()}
