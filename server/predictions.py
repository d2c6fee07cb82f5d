"""The prediction service both APIs share: records in the store, jobs in the scheduler, outputs on disk,
webhooks out, and waiting for results. It is the scheduler's listener."""

import asyncio
import logging
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from model.pipeline import GenerationRequest
from server.errors import ApiError, InvalidField
from server.files import FileStore
from server.scheduler import Job, QueueFull, Scheduler
from server.store import Prediction, PredictionStore, iso, now, seconds_between
from server.webhooks import WebhookSender

log = logging.getLogger("kontext.predictions")
ID_ALPHABET = string.ascii_lowercase + string.digits
LOG_EVENT_INTERVAL = 0.5  # Replicate throttles `logs` webhooks to one per 500 ms


def new_id() -> str:
    """26 characters of [a-z0-9], as Replicate's prediction ids (134 random bits)."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(26))


@dataclass(frozen=True)
class OutputOptions:
    format: str = "webp"  # webp | jpg | png
    quality: int = 80


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 10_000
    max_output_pixels: int = 2048 * 2048


def check_limits(request: GenerationRequest, limits: Limits) -> None:
    """What no API schema bounds: prompt length and explicit output sizes."""
    if len(request.prompt) > limits.max_prompt_chars:
        raise ApiError.invalid([InvalidField("input.prompt", f"prompt is longer than {limits.max_prompt_chars} "
                                             "characters (T5 reads only its first 512 tokens)", "max_length")])
    if request.width is not None and request.height is not None:
        if request.width * request.height > limits.max_output_pixels or min(request.width, request.height) < 16:
            raise ApiError.invalid([InvalidField(
                "size", f"{request.width}x{request.height} is outside 16 px per side and "
                f"{limits.max_output_pixels} pixels in all", "size")])


class PredictionService:
    def __init__(self, store: PredictionStore, files: FileStore, webhooks: WebhookSender,
                 render: Callable[[Prediction], dict], limits: Limits = Limits()):
        self.store, self.files, self.webhooks, self.limits = store, files, webhooks, limits
        self.render = render  # prediction → the JSON that webhooks carry (Replicate's shape)
        self.scheduler: Scheduler | None = None
        self.draining = False  # set on SIGTERM: no new predictions, the running ones finish
        self._lock = threading.RLock()
        self._outputs: dict[str, OutputOptions] = {}
        self._deadline_timers: dict[str, threading.Timer] = {}
        self._last_log_event: dict[str, float] = {}
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    # --- API side -----------------------------------------------------------------------------------------

    def create(self, prediction: Prediction, request: GenerationRequest, output: OutputOptions,
               cancel_after: float | None = None) -> Prediction:
        """Store the prediction and queue its job; 429 (nothing stored) when the queue is full."""
        check_limits(request, self.limits)
        if self.draining:
            raise ApiError(503, "the server is shutting down; retry on another instance", retry_after=5)
        if self.scheduler is None:
            raise ApiError(503, "the model is still loading; retry shortly", retry_after=5)
        with self._lock:
            try:
                self.scheduler.submit(Job(prediction.id, request))
            except QueueFull as err:
                raise ApiError(429, str(err), retry_after=err.retry_after) from None
            if cancel_after is not None:
                prediction.deadline = iso(time.time() + cancel_after)
                timer = threading.Timer(cancel_after, self._deadline_reached, args=(prediction.id,))
                timer.daemon = True
                self._deadline_timers[prediction.id] = timer
                timer.start()
            self._outputs[prediction.id] = output
            try:
                self.store.create(prediction)
            except Exception:
                self.scheduler.cancel(prediction.id)  # not stored, so not accepted: run nothing for it
                raise
        return prediction

    def get(self, prediction_id: str) -> Prediction:
        prediction = self.store.get(prediction_id)
        if prediction is None:
            raise ApiError(404, f"prediction {prediction_id!r} not found")
        return prediction

    def cancel(self, prediction_id: str) -> Prediction:
        prediction = self.get(prediction_id)
        if not prediction.done and self.scheduler is not None:
            self.scheduler.cancel(prediction_id)
        return self.get(prediction_id)

    async def wait(self, prediction_id: str, timeout: float) -> Prediction:
        """The prediction once it is done, or as it is after `timeout` seconds."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.setdefault(prediction_id, []).append(entry)
        try:
            if not self.get(prediction_id).done:
                try:
                    await asyncio.wait_for(event.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        finally:
            with self._lock:
                waiters = self._waiters.get(prediction_id, [])
                if entry in waiters:
                    waiters.remove(entry)
                if not waiters:
                    self._waiters.pop(prediction_id, None)
        return self.get(prediction_id)

    # --- scheduler side (worker thread) -------------------------------------------------------------------

    def started(self, job_id: str, seed: int) -> None:
        prediction = self._update(job_id, status="processing", started_at=now(), append_log=f"Using seed: {seed}\n")
        self._event(prediction, "start")

    def progress(self, job_id: str, step: int, total: int) -> None:
        prediction = self._update(job_id, append_log=f"step {step}/{total}\n")
        last = self._last_log_event.get(job_id, 0.0)
        if time.monotonic() - last >= LOG_EVENT_INTERVAL:
            self._last_log_event[job_id] = time.monotonic()
            self._event(prediction, "logs")

    def succeeded(self, job_id: str, image: Image.Image, predict_time: float) -> None:
        options = self._outputs.get(job_id, OutputOptions())
        try:
            output = self.files.save_output(image, options.format, options.quality)
        except OSError as err:
            self.failed(job_id, f"could not write the output file: {err}")
            return
        self._finish(job_id, "succeeded", output=output, predict_time=predict_time)

    def failed(self, job_id: str, error: str) -> None:
        self._finish(job_id, "failed", error=error)

    def canceled(self, job_id: str, started: bool) -> None:
        prediction = self.store.get(job_id)
        deadline_passed = prediction is not None and prediction.deadline is not None and prediction.deadline <= now()
        self._finish(job_id, "aborted" if deadline_passed and not started else "canceled")

    # --- internals ----------------------------------------------------------------------------------------

    def _deadline_reached(self, prediction_id: str) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel(prediction_id)

    def _update(self, job_id: str, append_log: str = "", **changes) -> Prediction | None:
        with self._lock:
            prediction = self.store.get(job_id)
            if prediction is None:  # never stored (create failed half-way): nothing to report to
                return None
            for key, value in changes.items():
                setattr(prediction, key, value)
            prediction.logs += append_log
            self.store.update(prediction)
            return prediction

    def _finish(self, job_id: str, status: str, output: str | None = None, error: str | None = None,
                predict_time: float | None = None) -> None:
        with self._lock:
            prediction = self.store.get(job_id)
            if prediction is None or prediction.done:
                return
            prediction.status, prediction.output, prediction.error = status, output, error
            prediction.completed_at = now()
            total = seconds_between(prediction.created_at, prediction.completed_at)
            prediction.metrics = {"total_time": round(total, 3)}
            if predict_time is not None:
                prediction.metrics["predict_time"] = round(predict_time, 3)
            self.store.update(prediction)
            self._outputs.pop(job_id, None)
            self._last_log_event.pop(job_id, None)
            timer = self._deadline_timers.pop(job_id, None)
            waiters = self._waiters.get(job_id, [])
        if timer is not None:
            timer.cancel()
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
        if output is not None:
            self._event(prediction, "output")
        self._event(prediction, "completed")

    def _event(self, prediction: Prediction | None, event: str) -> None:
        if prediction is not None and prediction.webhook and event in prediction.webhook_events_filter:
            self.webhooks.send(prediction.webhook, self.render(prediction))

