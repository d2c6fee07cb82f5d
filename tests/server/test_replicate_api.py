"""Replicate's API with the real `replicate` client (1.0.7) and raw HTTP, against a real server (api-compat §6)."""

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction as ClientPrediction

from tests.helpers import max_pixel_difference
from tests.server.conftest import API_KEY, RunningServer

DEV = "black-forest-labs/flux-kontext-dev"
VERSION = "a" * 64


@pytest.fixture(scope="module")
def client(server: RunningServer) -> replicate.Client:
    return replicate.Client(api_token=API_KEY, base_url=server.url)


def fetch_image(url: str) -> Image.Image:
    response = httpx.get(url, timeout=10)  # no auth: output URLs are public (JS clients send no headers)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


def create(server: RunningServer, body: dict, path: str = f"/v1/models/{DEV}/predictions",
           headers: dict | None = None) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={**server.headers, **(headers or {})}, timeout=90)


def occupy(server: RunningServer, image_host: str, jobs: int = 4, steps: int = 50) -> list[str]:
    """Queue work so the next request has to wait; returns the prediction ids."""
    body = {"input": {"prompt": "busy", "input_image": f"{image_host}/ref.png", "num_inference_steps": steps}}
    return [create(server, body).json()["id"] for _ in range(jobs)]


def wait_done(server: RunningServer, prediction_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{server.url}/v1/predictions/{prediction_id}", headers=server.headers).json()
        if body["status"] in ("succeeded", "failed", "canceled", "aborted"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"{prediction_id} did not finish")


def test_run_model_with_an_image_url(client: replicate.Client, image_host: str) -> None:
    output = client.run(DEV, input={"prompt": "make it red", "input_image": f"{image_host}/ref.png"})
    assert isinstance(output, str) and output.startswith("http://127.0.0.1")  # http URLs stay str (trap T5)
    image = fetch_image(output)
    assert image.format == "WEBP" and image.size == (304, 208)  # 96×64 → 1248×832 preferred, at 1/16 area


def test_sync_wait_that_expires_answers_starting_and_the_client_polls(
    client: replicate.Client, server: RunningServer, image_host: str
) -> None:
    occupy(server, image_host)
    start = time.monotonic()
    raw = create(server, {"input": {"prompt": "late", "input_image": f"{image_host}/ref.png"}},
                 headers={"Prefer": "wait=1"})
    assert time.monotonic() - start < 1.5
    assert raw.status_code == 201 and raw.json()["status"] == "starting" and raw.json()["output"] is None
    assert raw.headers["location"] == raw.json()["urls"]["get"]
    output = client.run(DEV, input={"prompt": "late", "input_image": f"{image_host}/ref.png"}, wait=1)
    assert output is not None and fetch_image(output).size == (304, 208)  # polled to the end, not None (T2)


def test_run_without_waiting_polls(client: replicate.Client, image_host: str) -> None:
    output = client.run(DEV, input={"prompt": "p", "input_image": f"{image_host}/tall.jpg"}, wait=False)
    assert fetch_image(output).size == (176, 352)  # 64×128 → 720×1456 preferred, at 1/16 area


def test_run_with_a_version_id(client: replicate.Client, image_host: str) -> None:
    output = client.run(f"{DEV}:{VERSION}", input={"prompt": "p", "input_image": f"{image_host}/ref.png"})
    assert fetch_image(output).size == (304, 208)


def test_create_with_owner_name_as_version_then_wait(client: replicate.Client, image_host: str) -> None:
    prediction = client.predictions.create(version=DEV, input={"prompt": "p", "input_image": f"{image_host}/ref.png",
                                                               "output_format": "png", "seed": 1234})
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.model == DEV and prediction.version == "hidden"
    assert "Using seed: 1234" in prediction.logs and "step 28/28" in prediction.logs
    assert prediction.metrics["predict_time"] > 0
    assert fetch_image(prediction.output).format == "PNG"


def test_file_inputs_upload_or_inline(client: replicate.Client, image_host: str) -> None:
    data = httpx.get(f"{image_host}/ref.png").content
    uploaded = client.run(DEV, input={"prompt": "p", "input_image": io.BytesIO(data)})
    inline = client.run(DEV, input={"prompt": "p", "input_image": io.BytesIO(data)},
                        file_encoding_strategy="base64")  # data:application/octet-stream: we sniff the type
    assert fetch_image(uploaded).size == fetch_image(inline).size == (304, 208)
    listed = client.predictions.list().results[0]  # the inline one: its data URI is shortened in the echo
    assert listed.input["input_image"].startswith("data:application/octet-stream;base64,")
    assert listed.input["input_image"].endswith("characters)") and len(listed.input["input_image"]) < 100


def test_every_prediction_parses_in_the_client(server: RunningServer, image_host: str) -> None:
    prediction = create(server, {"input": {"prompt": "p", "input_image": f"{image_host}/ref.png"}}).json()
    done = wait_done(server, prediction["id"])
    for body in (prediction, done):
        parsed = ClientPrediction(**body)
        assert isinstance(parsed.version, str) and isinstance(parsed.model, str)
        assert all(isinstance(url, str) and url.startswith(server.url) for url in body["urls"].values())


def test_cancel_a_queued_prediction(client: replicate.Client, server: RunningServer, image_host: str) -> None:
    occupy(server, image_host)
    prediction = client.predictions.create(version=DEV, input={"prompt": "p", "input_image": f"{image_host}/ref.png"})
    client.predictions.cancel(prediction.id)
    prediction.reload()
    assert prediction.status == "canceled" and prediction.output is None
    assert wait_done(server, prediction.id)["status"] == "canceled"


def test_cancel_a_running_prediction_stops_it_at_a_step(server: RunningServer, image_host: str) -> None:
    (running,) = occupy(server, image_host, jobs=1, steps=50)
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/v1/predictions/{running}", headers=server.headers).json()["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    canceled = httpx.post(f"{server.url}/v1/predictions/{running}/cancel", headers=server.headers).json()
    final = wait_done(server, running)
    if final["status"] == "canceled":  # the normal case: stopped before step 50
        assert "step 50/50" not in final["logs"] and final["output"] is None
    else:  # it finished in the moment between the poll and the cancel; then the cancel changes nothing
        assert final["status"] == "succeeded" and canceled["status"] == "succeeded"


@pytest.mark.parametrize(
    "values,field,kind",
    [
        ({"input_image": "IMAGE"}, "input", "required"),
        ({"prompt": "p"}, "input", "required"),
        ({"prompt": "p", "input_image": "IMAGE", "num_inference_steps": 51}, "input.num_inference_steps",
         "number_lte"),
        ({"prompt": "p", "input_image": "IMAGE", "aspect_ratio": "7:3"}, "input.aspect_ratio", "enum"),
        ({"prompt": "p", "input_image": "IMAGE", "guidance": "high"}, "input.guidance", "invalid_type"),
        ({"prompt": "p", "input_image": "{host}/broken.png"}, "input.input_image", "format"),
        ({"prompt": "p", "input_image": "{host}/missing.png"}, "input.input_image", "format"),
        ({"prompt": "p", "input_image": "ftp://example/x.png"}, "input.input_image", "format"),
    ],
)
def test_invalid_input_is_a_422_problem(client: replicate.Client, image_host: str, values: dict, field: str,
                                         kind: str) -> None:
    values = {k: v.replace("IMAGE", f"{image_host}/ref.png").replace("{host}", image_host) if isinstance(v, str)
              else v for k, v in values.items()}
    with pytest.raises(ReplicateError) as raised:
        client.predictions.create(version=DEV, input=values)
    assert raised.value.status == 422 and raised.value.title == "Input validation failed"
    assert field in raised.value.detail


def test_overlong_prompts_and_bad_json_are_refused(server: RunningServer, image_host: str) -> None:
    long = create(server, {"input": {"prompt": "p" * 10_001, "input_image": f"{image_host}/ref.png"}})
    assert long.status_code == 422 and long.json()["invalid_fields"][0]["field"] == "input.prompt"
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        bad = httpx.post(f"{server.url}/v1/models/{DEV}/predictions", content=raw,
                         headers={**server.headers, "Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["status"] == 400


def test_pro_and_max_schemas(server: RunningServer, image_host: str) -> None:
    response = create(server, {"input": {"prompt": "p", "output_format": "webp"}},
                      path="/v1/models/black-forest-labs/flux-kontext-pro/predictions")
    assert response.status_code == 422
    assert response.json()["invalid_fields"][0] == {
        "field": "input.output_format", "type": "enum",
        "description": 'output_format must be one of the following: "jpg", "png"'}
    text_to_image = create(server, {"input": {"prompt": "a red kite", "aspect_ratio": "1:1", "safety_tolerance": 2,
                                              "prompt_upsampling": True}},
                           path="/v1/models/black-forest-labs/flux-kontext-max/predictions",
                           headers={"Prefer": "wait"})
    body = text_to_image.json()
    assert body["status"] == "succeeded" and body["model"] == "black-forest-labs/flux-kontext-max"
    assert fetch_image(body["output"]).size == (256, 256) and body["output"].endswith(".png")


def test_unknown_model_and_prediction_are_404(server: RunningServer) -> None:
    assert create(server, {"input": {}}, path="/v1/models/acme/flux-kontext-dev/predictions").status_code == 404
    missing = httpx.get(f"{server.url}/v1/predictions/nope", headers=server.headers)
    assert missing.status_code == 404 and missing.json()["status"] == 404
    bad_version = create(server, {"version": "not-a-version", "input": {}}, path="/v1/predictions")
    assert bad_version.status_code == 422 and "version" in bad_version.json()["detail"]


@pytest.mark.parametrize("header", [f"Bearer {API_KEY}", f"Token {API_KEY}", API_KEY])
def test_auth_schemes_accepted(server: RunningServer, header: str) -> None:
    response = httpx.get(f"{server.url}/v1/predictions", headers={"Authorization": header})
    assert response.status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_missing_or_wrong_key_is_401(server: RunningServer, headers: dict) -> None:
    response = httpx.get(f"{server.url}/v1/predictions", headers=headers)
    assert response.status_code == 401 and response.json()["title"] == "Unauthenticated"
    with pytest.raises(ReplicateError) as raised:
        replicate.Client(api_token="wrong", base_url=server.url).predictions.list()
    assert raised.value.status == 401


def test_list_paginates_with_absolute_next(client: replicate.Client, server: RunningServer) -> None:
    first = client.predictions.list()
    assert first.results and all(p.status for p in first.results)
    raw = httpx.get(f"{server.url}/v1/predictions", headers=server.headers).json()
    assert raw["previous"] is None and (raw["next"] is None or raw["next"].startswith(server.url))
    seen = [p.id for page in replicate.pagination.paginate(client.predictions.list) for p in page]
    assert len(seen) == len(set(seen)) >= len(first.results)


def test_deployments_path_and_cometapi_shapes(server: RunningServer, image_host: str) -> None:
    image = f"{image_host}/ref.png"
    deployment = create(server, {"input": {"prompt": "p", "input_image": image}},
                        path=f"/v1/deployments/{DEV}/predictions", headers={"Prefer": "wait"}).json()
    assert deployment["status"] == "succeeded" and deployment["deployment"] == DEV
    comet = create(server, {"model": "black-forest-labs/flux-kontext-pro", "input": {"prompt": "p", "input_image": image}},
                   path="/replicate/v1/predictions", headers={"Prefer": "wait=10"}).json()
    assert comet["status"] == "succeeded" and comet["model"] == "black-forest-labs/flux-kontext-pro"


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "respond-async"])
def test_odd_prefer_headers_never_fail(server: RunningServer, image_host: str, prefer: str) -> None:
    response = create(server, {"input": {"prompt": "p", "input_image": f"{image_host}/ref.png"}},
                      headers={"Prefer": prefer})
    assert response.status_code == 201 and response.json()["status"] in ("starting", "succeeded")


def test_version_lookup_describes_the_input_schema(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/v1/models/{DEV}/versions/{VERSION}", headers=server.headers).json()
    schema = response["openapi_schema"]["components"]["schemas"]["Input"]
    assert response["id"] == VERSION and schema["required"] == ["prompt", "input_image"]
    assert schema["properties"]["num_inference_steps"] == {"type": "integer", "default": 28, "minimum": 4,
                                                          "maximum": 50}


class Receiver(BaseHTTPRequestHandler):
    """Records webhook deliveries; answers 500 to the first delivery of each message id when asked to."""

    received: list[tuple[dict, bytes]] = []
    fail_first = False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        first = all(h["webhook-id"] != self.headers["webhook-id"] for h, _ in Receiver.received)
        Receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(500 if Receiver.fail_first and first else 200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received, Receiver.fail_first = [], False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    httpd.shutdown()


def wait_for_deliveries(count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(Receiver.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_webhooks_follow_the_filter_and_verify(client: replicate.Client, server: RunningServer, image_host: str,
                                               receiver: str) -> None:
    prediction = client.predictions.create(
        version=DEV, input={"prompt": "p", "input_image": f"{image_host}/ref.png"}, webhook=receiver,
        webhook_events_filter=["start", "completed"],
    )
    wait_done(server, prediction.id)
    wait_for_deliveries(2)
    time.sleep(0.5)
    assert len(Receiver.received) == 2
    secret = client.webhooks.default.secret()
    for headers, body in Receiver.received:
        replicate.webhooks.validate(headers=headers, body=body.decode(), secret=secret)  # raises if invalid
    statuses = [json.loads(body)["status"] for _, body in Receiver.received]
    assert statuses == ["processing", "succeeded"]
    assert json.loads(Receiver.received[1][1])["output"].startswith(server.url)


def test_webhook_retry_keeps_the_id_and_signs_again(client: replicate.Client, server: RunningServer,
                                                    image_host: str, receiver: str) -> None:
    Receiver.fail_first = True
    prediction = client.predictions.create(
        version=DEV, input={"prompt": "p", "input_image": f"{image_host}/ref.png"}, webhook=receiver,
        webhook_events_filter=["completed"],
    )
    wait_done(server, prediction.id)
    wait_for_deliveries(2)
    (first, body1), (second, body2) = Receiver.received[:2]
    assert first["webhook-id"] == second["webhook-id"] and body1 == body2
    secret = client.webhooks.default.secret()
    replicate.webhooks.validate(headers=second, body=body2.decode(), secret=secret)


@pytest.mark.parametrize("hook", ["http://10.0.0.1/hook", "http://169.254.169.254/", "ftp://example.com/x"])
def test_webhooks_to_internal_addresses_are_refused(server: RunningServer, image_host: str, hook: str) -> None:
    response = create(server, {"input": {"prompt": "p", "input_image": f"{image_host}/ref.png"}, "webhook": hook})
    assert response.status_code == 422 and response.json()["invalid_fields"][0]["field"] == "webhook"


@pytest.mark.parametrize("events", [[{"a": 1}], "completed", ["done"]])
def test_bad_webhook_event_filters_are_422(server: RunningServer, image_host: str, events) -> None:
    response = create(server, {"input": {"prompt": "p", "input_image": f"{image_host}/ref.png"},
                               "webhook": "http://127.0.0.1:9/hook", "webhook_events_filter": events})
    assert response.status_code == 422 and response.json()["invalid_fields"][0]["field"] == "webhook_events_filter"


def test_health_reports_the_scheduler(server: RunningServer) -> None:
    health = server.health()
    assert health["status"] == "ready" and health["model"] == "demo" and health["forward_passes"] > 0


def test_output_urls_are_unguessable_and_not_traversable(server: RunningServer) -> None:
    for path in ("/files/../predictions.db", "/files/short/output.png", "/files/AAAAAAAAAAAAAAAAAAAAAA/../../x"):
        assert httpx.get(server.url + path).status_code == 404


def test_concurrent_requests_are_batched_and_give_the_images_they_give_alone(
    server: RunningServer, image_host: str
) -> None:
    def body(seed: int) -> dict:
        return {"input": {"prompt": "a boat", "input_image": f"{image_host}/ref.png", "seed": seed,
                          "num_inference_steps": 8, "output_format": "png"}}

    seeds = [11, 12, 13, 14]
    before = server.health()["forward_passes"]
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda s: create(server, body(s), headers={"Prefer": "wait"}).json(), seeds))
    passes = server.health()["forward_passes"] - before
    assert all(p["status"] == "succeeded" for p in together)
    assert passes < len(seeds) * 8, passes
    for seed, batched in zip(seeds, together):
        alone = create(server, body(seed), headers={"Prefer": "wait"}).json()
        assert max_pixel_difference(fetch_image(batched["output"]).convert("RGB"),
                                    fetch_image(alone["output"]).convert("RGB")) <= 2


def test_go_fast_defaults_to_true_skips_passes_and_can_be_turned_off(server: RunningServer, image_host: str) -> None:
    def run(**extra) -> tuple[dict, int]:
        before = server.health()["forward_passes"]
        body = {"input": {"prompt": "fast", "input_image": f"{image_host}/ref.png", "num_inference_steps": 10,
                          "seed": 9, **extra}}
        done = wait_done(server, create(server, body).json()["id"])
        assert done["status"] == "succeeded"
        return done, server.health()["forward_passes"] - before

    (fast, fast_passes), (full, full_passes) = run(), run(go_fast=False)
    assert (fast_passes, full_passes) == (8, 10)  # go_fast computes steps 0, 1, 2, 3, 6, 7, 8 and 9
    assert fast["input"].get("go_fast") is None  # the echo keeps what the client sent
    assert max_pixel_difference(fetch_image(fast["output"]), fetch_image(full["output"])) > 0
