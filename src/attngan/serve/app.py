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

Modules: :mod:`~attngan.serve.schema` (the JSON bodies), :mod:`~attngan.serve.batching` (the worker thread),
:mod:`~attngan.serve.render` (images as data URLs), :mod:`~attngan.serve.limits` (the body's size),
:mod:`~attngan.serve.errors` (error messages), :mod:`~attngan.serve.server` (uvicorn), this one (the routes).

References: Xu et al., "AttnGAN", CVPR 2018 (Fig. 1, Eq. 15); taoxugit/AttnGAN ``eval/main.py``.
"""

import asyncio
import contextlib
import logging
import queue
import secrets
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import UserError
from ..text import encode_caption, tokenize
from .batching import BatchWorker, Job, JobResult
from .docs import api_docs_html
from .errors import add_error_handlers
from .limits import BodyLimit, max_body_bytes
from .render import render_bird, render_generate
from .schema import MAX_SEED, GenerateResponse, HealthResponse, request_models

log = logging.getLogger(__name__)

__all__ = ["create_app", "example_captions"]

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


class _Generation:
    """What the generating routes do: check the caption, queue a job for the worker, wait for it within
    ``queue_timeout`` (errors as HTTP errors), render the result."""

    def __init__(self, pipeline: Any, worker: BatchWorker, queue_timeout: float, caption_check: Any) -> None:
        self.pipeline = pipeline
        self.worker = worker
        self.queue_timeout = queue_timeout
        self.caption_check = caption_check

    def check_caption(self, caption: str) -> None:
        if not caption.strip():
            raise HTTPException(
                422, "caption: the caption is empty; write a sentence the model knows words of"
            )
        try:  # the pipeline tokenises again; this only refuses a caption without a known word, early
            encode_caption(caption, self.pipeline.vocab, max_words=10**9)
        except UserError as exc:
            raise HTTPException(422, f"caption: {exc}") from None

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.queue_timeout)))}

    def _submit(self, caption: str, seed: int | None, n: int) -> Job:
        if seed is None:
            seed = secrets.randbelow(MAX_SEED - n + 2)
        elif seed + n - 1 > MAX_SEED:
            raise HTTPException(422, f"seed: seed + n - 1 must be <= {MAX_SEED}, got seed={seed}, n={n}")
        job = Job(caption=caption, seed=seed, n=n)
        try:
            self.worker.submit(job)
        except queue.Full:
            raise HTTPException(
                503,
                f"the server is busy: {self.worker.waiting} requests are already waiting; try again in a few seconds",
                headers=self._retry_after(),
            ) from None
        except RuntimeError:
            raise HTTPException(
                503, "the model worker is not running (the server is shutting down)"
            ) from None
        return job

    async def _wait(self, job: Job) -> JobResult:
        waiting = asyncio.wrap_future(job.future)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), timeout=self.queue_timeout)
        except asyncio.TimeoutError:
            if job.future.cancel():  # still queued: give up; a running job is waited for
                raise HTTPException(
                    503,
                    f"the server is busy: the request waited {self.queue_timeout:g} s for the model without "
                    "reaching it; try again later",
                    headers=self._retry_after(),
                ) from None
            return await waiting

    async def run(self, caption: str, seed: int | None, n: int) -> JobResult:
        """The worker's result for ``n`` images of ``caption``; 422, 500 or 503 as an ``HTTPException``."""
        self.check_caption(caption)
        job = self._submit(caption, seed, n)
        try:
            return await self._wait(job)
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

    async def generate(self, caption: str, seed: int | None, n: int, overlays: bool = False) -> dict[str, Any]:
        start = time.perf_counter()
        result = await self.run(caption, seed, n)
        body = await run_in_threadpool(
            render_generate, caption, result.output, result.queue_ms, result.compute_ms, result.batch_images, overlays
        )
        body["warnings"] = self.caption_check(caption) if self.caption_check is not None else []
        body["time_ms"] = (time.perf_counter() - start) * 1e3
        return body

    async def bird(self, caption: str) -> dict[str, Any]:
        start = time.perf_counter()
        result = await self.run(caption, None, 1)
        return await run_in_threadpool(render_bird, caption, result.output, time.perf_counter() - start)


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
    max_body = max_body_bytes(max_caption_chars)

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
    app.add_middleware(BodyLimit, max_bytes=max_body)
    add_error_handlers(app)
    limits = {
        "max_caption_chars": max_caption_chars,
        "max_images": max_images,
        "max_seed": MAX_SEED,
        "max_batch": max_batch,
        "max_queue": max_queue,
        "queue_timeout_s": queue_timeout,
        "max_body_bytes": max_body,
    }
    health = {
        "status": "ok",
        "device": str(pipeline.device),
        "model": {"name": model_name, **_describe_model(pipeline)},
        "limits": limits,
        "examples": example_captions(pipeline.vocab),
    }
    _add_page_routes(app, _read_page(), health, worker)
    _add_generate_routes(
        app,
        _Generation(pipeline, worker, queue_timeout, caption_check),
        *request_models(max_caption_chars, max_images),
    )
    return app


def _add_page_routes(app: FastAPI, page: str, health: dict[str, Any], worker: BatchWorker) -> None:
    """``/``, ``/docs`` and ``/health`` (with ``HEAD`` for uptime checkers)."""

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
    async def health_route() -> dict[str, Any]:
        """Model, device, limits, queue state and example captions the model's vocabulary knows."""
        queue_state = {
            "waiting": worker.waiting,
            "batches_run": worker.batches_run,
            "images_run": worker.images_run,
        }
        return {**health, "queue": queue_state}


def _add_generate_routes(
    app: FastAPI, generation: _Generation, GenerateRequest: type, BirdRequest: type
) -> None:
    """``POST /api/v1/generate`` and the original release's ``POST /api/v1.0/bird``."""

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
        return await generation.generate(request.caption, request.seed, request.n, request.overlays)

    @app.post("/api/v1.0/bird", status_code=201)
    async def bird(request: BirdRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        """The original release's eval/ route: one image per stage, one attention figure per attention stage."""
        return await generation.bird(request.caption)
