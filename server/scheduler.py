"""The GPU scheduler: one worker thread owns the pipeline and runs requests in batches, one step at a time.

Each iteration admits queued jobs (their text and reference encoding batched), runs one denoising step for up
to `max_batch_size` jobs of the same shape (jobs at different steps share the forward pass), then decodes the
finished ones. A new job joins at the next step boundary; a canceled one leaves at it. An error in a batch is
retried job by job, so only the job that fails alone is failed, and the worker keeps serving.
Knows nothing of HTTP or API formats: it reports through a `SchedulerListener`.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from PIL import Image

from model.pipeline import DenoiseState, GenerationRequest, KontextPipeline

log = logging.getLogger("kontext.scheduler")
X = TypeVar("X")
R = TypeVar("R")


@dataclass
class Job:
    id: str
    request: GenerationRequest
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None


class SchedulerListener(Protocol):
    def started(self, job_id: str, seed: int) -> None: ...
    def progress(self, job_id: str, step: int, total: int) -> None: ...
    def succeeded(self, job_id: str, image: Image.Image, predict_time: float) -> None: ...
    def failed(self, job_id: str, error: str) -> None: ...
    def canceled(self, job_id: str, started: bool) -> None: ...


SHUTDOWN_ERROR = "the server shut down before this prediction finished; please run it again"


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already; the caller should answer 429 and retry later."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is at capacity; retry in about {retry_after} s")
        self.retry_after = retry_after


def describe(error: BaseException) -> str:
    """An error message for a client: what went wrong, without a traceback."""
    if "out of memory" in str(error).lower():
        return "the GPU ran out of memory for this request; try a smaller size"
    return str(error) or type(error).__name__


class Scheduler:
    def __init__(
        self,
        pipeline: KontextPipeline,
        listener: SchedulerListener,
        max_batch_size: int = 4,
        max_queue: int = 64,
        max_queue_delay: float = 0.01,
    ):
        self.pipeline, self.listener = pipeline, listener
        self.max_batch_size, self.max_queue, self.max_queue_delay = max_batch_size, max_queue, max_queue_delay
        self.forward_passes = 0
        self._waiting: deque[Job] = deque()
        self._active: list[tuple[Job, DenoiseState]] = []
        self._cancel: set[str] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kontext-scheduler", daemon=True)
        self._step_seconds = 1.0  # running estimate, for Retry-After

    # --- called from the API threads ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; jobs still queued or running fail with a message that says so."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            left = list(self._waiting) + [job for job, _ in self._active]
            self._waiting.clear()
            self._active = []
        for job in left:
            self.listener.failed(job.id, SHUTDOWN_ERROR)

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the queued and running jobs to finish; True when none are left."""
        deadline = time.monotonic() + timeout
        while (self._waiting or self._active) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not (self._waiting or self._active)

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._waiting.append(job)
            self._cond.notify_all()

    def cancel(self, job_id: str) -> bool:
        """Stop a queued or running job at the next step boundary; False when it is not here (any more)."""
        with self._cond:
            for job in self._waiting:
                if job.id == job_id:
                    self._waiting.remove(job)
                    break
            else:
                if not any(job.id == job_id for job, _ in self._active):
                    return False
                self._cancel.add(job_id)
                return True
        self.listener.canceled(job_id, started=False)
        return True

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: one batch of the queue's average job."""
        return max(1, round(self._step_seconds * 28))

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._active)

    # --- the worker ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._active:
                    self._cond.wait()
                if self._stopping:
                    return
                if not self._active and len(self._waiting) < self.max_batch_size:
                    self._cond.wait(self.max_queue_delay)  # let a burst gather into one batch
                admitted = [self._waiting.popleft() for _ in range(min(len(self._waiting), self._free_slots()))]
                canceled = [(j, s) for j, s in self._active if j.id in self._cancel]
                self._active = [(j, s) for j, s in self._active if j.id not in self._cancel]
                self._cancel.clear()
            try:
                for job, _ in canceled:
                    self.listener.canceled(job.id, started=True)
                self._admit(admitted)
                if self._active:
                    self._step()
            except Exception as err:  # noqa: BLE001 - a bug here must not stop the worker: fail what it touched
                log.exception("scheduler iteration failed")
                for job in admitted + [job for job, _ in self._active]:
                    self.listener.failed(job.id, f"internal error in the scheduler: {describe(err)}")
                self._active = []

    def _free_slots(self) -> int:
        return max(0, self.max_batch_size - len(self._active))

    def _admit(self, jobs: list[Job]) -> None:
        for job, _, state in self._isolated(self.pipeline.prepare, [(job, job.request) for job in jobs]):
            job.started = time.monotonic()
            self.listener.started(job.id, state.seed)
            self._active.append((job, state))

    def _step(self) -> None:
        oldest_shape = self._active[0][1].shape_key
        batch = [(j, s) for j, s in self._active if s.shape_key == oldest_shape][: self.max_batch_size]
        start = time.monotonic()
        forward = any(state.needs_forward for _, state in batch)  # go_fast steps that all extrapolate need none
        stepped = [(job, state) for job, state, _ in self._isolated(self.pipeline.denoise_step, batch)]
        if forward:
            self.forward_passes += 1
            self._step_seconds = 0.8 * self._step_seconds + 0.2 * (time.monotonic() - start)
        failed = {job.id for job, _ in batch} - {job.id for job, _ in stepped}
        self._active = [(j, s) for j, s in self._active if j.id not in failed and not s.done]
        for job, state in stepped:
            self.listener.progress(job.id, state.step, state.num_steps)
        finished = [(j, s) for j, s in stepped if s.done]
        for size in {(s.width, s.height) for _, s in finished}:
            group = [(j, s) for j, s in finished if (s.width, s.height) == size]
            for job, _, image in self._isolated(self.pipeline.decode, group):
                self.listener.succeeded(job.id, image, time.monotonic() - (job.started or job.submitted))

    def _isolated(self, run: Callable[[list[X]], Sequence[R] | None], pairs: list[tuple[Job, X]]):
        """Run `run` on a batch; if it raises, run each half again (recursively), so an error that comes from the
        batch's size (out of memory) costs a few retries and one that comes from a request fails that job alone.

        Returns (job, item, result) for the items that succeeded; `run` returns one result per item, or None.
        """
        if not pairs:
            return []
        try:
            results = run([item for _, item in pairs])
        except Exception as err:  # noqa: BLE001 - every failure is reported to its own job
            if len(pairs) > 1:
                half = len(pairs) // 2
                return self._isolated(run, pairs[:half]) + self._isolated(run, pairs[half:])
            log.exception("job %s failed", pairs[0][0].id)
            self.listener.failed(pairs[0][0].id, describe(err))
            return []
        results = list(results) if results is not None else [None] * len(pairs)
        return [(job, item, result) for (job, item), result in zip(pairs, results)]
