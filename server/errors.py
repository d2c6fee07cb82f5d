"""One error type for every API, rendered in the shape of the API the client called."""

from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

OPENAI_ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_exceeded"}
OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded", 503: "server_not_ready"}
PROBLEM_TITLES = {
    400: "Bad request", 401: "Unauthenticated", 404: "Not found", 413: "Request too large",
    422: "Input validation failed", 429: "Too many requests", 503: "Service unavailable",
}


@dataclass
class InvalidField:
    field: str  # e.g. input.num_inference_steps
    description: str
    type: str = "invalid"  # required | enum | number_gte | number_lte | type | format | invalid


@dataclass
class ApiError(Exception):
    status: int
    message: str
    invalid_fields: list[InvalidField] = field(default_factory=list)
    retry_after: int | None = None
    code: str | None = None  # OpenAI `code`, when a more precise one than the status default applies

    def __str__(self) -> str:
        return self.message

    @classmethod
    def invalid(cls, fields: list[InvalidField]) -> "ApiError":
        return cls(422, "".join(f"- {f.field}: {f.description}\n" for f in fields), fields)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def replicate_response(self) -> JSONResponse:
        """RFC 7807 problem JSON, as Replicate answers (the `replicate` client reads title/detail/status)."""
        body: dict[str, Any] = {"title": PROBLEM_TITLES.get(self.status, "Error"), "detail": self.message,
                                "status": self.status}
        if self.invalid_fields:
            body["invalid_fields"] = [vars(f) for f in self.invalid_fields]
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return JSONResponse(body, self.status, self.headers(), media_type="application/problem+json")

    def openai_response(self) -> JSONResponse:
        """{"error": {message, type, param, code}} with OpenAI's status codes (validation is 400 there)."""
        status = 400 if self.status == 422 else self.status
        param = self.invalid_fields[0].field.removeprefix("input.") if self.invalid_fields else None
        message = self.invalid_fields[0].description if len(self.invalid_fields) == 1 else self.message.strip()
        error = {
            "message": message,
            "type": OPENAI_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": self.code or OPENAI_CODES.get(status),
        }
        return JSONResponse({"error": error}, status, self.headers())
