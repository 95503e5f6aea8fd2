"""Dynamic batching: one admission queue per model and decoder, and a worker that decodes it in batches.

Why a queue per model and decoder: a batch runs one checkpoint's decoder over padded prompts, so AR and
diffusion requests cannot share one, and neither can requests for two models (each has its own
catalog, vocabulary and weights). The worker takes up to ``max_batch_size`` requests, waiting at most ``max_wait``
after the oldest arrived, and runs :meth:`Reranker.rank` on the runtime's torch thread, which both
decoders share (torch releases the GIL, so the event loop keeps admitting; why one thread:
:mod:`service.torch_thread`). Admission happens before any tokenization, so an overloaded
service refuses work (429) at the cost of a ``len()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from dgr2.model.engine import RankRequest, RankResult
from dgr2.service.errors import DeadlineExceeded, DecodeFailed, QueueFull, Unavailable
from dgr2.service.metrics import Metrics
from dgr2.service.models import Engine

log = logging.getLogger(__name__)


def timed(fn: Callable[[list[RankRequest]], list[RankResult]],
          requests: list[RankRequest]) -> tuple[list[RankResult], float, float]:
    """``fn(requests)``, when it started (``time.monotonic``) and how long it took."""
    start = time.monotonic()
    return fn(requests), start, time.monotonic() - start


@dataclass
class Decoded:
    result: RankResult
    engine: Engine  # the checkpoint that ranked it (a reload may swap engines between batches)
    queue_s: float
    decode_s: float


@dataclass(eq=False)  # identity: a job is found in (and removed from) the queue as itself
class Job:
    request: RankRequest
    deadline: float | None  # time.monotonic() after which the request is not worth decoding
    future: asyncio.Future[Decoded]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, model: str, decoder: str, engine: Callable[[], Engine], metrics: Metrics,
                 executor: Executor, *, max_batch_size: int, max_wait_s: float, queue_limit: int) -> None:
        self.model, self.decoder, self.engine, self.metrics = model, decoder, engine, metrics
        self.max_batch_size, self.max_wait_s, self.queue_limit = max_batch_size, max_wait_s, queue_limit
        self._queue: deque[Job] = deque()
        self._inflight: list[Job] = []  # the batch being decoded
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = executor  # owned by the runtime
        self._batch_s = 0.05  # running mean of a batch's decode time, for Retry-After

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model}-{self.decoder}")

    def submit(self, request: RankRequest, deadline: float | None = None) -> Job:
        """Admit a request or refuse it at once (503 draining, 429 queue full)."""
        if self._closing:
            raise Unavailable("the service is shutting down", code="draining")
        if len(self._queue) >= self.queue_limit:
            raise QueueFull(f"the {self.decoder} queue is full ({self.queue_limit} requests); retry later",
                            self.retry_after_s())
        job = Job(request, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._gauge()
        self._wake.set()
        return job

    def withdraw(self, job: Job) -> None:
        """A request that stopped waiting (its deadline passed) gives its queue slot back at once, so
        it neither counts against ``queue_limit`` nor waits to be skipped by the worker."""
        try:
            self._queue.remove(job)
        except ValueError:  # already taken into a batch
            return
        self._gauge()

    def retry_after_s(self) -> int:
        """Seconds until the queue ahead has likely been decoded."""
        return max(1, math.ceil(self._batch_s * (len(self._queue) / self.max_batch_size + 1)))

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new work, decode everything admitted, stop the worker; False if it timed out."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            return True
        except TimeoutError:
            return False

    def fail_pending(self, error: Exception) -> None:
        """Answer every admitted request that has no answer yet, queued or decoding, with ``error``
        (a drain that ran out or was abandoned): none is left waiting for a worker that will stop."""
        self._closing = True
        for job in [*self._inflight, *self._queue]:
            self._fail(job, error)
        self._queue.clear()
        self._gauge()

    async def stop(self) -> None:
        """After :meth:`drain`: cancel a worker that did not finish and fail whatever is left (503)."""
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.fail_pending(Unavailable("the service shut down", code="draining"))

    # ----------------------------------------------------------------- worker
    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill()
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            self._gauge()
            self._inflight = self._live(batch)
            try:
                await self._decode(self._inflight)
            finally:
                self._inflight = []

    async def _fill(self) -> None:
        """Wait until a full batch is queued or the oldest request has waited ``max_wait``."""
        oldest = self._queue[0].enqueued
        while len(self._queue) < self.max_batch_size and not self._closing:
            remaining = oldest + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _live(self, batch: list[Job]) -> list[Job]:
        """Drop requests nobody waits for any more and those past their deadline (504, never decoded)."""
        now, live = time.monotonic(), []
        for job in batch:
            if job.future.done():  # the handler gave up (its own deadline timer fired)
                continue
            if job.deadline is not None and now >= job.deadline:
                self._fail(job, DeadlineExceeded())
                continue
            live.append(job)
        return live

    async def _decode(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        engine = self.engine()
        try:
            # timed on the torch thread: waiting there for the other decoder's batch is not decode time
            results, start, decode_s = await asyncio.get_running_loop().run_in_executor(
                self._executor, timed, engine.rank, [j.request for j in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"engine returned {len(results)} results for {len(jobs)} requests")
        except Exception:
            # one bad batch must not take the worker down; only its own requests fail
            log.exception("%s %s decode of a batch of %d failed", self.model, self.decoder, len(jobs))
            for job in jobs:
                self._fail(job, DecodeFailed())
            return
        self._batch_s = 0.8 * self._batch_s + 0.2 * decode_s
        self.metrics.observe_batch(self.model, self.decoder, len(jobs), decode_s)
        for job, result in zip(jobs, results, strict=True):
            queue_s = start - job.enqueued
            self.metrics.observe_decode(self.model, self.decoder, queue_s, result.generated_tokens,
                                        result.forward_passes, result.report)
            if not job.future.done():
                job.future.set_result(Decoded(result, engine, queue_s, decode_s))

    def _fail(self, job: Job, error: Exception) -> None:
        if not job.future.done():
            job.future.set_exception(error)

    def _gauge(self) -> None:
        self.metrics.queue_depth.labels(self.model, self.decoder).set(len(self._queue))
