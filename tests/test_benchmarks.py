"""The scripts of benchmarks/ run in their smoke mode (tiny sizes, seconds), so that a changed signature in
the library fails here and not for the person who runs the benchmark."""

from __future__ import annotations

import importlib.util
import json
import re
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


def _bench_main_smoke(name: str, tmp_path, *extra: str) -> list[dict]:
    """Run a bench_main script in its smoke mode (its workers are fresh processes) and return its rows."""
    out = tmp_path / f"{name}.json"
    assert _script(name).main(["--smoke", "--device", "cpu", "--threads", "1", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_bench_sample_smoke(tmp_path, capsys):
    rows = _bench_main_smoke("bench_sample", tmp_path, "--configs", "fast", "pipeline", "--no-flops")
    assert [(r["preset"], r["batch_size"], r["config"], len(r["times"])) for r in rows] == [
        ("tiny", 2, "fast", 1),
        ("tiny", 2, "pipeline", 1),
    ]
    (pair,) = _bench_main_smoke("bench_sample", tmp_path, "--overhead")
    assert len(pair["times"]["networks"]) == len(pair["times"]["pipeline"]) == len(pair["ratios"]) == 1
    assert "pipeline ms" in capsys.readouterr().out


def test_bench_train_and_damsm_smoke(tmp_path):
    for name in ("bench_train", "bench_damsm"):
        rows = _bench_main_smoke(name, tmp_path, "--configs", "fast")
        assert [(r["preset"], r["config"], len(r["times"])) for r in rows] == [("tiny", "fast", 1)]
        assert rows[0]["flops_per_image"] > 0


def test_bench_trainer_smoke(capsys):
    assert _script("bench_trainer").main(["--smoke", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "preset tiny, batch 2" in out and "plain" in out and "fast_kernels" in out


def test_bench_original_smoke_without_the_original_code(capsys):
    """Without a checkout of the original code the original's rows are skipped, the rest runs: the library's
    networks saved in the original's layout, loaded back and sampled; the library's training loop."""
    script = _script("bench_original")
    assert script.main(["--smoke", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "original's rows are skipped" in out
    assert "pipeline-plain" in out and "\npipeline " in out
    assert script.main(["--smoke", "--threads", "1", "--task", "train", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "\nplain " in out and "\nfast " in out and "\noriginal " not in out


def test_bench_dtypes_shapes_and_probe_smoke(capsys):
    assert _script("bench_dtypes").main(["--smoke", "--threads", "1"]) == 0
    assert "matmul 256^2" in capsys.readouterr().out
    assert _script("bench_shapes").main(["--smoke"]) == 0
    assert "render img/s" in capsys.readouterr().out
    assert _script("probe_damsm_attributes").main(["--smoke"]) == 0
    assert "word top-1" in capsys.readouterr().out



def test_probe_renders_its_test_images_with_the_data_settings_the_damsm_was_trained_on(tmp_path):
    """A DAMSM trained on larger shapes is probed on images of that scale (read from its run's config.json,
    given the run folder or its model/); without a config.json, the shapes preset's data settings."""
    from attngan.config import PRESETS, apply_overrides, to_dict

    probe = _script("probe_damsm_attributes")
    run = tmp_path / "00000-shapes-damsm"
    (run / "model").mkdir(parents=True)
    trained = apply_overrides(PRESETS["shapes"], {"data.object_scale": 1.25, "data.texture": False})
    (run / "config.json").write_text(json.dumps({"preset": to_dict(trained), "kind": "damsm"}))
    for given in (run, run / "model"):
        data = probe._run_data_config(str(given))
        assert (data.object_scale, data.texture) == (1.25, False)
    assert probe._run_data_config(str(tmp_path / "elsewhere")) == PRESETS["shapes"].data

def test_gpu_check_names_existing_scripts_and_options():
    """gpu_check.sh runs without a GPU nowhere, so its command lines are checked against the scripts here."""
    text = (BENCHMARKS / "gpu_check.sh").read_text()
    calls = re.findall(r"benchmarks/(\w+\.py)((?:[^\n\\]|\\\n)*)", text)
    assert calls
    for script, args in calls:
        assert (BENCHMARKS / script).is_file(), script
        source = (BENCHMARKS / script).read_text() + (BENCHMARKS / "common.py").read_text()
        for option in re.findall(r"(?<!\S)(--[\w-]+)", args):
            assert f'"{option}"' in source, f"{script} has no {option}"
    for test_file in re.findall(r"tests/(\w+\.py)", text):
        assert (BENCHMARKS.parent / "tests" / test_file).is_file(), test_file


def test_bench_serve_smoke(capsys):
    assert _script("bench_serve").main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "outside ms" in out and "errors      0" in out
    # One persistent connection per client: the same answers, and the paired rounds' extra figures.
    assert _script("bench_serve").main(["--smoke", "--keep-alive", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["keep_alive"] and result["errors"] == 0 and result["ok"] == 3
    paired = result["paired"]
    assert paired["rounds"] == 3 and paired["outside_call_ms_p50"] > 0
    assert paired["outside_call_ms_p50"] < paired["request_ms_p50"]
