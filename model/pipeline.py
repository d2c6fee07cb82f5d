"""The Kontext pipeline as steps a scheduler can drive: prepare requests, denoise a batch one step, decode.

`generate` chains the same steps for one request, so the CLI and the server can never disagree.
"""

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from kernels import set_attention_backend, set_fused_backend
from model.config import TransformerConfig, preset
from model.encoders import Autoencoder, TextEncoder, to_images, to_pixels
from model.resolution import output_size, reference_size
from model.sampling import TimeShift, euler_step, image_ids, initial_noise, pack, schedule, unpack
from model.step_skipping import VelocityHistory, computed_steps
from model.transformer import FluxTransformer
from model.weights import CheckpointError, load_transformer

LATENT_PATCH = 16  # pixels per latent token side: 8× VAE downsampling × 2×2 packing
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUANTIZATIONS = ("fp8",)


@dataclass(frozen=True)
class SpeedOptions:
    """How the pipeline runs. All are exact up to stated tolerances except `quantize`, which is opt-in."""

    quantize: str | None = None  # "fp8": rowwise-scaled float8 GEMMs in the blocks (Hopper)
    compile: bool = False  # torch.compile of the blocks and the VAE (model/compiled.py)
    cuda_graphs: bool = False  # with compile: replay CUDA graphs per shape
    attention: str = "sdpa"  # kernels/attention.py: sdpa | math | cudnn | flash3
    kernels: str = "torch"  # kernels/fused.py: torch | triton (fused norm, modulation, RoPE, residual)
    text_encoder_device: str | None = None  # "cpu": T5 and CLIP stay off the GPU (24 GB cards); default: device


@dataclass
class GenerationRequest:
    """What to generate. Defaults are those of Replicate's flux-kontext-dev."""

    prompt: str
    image: Image.Image | None = None  # the Kontext reference; None for text-to-image
    width: int | None = None
    height: int | None = None
    aspect_ratio: str | None = None
    auto_resize: bool = True  # resize the reference to its preferred Kontext resolution
    num_inference_steps: int = 28
    guidance: float = 2.5
    seed: int | None = None  # None draws a random seed
    megapixels: float = 1.0  # scales the ~1 MP sizes chosen from tables (never explicit width/height)
    go_fast: bool = False  # skip about half the transformer passes (model/step_skipping.py); lossy

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError("num_inference_steps must be at least 1")


def random_seed() -> int:
    return secrets.randbelow(2**32)


@dataclass
class DenoiseState:
    """One request in flight: its conditioning, its current latents and how far along its schedule it is.

    Everything the step loop reads is already on the device, so a step never waits for a host copy.
    """

    latents: Tensor  # [1, L_target, C·4] in the model dtype
    reference: Tensor | None  # [1, L_reference, C·4] packed reference latents
    img_ids: Tensor  # [1, L_target + L_reference, 3]
    txt: Tensor  # [1, L_txt, context_in_dim]
    vec: Tensor  # [1, vec_in_dim]
    timesteps: Tensor  # [steps + 1] fp32
    guidance: Tensor  # [1] fp32
    width: int
    height: int
    seed: int
    computed: tuple[bool, ...]  # per step: run the transformer, or extrapolate (go_fast)
    history: VelocityHistory = field(default_factory=VelocityHistory)
    step: int = 0

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    @property
    def done(self) -> bool:
        return self.step >= self.num_steps

    @property
    def needs_forward(self) -> bool:
        return not self.done and self.computed[self.step]

    @property
    def shape_key(self) -> tuple[int, ...]:
        """States with equal keys can share a forward pass."""
        return (self.latents.shape[1], 0 if self.reference is None else self.reference.shape[1], self.txt.shape[1])


@dataclass
class GenerationResult:
    image: Image.Image
    seed: int
    width: int
    height: int


class KontextPipeline:
    def __init__(
        self,
        transformer: FluxTransformer,
        text_encoder: TextEncoder,
        autoencoder: Autoencoder,
        time_shift: TimeShift = TimeShift(),
    ):
        if autoencoder.downsample * 2 != LATENT_PATCH:
            raise ValueError(f"expected a VAE with 8x downsampling, got {autoencoder.downsample}x")
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.time_shift = time_shift
        self.device = transformer.img_in.weight.device
        self.dtype = transformer.img_in.weight.dtype

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        transformer_file: Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        quantize: str | None = None,
        text_encoder_device: torch.device | str | None = None,
    ) -> "KontextPipeline":
        """Load a diffusers FLUX.1 Kontext folder; `transformer_file` (BFL single file) replaces its transformer/.

        With `quantize`, the transformer is loaded and quantized on the CPU, then moved, so the device never
        holds the full-precision weights (fp8 and text encoders on the CPU fit the 12B model in 24 GB).
        """
        if quantize not in (None, *QUANTIZATIONS):
            raise ValueError(f"unknown quantization {quantize!r}; known: {list(QUANTIZATIONS)}")
        folder = Path(folder)
        if not (folder / "model_index.json").is_file():
            raise CheckpointError(f"{folder}: not a diffusers checkpoint folder (no model_index.json)")
        config_file = folder / "transformer" / "config.json"
        config = (
            TransformerConfig.from_diffusers(json.loads(config_file.read_text()))
            if config_file.is_file()
            else preset("kontext-dev")
        )
        scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        transformer = load_transformer(transformer_file or folder / "transformer", config,
                                       "cpu" if quantize else device, dtype)
        if quantize == "fp8":
            from model.quantize import quantize_fp8

            quantize_fp8(transformer)
        return cls(
            transformer.to(device),
            TextEncoder.from_folder(folder, text_encoder_device or device, dtype),
            Autoencoder.from_folder(folder, device, dtype),
            TimeShift.from_diffusers(scheduler_config),
        )

    # --- the steps -------------------------------------------------------------------------------------------

    def prepare(self, requests: list[GenerationRequest]) -> list[DenoiseState]:
        """Encode the prompts (one batch) and the references (one VAE batch per size), draw the initial noise."""
        txt, vec = self.text_encoder.encode([r.prompt for r in requests])
        ref_sizes = {
            i: reference_size(*r.image.size, r.auto_resize, r.megapixels)
            for i, r in enumerate(requests) if r.image is not None
        }
        references = self.encode_references({i: requests[i].image for i in ref_sizes}, ref_sizes)
        states = []
        for i, request in enumerate(requests):
            ref_size = ref_sizes.get(i)
            width, height = output_size(request.width, request.height, request.aspect_ratio, ref_size,
                                        request.megapixels)
            grid_h, grid_w = height // LATENT_PATCH, width // LATENT_PATCH
            seed = random_seed() if request.seed is None else request.seed
            noise = initial_noise(seed, self.transformer.config.latent_channels, 2 * grid_h, 2 * grid_w, self.dtype)
            ids = [image_ids(grid_h, grid_w, index=0, device=self.device)]
            if ref_size is not None:
                ids.append(image_ids(ref_size[1] // LATENT_PATCH, ref_size[0] // LATENT_PATCH, 1, self.device))
            states.append(
                DenoiseState(
                    latents=pack(noise).to(self.device),
                    reference=references.get(i),
                    img_ids=torch.cat(ids)[None],
                    txt=txt[i : i + 1].to(self.device, self.dtype),
                    vec=vec[i : i + 1].to(self.device, self.dtype),
                    timesteps=schedule(request.num_inference_steps, grid_h * grid_w, self.time_shift).to(self.device),
                    guidance=torch.tensor([request.guidance], device=self.device),
                    width=width,
                    height=height,
                    seed=seed,
                    computed=computed_steps(request.num_inference_steps, request.go_fast),
                )
            )
        return states

    def encode_references(
        self, images: dict[int, Image.Image], sizes: dict[int, tuple[int, int]]
    ) -> dict[int, Tensor]:
        """Packed reference latents [1, L, C·4] per key, each resized to its (width, height)."""
        packed: dict[int, Tensor] = {}
        for size in set(sizes.values()):
            keys = [k for k in images if sizes[k] == size]
            latents = self.autoencoder.encode(torch.cat([to_pixels(images[k], *size) for k in keys]))
            for j, key in enumerate(keys):
                packed[key] = pack(latents[j : j + 1]).to(self.dtype)
        return packed

    @torch.no_grad()
    def denoise_step(self, states: list[DenoiseState]) -> None:
        """Advance every state by one Euler step; states may be at different steps.

        The states whose step is computed share one forward pass; the others (go_fast) extrapolate.
        """
        if len({s.shape_key for s in states}) != 1:
            raise ValueError("states in one denoising batch must have the same shapes")
        if any(s.done for s in states):
            raise ValueError("a finished state cannot take another step")
        computed = [s for s in states if s.needs_forward]
        if computed:
            for state, velocity in zip(computed, self.velocity(computed).split(1)):
                state.history.record(state.timesteps[state.step], velocity)
        velocity = torch.cat([
            s.history.points[-1][1] if s.needs_forward else s.history.extrapolate(s.timesteps[s.step])
            for s in states
        ])
        t_curr = torch.stack([s.timesteps[s.step] for s in states])
        t_next = torch.stack([s.timesteps[s.step + 1] for s in states])
        latents = euler_step(torch.cat([s.latents for s in states]), velocity, t_curr, t_next)
        for i, state in enumerate(states):
            state.latents = latents[i : i + 1]
            state.step += 1

    def velocity(self, states: list[DenoiseState]) -> Tensor:
        """The transformer's velocity prediction [B, L_target, C·4] for the states' current steps, in one pass."""
        latents = torch.cat([s.latents for s in states])
        tokens = latents if states[0].reference is None else torch.cat(
            [latents, torch.cat([s.reference for s in states])], dim=1
        )
        txt = torch.cat([s.txt for s in states])
        return self.transformer(
            img=tokens,
            img_ids=torch.cat([s.img_ids for s in states]),
            txt=txt,
            txt_ids=torch.zeros(*txt.shape[:2], 3, device=self.device),
            timesteps=torch.stack([s.timesteps[s.step] for s in states]),
            y=torch.cat([s.vec for s in states]),
            guidance=torch.cat([s.guidance for s in states]),
            num_target_tokens=latents.shape[1],
        )

    def decode(self, states: list[DenoiseState]) -> list[Image.Image]:
        """Decode finished states of one size in one VAE batch."""
        if len({(s.width, s.height) for s in states}) != 1:
            raise ValueError("states decoded together must have the same size")
        grid_h, grid_w = states[0].height // LATENT_PATCH, states[0].width // LATENT_PATCH
        latents = unpack(torch.cat([s.latents for s in states]), grid_h, grid_w)
        return to_images(self.autoencoder.decode(latents))

    # --- one request, start to finish ------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationResult:
        (state,) = self.prepare([request])
        while not state.done:
            self.denoise_step([state])
        (image,) = self.decode([state])
        return GenerationResult(image, state.seed, state.width, state.height)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load(
    model: str | Path,
    transformer_file: str | Path | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    speed: SpeedOptions = SpeedOptions(),
) -> KontextPipeline:
    """A ready pipeline from a diffusers folder (optionally with a BFL transformer file), or `"demo"`.

    The attention and fused-kernel backends are process-wide switches: set here, for every pipeline.
    """
    from model.demo import demo_checkpoint  # builds with diffusers' classes: imported only when asked for

    if speed.cuda_graphs and not speed.compile:
        raise ValueError("CUDA graphs come with compile: turn compile on too")
    set_attention_backend(speed.attention)
    set_fused_backend(speed.kernels)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    folder = demo_checkpoint() if str(model) == "demo" else Path(model)
    pipeline = KontextPipeline.from_folder(folder, Path(transformer_file) if transformer_file else None, device,
                                           dtype, speed.quantize, speed.text_encoder_device)
    if speed.compile:
        from model.compiled import compile_pipeline

        compile_pipeline(pipeline, speed.cuda_graphs)
    return pipeline
