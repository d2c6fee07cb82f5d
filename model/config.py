"""Transformer hyper-parameters, named as in BFL's `FluxParams`, with presets."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TransformerConfig:
    in_channels: int = 64  # 16 latent channels × 2×2 patch
    vec_in_dim: int = 768  # CLIP-L pooled embedding
    context_in_dim: int = 4096  # T5-XXL hidden size
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)  # RoPE dims per position-id axis; sums to head_dim
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"axes_dim {self.axes_dim} must sum to head_dim {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def latent_channels(self) -> int:
        return self.in_channels // 4

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "TransformerConfig":
        """Read the sizes from a diffusers `FluxTransformer2DModel` config.json."""
        heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
        out_channels = config.get("out_channels") or config["in_channels"]
        if out_channels != config["in_channels"] or config.get("patch_size", 1) != 1:
            raise ValueError("only FLUX transformers with out_channels == in_channels and patch_size 1 are supported")
        return cls(
            in_channels=config["in_channels"],
            vec_in_dim=config["pooled_projection_dim"],
            context_in_dim=config["joint_attention_dim"],
            hidden_size=heads * head_dim,
            num_heads=heads,
            depth=config["num_layers"],
            depth_single_blocks=config["num_single_layers"],
            axes_dim=tuple(config["axes_dims_rope"]),
            guidance_embed=config["guidance_embeds"],
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The same sizes as a diffusers `FluxTransformer2DModel` config."""
        if self.mlp_ratio != 4.0 or self.theta != 10_000 or not self.qkv_bias:
            raise ValueError("diffusers' FluxTransformer2DModel fixes mlp_ratio 4, theta 10000 and qkv bias")
        return {
            "patch_size": 1,
            "in_channels": self.in_channels,
            "out_channels": None,
            "num_layers": self.depth,
            "num_single_layers": self.depth_single_blocks,
            "attention_head_dim": self.head_dim,
            "num_attention_heads": self.num_heads,
            "joint_attention_dim": self.context_in_dim,
            "pooled_projection_dim": self.vec_in_dim,
            "guidance_embeds": self.guidance_embed,
            "axes_dims_rope": list(self.axes_dim),
        }


PRESETS: dict[str, TransformerConfig] = {
    # FLUX.1 Kontext [dev]: 11.90 B parameters, identical in shape to FLUX.1 [dev].
    "kontext-dev": TransformerConfig(),
    # Small shapes for tests and the demo model; same architecture, head_dim 16.
    "tiny": TransformerConfig(
        vec_in_dim=32, context_in_dim=32, hidden_size=32, num_heads=2, depth=2, depth_single_blocks=2,
        axes_dim=(4, 6, 6),
    ),
}


def preset(name: str) -> TransformerConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown transformer preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


