"""The speed settings reach a real server: compiled and warmed up before it says ready, fp8, another backend."""

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.server.conftest import REPO, start_server


def test_server_compiles_quantizes_and_serves(tmp_path: Path, image_host: str) -> None:
    server = start_server(tmp_path, ready_timeout="300", compile="true", quantize="fp8", attention="math")
    try:
        assert server.saw_loading  # the warm-up compile happens before /health says ready
        assert "compiled in" in server.log()
        body = {"input": {"prompt": "fast", "input_image": f"{image_host}/ref.png", "num_inference_steps": 6}}
        response = httpx.post(f"{server.url}/v1/models/black-forest-labs/flux-kontext-dev/predictions", json=body,
                              headers={**server.headers, "Prefer": "wait"}, timeout=120)
        assert response.status_code == 201 and response.json()["status"] == "succeeded"
    finally:
        server.stop()


def test_an_unavailable_backend_is_refused_before_loading(tmp_path: Path) -> None:
    env = {**os.environ, "KONTEXT_ATTENTION": "flash9", "KONTEXT_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "attention 'flash9' is not available here; choose from ['math', 'sdpa'" in result.stderr.replace("'cudnn', ", "")
