"""Domain errors of the API and their one mapping to HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": _printable(jsonable_encoder(error.errors()))}, status_code=422
        )

    @app.exception_handler(ApiError)
    async def _handle(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            {"detail": error.detail, "code": error.code},
            status_code=error.status_code,
            headers=error.headers,
        )

    @app.exception_handler(SagaError)
    async def _saga(request: Request, error: SagaError) -> JSONResponse:
        return await _handle(request, _SAGA_ERRORS[type(error)](str(error)))
