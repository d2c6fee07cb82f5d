"""The scheduler with the real demo pipeline in-process: batching by step, joining, cancel, failure isolation."""

import threading
from collections.abc import Iterator

import pytest
from PIL import Image

from model.pipeline import DenoiseState, GenerationRequest, KontextPipeline
from server.scheduler import Job, QueueFull, Scheduler
from tests.helpers import max_pixel_difference, random_image

STEPS = 6


class Recorder:
    """A listener that keeps every event and lets a test wait for jobs to end."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.images: dict[str, Image.Image] = {}
        self.errors: dict[str, str] = {}
        self.cond = threading.Condition()

    def _add(self, kind: str, job_id: str) -> None:
        with self.cond:
            self.events.append((kind, job_id))
            self.cond.notify_all()

    def started(self, job_id: str, seed: int) -> None:
        self._add("started", job_id)

    def progress(self, job_id: str, step: int, total: int) -> None:
        self._add(f"step{step}", job_id)

    def succeeded(self, job_id: str, image: Image.Image, predict_time: float) -> None:
        self.images[job_id] = image
        self._add("succeeded", job_id)

    def failed(self, job_id: str, error: str) -> None:
        self.errors[job_id] = error
        self._add("failed", job_id)

    def canceled(self, job_id: str, started: bool) -> None:
        self._add("canceled", job_id)

    def wait_ended(self, job_ids: list[str], timeout: float = 60) -> None:
        ended = {"succeeded", "failed", "canceled"}
        with self.cond:
            assert self.cond.wait_for(
                lambda: all(any(k in ended and j == job for k, j in self.events) for job in job_ids), timeout
            ), self.events

    def kinds(self, job_id: str) -> list[str]:
        return [k for k, j in self.events if j == job_id]


def request(seed: int, **changes) -> GenerationRequest:
    values = dict(prompt="a cat", image=random_image(96, 64, seed=seed), width=96, height=64, auto_resize=False,
                  num_inference_steps=STEPS, seed=seed)
    return GenerationRequest(**{**values, **changes})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def running(pipeline: KontextPipeline, recorder: Recorder, **options) -> Iterator[Scheduler]:
    scheduler = Scheduler(pipeline, recorder, **options)
    scheduler.start()
    yield scheduler
    scheduler.stop()


@pytest.fixture
def scheduler(pipeline: KontextPipeline, recorder: Recorder) -> Iterator[Scheduler]:
    yield from running(pipeline, recorder, max_batch_size=4, max_queue_delay=0.2)


def test_concurrent_requests_share_forward_passes_and_keep_their_images(
    scheduler: Scheduler, recorder: Recorder, pipeline: KontextPipeline
) -> None:
    jobs = [Job(f"j{i}", request(i)) for i in range(4)]
    for job in jobs:
        scheduler.submit(job)
    recorder.wait_ended([j.id for j in jobs])
    assert scheduler.forward_passes < len(jobs) * STEPS  # 4 jobs × 6 steps in fewer than 24 passes
    for job in jobs:
        alone = pipeline.generate(job.request).image
        assert max_pixel_difference(recorder.images[job.id], alone) <= 2


def test_a_late_request_joins_the_running_batch(scheduler: Scheduler, recorder: Recorder) -> None:
    first = Job("first", request(1, num_inference_steps=30))
    scheduler.submit(first)
    with recorder.cond:
        recorder.cond.wait_for(lambda: ("step2", "first") in recorder.events, 30)
    late = Job("late", request(2))
    scheduler.submit(late)
    recorder.wait_ended(["first", "late"])
    assert recorder.events.index(("succeeded", "late")) < recorder.events.index(("succeeded", "first"))
    assert scheduler.forward_passes < 30 + STEPS


def test_a_bad_request_fails_alone(scheduler: Scheduler, recorder: Recorder) -> None:
    good, bad = Job("good", request(1)), Job("bad", request(2, width=8, height=64))
    scheduler.submit(good)
    scheduler.submit(bad)
    recorder.wait_ended(["good", "bad"])
    assert "too small" in recorder.errors["bad"] and "good" in recorder.images


class OutOfMemoryForBatches(KontextPipeline):
    """The demo pipeline, but a forward pass over more than `limit` requests runs out of memory."""

    def __init__(self, base: KontextPipeline, limit: int = 1):
        super().__init__(base.transformer, base.text_encoder, base.autoencoder, base.time_shift)
        self.attempts: list[int] = []
        self.limit = limit

    def denoise_step(self, states: list[DenoiseState]) -> None:
        self.attempts.append(len(states))
        if len(states) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        super().denoise_step(states)


def test_a_batch_that_fails_is_split_in_halves(pipeline: KontextPipeline, recorder: Recorder) -> None:
    flaky = OutOfMemoryForBatches(pipeline, limit=2)
    jobs = [Job(f"j{i}", request(i)) for i in range(4)]
    for scheduler in running(flaky, recorder, max_batch_size=4, max_queue_delay=0.2):
        for job in jobs:
            scheduler.submit(job)
        recorder.wait_ended([job.id for job in jobs])
    assert set(recorder.images) == {job.id for job in jobs} and not recorder.errors
    assert flaky.attempts[:3] == [4, 2, 2] and 1 not in flaky.attempts  # halves, never one by one


class AlwaysOutOfMemory(OutOfMemoryForBatches):
    def denoise_step(self, states: list[DenoiseState]) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_an_out_of_memory_error_fails_the_request_and_the_worker_keeps_serving(
    pipeline: KontextPipeline, recorder: Recorder
) -> None:
    broken = AlwaysOutOfMemory(pipeline)
    for scheduler in running(broken, recorder):
        scheduler.submit(Job("doomed", request(1)))
        recorder.wait_ended(["doomed"])
        assert recorder.errors["doomed"] == "the GPU ran out of memory for this request; try a smaller size"
        scheduler.pipeline = pipeline  # the fault is gone: the same worker serves the next request
        scheduler.submit(Job("next", request(2)))
        recorder.wait_ended(["next"])
    assert "next" in recorder.images


def test_cancel_queued_and_running(pipeline: KontextPipeline, recorder: Recorder) -> None:
    for scheduler in running(pipeline, recorder, max_batch_size=1):
        scheduler.submit(Job("long", request(1, num_inference_steps=40)))
        scheduler.submit(Job("queued", request(2)))
        with recorder.cond:
            recorder.cond.wait_for(lambda: ("step1", "long") in recorder.events, 30)
        assert scheduler.cancel("queued") and scheduler.cancel("long")
        recorder.wait_ended(["long", "queued"])
        assert not scheduler.cancel("long")  # gone already
    assert recorder.kinds("queued") == ["canceled"]
    assert recorder.kinds("long")[-1] == "canceled" and "step40" not in recorder.kinds("long")


def test_a_full_queue_refuses_with_a_retry_hint(pipeline: KontextPipeline, recorder: Recorder) -> None:
    scheduler = Scheduler(pipeline, recorder, max_queue=2)  # not started: nothing leaves the queue
    scheduler.submit(Job("a", request(1)))
    scheduler.submit(Job("b", request(2)))
    with pytest.raises(QueueFull) as raised:
        scheduler.submit(Job("c", request(3)))
    assert raised.value.retry_after >= 1 and scheduler.queued == 2
