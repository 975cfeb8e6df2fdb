"""One JSON error shape for every error the API answers, with nothing private in it.

Every error body is ``{"detail": ..., "message": "<one line naming the problem>"}``:
``detail`` is FastAPI's (a string, or the list of validation errors without the inputs
that caused them), ``message`` is one readable line. Messages leave out filesystem paths
(:func:`without_paths`): an absolute path of three components or more becomes its last
two.
"""

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"`,;:()\[\]{}<>]+){3,}")
"""An absolute POSIX path of three components or more (not part of a URL)."""
VALIDATION_KEYS = ("type", "loc", "msg")
"""The parts of a pydantic error a response repeats: never its ``input``, which may be
anything the client sent (bytes, NaN, a whole body)."""


def without_paths(text: str) -> str:
    """``text`` with each absolute path of three components or more cut to its last two
    (``…/a/b``)."""
    return _ABSOLUTE_PATH.sub(lambda found: "…/" + "/".join(found[0].split("/")[-2:]), text)


def error_response(
    status_code: int, message: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error shape: ``detail`` defaults to the message."""
    message = without_paths(message)
    content = {"detail": message if detail is None else detail, "message": message}
    return JSONResponse(status_code=status_code, content=content, headers=headers)


async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """HTTPException (raised by routes, or Starlette's 404 and 405) in the one shape."""
    detail = error.detail
    if isinstance(detail, str):
        return error_response(error.status_code, detail, headers=error.headers)
    return error_response(
        error.status_code, HTTPStatus(error.status_code).phrase, detail, error.headers
    )


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with each bad field named: ``loc: msg`` joined by ``; `` in ``message``."""
    errors = [{key: e[key] for key in VALIDATION_KEYS if key in e} for e in error.errors()]
    for entry in errors:
        entry["loc"] = [part if isinstance(part, int) else str(part) for part in entry["loc"]]
    message = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in errors
    )
    return error_response(422, message, errors)


async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
    """A bug, not the client's fault: 500 in the one shape, naming the request id (the
    server logs the traceback under it)."""
    request_id = request.scope.get("state", {}).get("request_id", "-")
    return error_response(500, f"internal error (request id {request_id})")
