"""Webhooks: Standard Webhooks signatures (as Replicate signs) and deliveries with retries off the worker thread."""

import base64
import hashlib
import heapq
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("kontext.webhooks")
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)  # after the first attempt: 6 attempts over about half a minute


def load_or_create_secret(path: Path) -> str:
    """`whsec_` + base64 of 32 random bytes, kept in the data dir so it survives restarts."""
    if path.is_file():
        return path.read_text().strip()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secret)
    path.chmod(0o600)
    return secret


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(order=True)
class Delivery:
    due: float
    attempt: int
    url: str
    message_id: str  # the same across retries, so receivers can deduplicate
    body: bytes


class WebhookSender:
    """Delivers from a background thread in due-time order: a receiver that is down delays only its own retries,
    and never the scheduler."""

    def __init__(self, secret: str, timeout: float = 10.0, retry_delays: tuple[float, ...] = RETRY_DELAYS):
        self.secret, self.timeout, self.retry_delays = secret, timeout, retry_delays
        self._pending: list[Delivery] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kontext-webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, payload: dict[str, Any]) -> None:
        self._schedule(Delivery(time.monotonic(), 0, url, "msg_" + secrets.token_hex(12), json.dumps(payload).encode()))

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _schedule(self, delivery: Delivery) -> None:
        with self._cond:
            heapq.heappush(self._pending, delivery)
            self._cond.notify_all()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while True:
                with self._cond:
                    while not self._stopping and (not self._pending or self._pending[0].due > time.monotonic()):
                        self._cond.wait(self._pending[0].due - time.monotonic() if self._pending else None)
                    if self._stopping:
                        return
                    delivery = heapq.heappop(self._pending)
                self._attempt(client, delivery)

    def _attempt(self, client: httpx.Client, delivery: Delivery) -> None:
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secret, delivery.message_id, timestamp, delivery.body),
        }
        try:
            response = client.post(delivery.url, content=delivery.body, headers=headers)
            if response.status_code < 300:
                return
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            reason = f"{type(err).__name__}: {err}"
        if delivery.attempt < len(self.retry_delays):
            log.warning("webhook %s to %s failed (%s); retrying", delivery.message_id, delivery.url, reason)
            delay = self.retry_delays[delivery.attempt]
            self._schedule(replace(delivery, due=time.monotonic() + delay, attempt=delivery.attempt + 1))
        else:
            log.error("webhook %s to %s failed (%s); giving up after %d attempts", delivery.message_id,
                      delivery.url, reason, delivery.attempt + 1)
