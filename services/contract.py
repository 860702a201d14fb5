"""The service's published HTTP contract beyond the bodies: one error model for every 4xx/5xx, the status codes each
operation documents, the OpenAPI links from a created session to its operations, and the exception handlers that
make responses match (schema errors as a `Problem`, an `Allow` header naming every method of a path on 405)."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.schemas import Problem

SESSION_HEADER = "x-session-id"

_WHY = {
    400: "unparsable request (bad Content-Length, or a body that is not UTF-8 JSON)",
    401: "missing or wrong API key (`Authorization: Bearer KEY`, when the deployment sets one)",
    404: "unknown session, or one that was closed or expired",
    409: "the session is busy, at its step limit, held by another replica, or its id is in use",
    413: "request body larger than the configured cap",
    422: "the request breaks the schema or names something invalid (the detail says which field and why)",
    429: "the replica holds max_sessions sessions (see Retry-After)",
    503: "no model loaded yet",
}


def errors(*codes: int) -> dict:
    """OpenAPI `responses` entries for these error codes, all with the `Problem` body."""
    return {code: {"model": Problem, "description": _WHY[code]} for code in codes}


def session_links() -> dict:
    """OpenAPI links from a created session (201 body) to the operations on it: id in the path and in the routing
    header."""
    params = {"session_id": "$response.body#/session_id", f"header.{SESSION_HEADER}": "$response.body#/session_id"}
    return {name: {"operationId": op, "parameters": params}
            for name, op in (("GetSession", "get_session"), ("StepSession", "step_session"),
                             ("DeleteSession", "delete_session"))}


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}"


def allowed_methods(openapi: dict, path: str) -> list[str]:
    """The methods the published schema documents for a concrete request path (its templates matched)."""
    methods: set[str] = set()
    for template, operations in openapi.get("paths", {}).items():
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[^}]+\})", template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in operations if m in ("get", "put", "post", "delete", "patch", "head",
                                                                 "options", "trace")}
    return sorted(methods)


def install(api: FastAPI) -> None:
    """Exception handlers that keep every error body a `Problem` ({"detail": str})."""

    @api.exception_handler(RequestValidationError)
    async def _schema_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each bad field, without echoing the input (it may hold NaN, which JSON cannot carry)."""
        return JSONResponse({"detail": "; ".join(_describe(e) for e in exc.errors())}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods; a path may have several routes
            headers["Allow"] = ", ".join(allowed_methods(request.app.openapi(), request.url.path))
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)
