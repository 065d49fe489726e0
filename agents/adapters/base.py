"""What a vendor adapter is: small protocols per capability, over the neutral shape.

The neutral request is the OpenAI wire format (chat completions / embeddings body); the
neutral answer is an OpenAI ``chat.completion`` (or embeddings list) body plus ``Usage``.
Each adapter converts to and from its vendor's wire format and raises only errors from
``schemas.errors`` — so routing and fallback never see a vendor's own shapes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from schemas.errors import BadRequest, RelayError
from schemas.usage import Usage


@dataclass(frozen=True)
class VendorCall:
    """One call to one vendor model; ``body`` is OpenAI-format, its ``model`` is ignored."""

    model: str
    body: dict[str, Any]
    api_key: str = field(repr=False)
    timeout_s: float = 120.0


@dataclass(frozen=True)
class VendorResult:
    body: dict[str, Any]
    usage: Usage
    shared: bool = False  # one vendor call served several requests (window batching)
    # Not the first of those requests: the call's outcome is the first's to report.
    rode: bool = False


StreamItem = dict[str, Any] | Usage
"""A streamed OpenAI ``chat.completion.chunk`` dict; the stream ends with one ``Usage``."""


@runtime_checkable
class ChatVendor(Protocol):
    async def chat(self, call: VendorCall) -> VendorResult: ...

    def stream(self, call: VendorCall) -> AsyncIterator[StreamItem]: ...


@runtime_checkable
class EmbeddingVendor(Protocol):
    async def embed(self, call: VendorCall) -> VendorResult: ...


@runtime_checkable
class CompletionVendor(Protocol):
    """Legacy ``/completions``: a list of prompts in one call (what window batching uses)."""

    async def complete(self, call: VendorCall) -> VendorResult: ...


@runtime_checkable
class TokenCounter(Protocol):
    """A vendor that counts a request's input tokens without running it (Anthropic)."""

    async def count_tokens(self, call: VendorCall) -> int: ...


@runtime_checkable
class BatchVendor(Protocol):
    """A vendor batch API: submit many calls at once, collect later at a discount.

    ``submit_batch`` returns the new batch's id.  What it raises says whether the batch
    may exist: any error but ``VendorAnswerUnreadable`` means it was not made (its calls
    may go on the realtime way); ``VendorAnswerUnreadable`` means it may have been (the
    create call went out and failed without a clear answer, and no look-up settled it),
    and may run and bill, so its calls are never sent again.  ``CallsRefused``, raised
    before anything goes out, names the calls this vendor cannot take (each with its own
    refusal): the others may be submitted again without them."""

    async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str: ...

    async def poll_batch(
        self, batch_id: str, api_key: str
    ) -> dict[str, VendorResult | Exception] | None: ...

    async def cancel_batch(self, batch_id: str, api_key: str) -> None: ...


class CallsRefused(Exception):
    """Some calls of a batch cannot go to this vendor (a stop sequence it does not take,
    a body it cannot translate): each one's refusal, by its id in the batch.  Nothing was
    sent; one request the vendor cannot take must not keep the others from its batch."""

    def __init__(self, refused: dict[str, RelayError]) -> None:
        super().__init__(f"{len(refused)} calls cannot go in the vendor batch")
        self.refused = refused


Line = TypeVar("Line")
# What translating a body of the wrong shape raises (a number where a list belongs).
SHAPE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError)


def batch_lines(
    calls: list[tuple[str, VendorCall]], line: Callable[[str, VendorCall], Line]
) -> list[Line]:
    """Each call as its batch line (``line``), or ``CallsRefused`` naming every call
    that cannot be one, so that the rest go out in one batch on the next try."""
    lines: list[Line] = []
    refused: dict[str, RelayError] = {}
    for cid, call in calls:
        try:
            lines.append(line(cid, call))
        except RelayError as err:
            refused[cid] = err
        except SHAPE_ERRORS as exc:
            refused[cid] = BadRequest(
                f"the request could not be put to the vendor ({type(exc).__name__}); "
                "check its fields' types"
            )
    if refused:
        raise CallsRefused(refused)
    return lines


@runtime_checkable
class BatchCleaner(Protocol):
    """A vendor batch API that keeps what a batch leaves behind (OpenAI's input, output
    and error files, which count against the account's file storage; Anthropic's
    results) until they are deleted."""

    async def clean_batch(self, batch_id: str, api_key: str) -> None: ...
