"""The request body's size limit: a body over it gets a 413 before it is read into memory."""

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

__all__ = ["MAX_BODY_BYTES", "max_body_bytes", "BodyLimit"]

MAX_BODY_BYTES = 16 * 1024  # a request body larger than this gets a 413 (more when captions may be longer)


def max_body_bytes(max_caption_chars: int) -> int:
    """Room for the longest allowed caption as JSON (at most 6 bytes per character, as \\uXXXX) and the rest."""
    return max(MAX_BODY_BYTES, 6 * max_caption_chars + 1024)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 instead of being read into memory."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is too large: at most {self.max_bytes} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=message)
            return msg

        await self.app(scope, limited_receive, send)
