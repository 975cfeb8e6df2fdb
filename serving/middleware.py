"""The ASGI middleware in front of every route: request ids, input limits, security
headers and per-route latency metrics.

Input the app cannot take is answered here, in the one error shape
(:mod:`serving.errors`), before any route parses it:

- headers over ``max_header_bytes`` in total or ``max_headers`` in count: 431;
- a body over ``max_body_bytes`` (by ``Content-Length``, or counted while it streams): 413;
- a JSON body (``application/json``, ``+json`` or no content type: what FastAPI parses)
  that is not UTF-8, not JSON, holds NaN/Infinity or a number out of float range, or
  nests deeper than ``MAX_JSON_DEPTH``: 400 naming the problem.
"""

import email.message
import json
import math
import time
import uuid
from typing import Any

from starlette import status

from serving.errors import error_response
from serving.metrics import ServingMetrics

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a request body may have (the API's own bodies
nest two deep)."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
]
"""Sent with every response: no MIME sniffing, no referrer, never framed."""


class BadBody(ValueError):
    """A request body FastAPI must not parse; the message names the problem."""


def _reject_constant(name: str) -> float:
    raise BadBody(f"body: {name} is not valid JSON (JSON numbers are finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadBody(f"body: number {text[:40]} is out of range")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), iteratively, stopping past the limit."""
    deepest, stack = 0, [(value, 0)]
    while stack and deepest <= MAX_JSON_DEPTH:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def check_json_body(body: bytes) -> None:
    """Raise BadBody naming why ``body`` is not a JSON document the API accepts."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadBody(f"body: not valid UTF-8 (byte {error.start})") from error
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as error:
        raise BadBody(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels") from error
    except json.JSONDecodeError as error:
        raise BadBody(f"body: not valid JSON: {error}") from error
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadBody(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels")


def is_json(headers: dict[bytes, bytes]) -> bool:
    """True when FastAPI would parse the body as JSON (no content type, or a JSON one)."""
    value = headers.get(b"content-type")
    if not value:
        return True
    message = email.message.Message()
    message["content-type"] = value.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class ServingMiddleware:
    """Pure ASGI: a request id header, security headers, input limits (see the module
    docstring) and per-route latency metrics.

    A body is read whole (up to the limit) before the app sees it, so an oversized or
    malformed one is answered here instead of being parsed; the app then reads the same
    bytes from a replayed ``receive``."""

    def __init__(
        self,
        app: Any,
        metrics: ServingMetrics,
        max_body_bytes: int,
        max_header_bytes: int,
        max_headers: int,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status_code = 500

        async def send_with_headers(message: dict) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                headers = message.setdefault("headers", [])
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(SECURITY_HEADERS)
            await send(message)

        try:
            refusal = self._header_problem(scope)
            body_receive = None
            if refusal is None:
                body_receive, refusal = await self._checked_body(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send_with_headers)
            else:
                await self.app(scope, body_receive, send_with_headers)
        finally:
            label = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.request_seconds.labels(route=label).observe(elapsed)
            self.metrics.requests.labels(route=label, status=str(status_code)).inc()

    def _header_problem(self, scope: dict) -> Any:
        """A 431 response when the headers are over a limit, else None."""
        headers = scope.get("headers", [])
        if len(headers) > self.max_headers:
            message = f"headers: {len(headers)} headers, more than the limit of {self.max_headers}"
        else:
            size = sum(len(name) + len(value) for name, value in headers)
            if size <= self.max_header_bytes:
                return None
            message = f"headers: {size} bytes, more than the limit of {self.max_header_bytes}"
        return error_response(status.HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE, message)

    async def _checked_body(self, scope: dict, receive: Any) -> tuple[Any, Any]:
        """``(receive for the app, None)``, or ``(None, response)`` refusing the body."""
        if scope.get("method") not in BODY_METHODS:
            return receive, None
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return None, self._too_large()
        messages, chunks, size = [], [], 0
        while True:
            message = await receive()
            messages.append(message)
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, self._too_large()
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = b"".join(chunks)
        if body and is_json(headers):
            try:
                check_json_body(body)
            except BadBody as error:
                return None, error_response(status.HTTP_400_BAD_REQUEST, str(error))

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        return replay, None

    def _too_large(self) -> Any:
        limit = self.max_body_bytes
        return error_response(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"body: larger than the limit of {limit} bytes",
            detail=f"request body exceeds {limit} bytes",
        )
