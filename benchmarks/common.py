"""The harness of bench_train, bench_damsm and bench_sample: each configuration measured in a fresh worker
process (its own peak memory), the workloads, the command line and the table.

A workload is a step of :mod:`reference` (the plain path or any set of fast-path switches, ``--configs``) on a
synthetic batch, or a call of ``attngan.AttnGANPipeline`` (``pipeline``, ``pipeline-plain``, ``--overhead``).
The library does not import this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import (
    count_flops,
    current_memory_mb,
    machine_description,
    matmul_gflops,
    peak_memory_mb,
    reference_matmul_dtype,
    release_freed_memory,
    reset_peak_memory,
    time_calls,
)
from reference import (
    PLAIN,
    DAMSMTrainStep,
    GANTrainStep,
    Sampler,
    StepOptions,
    parse_options,
    preset_by_name,
    synthetic_batch,
)

from attngan.config import PRESETS, Preset
from attngan.nn import Generator, TextEncoder
from attngan.training import tune_cpu_allocator


def run_worker(script: str | Path, args: list[str], timeout: float = 1800, in_process: bool = False) -> dict:
    """Run ``python script --worker ...`` in a fresh process (its own peak memory); returns its JSON.

    ``in_process`` (smoke runs): ``worker_main(args)`` in this process instead, the thread count restored
    after it; the peak memory is then the process's.
    """
    if in_process:
        import io

        threads, buf = torch.get_num_threads(), io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                worker_main(["--worker", *args])
        finally:
            torch.set_num_threads(threads)
        return json.loads([ln for ln in buf.getvalue().splitlines() if ln.startswith("{")][-1])
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------- measurement


PIPELINE_CONFIGS = ("pipeline", "pipeline-plain")  # sampling through attngan.AttnGANPipeline itself


def _pipeline_and_sentences(preset: Preset, batch_size: int, device: torch.device, fast: bool):
    """An ``AttnGANPipeline`` with random weights and a vocabulary of made-up words, and ``batch_size``
    sentences of ``words_num`` of its words."""
    from attngan.pipeline import AttnGANPipeline
    from attngan.text import Vocabulary

    torch.manual_seed(0)
    words = [f"w{i}" for i in range(1, preset.text_encoder.vocab_size)]
    vocab = Vocabulary(["<end>", *words])
    pipe = AttnGANPipeline(
        TextEncoder(preset.text_encoder), Generator(preset.generator), vocab, fast=fast
    ).to(device)
    t = preset.data.words_num
    sentences = [" ".join(words[(k * t + j) % len(words)] for j in range(t)) for k in range(batch_size)]
    return pipe, sentences


def pipeline_workload(preset: Preset, batch_size: int, device: torch.device, fast: bool):
    """What a user calls: ``AttnGANPipeline(...)(sentences)`` with attention maps, PIL images included.

    ``fast=True`` is the library's default (its BN-folded, channels-last inference copy of G);
    ``fast=False`` draws with the generator as trained. Random weights; a vocabulary of made-up words.
    """
    pipe, sentences = _pipeline_and_sentences(preset, batch_size, device, fast)
    return lambda: pipe(sentences, seed=0, batch_size=batch_size, return_attention=True)


def networks_workload(pipe, sentences: list[str]):
    """The networks a pipeline call runs, alone: its text encoder and its sampling generator (the
    inference copy when ``fast``) on the same words and noise, tokenised and drawn once beforehand, images
    of every stage and attention maps left on the device."""
    device, dtype = pipe.device, pipe.dtype
    captions, lengths, mask = pipe._batch(pipe.encode_prompts(sentences))
    captions, mask = captions.to(device), mask.to(device)
    _, z, eps = pipe._noise(len(sentences), 0, None)
    z, eps = z.to(device=device, dtype=dtype), eps.to(device=device, dtype=dtype)
    generator = pipe._sampling_generator()
    pipe.text_encoder.eval()
    generator.eval()

    @torch.inference_mode()
    def run():
        words, sentence = pipe.text_encoder(captions, lengths)
        return generator(z, sentence, words, mask, ca_noise=eps, need_attention=True)

    return run


def measure_overhead(
    preset_name: str, overrides: list[str], batch_size: int, warmup: int, reps: int, device: torch.device
) -> dict:
    """The pipeline (``AttnGANPipeline`` with its defaults, PIL images and maps) against the networks it runs
    alone (``networks_workload``), call by call in alternation, so that both see the same load."""
    preset = preset_by_name(preset_name, overrides)
    pipe, sentences = _pipeline_and_sentences(preset, batch_size, device, fast=True)
    calls = {
        "networks": networks_workload(pipe, sentences),
        "pipeline": lambda: pipe(sentences, seed=0, batch_size=batch_size, return_attention=True),
    }
    load_before = os.getloadavg()[0]
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            times[name] += time_calls(fn, device, warmup=0, reps=1)
    return {
        "kind": "overhead",
        "preset": preset_name,
        "batch_size": batch_size,
        "times": times,
        "ratios": [p / n for p, n in zip(times["pipeline"], times["networks"])],
        "load": [load_before, os.getloadavg()[0]],
        "threads": torch.get_num_threads(),
        "device": machine_description(device),
    }


def print_overhead(rows: list[dict]) -> None:
    """Median ms per call of the networks alone and of the pipeline, and their ratio (median of the ratios
    of neighbouring calls, and the ratio of the medians)."""
    head = (
        f"{'preset':7} {'B':>3} {'networks ms':>12} {'pipeline ms':>12} {'outside ms':>11} "
        f"{'ratio':>6} {'p10-p90 ratio':>14} {'calls':>6} {'load':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        nets, pipe = statistics.median(r["times"]["networks"]), statistics.median(r["times"]["pipeline"])
        ratios = sorted(r["ratios"])
        p10, p90 = ratios[len(ratios) // 10], ratios[(9 * len(ratios)) // 10]
        load = f"{min(r['load']):.1f}-{max(r['load']):.1f}"
        print(
            f"{r['preset']:7} {r['batch_size']:>3} {1e3 * nets:>12.1f} {1e3 * pipe:>12.1f} {1e3 * (pipe - nets):>11.1f} "
            f"{statistics.median(ratios):>6.3f} {f'{p10:.3f}-{p90:.3f}':>14} {len(ratios):>6} {load:>9}"
        )
    print("# ratio: median over the pairs of neighbouring calls of pipeline / networks; outside: difference of the medians")


def build_workload(kind: str, preset: Preset, batch_size: int, options: StepOptions, device: torch.device):
    """(callable, batch) for ``kind`` in ``gan`` | ``damsm`` | ``sample``."""
    batch = synthetic_batch(preset, batch_size, device, seed=0)
    if kind == "gan":
        step = GANTrainStep(preset, options, device)
        return (lambda: step(batch)), batch
    if kind == "damsm":
        step = DAMSMTrainStep(preset, options, device)
        return (lambda: step(batch)), batch
    if kind == "sample":
        sampler = Sampler(preset, options, device)
        return (lambda: sampler(batch, need_attention=True)), batch
    raise ValueError(f"unknown workload {kind!r}")


def measure(
    kind: str,
    preset_name: str,
    overrides: list[str],
    batch_size: int,
    config: str,
    warmup: int,
    reps: int,
    device: torch.device,
    count: bool,
    matmul_size: int = 2048,
) -> dict:
    """Times (s per call), peak memory and (optionally) FLOPs per image of one configuration.

    Meant to run in a fresh process. On CPU the peak is the RSS high-water mark of the process during the
    timed calls (warm-up included: the first step allocates the optimizer states), reset after building
    the models; ``delta_mb`` is its increase over the RSS after building (freed memory trimmed first).
    """
    preset = preset_by_name(preset_name, overrides)
    load_before = os.getloadavg()[0]
    # The reference rate: float32 on CPU; on a GPU its bf16 rate (the target is a fraction of it).
    mm_dtype = reference_matmul_dtype(device)
    rate = matmul_gflops(device, n=matmul_size, dtype=mm_dtype)
    if kind == "sample" and config in PIPELINE_CONFIGS:
        options = PLAIN  # the library decides (AttnGANPipeline(fast=...))
        fn = pipeline_workload(preset, batch_size, device, fast=config == "pipeline")
    else:
        options = parse_options(config, device)
        fn, _ = build_workload(kind, preset, batch_size, options, device)
    # The peak of the steps alone: building the models may have a higher transient peak (copies).
    release_freed_memory()
    base = current_memory_mb(device)
    reset_ok = reset_peak_memory(device)
    start = time.perf_counter()
    cpu_times: list[float] = []
    times = time_calls(fn, device, warmup=warmup, reps=reps, cpu_times=cpu_times)
    wall = time.perf_counter() - start
    peak = peak_memory_mb(device)
    result = {
        "kind": kind,
        "preset": preset_name,
        "batch_size": batch_size,
        "config": config,
        "options": options.describe(),
        "times": times,
        "median_s": statistics.median(times),
        "cpu_times": cpu_times,
        "median_cpu_s": statistics.median(cpu_times),
        "first_calls_s": wall - sum(times),
        "peak_mb": peak,
        "base_mb": base,
        "delta_mb": peak - base,
        "peak_since_build": reset_ok,
        "matmul_gflops": rate,
        "matmul_dtype": str(mm_dtype).removeprefix("torch."),
        "load": [load_before, os.getloadavg()[0]],
        "threads": torch.get_num_threads(),
        "device": machine_description(device),
    }
    if count and not options.compile:
        result["flops_per_image"] = count_flops(fn) / batch_size
    return result


def worker_main(argv: list[str]) -> None:
    """``--worker`` mode of the scripts: one configuration, one JSON line on stdout."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--kind", required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--count-flops", action="store_true")
    p.add_argument("--tune-malloc", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a 256 x 256 reference matmul instead of 2048 x 2048")
    a = p.parse_args(argv)
    if a.tune_malloc:
        tune_cpu_allocator()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.kind == "overhead":
        res = measure_overhead(a.preset, a.set, a.batch_size, a.warmup, a.reps, device)
    else:
        res = measure(
            a.kind, a.preset, a.set, a.batch_size, a.config, a.warmup, a.reps, device, a.count_flops,
            matmul_size=256 if a.smoke else 2048,
        )  # fmt: skip
    print(json.dumps(res))


def add_common_arguments(parser, configs: list[str], batch_sizes: list[int], reps: int) -> None:
    parser.add_argument("--presets", nargs="+", default=["birds", "coco"], choices=sorted(PRESETS))
    parser.add_argument("--set", action="append", default=[], help="preset override section.key=value")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=batch_sizes)
    parser.add_argument("--configs", nargs="+", default=configs, help="plain | fast | fast+compile | opt,opt,...")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per worker")
    parser.add_argument("--reps", type=int, default=reps, help="timed calls per worker")
    parser.add_argument("--rounds", type=int, default=1, help="workers per configuration, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    parser.add_argument(
        "--tune-malloc", action="store_true",
        help="every worker (all rows) keeps freed memory for reuse: attngan.training.tune_cpu_allocator",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument(
        "--smoke", action="store_true",
        help="a check that the script runs, in seconds: the tiny preset, batch 2, one call per configuration, "
        "workers in this process",
    )  # fmt: skip


def apply_smoke(args) -> None:
    """``--smoke``: the settings of a run that only checks that everything still fits together."""
    if args.smoke:
        args.presets, args.batch_sizes, args.warmup, args.reps, args.rounds = ["tiny"], [2], 0, 1, 1
        args.set = ["text_encoder.vocab_size=64", *args.set]  # the tiny preset takes its vocabulary from data


def run_configs(script: Path, kind: str, args) -> list[dict]:
    """Every (preset, batch size, config) in fresh worker processes; ``rounds`` interleaved passes."""
    rows: dict[tuple, dict] = {}
    for preset in args.presets:
        for bs in args.batch_sizes:
            for r in range(args.rounds):
                for config in args.configs:
                    wargs = ["--kind", kind, "--preset", preset, "--batch-size", str(bs), "--config", config]
                    wargs += ["--warmup", str(args.warmup), "--reps", str(args.reps), "--device", args.device]
                    wargs += ["--threads", str(args.threads)] + [x for s in args.set for x in ("--set", s)]
                    if r == 0 and not args.no_flops:
                        wargs.append("--count-flops")
                    if args.tune_malloc:
                        wargs.append("--tune-malloc")
                    if args.smoke:
                        wargs.append("--smoke")
                    print(f"  {kind} {preset} B={bs} {config} (round {r + 1})", file=sys.stderr, flush=True)
                    res = run_worker(script, wargs, in_process=args.smoke)
                    key = (preset, bs, config)
                    if key in rows:
                        prev = rows[key]
                        prev["times"] += res["times"]
                        prev["median_s"] = statistics.median(prev["times"])
                        prev["cpu_times"] += res["cpu_times"]
                        prev["median_cpu_s"] = statistics.median(prev["cpu_times"])
                        prev["peak_mb"] = max(prev["peak_mb"], res["peak_mb"])
                        prev["delta_mb"] = max(prev["delta_mb"], res["delta_mb"])
                        prev["matmul_all"].append(res["matmul_gflops"])
                        prev["load"] += res["load"]
                    else:
                        res["matmul_all"] = [res["matmul_gflops"]]
                        rows[key] = res
    out = list(rows.values())
    for row in out:
        row["matmul_gflops"] = statistics.median(row["matmul_all"])
    return out


def print_table(rows: list[dict], unit: str) -> None:
    """One line per configuration with its ratio to ``plain`` of the same preset and batch size.

    ``model GFLOP/img`` is the plain path's count (the work the model defines); ``exec`` what the fast path
    executes; ``%mm`` = model GFLOP/img x img/s over the matmul rate measured in the same worker;
    ``cpu s`` the process CPU seconds per call (with ``--threads 1`` robust to other load).
    """
    plain = {(r["preset"], r["batch_size"]): r for r in rows if r["config"] == "plain"}
    head = (
        f"{'preset':7} {'B':>3} {'config':24} {unit:>9} {'s/call':>8} {'x plain':>7} {'cpu s':>7} {'x cpu':>6} {'peak MB':>8} "
        f"{'dMB':>7} {'model GF/img':>12} {'exec GF/img':>11} {'GF/s':>6} {'mm GF/s':>7} {'%mm':>5} {'load':>9}"
    )
    print(head)
    print("-" * len(head))
    dtypes = sorted({r.get("matmul_dtype", "float32") for r in rows})
    for r in rows:
        ref = plain.get((r["preset"], r["batch_size"]))
        per_s = r["batch_size"] / r["median_s"]
        ratio = f"{ref['median_s'] / r['median_s']:.2f}" if ref else "-"
        cpu_ratio = f"{ref['median_cpu_s'] / r['median_cpu_s']:.2f}" if ref else "-"
        model_flops = (ref or {}).get("flops_per_image")
        exec_flops = r.get("flops_per_image")
        achieved = model_flops * per_s / 1e9 if model_flops else None
        pct = f"{100 * achieved / r['matmul_gflops']:.0f}" if achieved else "-"
        load = f"{min(r['load']):.1f}-{max(r['load']):.1f}"
        print(
            f"{r['preset']:7} {r['batch_size']:>3} {r['config']:24} {per_s:>9.2f} {r['median_s']:>8.3f} {ratio:>7} "
            f"{r['median_cpu_s']:>7.3f} {cpu_ratio:>6} "
            f"{r['peak_mb']:>8.0f} {r['delta_mb']:>7.0f} "
            f"{model_flops / 1e9 if model_flops else float('nan'):>12.1f} "
            f"{exec_flops / 1e9 if exec_flops else float('nan'):>11.1f} "
            f"{achieved or float('nan'):>6.1f} {r['matmul_gflops']:>7.0f} {pct:>5} {load:>9}"
        )
    print(f"# mm GF/s: rate of a 2048 x 2048 {'/'.join(dtypes)} matmul in the same worker; %mm = GF/s over it")


def start_run(device_name: str, threads: int, argv: list[str] | None = None) -> torch.device:
    """The device, the thread count, and the two header lines of every table (date, machine; command)."""
    device = torch.device(device_name)
    if threads:
        torch.set_num_threads(threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {machine_description(device)}")
    print(f"# {' '.join([Path(sys.executable).name, sys.argv[0], *(sys.argv[1:] if argv is None else argv)])}")
    return device


def run_overhead(script: Path, args) -> list[dict]:
    """``measure_overhead`` of every (preset, batch size), each in a fresh worker."""
    rows = []
    for preset in args.presets:
        for bs in args.batch_sizes:
            wargs = ["--kind", "overhead", "--preset", preset, "--batch-size", str(bs), "--config", "pipeline"]
            wargs += ["--warmup", str(args.warmup), "--reps", str(args.reps), "--device", args.device]
            wargs += ["--threads", str(args.threads)] + [x for s in args.set for x in ("--set", s)]
            print(f"  overhead {preset} B={bs}", file=sys.stderr, flush=True)
            rows.append(run_worker(script, wargs, in_process=args.smoke))
    return rows


def bench_main(
    script: str,
    kind: str,
    doc: str,
    configs: list[str],
    batch_sizes: list[int],
    unit: str,
    reps: int = 3,
    argv: list[str] | None = None,
    overhead: bool = False,  # offer --overhead (sampling: the pipeline against its networks alone)
) -> int:
    """Entry point shared by bench_train / bench_damsm / bench_sample; ``argv`` defaults to the command line."""
    import argparse

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        worker_main(argv)
        return 0
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, configs, batch_sizes, reps)
    if overhead:
        parser.add_argument(
            "--overhead", action="store_true",
            help="time AttnGANPipeline against the networks it runs alone, alternating call by call (--reps pairs)",
        )  # fmt: skip
    args = parser.parse_args(argv)
    apply_smoke(args)
    start_run(args.device, args.threads, argv)
    if getattr(args, "overhead", False):
        rows = run_overhead(Path(script), args)
        print_overhead(rows)
    else:
        rows = run_configs(Path(script), kind, args)
        print_table(rows, unit)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0
