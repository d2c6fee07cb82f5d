"""The OpenAPI description of both APIs: request and response shapes, for clients and for schemathesis.

Handlers parse bodies themselves (to answer in each API's own error shape and accept what the real services
accept), so these models document the wire format; `tests/server/test_openapi.py` checks the server against
them with schemathesis.
"""

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

Status = Literal["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
WebhookEvent = Literal["start", "output", "logs", "completed"]


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- Replicate ----------------------------------------------------------------------------------------------

class ModelPredictionCreate(Open):
    input: dict[str, Any] = Field(description="the model's input; see GET /v1/models/{owner}/{name}/versions/{id}")
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None


class PredictionCreate(ModelPredictionCreate):
    version: str | None = Field(None, description="owner/name, owner/name:id, or a 64-hex version id")
    model: str | None = Field(None, description="CometAPI's alternative to version")


class PredictionUrls(BaseModel):
    get: str
    cancel: str
    web: str


class PredictionOut(BaseModel):
    id: str
    model: str
    version: str
    input: dict[str, Any]
    logs: str
    output: str | None
    data_removed: bool
    error: str | None
    status: Status
    source: str
    created_at: str
    started_at: str | None
    completed_at: str | None
    urls: PredictionUrls
    metrics: dict[str, float] | None = None
    deadline: str | None = None
    deployment: str | None = None


class PredictionPage(BaseModel):
    next: str | None
    previous: str | None
    results: list[PredictionOut]


class InvalidFieldOut(BaseModel):
    field: str
    description: str
    type: str


class Problem(BaseModel):
    title: str
    detail: str
    status: int
    invalid_fields: list[InvalidFieldOut] | None = None
    retry_after: int | None = None


class VersionOut(BaseModel):
    id: str
    created_at: str
    cog_version: str
    openapi_schema: dict[str, Any]


class FileUrls(BaseModel):
    get: str


class FileOut(BaseModel):
    id: str
    name: str
    content_type: str
    size: int
    etag: str
    checksums: dict[str, str]
    metadata: dict[str, Any]
    created_at: str
    expires_at: str | None
    urls: FileUrls


class FileUpload(BaseModel):
    content: bytes = Field(json_schema_extra={"format": "binary"})
    metadata: str | None = Field(None, description="a JSON object, as a string")


class WebhookSecret(BaseModel):
    key: str


# --- OpenAI -------------------------------------------------------------------------------------------------

class ChatMessage(Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(Open):
    model: str | None = None
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


class ChatReplyMessage(Open):
    role: Literal["assistant"]
    content: str
    images: list[dict[str, Any]]


class ChatChoice(BaseModel):
    index: int
    message: ChatReplyMessage
    logprobs: None
    finish_reason: Literal["stop"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int]


class ImagesRequest(Open):
    prompt: str
    model: str | None = None
    n: int | None = Field(None, ge=1, le=10)
    size: str | None = Field(None, description="WxH, W:H or auto")
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None


class ImagesEdit(BaseModel):
    prompt: str
    image: bytes = Field(json_schema_extra={"format": "binary"})
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: ErrorObject


class Health(Open):
    status: Literal["loading", "ready", "failed", "draining"]
    model: str


# --- wiring -------------------------------------------------------------------------------------------------

# Models referenced by name (request bodies, problem JSON), added to the components by `document`.
NAMED_MODELS = (ModelPredictionCreate, PredictionCreate, FileUpload, ChatRequest, ImagesRequest, ImagesEdit, Problem)
PROBLEM = {"description": "problem JSON (RFC 7807)",
           "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def request_body(model: type[BaseModel], media_type: str = "application/json") -> dict[str, Any]:
    """`openapi_extra` that documents a request body the handler parses itself."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


def replicate_errors() -> dict[int | str, dict[str, Any]]:
    return {code: PROBLEM for code in (400, 401, 404, 413, 422, 429, 500, 503)}


def openai_errors() -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OpenAIError} for code in (400, 401, 404, 413, 429, 500, 503)}


def document(app: FastAPI) -> None:
    """Add the models referenced by name (`request_body`, `PROBLEM`) to the generated OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _, defs = models_json_schema([(m, "validation") for m in NAMED_MODELS],
                                         ref_template="#/components/schemas/{model}")
            spec.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
