"""OpenAI's API: chat completions (an image-editing conversation), images generations and edits, models.

A chat is an editing session: the last user message is the prompt, its image (or else the latest image earlier
in the conversation, the assistant's own outputs included) is the Kontext reference, and the reply carries the
output as a Markdown image link plus an OpenRouter-style `images` list.
"""

import asyncio
import base64
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from model.pipeline import GenerationRequest
from server.errors import ApiError, InvalidField
from server.wire import base_url, json_object
from server.images import ImageInputError
from server.predictions import OutputOptions, new_id
from server.schemas import (
    ChatCompletion,
    ChatRequest,
    ImagesEdit,
    ImagesRequest,
    ImagesResponse,
    ModelList,
    ModelOut,
    request_body,
    openai_errors,
)
from server.store import Prediction

OPENAI_PREFIXES = ("/v1/chat/", "/v1/images/")
OWNER = "black-forest-labs"
MODELS = ("flux-kontext-dev", "flux-kontext-pro", "flux-kontext-max")
CREATED = 1750896000  # 2025-06-26, FLUX.1 Kontext [dev]'s release
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
SIZE = re.compile(r"^(\d+)x(\d+)$")
RATIO = re.compile(r"^\d+(\.\d+)?:\d+(\.\d+)?$")
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}
WAIT = 600.0  # seconds a request is held open for its images
KEEP_ALIVE = 1.0  # seconds between SSE comments while an image is generated

router = APIRouter()


def owns(path: str) -> bool:
    """Whether a path belongs to the OpenAI surface (its errors take OpenAI's shape)."""
    return path.startswith(OPENAI_PREFIXES) or path == "/v1/models" or (
        path.startswith("/v1/models/") and path.count("/") == 3
    )


def model_name(value: Any) -> str:
    """flux-kontext-{dev,pro,max}, with or without the owner prefix; the default is dev."""
    name = value.removeprefix(f"{OWNER}/") if isinstance(value, str) else value
    if name is None:
        return MODELS[0]
    if name not in MODELS:
        raise ApiError(404, f"The model '{value}' does not exist; this server runs {', '.join(MODELS)}",
                       code="model_not_found")
    return name


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": OWNER}


def bad(field: str, description: str) -> ApiError:
    return ApiError.invalid([InvalidField(field, description)])


def size_fields(size: Any) -> dict[str, Any]:
    """`WxH` (exact), `W:H` (an aspect ratio, as aggregators send), or `auto`/absent (the default sizing)."""
    if size in (None, "auto"):
        return {}
    if isinstance(size, str) and (match := SIZE.match(size)):
        return {"width": int(match.group(1)), "height": int(match.group(2))}
    if isinstance(size, str) and RATIO.match(size):
        return {"aspect_ratio": size}
    raise bad("size", f"size must look like 1024x1024, 16:9 or auto, got {size!r}")




def output_url(prediction: Prediction, request: Request) -> str:
    return f"{base_url(request).rstrip('/')}/{prediction.output}"




async def start(request: Request, name: str, prompt: Any, image_source: str | bytes | None, echo: dict[str, Any],
                output_format: str = "png", **sizes: Any) -> Prediction:
    """Validate, fetch the reference, create the prediction (queued); the caller waits for it."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", "a non-empty text prompt is required")
    state = request.app.state
    image = None
    if image_source is not None:
        try:
            image = (state.images.decode(image_source, "the uploaded image") if isinstance(image_source, bytes)
                     else await state.images.load(image_source, {request.url.netloc}))
        except ImageInputError as err:
            raise bad("image", str(err)) from None
    try:
        generation = GenerationRequest(prompt=prompt, image=image, megapixels=state.settings.megapixels,
                                       go_fast=state.settings.go_fast, **sizes)
    except ValueError as err:
        raise bad("size", str(err)) from None
    prediction = Prediction(id=new_id(), model=f"{OWNER}/{name}", version="hidden", input=echo, source="openai",
                            base_url=base_url(request))
    return state.predictions.create(prediction, generation, OutputOptions(output_format))


async def finished(request: Request, prediction: Prediction) -> Prediction:
    """The prediction once done; a failure becomes a 500 with its error message."""
    prediction = await request.app.state.predictions.wait(prediction.id, WAIT)
    if prediction.status != "succeeded":
        raise ApiError(500, prediction.error or f"the image was not generated ({prediction.status})",
                       code="generation_failed")
    return prediction


# --- chat -------------------------------------------------------------------------------------------------

def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def message_images(message: dict[str, Any]) -> list[str]:
    """Image URLs a message carries: image_url parts, an `images` list, Markdown image links in its text."""
    found: list[str] = []
    content = message.get("content")
    parts = content if isinstance(content, list) else []
    for part in parts + list(message.get("images") or []):
        if isinstance(part, dict) and part.get("type") == "image_url":
            url = part.get("image_url", {})
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str):
                found.append(url)
    found += MARKDOWN_IMAGE.findall(message_text(content))
    return found


def conversation_inputs(messages: Any) -> tuple[str, str | None]:
    """(prompt, reference image) of a chat: the last user message, and the most recent image up to it."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise bad("messages", "messages must be a non-empty list of message objects")
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise bad("messages", "the conversation has no user message")
    last = users[-1]
    image = next((images[0] for m in reversed(messages[: last + 1]) if (images := message_images(m))), None)
    return message_text(messages[last].get("content")), image


def chunk(completion_id: str, model: str, delta: dict | None, finish: str | None = None, **extra: Any) -> str:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n"


def image_reply(url: str) -> dict[str, Any]:
    return {"content": f"![image]({url})", "images": [{"type": "image_url", "image_url": {"url": url}}]}


USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@router.post("/chat/completions", response_model=None, openapi_extra=request_body(ChatRequest), responses={
    200: {"model": ChatCompletion, "content": {"text/event-stream": {"schema": {"type": "string"}}}}, **openai_errors()})
async def chat_completions(request: Request) -> Response:
    body = await json_object(request)
    name = model_name(body.get("model"))
    prompt, image = conversation_inputs(body.get("messages"))
    echo = {"prompt": prompt, "image": image if image and not image.startswith("data:") else bool(image)}
    prediction = await start(request, name, prompt, image, echo)
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    model = body.get("model") or name
    if not body.get("stream"):
        done = await finished(request, prediction)
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", **image_reply(output_url(done, request))},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": USAGE,
        })
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(stream_chat(request, prediction, completion_id, model, include_usage),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def stream_chat(request: Request, prediction: Prediction, completion_id: str, model: str,
                      include_usage: bool):
    """Role chunk, keep-alive comments while the image is made, the content chunk, stop, usage, [DONE]."""
    yield chunk(completion_id, model, {"role": "assistant", "content": ""})
    service = request.app.state.predictions
    while not (prediction := await service.wait(prediction.id, KEEP_ALIVE)).done:
        yield ": keep-alive\n\n"
    if prediction.status == "succeeded":
        yield chunk(completion_id, model, image_reply(output_url(prediction, request)))
        yield chunk(completion_id, model, {}, "stop")
        if include_usage:
            yield chunk(completion_id, model, None, usage=USAGE)
    else:
        error = {"message": prediction.error or prediction.status, "type": "server_error", "param": None,
                 "code": "generation_failed"}
        yield f"data: {json.dumps({'error': error})}\n\n"
    yield "data: [DONE]\n\n"


# --- images -----------------------------------------------------------------------------------------------

def image_options(values: dict[str, Any]) -> tuple[int, str, str, dict[str, Any]]:
    """(n, response_format, output_format, size fields) from an images request, validated."""
    try:
        n = int(values.get("n") or 1)
    except (TypeError, ValueError):
        raise bad("n", "n must be an integer from 1 to 10") from None
    if not 1 <= n <= 10:
        raise bad("n", "n must be an integer from 1 to 10")
    response_format = values.get("response_format") or "url"
    if not isinstance(response_format, str) or response_format not in ("url", "b64_json"):
        raise bad("response_format", "response_format must be url or b64_json")
    output_format = values.get("output_format") or "png"
    if not isinstance(output_format, str) or output_format not in OUTPUT_FORMATS:
        raise bad("output_format", "output_format must be png, jpeg or webp")
    return n, response_format, output_format, size_fields(values.get("size"))


async def images_response(request: Request, name: str, prompt: Any, image: str | bytes | None,
                          values: dict[str, Any]) -> JSONResponse:
    n, response_format, output_format, sizes = image_options(values)
    echo = {k: v for k, v in values.items() if k in ("prompt", "model", "n", "size", "output_format")}
    started = [await start(request, name, prompt, image, echo, OUTPUT_FORMATS[output_format], **sizes)
               for _ in range(n)]  # n predictions, each with its own random seed; the scheduler batches them
    done = await asyncio.gather(*(finished(request, p) for p in started))
    data_dir = Path(request.app.state.settings.data_dir)
    data = [
        {"b64_json": base64.b64encode((data_dir / p.output).read_bytes()).decode(), "revised_prompt": None}
        if response_format == "b64_json" else {"url": output_url(p, request), "revised_prompt": None}
        for p in done
    ]
    return JSONResponse({"created": int(time.time()), "data": data, "output_format": output_format})


@router.post("/images/generations", response_model=None, openapi_extra=request_body(ImagesRequest),
             responses={200: {"model": ImagesResponse}, **openai_errors()})
async def images_generations(request: Request) -> Response:
    body = await json_object(request)
    return await images_response(request, model_name(body.get("model")), body.get("prompt"), None, body)


@router.post("/images/edits", response_model=None, openapi_extra=request_body(ImagesEdit, "multipart/form-data"),
             responses={200: {"model": ImagesResponse}, **openai_errors()})
async def images_edits(request: Request) -> Response:
    """Multipart: `image` or `image[]` (the first one is the reference); `mask` is accepted and not used."""
    form = await request.form()
    files = [f for key in ("image", "image[]") for f in form.getlist(key) if not isinstance(f, str)]
    if not files:
        raise bad("image", "an image file is required (form field image or image[])")
    values = {key: form.get(key) for key in ("model", "prompt", "n", "size", "response_format", "output_format")}
    return await images_response(request, model_name(values["model"]), values["prompt"], await files[0].read(),
                                 values)


@router.get("/models", response_model=None, responses={200: {"model": ModelList}, **openai_errors()})
async def list_models() -> dict[str, Any]:
    return {"object": "list", "data": [model_object(name) for name in MODELS]}


@router.get("/models/{model_id}", response_model=None, responses={200: {"model": ModelOut}, **openai_errors()})
async def get_model(model_id: str) -> dict[str, Any]:
    return model_object(model_name(model_id))
