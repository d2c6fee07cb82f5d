"""OpenAI's API: chat completions (an image-editing conversation), images generations and edits, models."""

from fastapi import APIRouter

OPENAI_PREFIXES = ("/v1/chat/", "/v1/images/")

router = APIRouter()


def owns(path: str) -> bool:
    """Whether a path belongs to the OpenAI surface (its errors take OpenAI's shape)."""
    return path.startswith(OPENAI_PREFIXES) or path == "/v1/models" or (
        path.startswith("/v1/models/") and path.count("/") == 3
    )
