"""Error responses: FastAPI's validation errors and HTTP errors rewritten as ``{"detail": "<message>"}``
with one sentence a person can act on (400 for a body that is not JSON, 422 for a field out of its limits)."""

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["add_error_handlers"]

_EXAMPLE_BODY = '{"caption": "a red bird"}'


def _message(error: dict, content_type: str) -> str:
    """One validation error of pydantic as ``"<field>: <message>"`` (or the message alone for the body)."""
    loc = ".".join(str(x) for x in error.get("loc", ()) if x != "body")
    msg = error.get("msg", "invalid")
    kind = error.get("type")
    if kind == "json_invalid":
        msg = f"the body is not valid JSON ({(error.get('ctx') or {}).get('error', 'decode error')})"
        loc = ""
    elif kind == "missing" and not loc:
        msg = f"the body is empty: send a JSON object such as {_EXAMPLE_BODY}"
    elif kind == "model_attributes_type":
        msg = f"the body must be a JSON object such as {_EXAMPLE_BODY}"
        if "json" not in content_type.lower():
            msg = (
                f"the body was sent as {content_type or 'no content type'!r}, not JSON: send it with the "
                'header Content-Type: application/json (e.g. curl -H "Content-Type: application/json")'
            )
        loc = ""
    return f"{loc}: {msg}" if loc else msg


async def _invalid_request(request: Any, exc: RequestValidationError) -> JSONResponse:
    """400 for malformed JSON, else 422; ``detail`` joins the messages, ``errors`` lists them."""
    errors = exc.errors()
    content_type = request.headers.get("content-type", "")
    detail = "; ".join(_message(e, content_type) for e in errors)
    simple = [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
        for e in errors
    ]
    malformed = any(e.get("type") == "json_invalid" for e in errors)
    return JSONResponse({"detail": detail, "errors": simple}, status_code=400 if malformed else 422)


async def _http_error(request: Any, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's wording
        detail = f"the body could not be read as UTF-8 JSON: send a JSON object such as {_EXAMPLE_BODY}"
    return JSONResponse(
        {"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
