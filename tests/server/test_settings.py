"""Settings: dataclass defaults < YAML file < environment."""

from pathlib import Path

import pytest

from server.settings import Settings, load_settings

CONFIGS = Path(__file__).parents[2] / "configs"


def test_defaults_without_file_or_environment() -> None:
    assert load_settings(env={}) == Settings()


def test_every_shipped_config_loads() -> None:
    for file in CONFIGS.glob("*.yaml"):
        load_settings(file, env={})
    assert load_settings(CONFIGS / "kontext-dev.yaml", env={}).dtype == "bfloat16"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text("model: /models/a\ndevice: cuda\n")
    env = {"KONTEXT_CONFIG": str(file), "KONTEXT_DEVICE": "cpu", "KONTEXT_TRANSFORMER": "none"}
    assert load_settings(env=env) == Settings(model="/models/a", device="cpu", transformer=None)


def test_unknown_and_invalid_settings_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text("modle: demo\n")
    with pytest.raises(ValueError, match="unknown settings \\['modle'\\]"):
        load_settings(file, env={})
    file.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(file, env={})
    with pytest.raises(ValueError, match="model cannot be empty"):
        load_settings(env={"KONTEXT_MODEL": ""})
