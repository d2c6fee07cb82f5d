"""`go_fast`: skip transformer passes and extrapolate the velocity from the last computed ones (TaylorSeer, order 1).

The velocity changes slowly and smoothly between neighbouring steps, so most of it can be predicted from the
two previous model calls. Which steps are computed is fixed in advance (Replicate's "go really fast" map for
kontext-dev: the first 3 and the last 3 steps, and 1 in 3 in between), so a seed gives the same image every run.
"""

from dataclasses import dataclass, field

from torch import Tensor

WARMUP_STEPS = 3  # computed at the start, where the image's layout forms
FINAL_STEPS = 3  # computed at the end, where fine detail forms
INTERVAL = 3  # in between, one step in INTERVAL is computed


def computed_steps(num_steps: int, go_fast: bool) -> tuple[bool, ...]:
    """For each step, whether the transformer runs (True) or its velocity is extrapolated (False)."""
    if not go_fast:
        return (True,) * num_steps
    return tuple(
        i < WARMUP_STEPS or i >= num_steps - FINAL_STEPS or (i - WARMUP_STEPS) % INTERVAL == 0
        for i in range(num_steps)
    )


@dataclass
class VelocityHistory:
    """The last two computed velocities of one request and their timesteps (0-d tensors, kept on the device)."""

    points: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def record(self, t: Tensor, velocity: Tensor) -> None:
        self.points = [*self.points[-1:], (t, velocity)]

    def extrapolate(self, t: Tensor) -> Tensor:
        """v(t) ≈ v(t₁) + (t − t₁)·(v(t₁) − v(t₀))/(t₁ − t₀), in fp32; v(t₁) alone after a single call."""
        if not self.points:
            raise ValueError("no computed velocity to extrapolate from: the first step must be computed")
        t1, v1 = self.points[-1]
        if len(self.points) == 1:
            return v1
        t0, v0 = self.points[0]
        slope = (v1.float() - v0.float()) / (t1 - t0).float()
        return (v1.float() + (t - t1).float() * slope).to(v1.dtype)
