"""Shared fixtures: the tiny random checkpoint in the diffusers layout, loaded by us and by diffusers."""

from pathlib import Path

import pytest
import torch

from model.demo import save_demo_checkpoint
from model.pipeline import KontextPipeline


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_demo_checkpoint(tmp_path_factory.mktemp("demo") / "checkpoint")


@pytest.fixture(scope="session")
def pipeline(demo_folder: Path) -> KontextPipeline:
    return KontextPipeline.from_folder(demo_folder)


@pytest.fixture(scope="session")
def diffusers_pipeline(demo_folder: Path):
    from diffusers import FluxKontextPipeline

    reference = FluxKontextPipeline.from_pretrained(demo_folder, torch_dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    return reference
