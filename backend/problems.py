"""``application/problem+json`` rendering and its OpenAPI documentation.

Each exception family has one handler; the catch-all logs the traceback server-side and
answers a generic ``internal_error``: a client never sees driver text or a stack trace.
``responses(...)`` documents a handler's errors so phone developers see every one of them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from sqlalchemy import exc as sa_exc

from backend import errors

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("concierge.errors")


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details with a stable machine-readable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] = msgspec.field(default_factory=list)
    next_window_starts_at: str | None = None
    free_sizes: list[str] | None = None
    retry_after: int | None = None


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[Any]:
    body: dict[str, Any] = {
        "type": f"https://concierge.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update(dict(extra.items()))
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _concierge_error(_: Request[Any, Any, Any], exc: errors.ConciergeError) -> Response[Any]:
    headers = None
    if "retry_after" in exc.extra:
        headers = {"Retry-After": str(exc.extra["retry_after"])}
    return problem(exc.status, exc.code, exc.title, exc.detail, headers=headers, **exc.extra)


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_AT_PATH = re.compile(r"at `\$\.([^`]+)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def _field_of(item: dict[str, Any]) -> str:
    """The offending field: msgspec names it in the message (``at `$.size` ``, ``unknown field``)."""
    message = str(item.get("message", ""))
    for pattern in (_UNKNOWN_FIELD, _MISSING, _AT_PATH):
        match = pattern.search(message)
        if match:
            return match.group(1)
    key = item.get("key")
    return str(key) if key and key != "data" else "body"


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    field_errors = [
        {"field": _field_of(item), "message": str(item.get("message", "invalid"))}
        for item in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(item, dict)
    ]
    detail = (
        "; ".join(f"{e['field']}: {e['message']}" for e in field_errors)
        or "The request is not valid"
    )
    return problem(400, "validation_error", "The request is not valid", detail, errors=field_errors)


_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("not_authenticated", "Authentication required"),
    403: ("forbidden", "This role may not do that"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("body_too_large", "The request body is too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("too_many_requests", "Too many requests"),
}


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    code, title = _STATUS_CODES.get(status, ("http_error", "Request failed"))
    if status >= 500:
        log.error("http error %s", status)
        return problem(status, "internal_error", "Internal error", "The server could not do that")
    detail = title if status in (401, 403, 404, 405) else str(exc.detail or title)
    if status == 400 and (detail.startswith("JSON is malformed") or "truncated" in detail):
        return problem(400, "malformed_body", "The body is not valid JSON", detail)
    # Keep the router's headers (405 must say which methods are allowed: RFC 9110 `Allow`).
    allow = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
    return problem(status, code, title, detail, headers=allow or None)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal_error", "Internal error", "The server could not do that")


def _dependency_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The database (or another backing service) is unreachable: 503, the client retries."""
    log.warning(
        "backing service unavailable on %s %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
    )
    return problem(
        503,
        "service_unavailable",
        "Temporarily unavailable",
        "A backing service is unreachable; retry shortly",
        headers={"Retry-After": "2"},
    )


def _database_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Lost or refused connections are outages (503); any other driver error is a bug (500)."""
    lost = isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    )
    return _dependency_unavailable(request, exc) if lost else _internal_error(request, exc)


exception_handlers: dict[type[Exception] | int, Any] = {
    # Connection loss (an outage, a failover) is temporary: 503 with Retry-After, not a 500.
    sa_exc.DBAPIError: _database_error,
    sa_exc.TimeoutError: _dependency_unavailable,
    ConnectionError: _dependency_unavailable,
    errors.ConciergeError: _concierge_error,
    ValidationException: _validation_error,
    NotAuthorizedException: _http_error,
    PermissionDeniedException: _http_error,
    NotFoundException: _http_error,
    MethodNotAllowedException: _http_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}


def responses(*extra: type[errors.ConciergeError], auth: bool = True) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses`` for a handler: validation, auth, internal, outage, plus its domain
    errors."""
    by_status: dict[int, list[str]] = {
        400: ["validation_error"],
        500: ["internal_error"],
        # Every operation reaches the database: an outage answers this, with Retry-After.
        503: ["service_unavailable"],
    }
    if auth:
        by_status[401] = ["not_authenticated", "invalid_token", "token_expired"]
        by_status[403] = ["forbidden"]
    by_status.setdefault(413, ["body_too_large"])
    for err in extra:
        by_status.setdefault(err.status, [])
        if err.code not in by_status[err.status]:
            by_status[err.status].append(err.code)
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description="Problem; code one of: " + ", ".join(codes),
            generate_examples=False,
        )
        for status, codes in sorted(by_status.items())
    }


__all__ = ["PROBLEM_JSON", "MediaType", "Problem", "exception_handlers", "problem", "responses"]
