"""attngan.serve against a real uvicorn server on a free loopback port: every route, every kind of bad
input, the 503 of a full queue and of a queue timeout, batching with one batch at a time, the CLI."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")

from PIL import Image  # noqa: E402

from attngan.config import PRESETS  # noqa: E402
from attngan.data.synthetic import shapes_vocabulary  # noqa: E402
from attngan.nn import Generator, TextEncoder  # noqa: E402
from attngan.pipeline import AttnGANPipeline  # noqa: E402
from attngan.serve import MAX_SEED, BackgroundServer, create_app, example_captions  # noqa: E402
from attngan.text import Vocabulary, tokenize  # noqa: E402

TIMEOUT = 30  # seconds for any single HTTP call; nothing here should come close


@pytest.fixture(scope="module")
def pipe() -> AttnGANPipeline:
    torch.manual_seed(0)
    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    te = TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab)))
    return AttnGANPipeline(te, Generator(tiny.generator), vocab)


@pytest.fixture(scope="module")
def server(pipe):
    with BackgroundServer(create_app(pipe, max_images=4, max_batch=8)) as srv:
        yield srv


def request(base: str, path: str, body=None, content_type: str = "application/json", method=None):
    """-> (status, parsed JSON or text, headers); ``body``: a JSON-able object or raw bytes."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as res:
            status, raw, headers = res.status, res.read(), res.headers
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), exc.headers
    text = raw.decode()
    is_json = headers.get("content-type", "").startswith("application/json")
    return status, json.loads(text) if is_json else text, headers


def decode(data_url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :])))
    return np.asarray(image if image.mode == "L" else image.convert("RGB"))  # greyscale maps stay (H, W)


class GatedPipeline:
    """The real pipeline behind a gate: each call waits for ``release``; records calls and concurrency."""

    def __init__(self, inner: AttnGANPipeline) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, prompts, **kwargs):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append(list(prompts))
        self.entered.set()
        try:
            if not self.release.wait(TIMEOUT):
                raise RuntimeError("gate never released")
            return self.inner(prompts, **kwargs)
        finally:
            with self._lock:
                self.active -= 1


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------ routes


def test_health_page_and_openapi(server, pipe):
    status, health, _ = request(server.url, "/health")
    assert status == 200 and health["status"] == "ok" and health["device"] == "cpu"
    assert health["model"]["num_stages"] == 2 and health["model"]["image_sizes"] == [16, 32]
    assert health["model"]["vocab_size"] == len(pipe.vocab)
    assert health["limits"]["max_caption_chars"] == 300 and health["limits"]["max_images"] == 4
    assert len(health["examples"]) >= 3  # the shapes examples, every word known to the vocabulary
    assert all(t in pipe.vocab.stoi for c in health["examples"] for t in tokenize(c))

    status, page, headers = request(server.url, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for needle in ('id="caption"', 'id="seed"', 'id="generate"', 'id="examples"', "/api/v1/generate"):
        assert needle in page
    # No asset from the internet: no absolute URL in any src/href, no external script or stylesheet.
    for bad in ('src="http', "src='http", 'href="http', "href='http", "@import", "//cdn"):
        assert bad not in page

    status, spec, _ = request(server.url, "/openapi.json")
    assert status == 200
    assert {"/api/v1/generate", "/api/v1.0/bird", "/health"} <= set(spec["paths"])
    schema = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert schema["caption"]["maxLength"] == 300 and schema["n"]["maximum"] == 4
    assert request(server.url, "/docs")[0] == 200


def test_generate_returns_the_pipeline_images_and_eq15_words(server, pipe):
    caption = "a small red zorblax circle at the top left"
    status, body, _ = request(server.url, "/api/v1/generate", {"caption": caption, "seed": 5, "n": 2})
    assert status == 200, body
    assert body["seeds"] == [5, 6] and body["unknown_words"] == ["zorblax"]
    assert body["tokens"] == ["a", "small", "red", "circle", "at", "the", "top", "left"]
    assert body["time_ms"] >= body["compute_ms"] > 0 and body["batch_images"] == 2
    direct = pipe(caption, seed=5, num_images_per_prompt=2)
    assert len(body["images"]) == 2
    for k, image in enumerate(body["images"]):
        assert image["seed"] == 5 + k
        assert [(s["stage"], s["size"]) for s in image["stages"]] == [(0, 16), (1, 32)]
        for s, stage in enumerate(image["stages"]):  # exactly the pipeline's pixels (PNG is lossless)
            np.testing.assert_array_equal(decode(stage["image"]), np.asarray(direct.images[k][s]))
        (attention,) = image["attention"]  # the tiny generator has one attention stage, over 16 x 16 features
        assert attention["stage"] == 1 and attention["size"] == 16
        words = attention["words"]
        assert len(words) == 5
        assert all(body["tokens"][w["index"]] == w["word"] for w in words)
        shares = [w["share"] for w in words]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
        for w in words:  # the word's weights on the 16 x 16 grid, to 1/255 of their largest; no overlay unasked
            weights = direct.attention_maps[k][0][w["index"]].numpy()
            np.testing.assert_allclose(decode(w["map"]) / 255 * w["map_max"], weights, atol=w["map_max"] / 510 + 1e-7)
            assert w["map_max"] == pytest.approx(float(weights.max()), rel=1e-6) and w["overlay"] is None
    # The first-ranked word is the one with the largest Eq. 15 score of the pipeline's own attention.
    attn = direct.attention_maps[0][0]  # (T, 16, 16)
    kept = torch.where(attn > 1 / attn.shape[0], attn, torch.zeros_like(attn)).sum(dim=(1, 2))
    assert body["images"][0]["attention"][0]["words"][0]["index"] == int(kept.argmax())

    tinted = request(server.url, "/api/v1/generate", {"caption": caption, "seed": 5, "overlays": True})[1]
    assert all(decode(w["overlay"]).shape == (64, 64, 3) for w in tinted["images"][0]["attention"][0]["words"])
    assert tinted["images"][0]["attention"][0]["words"][0]["map"] == body["images"][0]["attention"][0]["words"][0]["map"]

    again = request(server.url, "/api/v1/generate", {"caption": caption, "seed": 6})[1]
    assert again["images"][0]["stages"][1]["image"] == body["images"][1]["stages"][1]["image"]
    random_seed = request(server.url, "/api/v1/generate", {"caption": caption})[1]
    (seed,) = random_seed["seeds"]
    assert 0 <= seed <= MAX_SEED
    redo = request(server.url, "/api/v1/generate", {"caption": caption, "seed": seed})[1]
    assert redo["images"][0]["stages"][1]["image"] == random_seed["images"][0]["stages"][1]["image"]


def test_rendered_maps_are_viz_overlays_of_the_top_words(pipe):
    """render_generate's batched overlays: each the viz.overlay of viz.upsample_map of its word, pixel for pixel."""
    from attngan.serve.render import HEAT_ALPHA, TOP_WORDS, render_generate
    from attngan.viz import overlay, top_words, upsample_map

    out = pipe("a small red circle at the top left", seed=3)
    body = render_generate("a small red circle at the top left", out, 0.0, 1.0, 1, with_overlays=True)
    stages, (attn,), tokens = out.images[0], out.attention_maps[0], out.tokens[0]
    (rendered,) = body["images"][0]["attention"]
    ranked = top_words(attn, attn.shape[0], k=TOP_WORDS)
    assert [(w["index"], w["word"], w["score"]) for w in rendered["words"]] == [(j, tokens[j], s) for j, s in ranked]
    base = np.asarray(stages[1].convert("RGB").resize((64, 64), Image.BILINEAR))
    for (j, _), word in zip(ranked, rendered["words"]):
        expected = np.asarray(overlay(base, upsample_map(attn[j], 64), "heat", alpha=HEAT_ALPHA))
        np.testing.assert_array_equal(decode(word["overlay"]), expected)


def test_grid_map_scales_to_the_largest_weight_and_survives_empty_maps():
    from attngan.serve.render import grid_map

    pixels, top = grid_map(np.array([[0.0, 0.1], [0.2, 0.4]], dtype=np.float32))
    assert top == pytest.approx(0.4) and pixels.tolist() == [[0, 64], [128, 255]]
    pixels, top = grid_map(np.zeros((3, 3), dtype=np.float32))  # a word nobody attended to
    assert top == 0.0 and not pixels.any()
    pixels, top = grid_map(np.array([[np.nan, 0.5]], dtype=np.float32))
    assert top == 0.0 and not pixels.any()


def test_original_bird_route(server):
    status, body, _ = request(server.url, "/api/v1.0/bird", {"caption": "a large blue square"})
    assert status == 201, body
    bird = body["bird"]
    assert bird["caption"] == "a large blue square" and bird["elapsed"] > 0
    assert decode(bird["small"]).shape == (16, 16, 3) and decode(bird["medium"]).shape == (32, 32, 3)
    assert "large" not in bird  # two stages only
    assert decode(bird["map1"]).shape[1] == 5 * 64  # attention_figure: top-5 words, 64 px cells
    assert request(server.url, "/api/v1.0/bird", {"caption": "zorblax"})[0] == 422


BAD_INPUTS = [
    ({"caption": ""}, 422, "caption"),
    ({"caption": "   "}, 422, "empty"),
    ({"caption": "a red circle " * 30}, 422, "at most 300 characters"),
    ({"caption": 42}, 422, "valid string"),
    ({"caption": ["a", "red"]}, 422, "valid string"),
    ({"caption": "zorblax quux"}, 422, "no word in the vocabulary"),
    ({"caption": "!!! ???"}, 422, "no word in the vocabulary"),
    ({"caption": "a red circle", "seed": -1}, 422, "seed"),
    ({"caption": "a red circle", "seed": MAX_SEED + 1}, 422, "seed"),
    ({"caption": "a red circle", "seed": MAX_SEED, "n": 2}, 422, "seed + n - 1"),
    ({"caption": "a red circle", "seed": "7"}, 422, "seed"),
    ({"caption": "a red circle", "seed": 1.5}, 422, "seed"),
    ({"caption": "a red circle", "n": 0}, 422, "n:"),
    ({"caption": "a red circle", "n": 5}, 422, "n:"),
    ({"caption": "a red circle", "n": True}, 422, "n:"),
    ({"caption": "a red circle", "seeds": 3}, 422, "seeds"),
    ({}, 422, "caption: Field required"),
    ([1, 2], 422, "JSON object"),
    (b'{"caption": "a red', 400, "not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, "not valid JSON"),
    (b"", 422, "the body is empty"),
]


def test_bad_inputs_get_4xx_with_a_message_and_the_server_keeps_serving(server):
    for body, expected, message in BAD_INPUTS:
        status, answer, _ = request(server.url, "/api/v1/generate", body)
        assert status == expected, (body, answer)
        assert isinstance(answer["detail"], str) and message in answer["detail"], (body, answer)
    # Not JSON at all.
    status, answer, _ = request(server.url, "/api/v1/generate", b"caption=red", content_type="text/plain")
    assert status == 422 and "not JSON" in answer["detail"] and "Content-Type: application/json" in answer["detail"]
    # JSON sent without its content type: the message says what to change (not "must be a JSON object").
    for route in ("/api/v1/generate", "/api/v1.0/bird"):
        status, answer, _ = request(server.url, route, b'{"caption": "a red circle"}', content_type="text/plain")
        assert status == 422 and "Content-Type: application/json" in answer["detail"], answer
    status, answer, _ = request(server.url, "/api/v1/generate", b'["a red circle"]')
    assert status == 422 and "JSON object" in answer["detail"]
    # Bytes that are not UTF-8.
    status, answer, _ = request(server.url, "/api/v1/generate", b'{"caption": "a red \xff circle"}')
    assert status == 400 and "UTF-8 JSON" in answer["detail"], answer
    # HEAD works where GET does (uptime checkers).
    for path in ("/health", "/"):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
        conn.request("HEAD", path)
        assert conn.getresponse().status == 200
        conn.close()
    # Too large: refused from the Content-Length header, and while reading a chunked body.
    huge = json.dumps({"caption": "a" * 20000}).encode()
    status, answer, _ = request(server.url, "/api/v1/generate", huge)
    assert status == 413 and "too large" in answer["detail"]
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
    conn.request("POST", "/api/v1/generate", body=iter([huge[:9000], huge[9000:]]), encode_chunked=True,
                 headers={"Content-Type": "application/json"})  # fmt: skip
    res = conn.getresponse()
    assert res.status == 413 and "too large" in json.loads(res.read())["detail"]
    conn.close()
    # Paths never reach the file system; unknown routes and methods are plain 404 / 405.
    for path in ("/static/../../etc/passwd", "/..%2f..%2fetc%2fpasswd", "/index.html", "/static/index.html"):
        assert request(server.url, path)[0] == 404
    assert request(server.url, "/api/v1/generate")[0] == 405
    # Still serving.
    status, body, _ = request(server.url, "/api/v1/generate", {"caption": "a green triangle", "seed": 1})
    assert status == 200 and body["seeds"] == [1]
    assert request(server.url, "/health")[1]["status"] == "ok"


# ------------------------------------------------------------------------------------------------ queue


def test_queue_timeout_gives_503_and_the_request_never_runs(pipe):
    gated = GatedPipeline(pipe)
    with BackgroundServer(create_app(gated, queue_timeout=0.3)) as srv, ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(request, srv.url, "/api/v1/generate", {"caption": "a red circle", "seed": 0})
            assert gated.entered.wait(TIMEOUT)  # the worker is busy with the first request
            start = time.monotonic()
            status, body, headers = request(
                srv.url, "/api/v1/generate", {"caption": "a blue square", "seed": 1}
            )
            waited = time.monotonic() - start
            assert status == 503 and "busy" in body["detail"] and "0.3 s" in body["detail"]
            assert 0.25 <= waited < 5 and int(headers["Retry-After"]) >= 1
        finally:
            gated.release.set()
        assert first.result(TIMEOUT)[0] == 200  # a request that reached the model is waited for
        assert request(srv.url, "/api/v1/generate", {"caption": "a green cross", "seed": 2})[0] == 200
    assert gated.calls == [["a red circle"], ["a green cross"]]  # the timed-out request never ran


def test_full_queue_gives_503_at_once(pipe):
    gated = GatedPipeline(pipe)
    app = create_app(gated, queue_timeout=20, max_queue=1)
    with BackgroundServer(app) as srv, ThreadPoolExecutor(2) as pool:
        try:
            running = pool.submit(request, srv.url, "/api/v1/generate", {"caption": "a red circle"})
            assert gated.entered.wait(TIMEOUT)
            waiting = pool.submit(request, srv.url, "/api/v1/generate", {"caption": "a blue square"})
            wait_until(lambda: app.state.worker.waiting == 1)
            start = time.monotonic()
            status, body, _ = request(srv.url, "/api/v1/generate", {"caption": "a green cross"})
            assert status == 503 and "already waiting" in body["detail"]
            assert time.monotonic() - start < 5
        finally:
            gated.release.set()
        assert running.result(TIMEOUT)[0] == 200 and waiting.result(TIMEOUT)[0] == 200


def test_compatible_requests_are_batched_and_batches_never_overlap(pipe):
    gated = GatedPipeline(pipe)
    app = create_app(gated, max_batch=3, queue_timeout=20)
    jobs = [
        ("a red circle", 10),
        ("a blue square on the left", 11),
        ("a green cross", 12),
        ("a white diamond", 13),
    ]
    with BackgroundServer(app) as srv, ThreadPoolExecutor(5) as pool:
        try:
            blocker = pool.submit(
                request, srv.url, "/api/v1/generate", {"caption": "a black circle", "seed": 0}
            )
            assert gated.entered.wait(TIMEOUT)
            futures = [
                pool.submit(request, srv.url, "/api/v1/generate", {"caption": c, "seed": s}) for c, s in jobs
            ]
            wait_until(lambda: app.state.worker.waiting == len(jobs))
        finally:
            gated.release.set()
        assert blocker.result(TIMEOUT)[0] == 200
        results = [f.result(TIMEOUT) for f in futures]
    assert [len(c) for c in gated.calls] == [1, 3, 1]  # the blocker alone, then max_batch, then the rest
    assert gated.max_active == 1  # one batch at a time
    assert sorted(r[1]["batch_images"] for r in results) == [1, 3, 3, 3]
    for (caption, seed), (status, body, _) in zip(jobs, results):
        assert status == 200 and body["caption"] == caption and body["seeds"] == [seed]
        alone = pipe(caption, seed=seed)  # batching does not change an image
        got = decode(body["images"][0]["stages"][-1]["image"]).astype(int)
        assert np.abs(got - np.asarray(alone.images[0][-1]).astype(int)).max() <= 1


# ------------------------------------------------------------------------------------------------ misc


def test_example_captions_follow_the_vocabulary():
    assert example_captions(shapes_vocabulary())[0] == "a small red circle at the top left"
    birds = Vocabulary.build([tokenize("this bird is red with white and has a very short beak yellow crown "
                                       "black eyering that round the small blue head belly")])  # fmt: skip
    got = example_captions(birds)
    assert "this bird is red with white and has a very short beak" in got
    assert all(t in birds.stoi for c in got for t in tokenize(c))
    other = Vocabulary.build([["zebra", "quagga", "okapi"]])
    assert [set(tokenize(c)) for c in example_captions(other)] == [{"zebra", "quagga", "okapi"}]


def test_cli_serve_binds_loopback_by_default(pipe, tmp_path, monkeypatch):
    import uvicorn
    from click.testing import CliRunner
    from fastapi import FastAPI

    from attngan.cli import cli

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    pipe.save_pretrained(tmp_path / "model")
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "--checkpoint", str(tmp_path / "model"), "--port", "8123",
                                 "--device", "cpu", "--max-batch", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    ((app, kw),) = calls
    assert isinstance(app, FastAPI) and kw["host"] == "127.0.0.1" and kw["port"] == 8123
    assert "http://127.0.0.1:8123/" in result.output and "Warning" not in result.output
    assert app.state.worker.max_batch == 2

    result = runner.invoke(cli, ["serve", "--checkpoint", str(tmp_path / "model"), "--host", "0.0.0.0"])
    assert result.exit_code == 0 and "not loopback" in result.output and calls[-1][1]["host"] == "0.0.0.0"

    result = runner.invoke(cli, ["serve"])
    assert result.exit_code != 0 and "no model given" in str(result.exception)
    result = runner.invoke(cli, ["serve", "--checkpoint", str(tmp_path / "model"), "--queue-timeout", "0"])
    assert result.exit_code == 2 and "queue-timeout" in result.output


def test_the_body_limit_follows_the_longest_caption_allowed(pipe):
    caption = "a red circle " + "\u00e9" * 9000  # 9,013 characters; as JSON (\u00e9 escapes) about 54 KB
    body = json.dumps({"caption": caption, "seed": 0}).encode()
    assert len(body) > 16 * 1024
    with BackgroundServer(create_app(pipe, max_caption_chars=10000)) as srv:
        status, answer, _ = request(srv.url, "/api/v1/generate", body)
        assert status == 200, answer
        assert request(srv.url, "/health")[1]["limits"]["max_body_bytes"] >= 6 * 10000


def test_a_connection_that_sends_nothing_is_closed(pipe):
    import socket

    from fastapi import FastAPI

    with BackgroundServer(FastAPI(), idle_timeout=0.5) as srv:
        for first in (b"", b"GET /health HTTP/1.1\r\n"):  # nothing at all, or half a request
            with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
                sock.sendall(first)
                start = time.monotonic()
                assert sock.recv(1024) == b""  # closed by the server, not by the 10 s socket timeout
                assert time.monotonic() - start < 5
        with socket.create_connection((srv.host, srv.port), timeout=10) as sock:  # whole requests are served
            sock.sendall(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 404")


def test_cli_serve_passes_the_idle_timeout(pipe, tmp_path, monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    from attngan.cli import cli

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    pipe.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(cli, ["serve", "--checkpoint", str(tmp_path / "model"), "--idle-timeout", "7"])
    assert result.exit_code == 0, result.output
    protocol = calls[-1]["http"]
    assert issubclass(protocol, asyncio.Protocol) and protocol.__name__ == "IdleClosingProtocol"


def test_cli_serve_tunes_the_allocator_unless_told_not_to(pipe, tmp_path, monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    import attngan.training.cpu
    from attngan.cli import cli

    tuned = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.setattr(attngan.training.cpu, "tune_cpu_allocator", lambda: tuned.append(1) or True)
    pipe.save_pretrained(tmp_path / "model")
    assert CliRunner().invoke(cli, ["serve", "--checkpoint", str(tmp_path / "model")]).exit_code == 0
    assert tuned == [1]
    result = CliRunner().invoke(cli, ["serve", "--checkpoint", str(tmp_path / "model"), "--no-tune-malloc"])
    assert result.exit_code == 0 and tuned == [1]


def test_a_caption_with_more_objects_than_the_training_images_gets_a_warning(pipe, tmp_path):
    from attngan.cli.serve import _caption_check  # what `attngan serve --checkpoint RUN` passes to the app

    run = tmp_path / "00001-shapes-attngan"
    pipe.save_pretrained(run / "model")
    (run / "config.json").write_text(json.dumps({"preset": {"data": {"dataset": "shapes", "max_objects": 1}}}))
    check = _caption_check(run / "model")
    assert _caption_check(None) is None
    with BackgroundServer(create_app(pipe, caption_check=check)) as srv:
        two = json.dumps({"caption": "a red square and a blue circle", "seed": 0}).encode()
        status, answer, _ = request(srv.url, "/api/v1/generate", two)
        assert status == 200 and len(answer["warnings"]) == 1
        assert answer["warnings"][0].startswith("the caption names 2 objects") and "max_objects=1" in answer["warnings"][0]
        one = json.dumps({"caption": "a red square", "seed": 0}).encode()
        assert request(srv.url, "/api/v1/generate", one)[1]["warnings"] == []
