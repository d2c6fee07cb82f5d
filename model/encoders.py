"""Text encoders (T5 v1.1-XXL and CLIP-L from transformers) and the autoencoder (diffusers' `AutoencoderKL`).

Both are loaded from a diffusers checkpoint folder and called exactly as `FluxKontextPipeline` calls them:
prompts padded to max length, no attention mask, CLIP's pooled output, the VAE's distribution mean.
"""

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL
from PIL import Image
from torch import Tensor


def _component_class(folder: Path, name: str, default: str) -> type:
    """The transformers class that model_index.json names for a component, as diffusers resolves it."""
    index = folder / "model_index.json"
    class_name = json.loads(index.read_text()).get(name, [None, default])[1] if index.exists() else default
    return getattr(transformers, class_name)


class TextEncoder:
    """Prompt → (T5 token embeddings [B, L, 4096], CLIP pooled embedding [B, 768])."""

    def __init__(self, clip_tokenizer, clip, t5_tokenizer, t5, max_length: int = 512):
        self.clip_tokenizer, self.clip = clip_tokenizer, clip
        self.t5_tokenizer, self.t5 = t5_tokenizer, t5
        self.max_length = max_length

    @classmethod
    def from_folder(cls, folder: Path, device: torch.device | str, dtype: torch.dtype) -> "TextEncoder":
        load = dict(dtype=dtype, device_map=str(device))
        return cls(
            _component_class(folder, "tokenizer", "CLIPTokenizer").from_pretrained(folder / "tokenizer"),
            _component_class(folder, "text_encoder", "CLIPTextModel").from_pretrained(folder / "text_encoder", **load),
            _component_class(folder, "tokenizer_2", "T5TokenizerFast").from_pretrained(folder / "tokenizer_2"),
            _component_class(folder, "text_encoder_2", "T5EncoderModel").from_pretrained(
                folder / "text_encoder_2", **load
            ),
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        clip_ids = self.clip_tokenizer(
            prompts, padding="max_length", max_length=self.clip_tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = self.clip(clip_ids.to(self.clip.device), output_hidden_states=False).pooler_output
        t5_ids = self.t5_tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids
        tokens = self.t5(t5_ids.to(self.t5.device), output_hidden_states=False)[0]
        return tokens, pooled


def to_pixels(image: Image.Image, width: int, height: int) -> Tensor:
    """RGB image resized (Lanczos) to width × height → [1, 3, H, W] in [-1, 1]."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2.0 - 1.0


def to_images(pixels: Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] → 8-bit RGB images."""
    array = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return [Image.fromarray(a) for a in (array * 255).round().astype("uint8")]


class Autoencoder:
    """Pixels ↔ normalized latents (scaled and shifted as the transformer was trained on)."""

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae
        self.scaling_factor = vae.config.scaling_factor
        self.shift_factor = vae.config.shift_factor or 0.0
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_folder(cls, folder: Path, device: torch.device | str, dtype: torch.dtype) -> "Autoencoder":
        return cls(AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype).to(device).eval())

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        pixels = pixels.to(self.vae.device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        return (latents - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        latents = latents.to(self.vae.device, self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(latents, return_dict=False)[0]
