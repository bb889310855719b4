"""HTTP API and web page that draw images from sentences (Eq. 1-2) and show the attended words (Eq. 15).

Routes of :func:`create_app`:

- ``GET /``: a single page (text box, example captions, seed, a button) that shows the image of every
  stage and, per attention stage, the top words with their maps, as Fig. 1 of the paper. Everything it
  needs is in one inline HTML file: no asset comes from the internet.
- ``POST /api/v1/generate`` ``{"caption": str, "seed": int?, "n": int?}``: the images of every stage and
  the attention maps of the top words as PNG data URLs, tokens, unknown words, seeds, times.
- ``POST /api/v1.0/bird`` ``{"caption": str}``: the route of the original release's ``eval/`` Flask API
  (201, ``{"bird": {"small", "medium", "large", "map1", "map2", "caption", "elapsed"}}``), with data
  URLs where it returned blob-storage URLs.
- ``GET /health``: model, device, limits, queue and example captions; ``/openapi.json`` from FastAPI.
- ``GET /docs``: the API's documentation, one self-contained page rendered from the OpenAPI schema
  (:mod:`attngan.serve.docs`; FastAPI's Swagger UI would load its assets from a CDN).

The model runs in one worker thread that takes requests from a bounded queue and runs compatible ones
together, up to ``max_batch`` images per forward pass, so the model runs at most one batch at a time.
A request that waits in the queue longer than ``queue_timeout`` seconds gets a 503, and so does one that
finds the queue full. Bad input gets a 400 (malformed JSON) or a 422 with ``{"detail": "<message>"}``.
No part of a request is ever used as a file path: the page is read once, from the package, when the app
is built.

References: Xu et al., "AttnGAN", CVPR 2018 (Fig. 1, Eq. 15); taoxugit/AttnGAN ``eval/main.py``.
"""

import asyncio
import base64
import concurrent.futures
import contextlib
import io
import logging
import queue
import secrets
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import UserError
from ..pipeline import AttnGANOutput
from ..text import encode_caption, tokenize
from ..viz import attention_figure, top_words, upsample_map
from .docs import api_docs_html

log = logging.getLogger(__name__)

__all__ = [
    "create_app", "BatchWorker", "BackgroundServer", "idle_closing_protocol", "IDLE_TIMEOUT", "example_captions",
    "MAX_SEED", "MAX_BODY_BYTES",
]  # fmt: skip

MAX_SEED = 2**31 - 1  # image k of a request uses seed + k, which must stay <= MAX_SEED
MAX_BODY_BYTES = 16 * 1024  # a request body larger than this gets a 413 (more when captions may be longer)
TOP_WORDS = 5  # words shown per attention stage (Fig. 1 shows the top 5)
MAP_SIZE_RANGE = (64, 128)  # attention overlays are drawn at the image's size, clamped to this range
_HEAT_COLOR = np.array([255.0, 0.0, 0.0])  # red tint of the attention overlays, as viz.attention_figure
_HEAT_ALPHA = 0.6

# Example captions per kind of model; the page offers those whose words the model's vocabulary knows.
_EXAMPLES: dict[str, tuple[str, ...]] = {
    "shapes": (
        "a small red circle at the top left",
        "there is a large blue square in the center",
        "a yellow triangle on the right side",
        "a large green diamond at the bottom",
        "a small white cross in the upper right corner",
        "a purple circle near the bottom left",
    ),
    "birds": (  # Fig. 1/4 of the paper and the original eval/ API
        "this bird is red with white and has a very short beak",
        "the bird has a yellow crown and a black eyering that is round",
        "this bird has a green crown black primaries and a white belly",
        "a small bird with a blue head and a white belly",
    ),
    "coco": (
        "a group of people standing on top of a grass covered field",
        "a red double decker bus driving down a street",
        "a plate of food with broccoli and meat",
        "a man riding a wave on top of a surfboard",
    ),
}


def example_captions(vocab: Any, limit: int = 6) -> list[str]:
    """Captions whose every word the vocabulary knows (the best-covered set first); if none, one made of
    the vocabulary's first words, so that the page always offers something that draws."""
    scored = []
    for order, (_, captions) in enumerate(_EXAMPLES.items()):
        known = [c for c in captions if all(t in vocab.stoi for t in tokenize(c))]
        scored.append((-len(known) / len(captions), order, known))
    out = [c for _, _, known in sorted(scored) for c in known][:limit]
    if not out:
        words = [w for w in vocab.itos[1:] if w.isalpha()][:8]
        out = [" ".join(words)] if words else []
    return out


# ------------------------------------------------------------------------------------------------ schema


class StageImage(BaseModel):
    stage: int = Field(description="0 for the first generator G_0, up to m - 1")
    size: int = Field(description="side of the square image in pixels")
    image: str = Field(description="PNG as a data URL")


class WordMap(BaseModel):
    word: str
    index: int = Field(description="position of the word in `tokens`")
    score: float = Field(description="sum over regions of the attention weights kept by Eq. 15")
    share: float = Field(description="score / the sum of the scores of all words of this stage")
    map: str = Field(description="the word's attention map tinted over the stage's image, PNG data URL")


class AttentionStage(BaseModel):
    stage: int = Field(description="the stage whose image this attention produced (1 .. m - 1)")
    size: int = Field(description="side of the attention grid (the features of the previous stage)")
    words: list[WordMap] = Field(description="the top words by Eq. 15, best first")


class GeneratedImage(BaseModel):
    seed: int
    stages: list[StageImage]
    attention: list[AttentionStage]


class GenerateResponse(BaseModel):
    caption: str
    tokens: list[str] = Field(description="the words fed to the model")
    unknown_words: list[str] = Field(description="words not in the vocabulary (ignored)")
    warnings: list[str] = Field(
        default_factory=list, description="why the caption is unlike the training captions (e.g. more objects)"
    )
    seeds: list[int]
    images: list[GeneratedImage]
    time_ms: float = Field(description="from receiving the request to the response, in ms")
    queue_ms: float = Field(description="time waiting for the model, in ms")
    compute_ms: float = Field(description="time of the model's batch, in ms")
    batch_images: int = Field(description="images computed in the same batch as this request's")


class HealthResponse(BaseModel):
    status: str
    device: str
    model: dict[str, Any]
    limits: dict[str, Any]
    queue: dict[str, Any]
    examples: list[str]


def _request_models(max_caption_chars: int, max_images: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """Request bodies with the app's limits (so that /openapi.json documents them)."""

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        caption: str = Field(
            min_length=1,
            max_length=max_caption_chars,
            strict=True,
            description=f"the sentence, 1 to {max_caption_chars} characters, with at least one known word",
            examples=["a small red circle at the top left"],
        )
        seed: int | None = Field(
            default=None,
            ge=0,
            le=MAX_SEED,
            strict=True,
            description=f"image k uses seed + k (0 .. {MAX_SEED}); none: a random seed, returned",
        )
        n: int = Field(default=1, ge=1, le=max_images, strict=True, description="number of images")

    class BirdRequest(BaseModel):
        caption: str = Field(min_length=1, max_length=max_caption_chars, strict=True)

    return GenerateRequest, BirdRequest


# ------------------------------------------------------------------------------------------------ worker


@dataclass
class _Job:
    caption: str
    seed: int
    n: int
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _JobResult:
    output: AttnGANOutput
    queue_ms: float
    compute_ms: float
    batch_images: int


class BatchWorker:
    """One thread that runs the pipeline on batches of queued requests, one batch at a time.

    A batch takes queued jobs in order while their images fit in ``max_batch`` (a single job larger than
    that runs alone, in chunks of ``max_batch``). Every job asks for the same outputs, so any two are
    compatible: the pipeline pads captions of different lengths and masks the padding, and each image
    has its own seed, so batching does not change an image. Jobs cancelled while waiting are skipped. If a batch
    fails, its jobs are run again one by one so that one bad request cannot fail the others.
    """

    def __init__(self, pipeline: Any, max_batch: int = 8, max_queue: int = 64) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: _Job | None = None  # taken from the queue but did not fit in the last batch
        self.batches_run = 0
        self.images_run = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="attngan-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running batch, then cancel the jobs still waiting."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        pending = [self._held] if self._held is not None else []
        self._held = None
        with contextlib.suppress(queue.Empty):
            while True:
                pending.append(self._queue.get_nowait())
        for job in pending:
            job.future.cancel()

    def submit(self, job: _Job) -> None:
        """Queue a job; raises ``queue.Full`` when ``max_queue`` jobs are already waiting."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the worker is not running")
        self._queue.put_nowait(job)

    @property
    def waiting(self) -> int:
        return self._queue.qsize() + (self._held is not None)

    def _next_batch(self) -> list[_Job]:
        """Block (polling the stop flag) for a first job, then add queued jobs while they fit."""
        batch: list[_Job] = []
        images = 0
        while not self._stop.is_set():
            job, self._held = self._held, None
            if job is None:
                try:
                    job = self._queue.get(timeout=0.05 if batch else 0.2)
                except queue.Empty:
                    if batch:
                        return batch
                    continue
            if batch and images + job.n > self.max_batch:
                self._held = job
                return batch
            if job.future.set_running_or_notify_cancel():  # False: its request gave up waiting
                batch.append(job)
                images += job.n
            if images >= self.max_batch or (batch and self._queue.empty()):
                return batch
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            try:
                self._run(batch)
            except BaseException as exc:  # never let the thread die with requests waiting on it
                log.exception("serve worker: unexpected error")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _execute(self, jobs: Sequence[_Job]) -> list[_JobResult]:
        prompts = [j.caption for j in jobs for _ in range(j.n)]
        seeds = [j.seed + k for j in jobs for k in range(j.n)]
        start = time.perf_counter()
        out = self.pipeline(prompts, seed=seeds, return_attention=True, batch_size=self.max_batch)
        end = time.perf_counter()
        self.batches_run += 1
        self.images_run += len(prompts)
        results, k = [], 0
        for j in jobs:
            part = AttnGANOutput(
                images=out.images[k : k + j.n],
                attention_maps=out.attention_maps[k : k + j.n],
                tokens=out.tokens[k : k + j.n],
                unknown_words=out.unknown_words[k : k + j.n],
                prompts=out.prompts[k : k + j.n],
                seeds=out.seeds[k : k + j.n],
            )
            results.append(_JobResult(part, (start - j.enqueued) * 1e3, (end - start) * 1e3, len(prompts)))
            k += j.n
        return results

    def _run(self, batch: list[_Job]) -> None:
        try:
            results = self._execute(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            log.warning("a batch of %d requests failed (%s); running them one by one", len(batch), exc)
            for job in batch:
                try:
                    job.future.set_result(self._execute([job])[0])
                except Exception as single_exc:
                    job.future.set_exception(single_exc)
            return
        for job, result in zip(batch, results):
            job.future.set_result(result)


# ------------------------------------------------------------------------------------------------ images


def _data_url(image: Image.Image) -> str:
    """A PNG data URL. zlib level 1 with run-length matching only (Z_RLE, libpng's suggestion for images):
    after PNG's filters about as small as Pillow's default (level 6) and several times faster; a birds-sized
    response rendered in 25 instead of 58 ms, 3.5 % longer (benchmarks/README.md, serving)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _overlay(base: np.ndarray, heat: np.ndarray) -> Image.Image:
    """Tint an (s, s, 3) uint8 image red where the [0, 1] heat map (s, s) is high."""
    a = (_HEAT_ALPHA * heat)[..., None]  # (s, s, 1)
    out = base.astype(np.float32) * (1.0 - a) + _HEAT_COLOR * a
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), mode="RGB")


def _map_size(image_size: int) -> int:
    lo, hi = MAP_SIZE_RANGE
    return max(lo, min(hi, image_size))


def _attention_stages(
    stages: Sequence[Image.Image], maps: Sequence[Any], tokens: Sequence[str]
) -> list[dict]:
    """Per attention stage k (which drew image k + 1): its top words (Eq. 15) and their overlaid maps."""
    out = []
    for k, attn in enumerate(maps):  # (T, h, w)
        length = attn.shape[0]
        target = stages[min(k + 1, len(stages) - 1)]
        size = _map_size(target.size[0])
        base = np.asarray(target.convert("RGB").resize((size, size), Image.BILINEAR))  # (s, s, 3)
        ranked = top_words(attn, length, k=length)  # every word, best first
        total = sum(score for _, score in ranked) or 1.0
        words = []
        for j, score in ranked[:TOP_WORDS]:
            heat = upsample_map(attn[j], size)  # (s, s) in [0, 1]
            words.append(
                {
                    "word": tokens[j],
                    "index": j,
                    "score": score,
                    "share": score / total,
                    "map": _data_url(_overlay(base, heat)),
                }
            )
        out.append({"stage": k + 1, "size": int(attn.shape[-1]), "words": words})
    return out


def _render(caption: str, result: _JobResult) -> dict[str, Any]:
    out = result.output
    images = []
    for stages, maps, tokens, seed in zip(out.images, out.attention_maps, out.tokens, out.seeds):
        images.append(
            {
                "seed": seed,
                "stages": [
                    {"stage": s, "size": im.size[0], "image": _data_url(im)} for s, im in enumerate(stages)
                ],
                "attention": _attention_stages(stages, maps, tokens),
            }
        )
    return {
        "caption": caption,
        "tokens": out.tokens[0],
        "unknown_words": out.unknown_words[0],
        "seeds": list(out.seeds),
        "images": images,
        "queue_ms": result.queue_ms,
        "compute_ms": result.compute_ms,
        "batch_images": result.batch_images,
    }


def _render_bird(caption: str, result: _JobResult, elapsed: float) -> dict[str, Any]:
    """The original eval/ API's response: one URL per stage and one attention figure per attention stage."""
    out = result.output
    stages, maps, tokens = out.images[0], out.attention_maps[0], out.tokens[0]
    names = ["small", "medium", "large"] if len(stages) <= 3 else [f"stage{s}" for s in range(len(stages))]
    bird: dict[str, Any] = {name: _data_url(im) for name, im in zip(names, stages)}
    size = _map_size(stages[-1].size[0])
    for k, attn in enumerate(maps):
        fig = attention_figure(stages[: k + 2], [attn], tokens, attn.shape[0], k=TOP_WORDS, size=size)
        bird[f"map{k + 1}"] = _data_url(fig)
    bird |= {"caption": caption, "elapsed": elapsed, "seed": out.seeds[0]}
    return {"bird": bird}


# ------------------------------------------------------------------------------------------------ app


class _BodyLimit:
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


def _read_page() -> str:
    return resources.files(__package__).joinpath("static", "index.html").read_text(encoding="utf-8")


def _describe_model(pipeline: Any) -> dict[str, Any]:
    cfg = pipeline.generator.config
    return {
        "num_stages": cfg.num_stages,
        "image_sizes": list(cfg.image_sizes),
        "vocab_size": len(pipeline.vocab),
        "embed_dim": cfg.embed_dim,
        "dcgan": cfg.dcgan,
        "max_words": pipeline.max_words,
    }


def create_app(
    pipeline: Any,  # an AttnGANPipeline (or anything with its __call__, encode_prompts, vocab, generator)
    *,
    max_caption_chars: int = 300,  # longer captions get a 422
    max_images: int = 4,  # most images one request may ask for (n)
    queue_timeout: float = 10.0,  # seconds a request may wait for the model before a 503
    max_batch: int = 8,  # most images per forward pass
    max_queue: int = 64,  # requests waiting beyond this get a 503 at once
    model_name: str | None = None,  # shown by /health and the page (e.g. the checkpoint's folder name)
    caption_check: Any = None,  # caption -> warnings for captions unlike the training data (cli.sample)
) -> FastAPI:
    """The FastAPI app of this module's docstring; the worker thread runs while the app is served."""
    if max_caption_chars < 1 or max_images < 1 or max_batch < 1 or max_queue < 1 or not queue_timeout > 0:
        raise UserError(
            "max_caption_chars, max_images, max_batch and max_queue must be >= 1 and queue_timeout > 0"
        )
    worker = BatchWorker(pipeline, max_batch=max_batch, max_queue=max_queue)
    # Room for the longest allowed caption as JSON (at most 6 bytes per character, as \uXXXX) and the rest.
    max_body = max(MAX_BODY_BYTES, 6 * max_caption_chars + 1024)
    page = _read_page()
    examples = example_captions(pipeline.vocab)
    model = {"name": model_name, **_describe_model(pipeline)}
    limits = {
        "max_caption_chars": max_caption_chars,
        "max_images": max_images,
        "max_seed": MAX_SEED,
        "max_batch": max_batch,
        "max_queue": max_queue,
        "queue_timeout_s": queue_timeout,
        "max_body_bytes": max_body,
    }
    GenerateRequest, BirdRequest = _request_models(max_caption_chars, max_images)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)

    app = FastAPI(
        title="AttnGAN",
        summary="Images and word attention maps from sentences (Xu et al., CVPR 2018).",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads its assets from a CDN: /docs below works offline
        redoc_url=None,
    )
    app.state.worker = worker
    app.add_middleware(_BodyLimit, max_bytes=max_body)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        parts = []
        for e in errors:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            msg = e.get("msg", "invalid")
            if e.get("type") == "json_invalid":
                msg = f"the body is not valid JSON ({(e.get('ctx') or {}).get('error', 'decode error')})"
                loc = ""
            elif e.get("type") == "missing" and not loc:
                msg = 'the body is empty: send a JSON object such as {"caption": "a red bird"}'
            elif e.get("type") == "model_attributes_type":
                msg = 'the body must be a JSON object such as {"caption": "a red bird"}'
                content_type = request.headers.get("content-type", "")
                if "json" not in content_type.lower():
                    msg = (
                        f"the body was sent as {content_type or 'no content type'!r}, not JSON: send it with the "
                        'header Content-Type: application/json (e.g. curl -H "Content-Type: application/json")'
                    )
                loc = ""
            parts.append(f"{loc}: {msg}" if loc else msg)
        simple = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse(
            {"detail": "; ".join(parts), "errors": simple}, status_code=400 if malformed else 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's wording
            detail = 'the body could not be read as UTF-8 JSON: send a JSON object such as {"caption": "a red bird"}'
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def check_caption(caption: str) -> None:
        if not caption.strip():
            raise HTTPException(
                422, "caption: the caption is empty; write a sentence the model knows words of"
            )
        try:  # the pipeline tokenises again; this only refuses a caption without a known word, early
            encode_caption(caption, pipeline.vocab, max_words=10**9)
        except UserError as exc:
            raise HTTPException(422, f"caption: {exc}") from None

    async def run_job(caption: str, seed: int | None, n: int) -> _JobResult:
        if seed is None:
            seed = secrets.randbelow(MAX_SEED - n + 2)
        elif seed + n - 1 > MAX_SEED:
            raise HTTPException(422, f"seed: seed + n - 1 must be <= {MAX_SEED}, got seed={seed}, n={n}")
        job = _Job(caption=caption, seed=seed, n=n)
        try:
            worker.submit(job)
        except queue.Full:
            raise HTTPException(
                503,
                f"the server is busy: {worker.waiting} requests are already waiting; try again in a few seconds",
                headers={"Retry-After": str(max(1, round(queue_timeout)))},
            ) from None
        except RuntimeError:
            raise HTTPException(
                503, "the model worker is not running (the server is shutting down)"
            ) from None
        waiting = asyncio.wrap_future(job.future)
        try:
            try:
                return await asyncio.wait_for(asyncio.shield(waiting), timeout=queue_timeout)
            except asyncio.TimeoutError:
                if job.future.cancel():  # still queued: give up; a running job is waited for
                    raise HTTPException(
                        503,
                        f"the server is busy: the request waited {queue_timeout:g} s for the model without "
                        "reaching it; try again later",
                        headers={"Retry-After": str(max(1, round(queue_timeout)))},
                    ) from None
                return await waiting
        except asyncio.CancelledError:
            job.future.cancel()  # the request was abandoned: do not run it
            raise
        except UserError as exc:
            raise HTTPException(422, f"caption: {exc}") from None
        except HTTPException:
            raise
        except Exception as exc:
            log.exception("generation failed for %r", caption)
            raise HTTPException(
                500, f"the model failed on this request: {type(exc).__name__}: {exc}"
            ) from None

    @app.head("/", include_in_schema=False)
    @app.head("/health", include_in_schema=False)
    async def head() -> Response:  # uptime checkers probe with HEAD
        return Response(status_code=200)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(api_docs_html(app.openapi(), str(request.base_url)))

    @app.get("/health", response_model=HealthResponse)
    async def health() -> dict[str, Any]:
        """Model, device, limits, queue state and example captions the model's vocabulary knows."""
        return {
            "status": "ok",
            "device": str(pipeline.device),
            "model": model,
            "limits": limits,
            "queue": {
                "waiting": worker.waiting,
                "batches_run": worker.batches_run,
                "images_run": worker.images_run,
            },
            "examples": examples,
        }

    @app.post(
        "/api/v1/generate",
        response_model=GenerateResponse,
        responses={
            400: {"description": "malformed JSON"},
            413: {"description": "body too large"},
            422: {"description": "invalid caption, seed or n"},
            503: {"description": "busy: the queue is full or the request waited longer than queue_timeout"},
        },
    )
    async def generate(request: GenerateRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        """Draw ``n`` images of ``caption``: every stage's image and the top attended words with their maps."""
        start = time.perf_counter()
        check_caption(request.caption)
        result = await run_job(request.caption, request.seed, request.n)
        body = await run_in_threadpool(_render, request.caption, result)
        body["warnings"] = caption_check(request.caption) if caption_check is not None else []
        body["time_ms"] = (time.perf_counter() - start) * 1e3
        return body

    @app.post("/api/v1.0/bird", status_code=201)
    async def bird(request: BirdRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        """The original release's eval/ route: one image per stage, one attention figure per attention stage."""
        start = time.perf_counter()
        check_caption(request.caption)
        result = await run_job(request.caption, None, 1)
        return await run_in_threadpool(_render_bird, request.caption, result, time.perf_counter() - start)

    return app


# ------------------------------------------------------------------------------------------------ server


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


IDLE_TIMEOUT = 30.0  # seconds a connection may stay open without sending a whole request


def idle_closing_protocol(idle_timeout: float = IDLE_TIMEOUT) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11, as its ``http="auto"``) that closes a
    connection which sends no complete request within ``idle_timeout`` seconds of opening or of its last
    data. uvicorn itself times out only idle keep-alive connections after a response: a client that opens
    a socket and sends nothing (or half a request) would hold it, and a file descriptor, forever."""
    try:
        import httptools  # noqa: F401 - uvicorn's choice when it is installed
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class IdleClosingProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._close_when_idle()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is None or self.cycle.response_complete:  # still no whole request
                self._close_when_idle()

        def _close_when_idle(self) -> None:
            if self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(idle_timeout, self.timeout_keep_alive_handler)

    return IdleClosingProtocol


class BackgroundServer:
    """Run an app with uvicorn in a thread on a loopback port (tests, benchmarks, notebooks).

    ``with BackgroundServer(app) as server: urllib.request.urlopen(server.url + "/health")``
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        idle_timeout: float = IDLE_TIMEOUT,  # connections sending no whole request for this long are closed
    ) -> None:
        import uvicorn

        self.host = host
        self.port = port or _free_port(host)
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level=log_level, lifespan="on", http=idle_closing_protocol(idle_timeout)
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="attngan-serve-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start on {self.url} within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
