"""The FLUX.1 Kontext transformer: a rectified-flow DiT over one sequence [text | target | reference].

Mirrors BFL's `Flux` module (`src/flux/model.py`) so that `flux1-kontext-dev.safetensors` loads by name.
Every sample in a batch carries its own timestep, guidance and position ids, so requests that are at
different denoising steps can share one forward pass.
"""

import torch
from torch import Tensor, nn

from model.config import TransformerConfig
from model.layers import (
    DoubleStreamBlock,
    LastLayer,
    MLPEmbedder,
    SingleStreamBlock,
    rope_frequencies,
    timestep_embedding,
)


class FluxTransformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        c = config
        if c.depth_single_blocks < 1:
            raise ValueError("a FLUX transformer needs at least one single-stream block")
        self.img_in = nn.Linear(c.in_channels, c.hidden_size)
        self.time_in = MLPEmbedder(256, c.hidden_size)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size)
        self.guidance_in = MLPEmbedder(256, c.hidden_size) if c.guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(c.context_in_dim, c.hidden_size)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_hidden_dim, c.qkv_bias) for _ in range(c.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_hidden_dim) for _ in range(c.depth_single_blocks)
        )
        self.final_layer = LastLayer(c.hidden_size, c.in_channels)

    def forward(
        self,
        img: Tensor,  # [B, L_img, in_channels]: target tokens, then reference tokens
        img_ids: Tensor,  # [B, L_img, 3]
        txt: Tensor,  # [B, L_txt, context_in_dim]
        txt_ids: Tensor,  # [B, L_txt, 3]
        timesteps: Tensor,  # [B], in [0, 1]
        y: Tensor,  # [B, vec_in_dim] pooled text embedding
        guidance: Tensor | None = None,  # [B]
        num_target_tokens: int | None = None,
    ) -> Tensor:
        """Velocity prediction for the first `num_target_tokens` image tokens (all of them when None)."""
        dtype = self.img_in.weight.dtype
        # Like BFL and diffusers, t and guidance are rounded to the model dtype before the ×1000 scaling.
        vec = self.time_in(timestep_embedding(timesteps.to(dtype) * 1000, 256).to(dtype))
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("this model is guidance-distilled: pass a guidance value per sample")
            vec = vec + self.guidance_in(timestep_embedding(guidance.to(dtype) * 1000, 256).to(dtype))
        vec = vec + self.vector_in(y.to(dtype))
        img = self.img_in(img.to(dtype))
        txt = self.txt_in(txt.to(dtype))
        pe = rope_frequencies(torch.cat((txt_ids, img_ids), dim=1), self.config.axes_dim, self.config.theta)

        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks[:-1]:
            x = block(x, vec, pe)
        # Only the target rows are predicted: text and reference rows skip the last block's queries, MLP and
        # output projection, and the final layer.
        end = x.shape[1] if num_target_tokens is None else txt.shape[1] + num_target_tokens
        return self.final_layer(self.single_blocks[-1](x, vec, pe, start=txt.shape[1], end=end), vec)
