"""The same parity checks on a CUDA device, at the 12B model's real widths and token counts (skipped without CUDA)."""

from pathlib import Path

import pytest
import torch
from diffusers import FluxKontextPipeline, FluxTransformer2DModel
from PIL import Image

from kernels import attention_backend, available_attention_backends
from model.compiled import compile_pipeline, warm_up
from model.config import TransformerConfig, preset
from model.pipeline import GenerationRequest, KontextPipeline
from model.sampling import image_ids
from model.weights import load_transformer
from tests.helpers import max_pixel_difference, random_image

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# The 12B model's widths (hidden 3072, 24 heads, T5 4096, CLIP 768) with two blocks of each kind.
WIDE = TransformerConfig(**{**preset("kontext-dev").__dict__, "depth": 2, "depth_single_blocks": 2})


def test_wide_transformer_matches_diffusers_in_bf16_at_kontext_token_counts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    FluxTransformer2DModel(**WIDE.to_diffusers()).save_pretrained(tmp_path)
    reference = FluxTransformer2DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).cuda().eval()
    ours = load_transformer(tmp_path, WIDE, device="cuda", dtype=torch.bfloat16)
    assert ours.img_in.weight.device.type == "cuda"

    grid = 64  # 1024 px target and reference: 4096 tokens each, 512 text tokens
    ids = torch.cat([image_ids(grid, grid, 0), image_ids(grid, grid, 1)]).cuda()
    generator = torch.Generator("cuda").manual_seed(1)
    img = torch.randn(1, 2 * grid * grid, 64, device="cuda", generator=generator, dtype=torch.bfloat16)
    txt = torch.randn(1, 512, 4096, device="cuda", generator=generator, dtype=torch.bfloat16)
    y = torch.randn(1, 768, device="cuda", generator=generator, dtype=torch.bfloat16)
    t, g = torch.tensor([0.7], device="cuda"), torch.tensor([2.5], device="cuda")
    with torch.no_grad():
        expected = reference(
            hidden_states=img, encoder_hidden_states=txt, pooled_projections=y, timestep=t, guidance=g,
            img_ids=ids, txt_ids=torch.zeros(512, 3, device="cuda"), return_dict=False,
        )[0][:, : grid * grid].float()
        out = ours(img, ids[None], txt, torch.zeros(1, 512, 3, device="cuda"), t, y, g, num_target_tokens=grid * grid)
    assert ((out.float() - expected).norm() / expected.norm()).item() < 1e-2


def test_demo_pipeline_on_cuda_matches_diffusers(demo_folder: Path) -> None:
    ours = KontextPipeline.from_folder(demo_folder, device="cuda", dtype=torch.float32)
    reference = FluxKontextPipeline.from_pretrained(demo_folder, torch_dtype=torch.float32).to("cuda")
    reference.set_progress_bar_config(disable=True)
    image = ours.generate(GenerationRequest("a boat", width=256, height=256, num_inference_steps=8, seed=5)).image
    expected = reference(
        prompt="a boat", width=256, height=256, max_area=256 * 256, num_inference_steps=8, guidance_scale=2.5,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    assert max_pixel_difference(image, expected) <= 2


def test_the_step_loop_never_waits_for_the_host(demo_folder: Path) -> None:
    pipeline = KontextPipeline.from_folder(demo_folder, device="cuda", dtype=torch.bfloat16)
    states = pipeline.prepare([
        GenerationRequest("a boat", image=Image.new("RGB", (256, 256)), width=256, height=256,
                          num_inference_steps=8, seed=5, go_fast=True),
        GenerationRequest("a car", image=Image.new("RGB", (256, 256)), width=256, height=256,
                          num_inference_steps=8, seed=6),
    ])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing call (.item(), a blocking copy) raises
    try:
        while not all(s.done for s in states):
            pipeline.denoise_step(states)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(pipeline.decode(states)) == 2


def test_compiled_with_cuda_graphs_matches_eager_without_recompiles(demo_folder: Path) -> None:
    eager = KontextPipeline.from_folder(demo_folder, device="cuda", dtype=torch.bfloat16)
    compiled = KontextPipeline.from_folder(demo_folder, device="cuda", dtype=torch.bfloat16)
    compile_pipeline(compiled, cuda_graphs=True)
    warm_up(compiled, megapixels=0.0625)

    def request(aspect_ratio: str, reference: bool) -> GenerationRequest:
        return GenerationRequest("a cat", image=random_image(300, 200, seed=3) if reference else None,
                                 aspect_ratio=aspect_ratio, num_inference_steps=4, seed=1, megapixels=0.0625)

    with torch._dynamo.config.patch(error_on_recompile=True):
        for aspect_ratio, reference in [("16:9", True), ("2:3", False), ("1:1", True)]:
            got = compiled.generate(request(aspect_ratio, reference)).image
            expected = eager.generate(request(aspect_ratio, reference)).image
            assert max_pixel_difference(got, expected) <= 4  # bf16: inductor's fused math rounds differently


@pytest.mark.parametrize("backend", [b for b in available_attention_backends() if b != "math"])
def test_every_attention_backend_gives_the_same_image(demo_folder: Path, backend: str) -> None:
    pipeline = KontextPipeline.from_folder(demo_folder, device="cuda", dtype=torch.bfloat16)
    request = GenerationRequest("a boat", width=256, height=256, num_inference_steps=8, seed=5)
    with attention_backend("math"):
        expected = pipeline.generate(request).image
    with attention_backend(backend):
        assert max_pixel_difference(pipeline.generate(request).image, expected) <= 4
