"""Webhook signatures: the Standard Webhooks test vector from api-compat §2.10, checked by the replicate client."""

from pathlib import Path

import replicate
from replicate.webhook import WebhookSigningSecret

from server.webhooks import load_or_create_secret, sign

SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def test_signature_matches_the_reference_vector() -> None:
    body = b'{"id":"abc","status":"succeeded"}'
    assert sign(SECRET, "msg_test_0001", 1735689600, body) == "v1,aMvGbmBSlPxjhkpooNJK1HkbHn3y9cOIRiaBOaqDTbo="


def test_generated_secret_is_kept_and_parses_in_the_client(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path / "secret")
    assert secret == load_or_create_secret(tmp_path / "secret") and len(secret.split("_")) == 2
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1735689600",
               "webhook-signature": sign(secret, "msg_1", 1735689600, b"{}")}
    replicate.webhooks.validate(headers=headers, body="{}", secret=WebhookSigningSecret(key=secret),
                                tolerance=10**10)
