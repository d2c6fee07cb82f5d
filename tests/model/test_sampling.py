"""Sampling pieces against the diffusers code they must reproduce."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
from diffusers.utils.torch_utils import randn_tensor

from model.sampling import TimeShift, euler_step, image_ids, initial_noise, pack, schedule, unpack

KONTEXT_SCHEDULER = dict(
    shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
    max_image_seq_len=4096,
)


@pytest.mark.parametrize("steps,seq_len", [(28, 4096), (4, 256), (30, 1024), (50, 6000), (1, 100)])
def test_schedule_matches_diffusers_scheduler(steps: int, seq_len: int) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(**KONTEXT_SCHEDULER)
    shift = TimeShift.from_diffusers(dict(scheduler.config))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=shift.mu(seq_len))
    ours = schedule(steps, seq_len, shift)
    assert ours.dtype == torch.float32 and ours[-1] == 0 and len(ours) == steps + 1
    torch.testing.assert_close(ours, scheduler.sigmas, rtol=1e-6, atol=1e-7)


def test_shift_follows_the_line_through_the_anchors() -> None:
    shift = TimeShift()
    assert shift.mu(256) == pytest.approx(0.5)
    assert shift.mu(4096) == pytest.approx(1.15)
    assert shift.mu(1024) == pytest.approx(0.63)


def test_scheduler_configs_that_change_the_schedule_are_refused() -> None:
    with pytest.raises(ValueError, match="dynamic"):
        TimeShift.from_diffusers({"use_dynamic_shifting": False})
    with pytest.raises(ValueError, match="unsupported"):
        TimeShift.from_diffusers({"use_dynamic_shifting": True, "use_karras_sigmas": True})


def test_pack_matches_diffusers_and_unpack_inverts_it() -> None:
    latents = torch.randn(2, 16, 6, 10)
    packed = pack(latents)
    torch.testing.assert_close(packed, FluxKontextPipeline._pack_latents(latents, 2, 16, 6, 10))
    assert torch.equal(unpack(packed, 3, 5), latents)


def test_image_ids_match_diffusers() -> None:
    expected = FluxKontextPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32)
    assert torch.equal(image_ids(3, 5, index=0), expected)
    reference = image_ids(3, 5, index=1)
    assert torch.equal(reference[:, 1:], expected[:, 1:]) and bool((reference[:, 0] == 1).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noise_is_what_diffusers_draws_for_the_seed(dtype: torch.dtype) -> None:
    expected = randn_tensor((1, 16, 8, 12), generator=torch.Generator("cpu").manual_seed(42), dtype=dtype)
    assert torch.equal(initial_noise(42, 16, 8, 12, dtype), expected)
    assert not torch.equal(initial_noise(43, 16, 8, 12, dtype), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_euler_step_matches_diffusers_step(dtype: torch.dtype) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(**KONTEXT_SCHEDULER)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=0.8)
    scheduler.set_begin_index(0)
    x, v = torch.randn(1, 20, 64).to(dtype), torch.randn(1, 20, 64).to(dtype)
    expected = scheduler.step(v, scheduler.timesteps[0], x, return_dict=False)[0]
    sigmas = scheduler.sigmas
    assert torch.equal(euler_step(x, v, sigmas[0:1], sigmas[1:2]), expected)


def test_euler_step_uses_each_samples_own_times() -> None:
    x, v = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    out = euler_step(x, v, torch.tensor([1.0, 0.5]), torch.tensor([0.75, 0.0]))
    assert torch.equal(out[0], torch.full((3, 4), -0.25)) and torch.equal(out[1], torch.full((3, 4), -0.5))
