"""A real server, started as a user starts it (`python -m server.cli serve`) on 127.0.0.1 with the demo model."""

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import random_image

REPO = Path(__file__).parents[2]
API_KEY = "sk-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    process: subprocess.Popen
    log_file: Path
    saw_loading: bool = False  # /health answered 503 before it answered 200

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def log(self) -> str:
        return self.log_file.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


def start_server(data_dir: Path, ready_timeout: str = "180", **settings: str) -> RunningServer:
    """Start `kontext serve` with the demo model at 1/16 of the table sizes (256² instead of 1024²); wait until
    /health says ready. On failure the RuntimeError carries the server's last status and its log."""
    port = free_port()
    env = {
        **os.environ, "KONTEXT_MODEL": "demo", "KONTEXT_DEVICE": "cpu", "KONTEXT_DATA_DIR": str(data_dir),
        "KONTEXT_PORT": str(port), "KONTEXT_API_KEYS": API_KEY, "KONTEXT_MEGAPIXELS": "0.0625",
        "KONTEXT_FETCH_ALLOW": "127.0.0.0/8",  # the tests' image hosts and webhook receivers are on loopback
        **{f"KONTEXT_{k.upper()}": v for k, v in settings.items()},
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / f"server-{port}.log"
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=REPO, env=env,
                               stdout=open(log_file, "w"), stderr=subprocess.STDOUT)
    server = RunningServer(f"http://127.0.0.1:{port}", data_dir, process, log_file)
    deadline, last = time.monotonic() + float(ready_timeout), "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log()}")
        try:
            response = httpx.get(f"{server.url}/health", timeout=2)
            last = response.text
            if response.status_code == 200:
                return server
            server.saw_loading = server.saw_loading or response.json()["status"] == "loading"
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"the server did not become ready; last /health: {last}\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server shared by the API tests."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def image_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A loopback web server with a few input images: ref.png (96×64), tall.jpg (64×128), broken.png."""
    folder = tmp_path_factory.mktemp("images")
    random_image(96, 64, seed=1).save(folder / "ref.png")
    random_image(64, 128, seed=2).save(folder / "tall.jpg")
    (folder / "broken.png").write_bytes(b"not an image")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
