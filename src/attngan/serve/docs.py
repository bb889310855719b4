"""``GET /docs``: the API's documentation as one self-contained HTML page, rendered from the OpenAPI schema.

FastAPI's own ``/docs`` loads Swagger UI's scripts and styles from a CDN, so on a machine without internet
it is a blank page. This page is built on the server from ``app.openapi()``: every operation with its
summary, description, request fields (type, limits, default, meaning), responses and a ``curl`` example;
no script, style sheet or font is fetched from anywhere.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["api_docs_html"]

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.op { border: 1px solid #ddd; border-radius: 6px; padding: .6rem 1rem; margin: 1rem 0; }
.method { display: inline-block; min-width: 3.5rem; font-weight: bold; color: #fff; border-radius: 4px;
  padding: 0 .4rem; text-align: center; }
.get { background: #2b7bb9; } .post { background: #3a9a4d; } .put, .patch { background: #c07a12; }
.delete { background: #b93a2b; }
code, pre { background: #f4f4f4; border-radius: 4px; } pre { padding: .5rem; overflow-x: auto; }
table { border-collapse: collapse; margin: .4rem 0; } td, th { border: 1px solid #ddd; padding: .2rem .5rem; }
th { background: #f4f4f4; text-align: left; }
"""

_LIMITS = (
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
    ("minimum", ">= {}"),
    ("maximum", "<= {}"),
    ("exclusiveMinimum", "> {}"),
    ("exclusiveMaximum", "< {}"),
)


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a ``$ref`` to ``#/components/schemas/...`` replaced by its target."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target if isinstance(target, dict) else {}
    return schema


def _type(schema: dict[str, Any]) -> str:
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(_type(o) for o in options)
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items') or {})}"
    return str(schema.get("type") or schema.get("$ref", "").rsplit("/", 1)[-1] or "any")


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _limits(schema: dict[str, Any]) -> str:
    options = [schema, *(schema.get("anyOf") or ())]
    return ", ".join(text.format(_number(o[key])) for o in options for key, text in _LIMITS if key in o)


def _fields(schema: dict[str, Any], spec: dict[str, Any]) -> str:
    """A table of the properties of an object schema."""
    schema = _resolve(schema, spec)
    props = schema.get("properties") or {}
    if not props:
        return ""
    required = set(schema.get("required") or ())
    rows = []
    for name, prop in props.items():
        prop = _resolve(prop, spec)
        default = f"<code>{html.escape(json.dumps(prop['default']))}</code>" if "default" in prop else ""
        rows.append(
            f"<tr><td><code>{html.escape(name)}</code>{' (required)' if name in required else ''}</td>"
            f"<td>{html.escape(_type(prop))}</td><td>{html.escape(_limits(prop))}</td><td>{default}</td>"
            f"<td>{html.escape(str(prop.get('description') or prop.get('title') or ''))}</td></tr>"
        )
    head = "<tr><th>field</th><th>type</th><th>limits</th><th>default</th><th>meaning</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _example(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A request body of the required fields (strings get a caption), for the curl example."""
    schema = _resolve(schema, spec)
    out: dict[str, Any] = {}
    for name in schema.get("required") or ():
        prop = _resolve((schema.get("properties") or {}).get(name, {}), spec)
        out[name] = prop.get("default", "a small red circle at the top left" if prop.get("type") == "string" else 1)
    return out


def _operation(path: str, method: str, op: dict[str, Any], spec: dict[str, Any], base_url: str) -> str:
    parts = [
        f'<div class="op" id="{html.escape(method + path)}"><p><span class="method {method}">{method.upper()}</span> '
        f"<code>{html.escape(path)}</code> {html.escape(op.get('summary') or '')}</p>"
    ]
    if op.get("description"):
        parts.append(f"<p>{html.escape(op['description'])}</p>")
    body = ((op.get("requestBody") or {}).get("content") or {}).get("application/json", {}).get("schema")
    curl = f"curl -s {base_url}{path}"
    if body is not None:
        parts.append("<p>Request body (JSON):</p>" + _fields(body, spec))
        example = json.dumps(_example(body, spec))
        curl = f"curl -s {base_url}{path} -H 'Content-Type: application/json' -d '{example}'"
    responses = op.get("responses") or {}
    if responses:
        items = "".join(
            f"<li><code>{html.escape(code)}</code> {html.escape(str(r.get('description') or ''))}</li>"
            for code, r in responses.items()
        )
        parts.append(f"<p>Responses:</p><ul>{items}</ul>")
    parts.append(f"<pre>{html.escape(curl)}</pre></div>")
    return "".join(parts)


def api_docs_html(spec: dict[str, Any], base_url: str = "http://127.0.0.1:8000") -> str:
    """The documentation page of an OpenAPI ``spec`` (a dict, as ``app.openapi()`` returns); the ``curl``
    examples address ``base_url``."""
    info = spec.get("info") or {}
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    ops = [
        _operation(path, method, op, spec, base_url.rstrip("/"))
        for path, methods in (spec.get("paths") or {}).items()
        for method, op in methods.items()
        if isinstance(op, dict)
    ]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}: API</title>'
        f"<style>{_STYLE}</style></head><body><h1>{title}: API</h1>"
        f"<p>{html.escape(str(info.get('summary') or info.get('description') or ''))}</p>"
        '<p>The machine-readable schema: <a href="/openapi.json">/openapi.json</a>. '
        'A page that draws with the model: <a href="/">/</a>.</p>'
        f"<h2>Operations</h2>{''.join(ops)}</body></html>"
    )
