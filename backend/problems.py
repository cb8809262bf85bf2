"""``application/problem+json`` rendering and its OpenAPI documentation.

Each exception family has one handler; the catch-all logs the traceback server-side and
answers a generic ``internal_error``: a client never sees driver text or a stack trace.
``responses(...)`` documents a handler's errors so phone developers see every one of them.
"""

from __future__ import annotations

import logging
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
    body.update({k: v for k, v in extra.items()})
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _concierge_error(_: Request[Any, Any, Any], exc: errors.ConciergeError) -> Response[Any]:
    headers = None
    if "retry_after" in exc.extra:
        headers = {"Retry-After": str(exc.extra["retry_after"])}
    return problem(exc.status, exc.code, exc.title, exc.detail, headers=headers, **exc.extra)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    field_errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = str(item.get("key") or item.get("source") or "body")
            field_errors.append({"field": key, "message": str(item.get("message", "invalid"))})
    detail = str(exc.detail) if exc.detail else "The request is not valid"
    # msgspec names the field in its message ("... at `$.size`"); keep that, drop anything else.
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
    return problem(status, code, title, detail)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal_error", "Internal error", "The server could not do that")


exception_handlers: dict[type[Exception] | int, Any] = {
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
    """OpenAPI ``responses`` for a handler: validation, auth, internal, plus its domain errors."""
    by_status: dict[int, list[str]] = {400: ["validation_error"], 500: ["internal_error"]}
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
