"""Who gets in: key schemes, hashed keys, per-key rate limits, CORS."""

import hashlib
import json
from pathlib import Path

import httpx
import replicate

from server.auth import RateLimiter, authorized_key, presented_key
from tests.server.conftest import API_KEY, RunningServer, start_server

DEV = "black-forest-labs/flux-kontext-dev"


def test_key_schemes_and_hashed_keys() -> None:
    hashed = "sha256:" + hashlib.sha256(b"sk-secret").hexdigest()
    assert presented_key("Bearer sk-a") == presented_key("token sk-a") == presented_key("sk-a") == "sk-a"
    assert authorized_key("Bearer sk-secret", [hashed]) == "sk-secret"
    assert authorized_key("Bearer sk-a", ["sk-b", "sk-a"]) == "sk-a"
    for bad in (None, "", "Bearer", "Bearer sk-wrong", "Basic c2stYQ=="):
        assert authorized_key(bad, ["sk-a", hashed]) is None


def test_rate_limiter_allows_bursts_then_says_when_to_retry() -> None:
    limiter = RateLimiter(per_minute=3)
    assert [limiter.retry_after("a") for _ in range(3)] == [None, None, None]
    assert limiter.retry_after("a") == 20  # one token every 20 s
    assert limiter.retry_after("b") is None  # buckets are per client
    assert RateLimiter(per_minute=0).retry_after("a") is None  # off


def test_rate_limits_and_cors_on_a_real_server(tmp_path: Path, image_host: str) -> None:
    hashed = "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()
    server = start_server(tmp_path / "data", api_keys=hashed, rate_limit_creates_per_minute="2",
                          rate_limit_requests_per_minute="60", cors_origins="https://app.example",
                          max_body_bytes="100000")
    try:
        body = {"input": {"prompt": "p", "input_image": f"{image_host}/ref.png", "num_inference_steps": 4}}
        url = f"{server.url}/v1/models/{DEV}/predictions"
        huge = {"input": {"prompt": "p" * 200_000}}
        declared = httpx.post(url, json=huge, headers=server.headers)  # refused before auth and rate limits
        assert declared.status_code == 413 and declared.json()["title"] == "Request too large"
        chunked = httpx.post(url, content=iter([json.dumps(huge).encode()[i : i + 50_000]
                                                for i in range(0, 200_100, 50_000)]),
                             headers={**server.headers, "Content-Type": "application/json"})
        assert chunked.status_code == 413  # counted while it streams (this one took a create token)
        codes = [httpx.post(url, json=body, headers=server.headers, timeout=30).status_code for _ in range(2)]
        assert codes == [201, 429]
        throttled = httpx.post(url, json=body, headers=server.headers, timeout=30)
        assert int(throttled.headers["retry-after"]) >= 1 and throttled.json()["title"] == "Too many requests"
        assert httpx.get(f"{server.url}/v1/predictions", headers=server.headers).status_code == 200  # reads go on

        # Polls have their own budget; the replicate client retries a throttled GET after Retry-After (§6 #14).
        prediction_id = httpx.get(f"{server.url}/v1/predictions", headers=server.headers).json()[
            "results"][0]["id"]
        polls = [httpx.get(f"{server.url}/v1/predictions/{prediction_id}", headers=server.headers).status_code
                 for _ in range(61)]
        assert polls[-1] == 429
        client = replicate.Client(api_token=API_KEY, base_url=server.url)
        assert client.predictions.get(prediction_id).id == prediction_id
        preflight = httpx.options(url, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.get(f"{server.url}/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        assert server.health()["status"] == "ready"
    finally:
        server.stop()


def test_cors_is_off_by_default(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/health", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers
