"""The `kontext` console script, run as a user runs it."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from server.cli import main


def test_demo_model_runs_from_the_console_script(tmp_path: Path) -> None:
    kontext = shutil.which("kontext")
    assert kontext, "the package is not installed (pip install -e .)"
    out = tmp_path / "apple.png"
    result = subprocess.run(
        [kontext, "generate", "--model", "demo", "--prompt", "a red apple", "--width", "256", "--height", "256",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (256, 256)
    assert "seed " in result.stdout and "images are noise" in result.stdout
    assert "images are noise" in result.stderr  # logged as a warning too


def run(demo_folder: Path, out: Path, *args: str) -> int:
    return main(["generate", "--model", str(demo_folder), "--steps", "2", "--out", str(out), *args])


def test_reference_image_from_a_url(tmp_path: Path, demo_folder: Path, image_host: str) -> None:
    out = tmp_path / "edit.png"
    assert run(demo_folder, out, "--prompt", "edit", "--image", f"{image_host}/ref.png", "--no-auto-resize") == 0
    assert Image.open(out).size == (96, 64)  # no size given: the output takes the reference's size


def test_aspect_ratio_sets_the_output_size(tmp_path: Path, demo_folder: Path) -> None:
    assert run(demo_folder, tmp_path / "o.png", "--prompt", "p", "--aspect-ratio", "21:9", "--steps", "1") == 0
    assert Image.open(tmp_path / "o.png").size == (1568, 672)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--width", "256"], "both --width and --height"),
        (["--width", "256", "--height", "256", "--aspect-ratio", "1:1"], "not both"),
        (["--aspect-ratio", "wide"], "aspect ratio must look like"),
        (["--image", "{server}/missing.png"], "404"),
        (["--image", "{server}/broken.png"], "cannot identify image"),
        (["--image", "/no/such/file.png"], "No such file"),
        (["--steps", "0"], "num_inference_steps"),
        (["--width", "8", "--height", "256"], "too small"),
        pytest.param(["--device", "cuda"], "no usable CUDA device", marks=pytest.mark.skipif(
            torch.cuda.is_available(), reason="this machine has CUDA")),
    ],
)
def test_bad_input_exits_2_with_a_message(
    tmp_path: Path, demo_folder: Path, image_host: str, capsys, args: list[str], message: str
) -> None:
    argv = [a.replace("{server}", image_host) for a in args]
    assert run(demo_folder, tmp_path / "o.png", "--prompt", "p", *argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_missing_model_folder_is_named(tmp_path: Path, capsys) -> None:
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "p", "--out", str(tmp_path / "o.png")]) == 2
    assert "nope: not a diffusers checkpoint folder" in capsys.readouterr().err
