"""go_fast: which steps run the transformer, the first-order extrapolation, and what it costs in pixels."""

import numpy as np
import torch

from model.pipeline import GenerationRequest, KontextPipeline
from model.step_skipping import VelocityHistory, computed_steps
from tests.helpers import max_pixel_difference, random_image


def test_step_map_computes_first_and_last_three_and_one_in_three_between() -> None:
    steps = computed_steps(28, go_fast=True)
    assert [i for i, c in enumerate(steps) if c] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 25, 26, 27]
    assert computed_steps(28, go_fast=False) == (True,) * 28
    assert computed_steps(6, go_fast=True) == (True,) * 6  # too few steps to skip any


def test_extrapolation_is_exact_for_a_velocity_linear_in_t() -> None:
    history = VelocityHistory()
    a, b = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    for t in (0.9, 0.8):
        history.record(torch.tensor(t), a + t * b)
    torch.testing.assert_close(history.extrapolate(torch.tensor(0.55)), a + 0.55 * b, rtol=1e-5, atol=1e-5)
    single = VelocityHistory()
    single.record(torch.tensor(0.9), a)
    assert torch.equal(single.extrapolate(torch.tensor(0.7)), a)  # zeroth order after one call


def count_forward_passes(pipeline: KontextPipeline, requests: list[GenerationRequest]) -> tuple[int, list]:
    calls = []
    handle = pipeline.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        states = pipeline.prepare(requests)
        while not all(s.done for s in states):
            pipeline.denoise_step(states)
    finally:
        handle.remove()
    return len(calls), states


def test_go_fast_halves_the_passes_is_deterministic_and_stays_close(pipeline: KontextPipeline) -> None:
    def request(go_fast: bool) -> GenerationRequest:
        return GenerationRequest("a house by a lake", image=random_image(96, 96, seed=4), width=128, height=128,
                                 num_inference_steps=28, seed=11, go_fast=go_fast)

    passes, _ = count_forward_passes(pipeline, [request(True)])
    assert passes == 14
    fast, again, full = (pipeline.generate(request(g)).image for g in (True, True, False))
    assert max_pixel_difference(fast, again) == 0
    # Stated bound on the demo model: the mean absolute deviation from the full run stays under 1.5 levels (0.38 measured).
    deviation = np.abs(np.asarray(fast, dtype=float) - np.asarray(full, dtype=float)).mean()
    assert 0 < deviation < 1.5, deviation


def test_a_go_fast_request_does_not_change_its_batch_neighbour(pipeline: KontextPipeline) -> None:
    def request(go_fast: bool) -> GenerationRequest:
        return GenerationRequest("a cat", width=128, height=128, num_inference_steps=10, seed=5, go_fast=go_fast)

    passes, (fast, full) = count_forward_passes(pipeline, [request(True), request(False)])
    assert passes == 10  # the full request needs every step; the fast one rides along on 8 of them
    _, (alone,) = count_forward_passes(pipeline, [request(False)])
    torch.testing.assert_close(full.latents, alone.latents, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast.latents, full.latents)
