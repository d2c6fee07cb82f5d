"""The HTTP server: a thin layer that wires settings, store, scheduler and the two API surfaces together.

    clients ─▶ replicate_api / openai_api ─▶ predictions (service) ─▶ store (SQLite), files, webhooks
                                                     │
                                                     ▼
                                                scheduler (one worker thread owns the model)
"""

import hashlib
import ipaddress
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from model.compiled import warm_up
from model.pipeline import DTYPES, load
from server import openai_api, replicate_api
from server.auth import RateLimiter, authorized_key
from server.errors import ApiError, InvalidField
from server.fetch import FetchPolicy
from server.files import FileStore
from server.images import ImageLoader
from server.limits import BodySizeLimit
from server.predictions import Limits, PredictionService
from server.scheduler import Scheduler
from server.schemas import PROBLEM, Health, document
from server.settings import Settings, speed_options
from server.store import SQLiteStore
from server.webhooks import WebhookSender, load_or_create_secret

log = logging.getLogger("kontext.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


CREATE_PATHS = ("/predictions", "/chat/completions", "/images/generations", "/images/edits")


async def require_key(request: Request) -> None:
    """Authenticate (when keys are configured) and apply the per-client rate limits."""
    settings = request.app.state.settings
    client = request.client.host if request.client else "unknown"
    if settings.api_keys:
        key = authorized_key(request.headers.get("authorization"), settings.api_keys)
        if key is None:
            raise ApiError(401, "You did not pass a valid authentication token")
        client = "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    is_create = request.method == "POST" and request.url.path.endswith(CREATE_PATHS)
    limiter = request.app.state.create_limiter if is_create else request.app.state.request_limiter
    wait = limiter.retry_after(client)
    if wait is not None:
        raise ApiError(429, f"Request was throttled. Your rate limit resets in ~{wait}s.", retry_after=wait)


def error_response(path: str, error: ApiError) -> Response:
    return error.openai_response() if openai_api.owns(path) else error.replicate_response()


def render_error(request: Request, error: ApiError) -> Response:
    return error_response(request.url.path, error)


def _load_model(app: FastAPI, settings: Settings, service: PredictionService) -> None:
    try:
        dtype = DTYPES[settings.dtype] if settings.dtype else None
        pipeline = load(settings.model, settings.transformer, settings.device, dtype, speed_options(settings))
        if settings.compile:
            log.info("compiled in %.1f s (warm-up)", warm_up(pipeline, settings.megapixels))
        scheduler = Scheduler(pipeline, service, settings.max_batch_size, settings.max_queue,
                              settings.max_queue_delay_ms / 1000)
        scheduler.start()
        app.state.scheduler = service.scheduler = scheduler
        log.info("model %s loaded on %s; serving", settings.model, pipeline.device)
    except Exception as err:  # noqa: BLE001 - reported by /health and the log
        log.exception("loading the model failed")
        app.state.load_error = f"{type(err).__name__}: {err}"


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains: creates answer 503 and /health says "draining" (so a load
    balancer moves on) while queued and running predictions finish, for up to `shutdown_grace_s`; then the
    server exits. A second signal exits at once, as plain uvicorn does."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace: float):
        super().__init__(config)
        self.app, self.grace, self._draining = app, grace, False

    def handle_exit(self, sig: int, frame) -> None:
        if self._draining or getattr(self.app.state, "predictions", None) is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.app.state.predictions.draining = True
        log.warning("shutting down: draining for up to %.0f s (signal again to exit now)", self.grace)
        threading.Thread(target=self._drain, name="kontext-drain", daemon=True).start()

    def _drain(self) -> None:
        scheduler = self.app.state.scheduler
        if scheduler is not None and not scheduler.drain(self.grace):
            log.warning("grace period over: failing the predictions still queued or running")
        self.should_exit = True


def serve_forever(settings: Settings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info")
    DrainingServer(config, app, settings.shutdown_grace_s).run()


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        data = Path(settings.data_dir)
        store = SQLiteStore(data / "predictions.db")
        for prediction in store.recover():
            log.warning("prediction %s was %s when the server stopped; marked failed", prediction.id,
                        "queued or running")
        secret = load_or_create_secret(data / "webhook_secret")
        policy = FetchPolicy(allow=settings.fetch_allow, max_bytes=settings.max_input_bytes)
        webhooks = WebhookSender(secret, store, policy)
        files = FileStore(data)
        limits = Limits(settings.max_prompt_chars, settings.max_output_pixels)
        service = PredictionService(store, files, webhooks, render=replicate_api.render, limits=limits)
        app.state.settings, app.state.store, app.state.files = settings, store, files
        app.state.fetch_policy = policy
        app.state.images = ImageLoader(files, policy, settings.max_image_pixels)
        app.state.predictions, app.state.webhook_secret = service, secret
        app.state.scheduler, app.state.load_error = None, None
        app.state.create_limiter = RateLimiter(settings.rate_limit_creates_per_minute)
        app.state.request_limiter = RateLimiter(settings.rate_limit_requests_per_minute)
        threading.Thread(target=_load_model, args=(app, settings, service), name="kontext-load", daemon=True).start()
        yield
        if app.state.scheduler is not None:
            app.state.scheduler.stop()
        webhooks.stop()
        store.close()

    app = FastAPI(title="kontext-server", version="0.1.0", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, render=error_response)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Location", "Retry-After"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return render_error(request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        fields = [InvalidField(".".join(str(p) for p in e["loc"]), e["msg"]) for e in error.errors()]
        return render_error(request, ApiError.invalid(fields))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        return render_error(request, ApiError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return render_error(request, ApiError(500, f"internal error: {type(error).__name__}"))

    @app.get("/health", response_model=None, responses={200: {"model": Health}, 503: {"model": Health}})
    async def health(request: Request) -> JSONResponse:
        scheduler, error = request.app.state.scheduler, request.app.state.load_error
        draining = request.app.state.predictions.draining
        status = "draining" if draining else "ready" if scheduler else "failed" if error else "loading"
        body = {"status": status, "model": settings.model}
        if error:
            body["error"] = error
        if scheduler:
            body.update(queued=scheduler.queued, running=scheduler.running, forward_passes=scheduler.forward_passes,
                        max_batch_size=scheduler.max_batch_size, max_queue=scheduler.max_queue)
        return JSONResponse(body, 200 if status == "ready" else 503)

    @app.get("/files/{token}/{name}", response_model=None, responses={
        200: {"content": {"image/webp": {}, "image/png": {}, "image/jpeg": {}}}, 404: PROBLEM})
    async def output_file(token: str, name: str, request: Request) -> FileResponse:
        path = request.app.state.files.output_path(token, name)
        if path is None:
            raise ApiError(404, "no such file")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})

    document(app)
    auth = [Depends(require_key)]
    app.include_router(openai_api.router, prefix="/v1", dependencies=auth)
    app.include_router(replicate_api.router, prefix="/v1", dependencies=auth)
    app.include_router(replicate_api.router, prefix="/replicate/v1", dependencies=auth, include_in_schema=False)
    return app
