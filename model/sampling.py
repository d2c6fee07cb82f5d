"""Flow-matching sampling: latent packing, position ids, the shifted time schedule, noise and the Euler step.

Pure tensor functions, as in BFL's `sampling.py`; the numerics follow diffusers' `FluxKontextPipeline`
(fp32 schedule, fp32 Euler update cast back to the prediction's dtype) so the same seed gives the same image.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def pack(latents: Tensor) -> Tensor:
    """[B, C, H, W] latents → [B, (H/2)·(W/2), C·4] tokens of 2×2 patches."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, grid_height: int, grid_width: int) -> Tensor:
    """Inverse of `pack` for a grid of grid_height × grid_width tokens."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, grid_height, grid_width, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, grid_height * 2, grid_width * 2)


def image_ids(grid_height: int, grid_width: int, index: int, device: torch.device | str = "cpu") -> Tensor:
    """Position ids [h·w, 3] = (index, row, col): index 0 for the target, 1 for the Kontext reference."""
    ids = torch.zeros(grid_height, grid_width, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(grid_height, device=device)[:, None]
    ids[..., 2] = torch.arange(grid_width, device=device)[None, :]
    return ids.reshape(grid_height * grid_width, 3)


@dataclass(frozen=True)
class TimeShift:
    """Resolution-dependent shift of the schedule: mu grows linearly with the target token count."""

    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "TimeShift":
        """Read a diffusers `FlowMatchEulerDiscreteScheduler` config; only its dynamic exponential shift is used."""
        if not config.get("use_dynamic_shifting", False) or config.get("time_shift_type", "exponential") != "exponential":
            raise ValueError("the scheduler config must use dynamic exponential time shifting, as FLUX does")
        unsupported = [k for k in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas",
                                   "use_beta_sigmas", "invert_sigmas", "stochastic_sampling") if config.get(k)]
        if unsupported:
            raise ValueError(f"unsupported scheduler options: {unsupported}")
        return cls(
            base_seq_len=config.get("base_image_seq_len", 256),
            max_seq_len=config.get("max_image_seq_len", 4096),
            base_shift=config.get("base_shift", 0.5),
            max_shift=config.get("max_shift", 1.15),
        )

    def mu(self, image_seq_len: int) -> float:
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return image_seq_len * slope + self.base_shift - slope * self.base_seq_len


def schedule(num_steps: int, image_seq_len: int, shift: TimeShift = TimeShift()) -> Tensor:
    """Timesteps [num_steps + 1] (fp32) from 1 down to 0, shifted for `image_seq_len` target tokens."""
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    sigmas = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64).float()
    exp_mu = math.exp(shift.mu(image_seq_len))
    shifted = exp_mu / (exp_mu + (1 / sigmas - 1))
    return torch.cat([shifted, torch.zeros(1)])


def initial_noise(seed: int, channels: int, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """Gaussian latents [1, C, H, W] drawn on the CPU from `seed`, exactly as diffusers draws them."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, channels, height, width), generator=generator, dtype=dtype)


def euler_step(x: Tensor, velocity: Tensor, t_curr: Tensor, t_next: Tensor) -> Tensor:
    """x [B, L, C] moved from t_curr to t_next [B] along the predicted velocity.

    As diffusers' scheduler does it: dt × velocity in the velocity's dtype, the sum in fp32, cast back.
    """
    dt = (t_next - t_curr).float()[:, None, None].to(velocity.dtype)
    return (x.float() + dt * velocity).to(velocity.dtype)
