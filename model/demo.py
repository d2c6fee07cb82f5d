"""The demo model: a tiny random FLUX.1 Kontext checkpoint in the diffusers layout, built locally.

It has the real architecture at toy sizes (tokenizers generated here, weights from a fixed seed), so the whole
path (loading, encoders, transformer, VAE, sampling) runs on a CPU in well under a second per 256×256 image.
Its images are noise: it exists to try the server and to test against diffusers without downloading weights.
"""

import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from model.config import preset

DEMO_NOTICE = "demo model: tiny random weights, its images are noise (load real weights with --model DIR)"


def clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE with no merges: one token per character."""
    chars = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> T5TokenizerFast:
    """A unigram vocabulary of single characters and word-initial letters."""
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in string.ascii_letters]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


@dataclass(frozen=True)
class ComponentSizes:
    """The sizes of a random FLUX.1 Kontext checkpoint's components (architecture as in the real one)."""

    transformer: str  # a model.config preset
    clip: dict[str, int]  # CLIPTextConfig sizes
    t5: dict[str, int]  # T5Config sizes
    vae_channels: tuple[int, ...]
    vae_layers_per_block: int
    vae_groups: int


TINY = ComponentSizes(
    transformer="tiny",
    clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    t5=dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
    vae_channels=(8, 16, 16, 16), vae_layers_per_block=1, vae_groups=8,
)
# The real sizes (CLIP ViT-L/14 text tower, T5 v1.1-XXL encoder, FLUX's 16-channel VAE): for the benchmarks,
# which compare with diffusers at full cost without downloading weights.
FULL = ComponentSizes(
    transformer="kontext-dev",
    clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32),
    vae_channels=(128, 256, 512, 512), vae_layers_per_block=2, vae_groups=32,
)


@contextmanager
def constructed_on(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside are allocated and randomly initialized directly on `device` in `dtype`: a 12B model
    never passes through fp32 or host memory."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default)


def random_pipeline(
    sizes: ComponentSizes = TINY, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> FluxKontextPipeline:
    """Random components of the given sizes, built in place on `device` in `dtype`, as a diffusers pipeline."""
    torch.manual_seed(seed)
    config = preset(sizes.transformer)
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    with constructed_on(device, dtype):
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(clip_tok), max_position_embeddings=77, projection_dim=config.vec_in_dim,
                bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                pad_token_id=clip_tok.pad_token_id, **sizes.clip,
            )
        )
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tok), feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id, decoder_start_token_id=0,
                **sizes.t5,
            )
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=sizes.vae_channels, layers_per_block=sizes.vae_layers_per_block,
            latent_channels=config.latent_channels, norm_num_groups=sizes.vae_groups, scaling_factor=0.3611,
            shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
        )
        transformer = FluxTransformer2DModel(**config.to_diffusers())
    with torch.no_grad():  # norm scales start at 1; randomize them so that no weight is left untested
        for name, param in transformer.named_parameters():
            if "norm" in name and param.dim() == 1:
                param.uniform_(0.5, 1.5)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxKontextPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
        tokenizer_2=t5_tok, transformer=transformer,
    )


def save_demo_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Write the demo model as a diffusers checkpoint folder (safetensors) and return the folder."""
    random_pipeline(TINY, seed).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def demo_checkpoint() -> Path:
    """A fresh demo checkpoint in a temporary folder that lives as long as the process."""
    folder = tempfile.mkdtemp(prefix="kontext-demo-")
    return save_demo_checkpoint(Path(folder))
