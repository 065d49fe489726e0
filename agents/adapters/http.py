"""HTTP plumbing every adapter shares: sending, SSE reading, failures -> the error tree.

Keys travel in request headers only.  Error messages quote what the vendor said, with
any secret from those headers blanked out, because some vendors echo the key back.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import datetime
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar
from typing import Any, TypeVar

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

from schemas.errors import (
    ContentFiltered,
    RelayError,
    VendorAnswerUnreadable,
    VendorAuthFailed,
    VendorBadRequest,
    VendorNotFound,
    VendorOverloaded,
    VendorRateLimited,
    VendorRequestTooLarge,
    VendorUnavailable,
    VendorUnsupported,
)

_AUTH_HEADERS = ("authorization", "api-key", "x-api-key")
# The worker's client runs httpx over aiohttp (httpx-aiohttp), which maps most aiohttp
# failures onto httpx's; the rest (a malformed HTTP answer, say) are still transport
# failures of the vendor's.
_TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError)
_MAX_MESSAGE = 500  # characters of a vendor's error text worth carrying
MAX_LIMIT_RESET_S = 3600.0  # the longest wait a vendor's Retry-After or reset is taken at
CONNECT_TIMEOUT_S = 5.0  # a vendor host that does not accept a connection by then is down


# Whether the current call has gone out to the vendor yet: an error of shape before it did
# (a body the adapter could not translate) is the request's, after it the answer's.  Set
# as the call is sent, and back to False when it failed without going out (``_unsent``).
SENT: ContextVar[bool] = ContextVar("relay_vendor_request_sent", default=False)
# The transport failures that leave nothing sent: no connection was made (refused, a name
# that does not resolve, a TLS handshake that failed, a connect that timed out), or none
# came free in the pool.  httpx-aiohttp maps aiohttp's failures onto httpx's loosely (a
# connection dropped after the request went out comes as a ConnectTimeout), so aiohttp's
# own failure, when there is one, is the one that says.
_UNSENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)


class _NoCookies(CookieJar):
    """Keeps nothing: one client serves every tenant, and a cookie a vendor sets while
    answering one tenant's call must not ride along on another's."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


log = logging.getLogger("relay.worker")


def vendor_client(timeout_s: float) -> httpx.AsyncClient:
    """The worker's one client for every vendor: httpx's API on aiohttp's connection pool
    (httpx-aiohttp).  httpcore scans every pooled connection on each request, which at a
    few dozen concurrent vendor calls cost the worker ~4 ms of CPU per call; aiohttp's
    pool costs ~1 ms (bench/README.md).  Neither layer keeps cookies."""
    connections = 512  # to all vendors at once
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=256)

    tls = httpx.create_ssl_context()  # certifi's CAs, or SSL_CERT_FILE/SSL_CERT_DIR

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=connections, keepalive_timeout=limits.keepalive_expiry, ssl=tls
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    client = HttpxAiohttpClient(
        transport=AiohttpTransport(limits=limits, client=session),
        cookies=_NoCookies(),
        timeout=call_timeout(timeout_s),
    )
    # httpx hands every response to its cookie store, which builds urllib stand-ins for
    # the request and response before the jar can decline them (~3 % of the worker's CPU
    # per call): a store that keeps nothing need not look.
    client.cookies.extract_cookies = _keep_none  # type: ignore[method-assign]
    return client


def _keep_none(response: httpx.Response) -> None:
    return None


def call_timeout(seconds: float) -> httpx.Timeout:
    """A call's time limit, with the connection's own short limit inside it: a vendor
    host that is down fails within seconds and the next candidate is tried, instead of
    the whole deadline being spent waiting on a connect."""
    return httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT_S, seconds))


def _timed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with a plain-seconds ``timeout`` made a ``call_timeout``: given as a
    number, httpx would apply it to the connect too, replacing the client's limit."""
    if isinstance(kwargs.get("timeout"), int | float):
        kwargs["timeout"] = call_timeout(kwargs["timeout"])
    return kwargs


async def send(
    client: httpx.AsyncClient, method: str, url: str | httpx.URL, *, vendor: str, **kwargs: Any
) -> httpx.Response:
    """Send one request; any failure comes back as an error-tree exception."""
    SENT.set(True)
    try:
        resp = await client.request(method, url, **_timed(kwargs))
    except _TRANSPORT_ERRORS as exc:
        if _unsent(exc):
            SENT.set(False)
        raise transport_error(exc, vendor) from None
    if resp.status_code >= 400:
        raise status_error(resp, vendor)
    return resp


def jsonl_objects(text: str, vendor: str) -> list[dict[str, Any]]:
    """The objects of a JSONL results file.  Lines end at ``\n`` only: JSON allows
    U+2028, U+2029 and U+0085 raw inside strings (orjson and serde write them so), which
    ``str.splitlines`` would cut an answer at.  A line that still does not read is
    skipped (its request hears that the batch returned no result), never the file."""
    found = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            log.warning("%s: a batch results line that is not JSON was skipped", vendor)
            continue
        if isinstance(entry, dict):
            found.append(entry)
    return found


# What reading a result line of the wrong shape raises: a count that is not a number,
# an object that is a list or a string, a field that is missing.
_SHAPE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)
T = TypeVar("T")


def batch_result(
    vendor: str, read: Callable[[dict[str, Any]], T], entry: dict[str, Any]
) -> T | VendorAnswerUnreadable:
    """``read(entry)``, one batch result line read, or, when it is in a shape ``read``
    cannot take, that request's ``VendorAnswerUnreadable``: the vendor ran it and may
    have billed it, so it is never sent again, and the batch's other answers are read
    all the same.  Only the failure's type is logged: its text may quote the answer."""
    try:
        return read(entry)
    except _SHAPE_ERRORS as exc:
        what = type(exc).__name__
        log.warning("%s: a batch result line that could not be read (%s)", vendor, what)
        return VendorAnswerUnreadable(f"{vendor}: the batch's answer could not be read ({what})")


def json_body(resp: httpx.Response, vendor: str) -> Any:
    """The response's JSON; a vendor sending something else is a vendor failure."""
    try:
        return resp.json()
    except ValueError:
        raise VendorUnavailable(f"{vendor}: answer is not JSON") from None


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, method: str, url: str | httpx.URL, *, vendor: str, **kwargs: Any
) -> AsyncIterator[httpx.Response]:
    """A streamed response, its status already checked; transport failures while
    reading it (a dropped connection mid-answer) also surface as error-tree exceptions."""
    SENT.set(True)
    try:
        async with client.stream(method, url, **_timed(kwargs)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise status_error(resp, vendor)
            yield resp
    except _TRANSPORT_ERRORS as exc:
        if _unsent(exc):
            SENT.set(False)
        raise transport_error(exc, vendor) from None


def _unsent(exc: Exception) -> bool:
    """Whether a transport failure shows the request never went out (``_UNSENT``)."""
    cause = exc.__cause__
    return isinstance(cause if isinstance(cause, aiohttp.ClientError) else exc, _UNSENT)


def in_doubt(err: RelayError) -> bool:
    """Whether the call that just failed with ``err`` (read before another is sent) may
    have been carried out at the vendor all the same: it went out, and no clear answer
    came back (a timeout, a dropped connection, a 5xx, a 200 nobody can read).  A call
    that never went out, and one the vendor refused in so many words (a 4xx, a 429, a
    503 or 529 overloaded: busy, it turned the call away), did nothing."""
    if not SENT.get() or isinstance(err, VendorOverloaded):
        return False
    return isinstance(err, VendorUnavailable)


async def lines(resp: httpx.Response) -> AsyncIterator[str]:
    """The response's lines, ended by LF or CRLF only.  httpx's ``aiter_lines`` splits as
    ``str.splitlines`` does, at U+2028, U+2029 and U+0085 too, which JSON allows raw
    inside strings (Go's encoder writes U+0085 so, serde and pydantic all three): an
    answer quoting one would be cut into two lines that are not JSON."""
    pending: list[str] = []  # a line's pieces so far (a long line comes in many reads)
    async for text in resp.aiter_text():
        first, *ended = text.split("\n")
        pending.append(first)
        for piece in ended:
            yield "".join(pending).removesuffix("\r")
            pending = [piece]
    if tail := "".join(pending):
        yield tail.removesuffix("\r")


async def sse_events(resp: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event name, data); the name is "message" when unnamed."""
    event = ""
    data: list[str] = []
    async for line in lines(resp):
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
        elif line.startswith(":"):
            continue  # a comment, used as a keep-alive
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    if data:
        yield event or "message", "\n".join(data)


async def knobs_struck(
    attempt: Callable[[], Awaitable[T]],
    body: dict[str, Any],
    given: dict[str, Any],
    knobs: Mapping[str, str | None],
) -> T:
    """``attempt()``, sending ``body``, and again each time the vendor's 400 refuses a
    knob the request can go without (``knob_refused``), that knob struck from ``body``
    first: each goes once, so this ends.  Any other failure is raised."""
    while True:
        try:
            return await attempt()
        except VendorBadRequest as err:
            if not knob_refused(err, body, given, knobs):
                raise


def knob_refused(
    err: VendorBadRequest,
    body: dict[str, Any],
    given: dict[str, Any],
    knobs: Mapping[str, str | None],
) -> bool:
    """Whether the vendor refused a knob the request can go without; if so it is struck
    from ``body`` (the request as it goes out), to be sent again without it.

    ``knobs`` maps each such field of ``body`` to the field of ``given`` (the relay's
    body) that makes it the client's own, or None for a knob struck whoever set it.  A
    knob the relay added (an Anthropic client's ``thinking`` made ``reasoning_effort``,
    or Ollama's ``think``) goes when a model that does not reason refuses it; served
    without it, the model answers as it would have, not thinking.  The client's own
    refused stays its 400.  Such a 400 is not billed."""
    for knob, own in knobs.items():
        ours = own is None or given.get(own) is None
        if knob in body and ours and blames(err, knob):
            del body[knob]
            return True
    return False


# The codes that say a 400 is about a field OpenAI-format servers lack or a value they do
# not take (no code: a server that gives none, as Azure's older API versions'
# "Unrecognized request argument supplied").
_REFUSED_CODES = frozenset({"unsupported_parameter", "unsupported_value", "unknown_parameter"})
# What a server says, without naming the field, of a thinking knob it refuses: Ollama, on
# /api/chat (``think``) and on /v1 (``reasoning_effort``, which it reads as ``think``):
# '"llama3.2" does not support thinking', 'think value "high" is not supported for this
# model' (a level, which Ollama 0.11 and 0.12 take for gpt-oss alone), and its /v1's
# "invalid reasoning value: 'x'".
_THINKING_REFUSED = ("does not support thinking", "think value", "invalid reasoning value")
_SAID_OF = {"reasoning_effort": _THINKING_REFUSED, "think": _THINKING_REFUSED}
_PHRASES_ONLY = {"think"}  # knobs a message blames only by what _SAID_OF lists


def blames(err: VendorBadRequest, knob: str) -> bool:
    """Whether the vendor's 400 blames ``knob``: its ``param``, or its message naming it
    (or saying what ``_SAID_OF`` lists for it) with a code saying the field or value is
    not taken (or no code)."""
    if err.param is not None:
        return err.param == knob
    if err.vendor_code is not None and err.vendor_code not in _REFUSED_CODES:
        return False
    if knob in _PHRASES_ONLY:  # a common word: a model's name may hold it (qwen3:4b-thinking)
        return any(said in err.message for said in _SAID_OF[knob])
    return knob in err.message or any(said in err.message for said in _SAID_OF.get(knob, ()))


# What Ollama says, with a 400 and no code, of what one local model lacks, natively and on
# its /v1: "<model> does not support tools" (or thinking, or insert); "think value "high"
# is not supported for this model" (a level, which Ollama 0.11 and 0.12 take for gpt-oss
# alone); and on /v1 only, of an image it cannot read (a link, a GIF: /v1 takes base64
# PNG, JPEG and WebP alone) "image URLs are not currently supported..." or "invalid image
# input".
MODEL_LACKS = (
    "does not support",
    "is not supported for this model",
    "image URLs are not currently supported",
    "invalid image input",
)


@contextmanager
def model_limits() -> Iterator[None]:
    """A 400 without a code or a field that says what one local model lacks
    (``MODEL_LACKS``) as ``VendorUnsupported``: that candidate cannot serve the request,
    another may (and this one's health is untouched)."""
    try:
        yield
    except VendorBadRequest as err:
        coded = err.vendor_code is not None or err.param is not None
        if coded or not any(said in err.message for said in MODEL_LACKS):
            raise
        unsupported = VendorUnsupported(err.message)
        unsupported.refused = err.refused  # said inside a stream: still not billed
        raise unsupported from None


def refused(err: RelayError) -> RelayError:
    """``err``, marked as the vendor's own answer inside a stream it had opened."""
    err.refused = True
    return err


def transport_error(exc: Exception, vendor: str) -> RelayError:
    """A failure to reach or hear from the vendor: always worth trying elsewhere."""
    if isinstance(exc, httpx.TimeoutException):
        return VendorUnavailable(f"{vendor}: vendor timed out")
    if isinstance(exc, httpx.ConnectError):
        return VendorUnavailable(f"{vendor}: could not connect to the vendor")
    return VendorUnavailable(f"{vendor}: connection to the vendor failed ({type(exc).__name__})")


# What says the key (its account) has no credit left, whatever the status: OpenAI's 429
# insufficient_quota, Anthropic's 402 billing_error or its 400 about the credit balance.
# Not a rate limit to wait out nor the client's mistake: the key is benched, the pool's
# next key or the next vendor answers.
_OUT_OF_CREDIT_CODES = frozenset({"insufficient_quota", "billing_error"})
_OUT_OF_CREDIT_TEXT = "Your credit balance is too low"
# xAI refuses a wrong or revoked key with a 400, not a 401 ("Incorrect API key provided:
# xa***Ab. You can obtain an API key from https://console.x.ai."): the key's failure, not
# the client's, so it is benched and the pool's next key or the next vendor answers.
_BAD_KEY_TEXT = "Incorrect API key provided"


def status_error(resp: httpx.Response, vendor: str) -> RelayError:
    """The error-tree exception for a vendor's error status (the body must be read)."""
    said, code, param, code_is_type = _vendor_error(resp)
    return classified(
        vendor,
        resp.status_code,
        _redact(said, resp),
        _redact(code, resp) if code else None,
        _redact(param, resp) if param else None,
        resp.headers,
        code_is_type=code_is_type,
    )


def classified(
    vendor: str,
    status: int,
    said: str,
    code: str | None,
    param: str | None,
    headers: httpx.Headers | None = None,
    *,
    code_is_type: bool = False,
) -> RelayError:
    """The error-tree exception for what a vendor said with an error status: in a
    response, or in a batch result line (which carries the same error object).  ``code``
    is the vendor's error code, or Anthropic's error type (``code_is_type``), which no
    OpenAI-format client reads as a code."""
    message = f"{vendor}: HTTP {status}: {said[:_MAX_MESSAGE]}"
    anthropic_credit = (
        status == 400
        and code == "invalid_request_error"  # Anthropic's type: a client's 400 never quotes
        and said.startswith(_OUT_OF_CREDIT_TEXT)  # its own text first (an OpenAI 400 might)
    )
    bad_key = status == 400 and said.startswith(_BAD_KEY_TEXT)  # xAI's (OpenAI's is a 401)
    if code in _OUT_OF_CREDIT_CODES or status == 402 or anthropic_credit or bad_key:
        return VendorAuthFailed(message)
    wait = retry_after(headers) if headers is not None else None
    if wait is None and status == 429 and headers is not None:
        wait = limit_reset(headers)
    err = error_for_status(status, message, retry_after=wait)
    if isinstance(err, VendorBadRequest):
        # The vendor's own code where clients branch on it (an overflowing context, an
        # unsupported parameter), and the field it blamed.
        if code == ContentFiltered.code:
            err = ContentFiltered(message)
        elif code and not code_is_type and _CODE.fullmatch(code):
            err.vendor_code = code
        err.param = param[:200] if param else None
    return err


# A vendor's error code as clients may be told it: an identifier, never free text.
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# A key as vendors quote it masked: OpenAI's "sk-proj-****abcd", Anthropic's
# "sk-ant-api03-***...***wxyz", DeepSeek's "****d569", xAI's "xa***Ab".  The part they
# show is still part of the operator's key, which never reaches a client.  Vendors differ
# in prefix and in where the stars go, so any token holding a run of three or more stars
# is a candidate (its pieces may be joined by "..." or "…"; "key=" before it is not one
# of them); ``_struck`` spares one that starts and ends with a star, markdown's
# ``***both***`` or a lone ``***``.
_MASKED_KEY = re.compile(
    r"(?<![-\w+/*])(?:[-\w+/*]+(?:\.{3}|…)){0,2}"  # bounded: "a...a...a..." stays linear
    r"[-\w+/*]*\*{3}[-\w+/=*]*(?:(?:\.{3}|…)[-\w+/=*]+){0,2}"  # "=": base64's padding
)


def _struck(found: re.Match[str]) -> str:
    token = found.group()
    return token if token[0] == token[-1] == "*" else "[redacted]"


def redact(text: str, secret: str) -> str:
    """``text`` without ``secret`` in it (a short value would blank out ordinary words),
    nor any key quoted masked (a vendor refusing a key quotes it so, whichever it was)."""
    if len(secret) >= 8:
        text = text.replace(secret, "[redacted]")
    return _MASKED_KEY.sub(_struck, text)


def scrubbed(err: RelayError, secret: str) -> RelayError:
    """``err`` with the vendor key it was made with struck from its message, and any key
    quoted masked: a vendor may echo a key back in any error it sends (a 200 with an
    error body, a stream's error event, a batch line's), and the message goes on to
    clients, topics, logs and the batch store."""
    err.message = redact(err.message, secret)
    err.args = (err.message,)
    if err.param:
        err.param = redact(err.param, secret)
    return err


def error_for_status(status: int, message: str, *, retry_after: float | None = None) -> RelayError:
    """Map an HTTP status (also found inside batch results) onto the error tree."""
    if status == 429:
        return VendorRateLimited(message, retry_after=retry_after)
    if status in (401, 403):
        return VendorAuthFailed(message)
    if status == 404:
        return VendorNotFound(message)
    if status == 413:
        return VendorRequestTooLarge(message)
    # 529 is Anthropic's "overloaded"; 408 and 409 are the vendor's own timeouts and
    # conflicts.  All pass if tried again, unlike the client's own mistakes.
    if status in (503, 529):
        return VendorOverloaded(message, retry_after=retry_after)
    if status in (408, 409) or status >= 500:
        return VendorUnavailable(message, retry_after=retry_after)
    return VendorBadRequest(message)


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (more precise, OpenAI) or ``Retry-After``
    (seconds or an HTTP date), at most ``MAX_LIMIT_RESET_S``: a wait of years (a typo, a
    skewed clock) would take a key, and the model's health, out for good."""
    wait = _asked_wait(headers)
    return None if wait is None else min(wait, MAX_LIMIT_RESET_S)


def _asked_wait(headers: httpx.Headers) -> float | None:
    if (ms := _number(headers.get("retry-after-ms", ""))) is not None:
        return ms / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    if (seconds := _number(value)) is not None:
        return seconds
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, OverflowError):
        return None


_RESET = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def limit_reset(headers: httpx.Headers) -> float | None:
    """Seconds until an exhausted rate limit refills, for a 429 without Retry-After:
    OpenAI's and Azure's ``x-ratelimit-reset-{requests,tokens}`` (``6m0s``, ``20ms``,
    ``1.5``) and Anthropic's ``anthropic-ratelimit-*-reset`` (an RFC 3339 time), of the
    limits whose ``-remaining`` says 0; None when none says so."""
    resets: dict[str, float] = {}  # by limit: "tokens", "requests", "input-tokens"...
    exhausted: set[str] = set()
    for name, value in headers.items():
        name, value = name.lower(), value.strip()
        if name.startswith("x-ratelimit-remaining-"):
            if value == "0":
                exhausted.add(name.removeprefix("x-ratelimit-remaining-"))
        elif name.startswith("x-ratelimit-reset-"):
            if (seconds := _duration(value)) is not None:
                resets[name.removeprefix("x-ratelimit-reset-")] = seconds
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-remaining"):
            if value == "0":
                exhausted.add(name[len("anthropic-ratelimit-") : -len("-remaining")])
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            limit = name[len("anthropic-ratelimit-") : -len("-reset")]
            resets[limit] = max(when.timestamp() - time.time(), 0.0)
    waits = [seconds for limit, seconds in resets.items() if limit in exhausted]
    if not waits:
        # None says 0 (a token limit with too few left for this request, say): which one
        # refused is unknown, and the health table's own backoff does better than a guess.
        return None
    return min(max(waits), MAX_LIMIT_RESET_S)  # a skewed clock never benches a key for days


def _number(text: str) -> float | None:
    """``text`` as a finite number, not below 0; None when it is none (NaN and infinity
    included: either would bench a key for good)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return max(value, 0.0) if math.isfinite(value) else None


def _duration(value: str) -> float | None:
    """``6m0s``, ``1h2m``, ``20ms`` or plain seconds (``1.5``), in seconds."""
    value = value.strip()
    if (seconds := _number(value)) is not None:
        return seconds
    parts = _RESET.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _vendor_error(resp: httpx.Response) -> tuple[str, str | None, str | None, bool]:
    """What the vendor said, with its error code (Anthropic: its error type, and True
    last) and the parameter it blamed, if any.  OpenAI and Azure: {"error": {"message",
    "code", "param"}}; Anthropic: {"type": "error", "error": {"type", "message"}}; Ollama:
    {"error": "..."}."""
    try:
        body = json.loads(resp.content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    code = param = None
    code_is_type = False
    if isinstance(error, dict) and error.get("message"):
        text = str(error["message"])
        code = error["code"] if isinstance(error.get("code"), str) else None
        if code is None and body.get("type") == "error" and isinstance(error.get("type"), str):
            code, code_is_type = error["type"], True  # Anthropic's way of saying which error
        param = error["param"] if isinstance(error.get("param"), str) else None
    elif isinstance(error, str) and error:
        text = error
    else:
        text = resp.text.strip() or resp.reason_phrase
    return text, code, param, code_is_type


def _redact(text: str, resp: httpx.Response) -> str:
    try:
        headers = resp.request.headers
    except RuntimeError:  # a response built without a request (tests)
        return redact(text, "")
    for name in _AUTH_HEADERS:
        value = headers.get(name, "")
        bearer = name == "authorization" and " " in value
        text = redact(text, value.split(" ", 1)[1] if bearer else value)
    return text
