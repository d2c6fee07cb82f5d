"""API keys and per-key rate limits.

Keys arrive as `Authorization: Bearer KEY`, `Token KEY` or a bare `KEY`, and are compared in constant time with
every configured key. A configured key may be stored hashed, as `sha256:<hex digest of the key>`, so the config
file does not hold the secret itself.
"""

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Sequence


def presented_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if rest and scheme.lower() in ("bearer", "token"):
        return rest.strip()
    return authorization.strip()


def _matches(key: str, configured: str) -> bool:
    if configured.startswith("sha256:"):
        digest = hashlib.sha256(key.encode()).hexdigest()
        return hmac.compare_digest(digest.encode(), configured[7:].lower().encode())
    return hmac.compare_digest(key.encode(), configured.encode())


def authorized_key(authorization: str | None, keys: Sequence[str]) -> str | None:
    """The key the client presented when it is one of `keys` (checked against all of them), else None."""
    key = presented_key(authorization)
    if key is None:
        return None
    matches = [_matches(key, configured) for configured in keys]  # no early exit: same time for every key
    return key if any(matches) else None


class RateLimiter:
    """A token bucket per client: `per_minute` requests on average, bursts up to `per_minute` at once."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int | None:
        """None when the request may go ahead (one token taken), else the seconds until one is free."""
        if self.per_minute <= 0:
            return None
        rate = self.per_minute / 60.0
        with self._lock:
            now = time.monotonic()
            tokens, last = self._buckets.get(client, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return None
            self._buckets[client] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / rate))
