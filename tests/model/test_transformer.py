"""Our transformer against diffusers' FluxTransformer2DModel with the same random weights (fp32, CPU)."""

import time
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel

from model.config import TransformerConfig, preset
from model.layers import SingleStreamBlock, rope_frequencies
from model.sampling import image_ids
from model.transformer import FluxTransformer
from model.weights import load_transformer

CONFIG = preset("tiny")
TXT, GRID = 7, (4, 5)  # text tokens; target grid (rows, cols)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[FluxTransformer2DModel, FluxTransformer]:
    torch.manual_seed(0)
    reference = FluxTransformer2DModel(**CONFIG.to_diffusers()).eval()
    with torch.no_grad():
        for param in reference.parameters():  # every weight random, norm scales and biases included
            param.normal_(0.0 if param.dim() > 1 else 1.0, 0.3)
    folder = tmp_path_factory.mktemp("transformer")
    reference.save_pretrained(folder)
    return reference, load_transformer(Path(folder), CONFIG)


def inputs(batch: int, reference_grid: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = [image_ids(*GRID, index=0)]
    if reference_grid is not None:
        ids.append(image_ids(*reference_grid, index=1))
    img_ids = torch.cat(ids)
    return {
        "img": torch.randn(batch, len(img_ids), CONFIG.in_channels, generator=generator),
        "img_ids": img_ids,
        "txt": torch.randn(batch, TXT, CONFIG.context_in_dim, generator=generator),
        "y": torch.randn(batch, CONFIG.vec_in_dim, generator=generator),
        "timesteps": torch.tensor([0.93, 0.31, 0.5][:batch]),
        "guidance": torch.tensor([2.5, 4.0, 1.0][:batch]),
    }


def run_diffusers(model: FluxTransformer2DModel, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(
            hidden_states=x["img"], encoder_hidden_states=x["txt"], pooled_projections=x["y"],
            timestep=x["timesteps"], guidance=x["guidance"], img_ids=x["img_ids"], txt_ids=torch.zeros(TXT, 3),
            return_dict=False,
        )[0]


def run_ours(model: FluxTransformer, x: dict[str, torch.Tensor], num_target_tokens: int | None = None) -> torch.Tensor:
    batch = x["img"].shape[0]
    with torch.no_grad():
        return model(
            img=x["img"], img_ids=x["img_ids"].expand(batch, -1, -1), txt=x["txt"],
            txt_ids=torch.zeros(batch, TXT, 3), timesteps=x["timesteps"], y=x["y"], guidance=x["guidance"],
            num_target_tokens=num_target_tokens,
        )


def test_text_to_image_sequence_matches_diffusers(models) -> None:
    reference, ours = models
    x = inputs(batch=2, reference_grid=None)
    assert relative_error(run_ours(ours, x), run_diffusers(reference, x)) < 1e-5


def test_kontext_sequence_matches_diffusers_and_drops_reference_predictions(models) -> None:
    reference, ours = models
    x = inputs(batch=2, reference_grid=(3, 6))
    target_tokens = GRID[0] * GRID[1]
    expected = run_diffusers(reference, x)[:, :target_tokens]
    ours_out = run_ours(ours, x, num_target_tokens=target_tokens)
    assert ours_out.shape == expected.shape
    assert relative_error(ours_out, expected) < 1e-5


def test_samples_in_one_batch_keep_their_own_timestep_guidance_and_ids(models) -> None:
    _, ours = models
    x = inputs(batch=2, reference_grid=(2, 5))
    ids = torch.stack([x["img_ids"], x["img_ids"].flip(0)])  # a different id layout for the second sample
    with torch.no_grad():
        batched = ours(x["img"], ids, x["txt"], torch.zeros(2, TXT, 3), x["timesteps"], x["y"], x["guidance"])
        for i in range(2):
            alone = ours(
                x["img"][i : i + 1], ids[i : i + 1], x["txt"][i : i + 1], torch.zeros(1, TXT, 3),
                x["timesteps"][i : i + 1], x["y"][i : i + 1], x["guidance"][i : i + 1],
            )
            assert relative_error(batched[i : i + 1], alone) < 1e-5
    assert relative_error(batched[0], batched[1]) > 1e-2  # the samples really differ


def test_guidance_distilled_model_requires_guidance(models) -> None:
    _, ours = models
    x = inputs(batch=1, reference_grid=None)
    x["guidance"] = None
    with pytest.raises(ValueError, match="guidance"):
        run_ours(ours, x)


def test_kontext_dev_preset_is_12b_and_builds_on_meta_quickly() -> None:
    start = time.perf_counter()
    with torch.device("meta"):
        model = FluxTransformer(preset("kontext-dev"))
    assert time.perf_counter() - start < 1.0
    assert sum(p.numel() for p in model.parameters()) == 11_901_408_320


def test_config_validates_head_sizes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="axes_dim"):
        TransformerConfig(axes_dim=(16, 56, 50))
    with pytest.raises(ValueError, match="unknown transformer preset"):
        preset("kontext-ultra")


def test_diffusers_config_round_trip() -> None:
    for name in ("tiny", "kontext-dev"):
        assert TransformerConfig.from_diffusers(preset(name).to_diffusers()) == preset(name)


def test_single_block_computes_only_the_rows_asked_for_with_the_same_values() -> None:
    torch.manual_seed(3)
    block = SingleStreamBlock(CONFIG.hidden_size, CONFIG.num_heads, CONFIG.mlp_hidden_dim).eval()
    x, vec = torch.randn(2, 29, CONFIG.hidden_size), torch.randn(2, CONFIG.hidden_size)
    pe = rope_frequencies(torch.randn(2, 29, 3) * 10, CONFIG.axes_dim, CONFIG.theta)
    with torch.no_grad():
        full = block(x, vec, pe)
        target = block(x, vec, pe, start=TXT, end=TXT + 12)
    assert target.shape == (2, 12, CONFIG.hidden_size)
    torch.testing.assert_close(target, full[:, TXT : TXT + 12], rtol=1e-5, atol=1e-6)
