"""What both API surfaces need from a request: its JSON object body, and the base URL for the links we return."""

import json
from typing import Any

from fastapi import Request

from server.errors import ApiError


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 in the caller's API shape."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def base_url(request: Request) -> str:
    """`--public-url` when the server sits behind a proxy, else the address the client reached us at."""
    return request.app.state.settings.public_url or str(request.base_url)
