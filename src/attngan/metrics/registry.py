"""Metric registry and JSONL reporting, after ``NVlabs/stylegan2-ada-pytorch:metrics/metric_main.py``.

A metric is a function of keyword options only (the models, pipeline, images or features it measures
are passed in: metrics never import ``attngan.training``) that returns a flat, JSON-serialisable dict.
Every result names its ``protocol`` (what exactly was computed, so numbers from different protocols are
not compared by mistake), ``n`` (the sample count) and ``feature_extractor``.

The table of metrics is filled once, at import time of ``attngan.metrics``, by the ``@register_metric``
decorators of the metric modules; nothing changes it afterwards.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["register_metric", "list_metrics", "get_metric", "calc_metric", "report_metric", "REQUIRED_KEYS"]

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("protocol", "n", "feature_extractor")  # every result carries these
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_METRICS: dict[str, Callable[..., dict[str, Any]]] = {}  # filled by the decorators at import time only


def register_metric(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Decorator: make ``fn(**opts) -> dict`` available as ``calc_metric(name, **opts)``."""
    if not _NAME_RE.match(name):
        raise ValueError(f"metric names are lowercase identifiers, got {name!r}")

    def decorate(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if _METRICS.get(name, fn) is not fn:
            raise ValueError(f"metric {name!r} is already registered by {_METRICS[name].__module__}")
        _METRICS[name] = fn
        return fn

    return decorate


def list_metrics() -> list[str]:
    """Names of the registered metrics, sorted."""
    return sorted(_METRICS)


def get_metric(name: str) -> Callable[..., dict[str, Any]]:
    if name not in _METRICS:
        raise UserError(f"unknown metric {name!r}; choose one of {', '.join(list_metrics())}")
    return _METRICS[name]


def _jsonable(value: Any) -> Any:
    """numpy / torch scalars -> Python numbers; NaN and inf -> None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def calc_metric(name: str, **opts: Any) -> dict[str, Any]:
    """Run metric ``name`` with keyword options; returns its result dict plus ``metric`` and ``time_s``."""
    fn = get_metric(name)
    start = time.perf_counter()
    result = dict(fn(**opts))
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise RuntimeError(f"metric {name!r} returned a result without {missing}")
    result["metric"] = name
    result["time_s"] = round(time.perf_counter() - start, 3)
    result = _jsonable(result)
    logger.info("%s", describe_result(result))
    return result


def describe_result(result: dict[str, Any]) -> str:
    """One line for people: the metric, its numbers (rounded), the sample count and the time."""
    skip = {"metric", "protocol", "time_s", "n", "seed"}
    numbers = [
        f"{k.replace('_', ' ')} {v:.4g}"
        for k, v in result.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return f"{result.get('metric')}: {', '.join(numbers)} on {result.get('n')} samples ({result.get('time_s', 0):.1f} s)"


def report_metric(
    result: dict[str, Any],
    run_dir: str | os.PathLike,  # the run folder; the line goes to <run_dir>/metric-<name>.jsonl
    snapshot: str | None = None,  # which model was measured (e.g. the model folder), stored with the line
) -> Path:
    """Append ``result`` (from :func:`calc_metric`) as one JSON line to ``metric-<name>.jsonl``.

    The line is written with a single ``write`` on a file opened in append mode, so concurrent writers
    never interleave within a line.
    """
    name = result.get("metric")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError("report_metric needs a result from calc_metric (it names the metric in 'metric')")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; create it or pass an existing run folder")
    line = dict(_jsonable(result))
    line["timestamp"] = time.time()
    if snapshot is not None:
        line["snapshot"] = str(snapshot)
    path = run_dir / f"metric-{name}.jsonl"
    data = (json.dumps(line, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path
