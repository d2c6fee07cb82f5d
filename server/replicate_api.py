"""Replicate's HTTP API (predictions, models, deployments, files, webhooks), served at /v1 and /replicate/v1.

Inputs are validated against the schema of the Replicate model named in the request (flux-kontext-dev, -pro,
-max); all three run the loaded Kontext [dev] model. Knobs we accept but do not act on are listed in
`IGNORED_INPUTS` and in the README.
"""

import asyncio
import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from model.pipeline import GenerationRequest
from model.resolution import ASPECT_RATIOS
from server.errors import ApiError, InvalidField
from server.wire import base_url, json_object
from server.fetch import FetchError, resolve
from server.files import Upload
from server.images import ImageInputError
from server.predictions import OutputOptions, new_id
from server.schemas import (
    FileOut,
    FileUpload,
    ModelPredictionCreate,
    PredictionCreate,
    PredictionOut,
    PredictionPage,
    VersionOut,
    WebhookSecret,
    request_body,
    replicate_errors,
)
from server.store import Prediction

OWNER = "black-forest-labs"
MODELS = ("flux-kontext-dev", "flux-kontext-pro", "flux-kontext-max")
VERSION_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_WAIT = 60
DEV_ASPECT_RATIOS = ("match_input_image", *ASPECT_RATIOS)
PRO_ASPECT_RATIOS = (*DEV_ASPECT_RATIOS, "2:1", "1:2")  # pro/max also list these; they take the closest size
IGNORED_INPUTS = {
    "disable_safety_checker": "accepted; this server runs no safety checker",
    "safety_tolerance": "accepted; this server runs no safety checker",
    "prompt_upsampling": "accepted; prompts are used as given",
}


@dataclass(frozen=True)
class Field:
    type: str  # string | integer | number | boolean | uri
    default: Any = None
    required: bool = False
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


COMMON = {"prompt": Field("string", required=True), "seed": Field("integer")}
SCHEMAS: dict[str, dict[str, Field]] = {
    "flux-kontext-dev": {
        **COMMON,
        "input_image": Field("uri", required=True),
        "aspect_ratio": Field("string", "match_input_image", enum=DEV_ASPECT_RATIOS),
        "num_inference_steps": Field("integer", 28, minimum=4, maximum=50),
        "guidance": Field("number", 2.5, minimum=0, maximum=10),
        "output_format": Field("string", "webp", enum=("webp", "jpg", "png")),
        "output_quality": Field("integer", 80, minimum=0, maximum=100),
        "disable_safety_checker": Field("boolean", False),
        "go_fast": Field("boolean", True),
    },
    "flux-kontext-pro": {
        **COMMON,
        "input_image": Field("uri"),
        "aspect_ratio": Field("string", "match_input_image", enum=PRO_ASPECT_RATIOS),
        "output_format": Field("string", "png", enum=("jpg", "png")),
        "safety_tolerance": Field("integer", 2, minimum=0, maximum=6),
        "prompt_upsampling": Field("boolean", False),
    },
}
SCHEMAS["flux-kontext-max"] = SCHEMAS["flux-kontext-pro"]
EXTRA_IMAGE_KEYS = ("input_image_2", "input_image_3", "input_image_4", "input_images")  # CometAPI's max inputs


def validate(schema: dict[str, Field], values: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in; every problem reported at once in Replicate's invalid_fields shape."""
    problems, out = [], {}
    for name, spec in schema.items():
        value = values.get(name)
        where = f"input.{name}"
        if value is None:
            if spec.required:
                problems.append(InvalidField("input", f"{name} is required", "required"))
            out[name] = spec.default
            continue
        ok = {
            "string": isinstance(value, str), "uri": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool)
            or isinstance(value, float) and value.is_integer(),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            "boolean": isinstance(value, bool),
        }[spec.type]
        if not ok:
            problems.append(InvalidField(where, f"Invalid type. Expected: {spec.type}, given: {type(value).__name__}",
                                         "invalid_type"))
            continue
        if spec.enum and value not in spec.enum:
            choices = ", ".join(f'"{c}"' for c in spec.enum)
            problems.append(InvalidField(where, f"{name} must be one of the following: {choices}", "enum"))
            continue
        if spec.minimum is not None and value < spec.minimum:
            problems.append(InvalidField(where, f"{name} must be greater than or equal to {spec.minimum:g}",
                                         "number_gte"))
            continue
        if spec.maximum is not None and value > spec.maximum:
            problems.append(InvalidField(where, f"{name} must be less than or equal to {spec.maximum:g}",
                                         "number_lte"))
            continue
        out[name] = int(value) if spec.type == "integer" else value
    if problems:
        raise ApiError.invalid(problems)
    return out


def first_extra_image(values: dict[str, Any]) -> Any:
    """CometAPI sends kontext-max's extra references as input_image_2..4 or input_images; Kontext [dev] takes one."""
    for key in EXTRA_IMAGE_KEYS:
        value = values.get(key)
        if value:
            return value[0] if key == "input_images" and isinstance(value, list) else value
    return None


def openapi_schema(model: str) -> dict[str, Any]:
    """The input schema of a model, shaped like a cog version's `openapi_schema`."""
    kinds = {"uri": {"type": "string", "format": "uri"}}
    properties = {}
    for name, spec in SCHEMAS[model].items():
        prop: dict[str, Any] = dict(kinds.get(spec.type, {"type": spec.type}))
        for key, value in (("default", spec.default), ("minimum", spec.minimum), ("maximum", spec.maximum)):
            if value is not None:
                prop[key] = value
        if spec.enum:
            prop["enum"] = list(spec.enum)
        properties[name] = prop
    required = [n for n, s in SCHEMAS[model].items() if s.required]
    return {"components": {"schemas": {
        "Input": {"type": "object", "properties": properties, "required": required},
        "Output": {"type": "string", "format": "uri"},
    }}}


def parse_wait(prefer: str | None) -> float | None:
    """Seconds to hold a create open: `Prefer: wait` (60) or `wait=N` (clamped to 1..60); else None (async)."""
    for part in (prefer or "").split(","):
        token = part.strip().lower()
        if token == "wait":
            return MAX_WAIT
        if token.startswith("wait="):
            try:
                return float(min(max(int(token[5:]), 1), MAX_WAIT))
            except ValueError:
                return None
    return None


def parse_duration(text: str) -> float:
    """`Cancel-After`: 30, 30s, 5m, 1h30m45s; at least 5 seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
        if not parts or not text:
            raise ApiError(422, f"Cancel-After must look like 30s, 5m or 1h30m, got {text!r}")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    return max(seconds, 5.0)


def render(prediction: Prediction, base: str | None = None) -> dict[str, Any]:
    """The prediction as Replicate's API returns it, with URLs under `base` (the request's); webhooks, which
    have no request, use the base the prediction was created under."""
    base = (base or prediction.base_url).rstrip("/")
    get_url = f"{base}/v1/predictions/{prediction.id}"
    body: dict[str, Any] = {
        "id": prediction.id,
        "model": prediction.model,
        "version": prediction.version,
        "input": prediction.input,
        "logs": prediction.logs,
        "output": f"{base}/{prediction.output}" if prediction.output else None,
        "data_removed": False,
        "error": prediction.error,
        "status": prediction.status,
        "source": "api",
        "created_at": prediction.created_at,
        "started_at": prediction.started_at,
        "completed_at": prediction.completed_at,
        "urls": {"get": get_url, "cancel": f"{get_url}/cancel", "web": get_url},
    }
    if prediction.metrics:
        body["metrics"] = prediction.metrics
    if prediction.deadline:
        body["deadline"] = prediction.deadline
    if prediction.deployment:
        body["deployment"] = prediction.deployment
    return body






def _model_name(owner: str, name: str) -> str:
    if owner != OWNER or name not in MODELS:
        raise ApiError(404, f"model {owner}/{name} not found; this server runs "
                            + ", ".join(f"{OWNER}/{m}" for m in MODELS))
    return name


def _resolve_version(body: dict[str, Any]) -> tuple[str, str]:
    """(model name, version string) from `version` (owner/name, owner/name:id, id) or CometAPI's `model`."""
    ref = body.get("version") or body.get("model")
    if not isinstance(ref, str) or not ref:
        raise ApiError.invalid([InvalidField("", "version is required", "required")])
    ref_model, _, version = ref.partition(":") if "/" in ref else ("", "", ref)
    if ref_model:
        owner, _, name = ref_model.partition("/")
        return _model_name(owner, name), version or "hidden"
    if VERSION_ID.match(version):
        return "flux-kontext-dev", version
    raise ApiError(422, "The specified version does not exist (or perhaps you don't have permission to use it?)")


def webhook_options(body: dict[str, Any]) -> tuple[Any, list[str] | None]:
    """(webhook URL, event filter) from a create body; `webhook_completed` is the legacy completed-only form."""
    webhook = body.get("webhook") or body.get("webhook_completed")
    events = body.get("webhook_events_filter") or (["completed"] if body.get("webhook_completed") else None)
    if webhook is not None and not isinstance(webhook, str):
        raise ApiError.invalid([InvalidField("webhook", "webhook must be an http(s) URL", "format")])
    if events is not None and (not isinstance(events, list) or not all(
            isinstance(e, str) and e in ("start", "output", "logs", "completed") for e in events)):
        raise ApiError.invalid([InvalidField(
            "webhook_events_filter", 'must be a list of "start", "output", "logs", "completed"', "enum")])
    return webhook, events


def echo(values: dict[str, Any]) -> dict[str, Any]:
    """The input as the prediction shows it: inline data URIs shortened, so records and pages stay small."""
    return {k: f"{v[:48]}... ({len(v)} characters)" if isinstance(v, str) and v.startswith("data:") and len(v) > 256
            else v for k, v in values.items()}


async def _create(request: Request, model: str, version: str, body: dict[str, Any],
                  deployment: str | None = None) -> Response:
    values = body.get("input")
    if not isinstance(values, dict):
        raise ApiError.invalid([InvalidField("input", "input is required and must be an object", "required")])
    inputs = validate(SCHEMAS[model], values)
    webhook, events = webhook_options(body)
    cancel_after = request.headers.get("cancel-after")
    deadline = parse_duration(cancel_after) if cancel_after else None
    state = request.app.state
    if webhook is not None:
        try:
            await asyncio.to_thread(resolve, webhook, state.fetch_policy)
        except FetchError as err:
            raise ApiError.invalid([InvalidField("webhook", str(err), "format")]) from None
    image_url = inputs.get("input_image") or first_extra_image(values)
    image = None
    if image_url is not None:
        if not isinstance(image_url, str):
            raise ApiError.invalid([InvalidField("input.input_image", "must be a URL or data URI", "format")])
        try:
            image = await state.images.load(image_url, {request.url.netloc})
        except ImageInputError as err:
            raise ApiError.invalid([InvalidField("input.input_image", str(err), "format")]) from None
    generation = GenerationRequest(
        prompt=inputs["prompt"], image=image, aspect_ratio=inputs["aspect_ratio"],
        num_inference_steps=inputs.get("num_inference_steps", 28), guidance=inputs.get("guidance", 2.5),
        seed=inputs["seed"] or None,  # as on Replicate: no seed, or 0, draws a random one
        megapixels=state.settings.megapixels,
        go_fast=inputs.get("go_fast", False),  # kontext-dev's field, default true as on Replicate; pro/max: full
    )
    prediction = Prediction(
        id=new_id(), model=f"{OWNER}/{model}", version=version, input=echo(values), webhook=webhook,
        deployment=deployment, base_url=base_url(request),
        **({"webhook_events_filter": events} if events else {}),
    )
    service = state.predictions
    service.create(prediction, generation, OutputOptions(inputs["output_format"], inputs.get("output_quality", 80)),
                   deadline)

    wait = parse_wait(request.headers.get("prefer"))
    if wait is not None:
        prediction = await service.wait(prediction.id, max(wait - 0.25, 0.0))
        if prediction.status == "processing":  # clients treat anything but "starting" as final (trap T2)
            prediction.status = "starting"
    body_out = render(prediction, base_url(request))
    return JSONResponse(body_out, 201, {"Location": body_out["urls"]["get"]})


def file_object(upload: Upload, base: str) -> dict[str, Any]:
    return {
        "id": upload.id, "name": upload.name, "content_type": upload.content_type, "size": upload.size,
        "etag": upload.etag, "checksums": {"sha256": upload.etag}, "metadata": upload.metadata,
        "created_at": upload.created_at, "expires_at": None,
        "urls": {"get": f"{base.rstrip('/')}/v1/files/{upload.id}"},
    }


router = APIRouter()


@router.post("/predictions", status_code=201, response_model=None, openapi_extra=request_body(PredictionCreate),
             responses={201: {"model": PredictionOut}, **replicate_errors()})
async def create_prediction(request: Request) -> Response:
    body = await json_object(request)
    model, version = _resolve_version(body)
    return await _create(request, model, version, body)


@router.post("/models/{owner}/{name}/predictions", status_code=201, response_model=None,
             openapi_extra=request_body(ModelPredictionCreate), responses={201: {"model": PredictionOut}, **replicate_errors()})
async def create_model_prediction(owner: str, name: str, request: Request) -> Response:
    model = _model_name(owner, name)
    return await _create(request, model, "hidden", await json_object(request))


@router.post("/deployments/{owner}/{name}/predictions", status_code=201, response_model=None,
             openapi_extra=request_body(ModelPredictionCreate), responses={201: {"model": PredictionOut}, **replicate_errors()})
async def create_deployment_prediction(owner: str, name: str, request: Request) -> Response:
    model = _model_name(owner, name)
    return await _create(request, model, "hidden", await json_object(request), deployment=f"{owner}/{name}")


@router.get("/predictions/{prediction_id}", response_model=None,
            responses={200: {"model": PredictionOut}, **replicate_errors()})
async def get_prediction(prediction_id: str, request: Request) -> dict[str, Any]:
    return render(request.app.state.predictions.get(prediction_id), base_url(request))


@router.post("/predictions/{prediction_id}/cancel", response_model=None,
             responses={200: {"model": PredictionOut}, **replicate_errors()})
async def cancel_prediction(prediction_id: str, request: Request) -> dict[str, Any]:
    return render(request.app.state.predictions.cancel(prediction_id), base_url(request))


PAGE_SIZE = 100


@router.get("/predictions", response_model=None, responses={200: {"model": PredictionPage}, **replicate_errors()})
async def list_predictions(request: Request, cursor: str | None = None) -> dict[str, Any]:
    before = None
    if cursor:
        try:
            created_at, _, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
            before = (created_at, last_id)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid cursor") from None
    page = request.app.state.store.page(PAGE_SIZE + 1, before)
    next_url = None
    if len(page) > PAGE_SIZE:
        page = page[:PAGE_SIZE]
        token = base64.urlsafe_b64encode(f"{page[-1].created_at}|{page[-1].id}".encode()).decode()
        next_url = str(request.url.include_query_params(cursor=token))
    return {"next": next_url, "previous": None, "results": [render(p, base_url(request)) for p in page]}


@router.get("/models/{owner}/{name}/versions/{version_id}", response_model=None,
            responses={200: {"model": VersionOut}, **replicate_errors()})
async def get_version(owner: str, name: str, version_id: str) -> dict[str, Any]:
    model = _model_name(owner, name)
    if not VERSION_ID.match(version_id):
        raise ApiError(404, f"version {version_id!r} of {owner}/{name} not found")
    return {"id": version_id, "created_at": "2025-06-26T00:00:00.000000Z", "cog_version": "kontext-server",
            "openapi_schema": openapi_schema(model)}


@router.post("/files", status_code=201, response_model=None, openapi_extra=request_body(FileUpload, "multipart/form-data"),
             responses={201: {"model": FileOut}, **replicate_errors()})
async def upload_file(request: Request) -> JSONResponse:
    form = await request.form()
    content = form.get("content")
    if content is None or isinstance(content, str):
        raise ApiError.invalid([InvalidField("content", "a file in the multipart field `content` is required",
                                             "required")])
    raw = form.get("metadata") or "{}"
    try:
        metadata = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        raise ApiError.invalid([InvalidField("metadata", "metadata must be a JSON object", "format")])
    data = await content.read()
    upload = request.app.state.files.save_upload(
        data, content.filename or "file", content.content_type or "application/octet-stream", metadata
    )
    return JSONResponse(file_object(upload, base_url(request)), 201)


@router.get("/files/{file_id}", response_model=None, responses={200: {"model": FileOut}, **replicate_errors()})
async def get_file(file_id: str, request: Request) -> dict[str, Any]:
    found = request.app.state.files.upload(file_id)
    if found is None:
        raise ApiError(404, f"file {file_id!r} not found")
    return file_object(found[0], base_url(request))


@router.get("/files/{file_id}/content", response_model=None,
            responses={200: {"content": {"application/octet-stream": {}}}, **replicate_errors()})
async def get_file_content(file_id: str, request: Request) -> FileResponse:
    found = request.app.state.files.upload(file_id)
    if found is None:
        raise ApiError(404, f"file {file_id!r} not found")
    return FileResponse(found[1], media_type=found[0].content_type)


@router.get("/webhooks/default/secret", response_model=None,
            responses={200: {"model": WebhookSecret}, **replicate_errors()})
async def webhook_secret(request: Request) -> dict[str, str]:
    return {"key": request.app.state.webhook_secret}
