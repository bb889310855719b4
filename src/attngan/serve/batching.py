"""The model's worker thread: requests wait in a bounded queue and run together, one batch at a time."""

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..pipeline import AttnGANOutput

__all__ = ["Job", "JobResult", "BatchWorker"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    caption: str
    seed: int
    n: int
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class JobResult:
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
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: Job | None = None  # taken from the queue but did not fit in the last batch
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

    def submit(self, job: Job) -> None:
        """Queue a job; raises ``queue.Full`` when ``max_queue`` jobs are already waiting."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the worker is not running")
        self._queue.put_nowait(job)

    @property
    def waiting(self) -> int:
        return self._queue.qsize() + (self._held is not None)

    def _next_batch(self) -> list[Job]:
        """Block for a first job (waking at once when one is queued; every 0.2 s to see the stop flag), then
        add queued jobs while they fit."""
        batch: list[Job] = []
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

    def _execute(self, jobs: Sequence[Job]) -> list[JobResult]:
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
            results.append(JobResult(part, (start - j.enqueued) * 1e3, (end - start) * 1e3, len(prompts)))
            k += j.n
        return results

    def _run(self, batch: list[Job]) -> None:
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
