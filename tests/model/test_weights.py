"""Checkpoint loading: both layouts, sharding, the 12B names and shapes, errors, and peak memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
from safetensors.torch import load_file, save_file

from model.config import TransformerConfig, preset
from model.transformer import FluxTransformer
from model.weights import CheckpointError, StateDict, build_transformer, load_transformer

TINY = preset("tiny")


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny diffusers transformer with every weight random, saved in several shards."""
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**TINY.to_diffusers())
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(folder, max_shard_size="40KB")
    return folder


@pytest.fixture(scope="module")
def ours(diffusers_folder: Path) -> FluxTransformer:
    return load_transformer(diffusers_folder, TINY)


def assert_same_weights(a: FluxTransformer, b: FluxTransformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_sharded_folder_loads_from_every_shard(diffusers_folder: Path, ours: FluxTransformer) -> None:
    index = json.loads((diffusers_folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in ours.parameters())


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_bfl_single_file_gives_the_same_model(tmp_path: Path, ours: FluxTransformer, prefix: str) -> None:
    file = tmp_path / "flux1-kontext-dev.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in ours.state_dict().items()}, file)
    assert_same_weights(load_transformer(file, TINY), ours)


def test_in_memory_state_dict_gives_the_same_model(diffusers_folder: Path, ours: FluxTransformer) -> None:
    reference = FluxTransformer2DModel.from_pretrained(diffusers_folder)
    assert_same_weights(build_transformer([StateDict(reference.state_dict())], TINY, "cpu", torch.float32), ours)


def test_loads_to_the_requested_dtype(diffusers_folder: Path, ours: FluxTransformer) -> None:
    model = load_transformer(diffusers_folder, TINY, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.txt_in.weight, ours.txt_in.weight.bfloat16())


def test_kontext_dev_has_exactly_the_bfl_checkpoint_names_and_shapes() -> None:
    with torch.device("meta"):
        ours = FluxTransformer(preset("kontext-dev"))
        reference = FluxTransformer2DModel(**preset("kontext-dev").to_diffusers())
    bfl = dict(ours.state_dict())
    assert len(bfl) == 780
    assert bfl["double_blocks.0.img_attn.qkv.weight"].shape == (9216, 3072)
    assert bfl["double_blocks.18.txt_attn.norm.key_norm.scale"].shape == (128,)
    assert bfl["single_blocks.37.linear1.weight"].shape == (21504, 3072)
    assert bfl["single_blocks.37.linear2.weight"].shape == (3072, 15360)
    assert bfl["final_layer.adaLN_modulation.1.weight"].shape == (6144, 3072)
    assert bfl["guidance_in.in_layer.weight"].shape == (3072, 256)
    # diffusers' own BFL converter must consume every one of our keys and produce exactly its model's keys.
    remaining = dict(bfl)
    converted = convert_flux_transformer_checkpoint_to_diffusers(remaining)
    assert remaining == {}
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_missing_shard_names_the_file(tmp_path: Path, diffusers_folder: Path) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for file in diffusers_folder.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    victim = sorted(folder.glob("*-of-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"{victim.name}: missing checkpoint file"):
        load_transformer(folder, TINY)


def test_truncated_file_names_the_file(tmp_path: Path, ours: FluxTransformer) -> None:
    file = tmp_path / "model.safetensors"
    save_file(ours.state_dict(), file)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read"):
        load_transformer(file, TINY)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path: Path, ours: FluxTransformer) -> None:
    state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    file = tmp_path / "model.safetensors"

    save_file({k: v for k, v in state.items() if k != "single_blocks.1.linear2.bias"}, file)
    with pytest.raises(CheckpointError, match="missing key 'single_blocks.1.linear2.bias'"):
        load_transformer(file, TINY)

    save_file({**state, "lora_up.weight": torch.zeros(2)}, file)
    with pytest.raises(CheckpointError, match="model.safetensors: unexpected key 'lora_up.weight'"):
        load_transformer(file, TINY)

    save_file({**state, "txt_in.weight": torch.zeros(32, 31)}, file)
    with pytest.raises(CheckpointError, match=r"model.safetensors: key 'txt_in.weight' has shape \[32, 31\]"):
        load_transformer(file, TINY)

    bigger = TransformerConfig(**{**TINY.__dict__, "depth_single_blocks": 3})
    save_file(state, file)
    with pytest.raises(CheckpointError, match="missing key 'single_blocks.2."):
        load_transformer(file, bigger)


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_transformer(tmp_path / "nope.safetensors", TINY)


PEAK_RSS_SCRIPT = """
import json, sys, torch
from model.config import TransformerConfig
from model.transformer import FluxTransformer
from model.weights import load_transformer

def status_kb(field):  # VmHWM is this process's peak RSS; ru_maxrss would carry the parent's across exec
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])

mode, folder, config = sys.argv[1], sys.argv[2], TransformerConfig(**json.loads(sys.argv[3]))
before = status_kb("VmRSS")
if mode == "load":
    model = load_transformer(folder, config)
else:  # the model's own footprint: allocated and written once, as loading must end up
    with torch.device("meta"):
        model = FluxTransformer(config)
    model = model.to_empty(device="cpu").requires_grad_(False)
    for param in model.parameters():
        param.fill_(1.0)
print(json.dumps({"growth_bytes": (status_kb("VmHWM") - before) * 1024}))
"""


def peak_rss_growth(mode: str, folder: Path, config: TransformerConfig) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, mode, str(folder), json.dumps(config.__dict__)],
        check=True, capture_output=True, text=True, cwd=Path(__file__).parents[2],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_bytes"]


@pytest.mark.slow
def test_loading_never_holds_a_second_copy(tmp_path: Path) -> None:
    config = TransformerConfig(
        vec_in_dim=64, context_in_dim=256, hidden_size=512, num_heads=8, depth=2, depth_single_blocks=6,
        axes_dim=(8, 28, 28),
    )
    torch.manual_seed(0)
    FluxTransformer2DModel(**config.to_diffusers()).save_pretrained(tmp_path, max_shard_size="40MB")
    shards = sorted(tmp_path.glob("*.safetensors"))
    largest = max(f.stat().st_size for f in shards)
    assert len(shards) >= 4 and sum(f.stat().st_size for f in shards) > 150e6

    model_size = peak_rss_growth("fill", tmp_path, config)
    load_peak = peak_rss_growth("load", tmp_path, config)
    assert model_size > 150e6
    assert load_peak < model_size + largest, (load_peak, model_size, largest)


def test_diffusers_loader_agrees_on_a_loaded_checkpoint(diffusers_folder: Path, ours: FluxTransformer) -> None:
    """Sanity check of the fixture itself: diffusers reads back the weights it wrote."""
    reference = FluxTransformer2DModel.from_pretrained(diffusers_folder)
    shards = sorted(diffusers_folder.glob("*.safetensors"))
    written = {}
    for shard in shards:
        written.update(load_file(shard))
    assert written.keys() == reference.state_dict().keys()
    assert torch.equal(ours.img_in.weight, written["x_embedder.weight"])
