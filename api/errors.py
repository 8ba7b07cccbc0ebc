"""Errors of the API, in one shape: RFC 9457 problem details (`application/problem+json`).

Every error answer is a `Problem`: `status`, a `title` for the status, a `detail` saying what
went wrong, our `code`, and for a 422 the `errors`, each naming its field by `loc` (as
FastAPI's validation errors do). `install` maps domain errors, validation errors and Starlette's
own (unparseable body, unknown route, method not allowed) to it, and documents it on every
route of the OpenAPI document.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from ordersaga.domain import SagaError, SagaNotFound, SagaRefused, SagaUnavailable


class ApiError(Exception):
    status_code = 500
    code = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="ordersaga"'}


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class IdempotencyKeyReused(ApiError):
    # As in the IETF Idempotency-Key draft: same key, different payload.
    status_code = 422
    code = "idempotency_key_reused"


class InvalidInput(ApiError):
    status_code = 422
    code = "invalid_input"


class Unavailable(ApiError):
    status_code = 503
    code = "unavailable"


class Busy(ApiError):
    status_code = 503
    code = "busy"
    headers = {"Retry-After": "1"}


class TooLarge(ApiError):
    status_code = 413
    code = "too_large"


# What the saga client raises, as HTTP: an ended saga refuses commands like a running one would.
_SAGA_ERRORS: dict[type[SagaError], type[ApiError]] = {
    SagaNotFound: Conflict,
    SagaRefused: Conflict,
    SagaUnavailable: Unavailable,
}


def _printable(value: Any) -> Any:
    """The errors' echo of the input, with what UTF-8 cannot carry (a lone surrogate) escaped:
    FastAPI's own handler would fail on it with a 500."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    return value


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query, path or header, then the field.")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(default="about:blank", description="No further documentation per type.")
    title: str = Field(description="The HTTP status's phrase.")
    status: int
    detail: str = Field(description="What went wrong, for a person.")
    code: str = Field(description="What went wrong, for a program: not_found, conflict, ...")
    errors: list[FieldError] | None = Field(default=None, description="A 422's invalid fields.")


PROBLEM_JSON = "application/problem+json"


def problem(
    status: int, detail: str, code: str, *, errors: list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:  # fmt: skip
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


# What each status means on any route, in the OpenAPI document (routes add their own).
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "the request could not be read (a body that is not JSON)"},
    422: {"description": "a field is invalid: `errors` names each one"},
}


_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _handle(_: Request, error: ApiError) -> JSONResponse:
        return problem(error.status_code, error.detail, error.code, headers=error.headers)

    @app.exception_handler(SagaError)
    async def _saga(request: Request, error: SagaError) -> JSONResponse:
        return await _handle(request, _SAGA_ERRORS[type(error)](str(error)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": e["loc"], "msg": e["msg"], "type": e["type"]}
            for e in _printable(jsonable_encoder(error.errors()))
        ]
        where = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
        return problem(422, f"invalid: {where}", "invalid_input", errors=errors)

    @app.exception_handler(HTTPException)
    async def _starlette(request: Request, error: HTTPException) -> JSONResponse:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Every documented method of the path, not only those of the first route matched.
            headers["Allow"] = ", ".join(_methods(app, request.url.path))
        code = _CODES.get(error.status_code, "error")
        return problem(error.status_code, str(error.detail), code, headers=headers)

    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(plain())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _methods(app: FastAPI, path: str) -> list[str]:
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return sorted(m.upper() for m in operations)
    return []


def _document(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error answer of every operation is a `Problem` (application/problem+json); an
    operation that takes input can also answer 400 and 422 (COMMON_RESPONSES)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Problem, FieldError):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if operation.get("parameters") or operation.get("requestBody"):
                for status, spec in COMMON_RESPONSES.items():
                    responses.setdefault(str(status), {"description": spec["description"]})
            if operation.get("requestBody"):
                responses.setdefault("413", {"description": "the body is larger than allowed"})
            for status, spec in responses.items():
                if status[0] in "45":
                    if status == "422":
                        spec["description"] = COMMON_RESPONSES[422]["description"]
                    spec["content"] = content
    return schema
