"""Load test of ``attngan serve``: N concurrent clients (threads) send a fixed number of requests to a
loopback server and the script prints latency percentiles, throughput, batching and errors.

By default it starts its own server in a thread with a tiny untrained model (the cost of the HTTP layer,
the queue and the rendering, not of a real generator); ``--checkpoint`` serves a trained model instead,
and ``--url`` measures a server that is already running on this machine (loopback only).

    python benchmarks/bench_serve.py --clients 8 --requests 80
    python benchmarks/bench_serve.py --checkpoint runs/00001-shapes-attngan --device cpu --max-batch 8
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --clients 4 --requests 40 --n 2

``--preset birds`` serves a model of that preset with random weights (3 stages to 256 px for birds; the cost of
a real-sized generator and of rendering its images). Besides the client's latency it prints what a request
spent outside the pipeline call (latency - the server's ``queue_ms`` and ``compute_ms``: HTTP, JSON,
rendering the PNG data URLs); with one client that is what ``attngan serve`` adds to ``AttnGANPipeline``.

    python benchmarks/bench_serve.py --preset birds --clients 1 --requests 30

``--paired`` (own server only) measures that difference directly, on a machine shared with other work:
each round calls ``AttnGANPipeline`` in this process and sends the same request (caption, seed, n; with
``--overlays`` also the tinted maps of every word, which the server then draws) to the
server, in alternating order, and the script prints the median of the per-round differences (wall time, and
the process's CPU time, which other work on the machine disturbs less) and the ratio of the medians.

    python benchmarks/bench_serve.py --preset birds --paired --requests 40

``--keep-alive``: each client keeps one HTTP/1.1 connection for all its requests, as a browser or a
``requests.Session`` does (by default every request opens a new connection, as ``curl`` does).

Bounded: at most ``--requests`` requests (<= 10000) and ``--max-seconds`` of wall time. ``--smoke``: the tiny
model, 1 client, 3 requests, then 3 paired rounds (the test suite runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import torch


def tiny_pipeline():
    from attngan.config import PRESETS
    from attngan.data.synthetic import shapes_vocabulary
    from attngan.nn import Generator, TextEncoder
    from attngan.pipeline import AttnGANPipeline

    torch.manual_seed(0)
    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    te = TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab)))
    return AttnGANPipeline(te, Generator(tiny.generator), vocab)


def preset_pipeline(name: str):
    """A pipeline of the preset's networks with random weights; its vocabulary: the shapes data's words (so
    that the server's example captions exist), then made-up words up to the preset's size."""
    from attngan.config import PRESETS
    from attngan.data.synthetic import shapes_vocabulary
    from attngan.nn import Generator, TextEncoder
    from attngan.pipeline import AttnGANPipeline
    from attngan.text import Vocabulary

    torch.manual_seed(0)
    preset = PRESETS[name]
    words = list(shapes_vocabulary().words)
    vocab = Vocabulary(["<end>", *words, *(f"w{i}" for i in range(preset.text_encoder.vocab_size - 1 - len(words)))])
    return AttnGANPipeline(TextEncoder(preset.text_encoder), Generator(preset.generator), vocab)


def post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, {}  # 0: no HTTP answer (refused, reset or timed out)


class KeepAliveClient:
    """POSTs over one persistent HTTP/1.1 connection (as a browser or ``requests.Session``): no TCP connect
    per request. Reconnects once when the server closed the connection (its idle timeout)."""

    def __init__(self, base: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, url: str, body: dict, timeout: float | None = None) -> tuple[int, dict]:
        path = urllib.parse.urlsplit(url).path
        data = json.dumps(body).encode()
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
            try:
                self.conn.request("POST", path, data, {"Content-Type": "application/json"})
                res = self.conn.getresponse()
                raw = res.read()
                return res.status, (json.loads(raw) if res.status == 200 else {})
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    return 0, {}
        return 0, {}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_load(
    base: str, clients: int, requests: int, n: int, max_seconds: float, timeout: float, overlays: bool = False,
    keep_alive: bool = False,
) -> dict:
    with urllib.request.urlopen(base + "/health", timeout=timeout) as res:
        health = json.loads(res.read())
    captions = health["examples"] or ["a red circle"]
    url = base + "/api/v1/generate"
    for k in range(2):  # warm-up, not counted
        post(url, {"caption": captions[k % len(captions)], "seed": k, "n": n, "overlays": overlays}, timeout)

    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    outside: list[float] = []  # seconds of a request outside the pipeline call: HTTP, JSON, rendering
    statuses: Counter[int] = Counter()
    batch_images: list[int] = []
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        session = KeepAliveClient(base, timeout) if keep_alive else None
        send = session.post if session is not None else post
        try:
            _requests(send)
        finally:
            if session is not None:
                session.close()

    def _requests(send) -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= requests or time.monotonic() > deadline:
                    return
                k = issued
                issued += 1
            body = {"caption": captions[k % len(captions)], "seed": 1000 + k, "n": n, "overlays": overlays}
            start = time.perf_counter()
            status, answer = send(url, body, timeout)
            elapsed = time.perf_counter() - start
            with lock:
                statuses[status] += 1
                if status == 200:
                    latencies.append(elapsed)
                    outside.append(elapsed - (answer["queue_ms"] + answer["compute_ms"]) / 1e3)
                    batch_images.append(answer["batch_images"])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    ok = statuses.get(200, 0)
    return {
        "device": health["device"],
        "model": health["model"],
        "clients": clients,
        "requests": sum(statuses.values()),
        "images_per_request": n,
        "ok": ok,
        "errors": sum(statuses.values()) - ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": wall,
        "requests_per_s": ok / wall if wall > 0 else 0.0,
        "images_per_s": ok * n / wall if wall > 0 else 0.0,
        "latency_ms": {
            "p50": 1e3 * percentile(latencies, 50),
            "p95": 1e3 * percentile(latencies, 95),
            "max": 1e3 * max(latencies),
            "mean": 1e3 * statistics.fmean(latencies),
        }
        if latencies
        else None,
        "outside_pipeline_ms": {"p50": 1e3 * percentile(outside, 50), "p95": 1e3 * percentile(outside, 95)}
        if outside
        else None,
        "pipeline_ms_p50": 1e3 * percentile([lat - o for lat, o in zip(latencies, outside)], 50) if outside else None,
        "mean_batch_images": statistics.fmean(batch_images) if batch_images else None,
    }


def run_paired(
    base: str, pipe, requests: int, n: int, max_batch: int, max_seconds: float, timeout: float, overlays: bool = False,
    keep_alive: bool = False,
) -> dict:
    """Rounds of one direct pipeline call and one request of the same caption, seed and n (alternating which
    goes first, so that a change of the machine's load hits both alike): the server's cost per request.

    Each round also compares the server's own pipeline call (its ``compute_ms``) with the direct one (the
    worker thread against the main thread: e.g. their malloc arenas); the paired difference carries it too."""
    with urllib.request.urlopen(base + "/health", timeout=timeout) as res:
        captions = json.loads(res.read())["examples"] or ["a red circle"]
    url = base + "/api/v1/generate"

    def direct(caption: str, seed: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        pipe([caption], num_images_per_prompt=n, seed=seed, return_attention=True, batch_size=max_batch)
        return time.perf_counter() - start, time.process_time() - cpu

    session = KeepAliveClient(base, timeout) if keep_alive else None
    send = session.post if session is not None else post
    worker_s: list[float] = []  # the server's pipeline call (compute_ms) of each counted request

    def served(caption: str, seed: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        status, answer = send(url, {"caption": caption, "seed": seed, "n": n, "overlays": overlays}, timeout)
        if status != 200:
            raise RuntimeError(f"the server answered {status}")
        worker_s.append(answer["compute_ms"] / 1e3)
        return time.perf_counter() - start, time.process_time() - cpu

    for k in range(2):  # warm-up, not counted
        direct(captions[k % len(captions)], k)
        served(captions[k % len(captions)], k)
    worker_s.clear()
    pipeline_s, request_s = [], []
    deadline = time.monotonic() + max_seconds
    for k in range(requests):
        if time.monotonic() > deadline:
            break
        caption, seed = captions[k % len(captions)], 1000 + k
        if k % 2:
            request_s.append(served(caption, seed))
            pipeline_s.append(direct(caption, seed))
        else:
            pipeline_s.append(direct(caption, seed))
            request_s.append(served(caption, seed))
    if session is not None:
        session.close()
    extra = [r - p for (r, _), (p, _) in zip(request_s, pipeline_s)]
    extra_cpu = [r - p for (_, r), (_, p) in zip(request_s, pipeline_s)]  # the in-process client's CPU included
    outside = [r - w for (r, _), w in zip(request_s, worker_s)]  # the same requests, less their own call
    call_gap = [w - p for w, (p, _) in zip(worker_s, pipeline_s)]  # the server's call against the direct one
    pipeline_p50, request_p50 = (statistics.median(t for t, _ in times) for times in (pipeline_s, request_s))
    return {
        "rounds": len(extra),
        "keep_alive": keep_alive,
        "pipeline_ms_p50": 1e3 * pipeline_p50,
        "request_ms_p50": 1e3 * request_p50,
        "extra_ms": {"p50": 1e3 * statistics.median(extra), "p95": 1e3 * percentile(extra, 95)},
        "extra_cpu_ms_p50": 1e3 * statistics.median(extra_cpu),
        "outside_call_ms_p50": 1e3 * statistics.median(outside),
        "server_call_minus_direct_ms_p50": 1e3 * statistics.median(call_gap),
        "ratio": request_p50 / pipeline_p50,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:8000")
    parser.add_argument("--checkpoint", help="model or run folder to serve (default: tiny untrained model)")
    parser.add_argument("--device", default="cpu", help="device of the served model (own server only)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=40, help="requests in all (<= 10000)")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--max-batch", type=int, default=8, help="images per forward pass (own server only)")
    parser.add_argument("--queue-timeout", type=float, default=30.0, help="seconds (own server only)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop issuing requests after this")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request HTTP timeout, seconds")
    parser.add_argument("--preset", help="serve this preset's networks with random weights (e.g. birds)")
    parser.add_argument("--paired", action="store_true", help="also: pipeline calls and requests in alternation")
    parser.add_argument(
        "--overlays", action="store_true", help='requests ask for the tinted maps too ("overlays": true)'
    )
    parser.add_argument(
        "--keep-alive", action="store_true",
        help="each client sends its requests over one persistent connection (default: a new one per request)",
    )
    parser.add_argument(
        "--tune-malloc", action="store_true",
        help="glibc keeps freed memory for reuse in this process (attngan.training.cpu.tune_cpu_allocator), "
        "as `attngan serve` does by default",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--smoke", action="store_true", help="seconds: the tiny model, 1 client, 3 requests")
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.requests, args.checkpoint, args.preset, args.url = 1, 3, None, None, None
        args.paired = True
    if not 1 <= args.clients <= 256 or not 1 <= args.requests <= 10000 or args.n < 1:
        parser.error("need 1 <= --clients <= 256, 1 <= --requests <= 10000 and --n >= 1")

    if args.tune_malloc:
        from attngan.training.cpu import tune_cpu_allocator

        args.tune_malloc = tune_cpu_allocator()  # False where it does not apply (not glibc)
    if args.paired and args.url:
        parser.error("--paired needs the script's own server (no --url): it calls the same pipeline directly")
    if args.url:
        host = urllib.parse.urlsplit(args.url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            parser.error(f"--url must be a loopback address (127.0.0.1, localhost, ::1), got {host!r}")
        result = run_load(
            args.url.rstrip("/"), args.clients, args.requests, args.n, args.max_seconds, args.timeout, args.overlays,
            args.keep_alive,
        )
    else:
        from attngan.pipeline import AttnGANPipeline
        from attngan.serve import BackgroundServer, create_app

        if args.checkpoint:
            pipe = AttnGANPipeline.from_pretrained(args.checkpoint, device=args.device)
        else:
            pipe = (preset_pipeline(args.preset) if args.preset else tiny_pipeline()).to(args.device)
        app = create_app(
            pipe,
            max_images=max(4, args.n),
            max_batch=args.max_batch,
            queue_timeout=args.queue_timeout,
            max_queue=max(64, 2 * args.clients),
            model_name=args.checkpoint or (f"{args.preset}-random" if args.preset else "tiny-untrained"),
        )
        with BackgroundServer(app) as server:
            result = run_load(
                server.url, args.clients, args.requests, args.n, args.max_seconds, args.timeout, args.overlays,
                args.keep_alive,
            )
            result["batches_run"] = app.state.worker.batches_run
            if args.paired:
                result["paired"] = run_paired(
                    server.url, pipe, args.requests, args.n, args.max_batch, args.max_seconds, args.timeout,
                    args.overlays, args.keep_alive,
                )
        result["max_batch"] = args.max_batch
    result["torch_threads"] = torch.get_num_threads()
    result["overlays"] = args.overlays
    result["keep_alive"] = args.keep_alive
    result["tune_malloc"] = args.tune_malloc

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    lat = result["latency_ms"]
    print(
        f"{result['model'].get('name') or 'model'} on {result['device']}: {result['clients']} clients, "
        f"{result['requests']} requests x {result['images_per_request']} image(s)"
        f"{' with tinted overlays' if args.overlays else ''} in {result['wall_s']:.1f} s"
    )
    if lat:
        print(
            f"latency ms  p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  max {lat['max']:.1f}  mean {lat['mean']:.1f}"
        )
    if result["outside_pipeline_ms"]:
        out = result["outside_pipeline_ms"]
        print(
            f"outside ms  p50 {out['p50']:.1f}  p95 {out['p95']:.1f}  (of a request, outside the pipeline call; "
            f"the call: p50 {result['pipeline_ms_p50']:.1f})"
        )
    print(f"throughput  {result['requests_per_s']:.1f} requests/s  {result['images_per_s']:.1f} images/s")
    if result["mean_batch_images"] is not None:
        print(f"batching    {result['mean_batch_images']:.2f} images per model batch on average")
    print(f"errors      {result['errors']}  (statuses: {result['statuses']}; 0 = no HTTP answer)")
    if "paired" in result:
        pr = result["paired"]
        print(
            f"paired      {pr['rounds']} rounds: pipeline p50 {pr['pipeline_ms_p50']:.1f} ms, request p50 "
            f"{pr['request_ms_p50']:.1f} ms; the server adds p50 {pr['extra_ms']['p50']:.1f} ms "
            f"(p95 {pr['extra_ms']['p95']:.1f}) per request, x{pr['ratio']:.3f}; CPU time p50 "
            f"{pr['extra_cpu_ms_p50']:.1f} ms more per request"
        )
        print(
            f"            of the same requests, outside the server's own pipeline call: p50 "
            f"{pr['outside_call_ms_p50']:.1f} ms; the server's call against the direct one: p50 "
            f"{pr['server_call_minus_direct_ms_p50']:+.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
