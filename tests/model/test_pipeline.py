"""End to end against diffusers' FluxKontextPipeline on the tiny random checkpoint (fp32, CPU)."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from model.pipeline import GenerationRequest, KontextPipeline, SpeedOptions, load
from model.weights import CheckpointError
from server.cli import main
from tests.helpers import max_pixel_difference, random_image

WIDTH, HEIGHT, STEPS = 256, 192, 6


def diffusers_image(reference, prompt: str, seed: int, image: Image.Image | None = None) -> Image.Image:
    return reference(
        prompt=prompt, image=image, width=WIDTH, height=HEIGHT, max_area=WIDTH * HEIGHT, num_inference_steps=STEPS,
        guidance_scale=2.5, generator=torch.Generator("cpu").manual_seed(seed), _auto_resize=False,
    ).images[0]


def cli_image(tmp_path: Path, folder: Path, prompt: str, seed: int, *extra: str) -> Image.Image:
    out = tmp_path / f"out-{seed}.png"
    argv = ["generate", "--model", str(folder), "--prompt", prompt, "--width", str(WIDTH), "--height", str(HEIGHT),
            "--steps", str(STEPS), "--seed", str(seed), "--device", "cpu", "--dtype", "float32", "--out", str(out)]
    assert main(argv + list(extra)) == 0
    return Image.open(out)


def test_text_to_image_matches_diffusers(tmp_path: Path, demo_folder: Path, diffusers_pipeline) -> None:
    ours = cli_image(tmp_path, demo_folder, "a red fox in the snow", 7)
    expected = diffusers_image(diffusers_pipeline, "a red fox in the snow", 7)
    assert ours.size == (WIDTH, HEIGHT)
    assert max_pixel_difference(ours, expected) <= 2


def test_edit_matches_diffusers(tmp_path: Path, demo_folder: Path, diffusers_pipeline) -> None:
    source = random_image(200, 300, seed=1)  # not a multiple of 16: rounded down to 192×288 by both
    source.save(tmp_path / "source.png")
    ours = cli_image(tmp_path, demo_folder, "make it blue", 3, "--image", str(tmp_path / "source.png"),
                     "--no-auto-resize")
    expected = diffusers_image(diffusers_pipeline, "make it blue", 3, image=source)
    assert max_pixel_difference(ours, expected) <= 2
    assert max_pixel_difference(ours, cli_image(tmp_path, demo_folder, "make it blue", 3)) > 10  # the edit matters


def test_bfl_single_file_gives_the_same_image(
    tmp_path: Path, demo_folder: Path, pipeline: KontextPipeline, diffusers_pipeline
) -> None:
    file = tmp_path / "flux1-kontext-dev.safetensors"
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in pipeline.transformer.state_dict().items()}, file)
    ours = cli_image(tmp_path, demo_folder, "a lighthouse", 11, "--transformer", str(file))
    assert max_pixel_difference(ours, diffusers_image(diffusers_pipeline, "a lighthouse", 11)) <= 2


def test_requests_at_different_steps_share_forward_passes(pipeline: KontextPipeline) -> None:
    requests = [
        GenerationRequest("a cat", image=random_image(128, 96, seed=s), width=128, height=96, auto_resize=False,
                          num_inference_steps=STEPS, seed=s, guidance=g)
        for s, g in ((1, 2.5), (2, 4.0))
    ]
    alone = [pipeline.generate(r).image for r in requests]
    first, second = pipeline.prepare(requests)
    pipeline.denoise_step([first])  # the second request joins one step later
    forward_passes = 1
    while not second.done:
        pipeline.denoise_step([s for s in (first, second) if not s.done])
        forward_passes += 1
    assert first.done and forward_passes == STEPS + 1
    together = pipeline.decode([first, second])
    assert max_pixel_difference(together[0], alone[0]) <= 2
    assert max_pixel_difference(together[1], alone[1]) <= 2


def test_reference_is_auto_resized_to_its_preferred_resolution(pipeline: KontextPipeline) -> None:
    (state,) = pipeline.prepare([GenerationRequest("x", image=random_image(300, 200), num_inference_steps=2)])
    assert (state.width, state.height) == (1248, 832)  # output follows the reference's preferred resolution
    assert state.reference is not None and state.reference.shape[1] == (1248 // 16) * (832 // 16)
    (state,) = pipeline.prepare([GenerationRequest("x", image=random_image(300, 200), auto_resize=False)])
    assert (state.width, state.height) == (288, 192)
    assert state.img_ids[0, -1].tolist() == [1.0, 11.0, 17.0]  # reference ids (1, row, col), last token


def test_seed_is_reported_and_reproducible(pipeline: KontextPipeline) -> None:
    request = GenerationRequest("seeded", width=64, height=64, num_inference_steps=2)
    first = pipeline.generate(request)
    again = pipeline.generate(GenerationRequest("seeded", width=64, height=64, num_inference_steps=2, seed=first.seed))
    assert max_pixel_difference(first.image, again.image) == 0


def test_batches_must_share_shapes(pipeline: KontextPipeline) -> None:
    a, b = pipeline.prepare([GenerationRequest("a", width=64, height=64), GenerationRequest("b", width=64, height=128)])
    with pytest.raises(ValueError, match="same shapes"):
        pipeline.denoise_step([a, b])


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model_index.json"):
        KontextPipeline.from_folder(tmp_path)


def test_speed_options_are_checked_before_anything_loads() -> None:
    with pytest.raises(ValueError, match="CUDA graphs come with compile"):
        load("demo", speed=SpeedOptions(cuda_graphs=True))
    with pytest.raises(ValueError, match="unavailable attention backend 'flash9'"):
        load("demo", speed=SpeedOptions(attention="flash9"))
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        load("demo", speed=SpeedOptions(quantize="int3"))


def test_text_encoders_may_live_on_another_device(demo_folder: Path) -> None:
    pipeline = KontextPipeline.from_folder(demo_folder, text_encoder_device="meta")
    assert pipeline.text_encoder.t5.device.type == "meta" and pipeline.device.type == "cpu"
