"""Failure modes against real server processes: overload, deadlines, crash and restart, disk errors, bad binds.

This server runs at the full 1 MP table sizes, so a 50-step job keeps the CPU busy long enough to observe.
"""

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import replicate
from replicate.exceptions import ModelError, ReplicateError

from server.scheduler import SHUTDOWN_ERROR
from server.store import RESTART_ERROR
from tests.server.conftest import API_KEY, REPO, RunningServer, free_port, start_server

DEV = "black-forest-labs/flux-kontext-dev"


def create(server: RunningServer, steps: int, image: str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{DEV}/predictions",
        json={"input": {"prompt": "p", "input_image": image, "num_inference_steps": steps}},
        headers={**server.headers, **(headers or {})}, timeout=120,
    )


def status(server: RunningServer, prediction_id: str) -> dict:
    return httpx.get(f"{server.url}/v1/predictions/{prediction_id}", headers=server.headers, timeout=10).json()


def wait_for(server: RunningServer, prediction_id: str, wanted: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (body := status(server, prediction_id))["status"] not in wanted:
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    return body


def test_overload_deadline_crash_restart_and_disk_errors(tmp_path: Path, image_host: str) -> None:
    data = tmp_path / "data"
    server = start_server(data, megapixels="1.0", max_queue="1", max_batch_size="1")
    image = f"{image_host}/ref.png"
    try:
        finished = create(server, 4, image, {"Prefer": "wait"}).json()
        assert finished["status"] == "succeeded"

        running = create(server, 50, image).json()
        wait_for(server, running["id"], {"processing"})
        queued = create(server, 4, image, {"Cancel-After": "5s"})
        assert queued.status_code == 201 and "deadline" in queued.json()

        # The queue (max_queue=1) is full: 429 in each API's shape, with Retry-After; nothing is stored.
        before = len(httpx.get(f"{server.url}/v1/predictions", headers=server.headers).json()["results"])
        overloaded = create(server, 4, image)
        assert overloaded.status_code == 429 and int(overloaded.headers["retry-after"]) >= 1
        assert overloaded.json()["status"] == 429 and overloaded.json()["retry_after"] >= 1
        with pytest.raises(ReplicateError) as raised:
            replicate.Client(api_token=API_KEY, base_url=server.url).predictions.create(
                version=DEV, input={"prompt": "p", "input_image": image})
        assert raised.value.status == 429
        assert len(httpx.get(f"{server.url}/v1/predictions", headers=server.headers).json()["results"]) == before

        # Cancel-After passes while the job is still queued: aborted, never started.
        aborted = wait_for(server, queued.json()["id"], {"aborted", "canceled", "succeeded"}, timeout=20)
        assert aborted["status"] == "aborted" and aborted["started_at"] is None

        also_queued = create(server, 4, image).json()
        assert status(server, running["id"])["status"] == "processing"
        server.stop(signal.SIGKILL)  # crash while one job runs and one waits
    finally:
        server.stop(signal.SIGKILL)

    server = start_server(data, megapixels="1.0")
    try:
        for lost in (running["id"], also_queued["id"]):
            body = status(server, lost)
            assert body["status"] == "failed" and body["error"] == RESTART_ERROR
        kept = status(server, finished["id"])
        assert kept["status"] == "succeeded" and kept["output"].startswith(server.url)
        assert kept["output"].split("/files/")[1] == finished["output"].split("/files/")[1]
        assert httpx.get(kept["output"]).status_code == 200  # the output file survived too
        assert status(server, queued.json()["id"])["status"] == "aborted"

        # The output directory cannot be written: that prediction fails with the reason; the server keeps serving.
        shutil.move(data / "files", data / "files.away")
        (data / "files").write_text("not a directory")
        client = replicate.Client(api_token=API_KEY, base_url=server.url)
        with pytest.raises(ModelError, match="could not write the output file"):
            client.run(DEV, input={"prompt": "p", "input_image": image, "num_inference_steps": 4})
        (data / "files").unlink()
        shutil.move(data / "files.away", data / "files")
        output = client.run(DEV, input={"prompt": "p", "input_image": image, "num_inference_steps": 4})
        assert httpx.get(output).status_code == 200
    finally:
        server.stop()
    # SIGTERM shuts down gracefully (uvicorn then re-raises the signal, so the exit status is -SIGTERM).
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in server.log() and "Traceback" not in server.log()


def test_health_is_503_until_the_model_loads_and_names_a_load_failure(tmp_path: Path) -> None:
    server = start_server(tmp_path / "ok")
    try:
        assert server.saw_loading  # the port opens first; /health said 503 "loading" until the model was ready
    finally:
        server.stop()
    with pytest.raises(RuntimeError, match="did not become ready") as raised:
        start_server(tmp_path / "bad", model="/no/such/model", ready_timeout="15")
    assert "/no/such/model: not a diffusers checkpoint folder" in str(raised.value)


def test_non_loopback_bind_without_keys_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("KONTEXT_")}
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "refusing to serve 0.0.0.0 without API keys" in result.stderr


def test_sigterm_drains_running_predictions_and_refuses_new_ones(tmp_path: Path, image_host: str) -> None:
    image = f"{image_host}/ref.png"
    server = start_server(tmp_path / "drain", megapixels="1.0")
    running = create(server, 6, image).json()
    wait_for(server, running["id"], {"processing"})
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = create(server, 4, image)
    assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "5"
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 503 and health.json()["status"] == "draining"
    server.process.wait(timeout=60)
    server = start_server(tmp_path / "drain", megapixels="1.0")
    try:
        assert status(server, running["id"])["status"] == "succeeded"  # it finished before the exit
    finally:
        server.stop()


def test_grace_period_over_fails_what_is_left_with_a_clear_error(tmp_path: Path, image_host: str) -> None:
    server = start_server(tmp_path / "short", megapixels="1.0", shutdown_grace_s="0.5")
    running = create(server, 50, f"{image_host}/ref.png").json()
    wait_for(server, running["id"], {"processing"})
    server.stop()
    server = start_server(tmp_path / "short", megapixels="1.0")
    try:
        body = status(server, running["id"])
        assert body["status"] == "failed" and body["error"] == SHUTDOWN_ERROR
    finally:
        server.stop()


def test_webhook_deliveries_survive_a_restart(tmp_path: Path, image_host: str) -> None:
    received: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    port = free_port()  # nothing listens there yet: the receiver is down
    server = start_server(tmp_path / "data")
    try:
        prediction = httpx.post(
            f"{server.url}/v1/models/{DEV}/predictions", headers={**server.headers, "Prefer": "wait"},
            json={"input": {"prompt": "p", "input_image": f"{image_host}/ref.png", "num_inference_steps": 4},
                  "webhook": f"http://127.0.0.1:{port}/hook", "webhook_events_filter": ["completed"]},
        ).json()
        assert prediction["status"] == "succeeded"
        time.sleep(0.5)  # the first attempt fails; a retry is due in a second
    finally:
        server.stop(signal.SIGKILL)
    receiver = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    server = start_server(tmp_path / "data")
    try:
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(received) == 1 and json.loads(received[0])["id"] == prediction["id"]
    finally:
        server.stop()
        receiver.shutdown()
