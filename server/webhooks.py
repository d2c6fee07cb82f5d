"""Webhooks: Standard Webhooks signatures (as Replicate signs), delivered from a persisted outbox with retries.

Deliveries go through the guarded fetch client without following redirects (as Replicate), from a background
thread in due-time order: a receiver that is down delays only its own retries, never the scheduler, and a
delivery still pending when the server stops is sent after the restart.
"""

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.fetch import FetchError, FetchPolicy, guarded_request
from server.store import PredictionStore, WebhookMessage

log = logging.getLogger("kontext.webhooks")
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # after the first attempt: 7 attempts over about a minute


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


class WebhookSender:
    def __init__(self, secret: str, store: PredictionStore, policy: FetchPolicy,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS):
        self.secret, self.store, self.retry_delays = secret, store, retry_delays
        self.policy = replace(policy, max_redirects=0, read_timeout=min(policy.read_timeout, 10.0))
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kontext-webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, payload: dict[str, Any]) -> None:
        message = WebhookMessage("msg_" + secrets.token_hex(12), url, json.dumps(payload), due=time.time())
        self.store.outbox_put(message)
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    pending = self.store.outbox()
                    if pending and pending[0].due <= time.time():
                        break
                    self._cond.wait(min(pending[0].due - time.time(), 1.0) if pending else None)
                if self._stopping:
                    return
            self._attempt(pending[0])

    def _attempt(self, message: WebhookMessage) -> None:
        timestamp = int(time.time())
        body = message.body.encode()
        headers = {
            "content-type": "application/json",
            "webhook-id": message.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secret, message.message_id, timestamp, body),
        }
        try:
            status, _ = guarded_request("POST", message.url, self.policy, content=body, headers=headers)
            if status < 300:
                self.store.outbox_remove(message.message_id)
                return
            reason = f"HTTP {status}"
        except FetchError as err:
            reason = str(err)
        if message.attempt < len(self.retry_delays):
            log.warning("webhook %s to %s failed (%s); retrying", message.message_id, message.url, reason)
            delay = self.retry_delays[message.attempt]
            self.store.outbox_put(replace(message, attempt=message.attempt + 1, due=time.time() + delay))
        else:
            log.error("webhook %s to %s failed (%s); giving up after %d attempts", message.message_id,
                      message.url, reason, message.attempt + 1)
            self.store.outbox_remove(message.message_id)
