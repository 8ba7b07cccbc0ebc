"""Domain errors of the API and their one mapping to HTTP."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ordersaga.domain import SagaError, SagaNotFound, SagaRefused, SagaUnavailable


class ApiError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


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


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _handle(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            {"detail": error.detail, "code": error.code}, status_code=error.status_code
        )

    @app.exception_handler(SagaError)
    async def _saga(request: Request, error: SagaError) -> JSONResponse:
        return await _handle(request, _SAGA_ERRORS[type(error)](str(error)))
