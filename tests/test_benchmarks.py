"""The scripts of benchmarks/ run in their smoke mode (tiny sizes, seconds), so that a changed signature in
the library fails here and not for the person who runs the benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_demo_frontier_smoke(tmp_path, capsys):
    assert _script("demo_frontier").main(["--smoke", "--out", str(tmp_path / "frontier")]) == 0
    result = json.loads((tmp_path / "frontier" / "frontier.json").read_text())
    rows = result["rows"]
    assert [r["step"] for r in rows] == [2, 4]  # a copy every 2 GAN steps of 4
    assert all(0 <= r[k] <= 1 for r in rows for k in ("color", "shape", "position", "size", "grounding"))
    assert rows[0]["seconds"] <= rows[1]["seconds"]
    assert "GAN step" in capsys.readouterr().out
