"""API keys: `Authorization: Bearer KEY`, `Token KEY` or a bare `KEY`, compared in constant time."""

import hmac


def presented_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if rest and scheme.lower() in ("bearer", "token"):
        return rest.strip()
    return authorization.strip()


def is_authorized(authorization: str | None, keys: list[str]) -> bool:
    """True when no keys are configured (loopback-only mode) or the header carries one of them."""
    if not keys:
        return True
    key = presented_key(authorization)
    if key is None:
        return False
    matches = [hmac.compare_digest(key.encode(), k.encode()) for k in keys]  # compare all: no early exit
    return any(matches)
