"""The service's moving parts and their life cycle: models, batchers, A/B router, readiness, drain.

One :class:`Runtime` lives in ``app.state.runtime``; handlers fetch everything from it. It serves
one or several models (``Settings.served_models``), each a :class:`ServedModel` with its own
A/B router, checkpoints and batchers; the torch thread is shared. Start-up loads and
verifies every model's checkpoints before the server accepts connections (a bad checkpoint fails
the start), then warms them in the background: ``/healthz`` answers at once, ``/readyz`` only once
every decoder of every model has decoded once. Draining refuses new work (503) but decodes
everything admitted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from dgr2.model.config import DECODERS
from dgr2.model_store import CheckpointError, ModelStore
from dgr2.service.ab import ABRouter
from dgr2.service.batcher import Batcher
from dgr2.service.errors import InvalidInput, ModelNotFound, ServiceError, Unavailable, public_message
from dgr2.service.metrics import Metrics
from dgr2.service.models import ModelHolder, ModelSet, load_model_set, warm_up
from dgr2.service.settings import Settings
from dgr2.service.torch_thread import in_side_thread, torch_thread

log = logging.getLogger(__name__)


class ReloadFailed(ServiceError):
    status, code = 500, "reload_failed"


def _public_reason(e: Exception) -> str:
    """A checkpoint error's message is written for users (it names the file and the fault); any other
    exception's text is internal (module files, device state), so clients only get its type."""
    if isinstance(e, CheckpointError):
        return public_message(str(e))
    return f"{type(e).__name__} (details in the server log)"


@dataclass
class ServedModel:
    """One model the process serves: its A/B router, its current checkpoints and one batcher per
    decoder. Two models share no queue, so a batch only ever holds requests for one model."""

    name: str
    router: ABRouter
    holder: ModelHolder = field(default_factory=ModelHolder)
    batchers: dict[str, Batcher] = field(default_factory=dict)


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.store = ModelStore(settings.store)
        # one salt for every model: where two models share a split, a user lands on the same decoder in both
        self.served = {name: ServedModel(name, ABRouter(settings.split_of(name), settings.ab_salt,
                                                        settings.shadow_rate))
                       for name in settings.served_models}
        self.default_model = settings.model
        self.ready = False
        self._warm_models: set[str] = set()  # the models whose serving set has decoded once
        self.draining = False
        self.warm_error: str | None = None
        # called when the service cannot start (the server exits non-zero); None when embedded without one
        self.on_fatal: Callable[[str], None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock: asyncio.Lock | None = None
        self._drained: asyncio.Task[None] | None = None
        self._threads_before: int | None = None
        self.torch_executor = torch_thread()

    # ----------------------------------------------------------------- the models served
    def model(self, name: str | None) -> ServedModel:
        """The model a request names (None: the default); 404 for a name this process does not serve."""
        served = self.served.get(self.default_model if name is None else name)
        if served is None:
            raise ModelNotFound(str(name), list(self.served))
        return served

    @property
    def models(self) -> ModelHolder:
        """The default model's checkpoints."""
        return self.served[self.default_model].holder

    @property
    def batchers(self) -> dict[str, Batcher]:
        """The default model's batchers, by decoder."""
        return self.served[self.default_model].batchers

    def all_batchers(self) -> Iterator[tuple[str, Batcher]]:
        """Every batcher of every model, named ``model/decoder``."""
        for served in self.served.values():
            for decoder, batcher in served.batchers.items():
                yield f"{served.name}/{decoder}", batcher

    # ----------------------------------------------------------------- life cycle
    async def start(self) -> None:
        s = self.settings
        if s.torch_threads is not None:  # process-wide; put back by stop() for embedders and tests
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(s.torch_threads)
        loop = asyncio.get_running_loop()
        for served in self.served.values():  # one model at a time: a bad checkpoint fails the start
            models = await loop.run_in_executor(self.torch_executor, self._load, served.name,
                                                {d: s.ref(d) for d in DECODERS})
            self._install(served, models)
        self._reload_lock = asyncio.Lock()
        for served in self.served.values():
            for d in DECODERS:
                served.batchers[d] = Batcher(served.name, d, lambda h=served.holder, d=d: h.engine(d), self.metrics,
                                             self.torch_executor, max_batch_size=s.max_batch_size,
                                             max_wait_s=s.max_wait_ms / 1000, queue_limit=s.queue_limit)
                served.batchers[d].start()
        self.spawn(self._warm([served.holder.current for served in self.served.values()]))

    async def _warm(self, sets: list[ModelSet | None]) -> None:
        for models in sets:
            assert models is not None, "warm-up before load"
            try:
                await asyncio.get_running_loop().run_in_executor(self.torch_executor, warm_up, models)
            except Exception as e:
                log.exception("warm-up of %s failed: the service cannot serve it", models.name)
                self.warm_error = f"warm-up of {models.name} failed: {_public_reason(e)}"
                if self.on_fatal is not None:  # a server that would only ever answer 503 is worse than none
                    self.on_fatal(f"warm-up of {models.name} {models.versions()} failed: {type(e).__name__}: {e}")
                    return
                continue  # embedded without a server: a reload of that model can still make the service ready
            self._warmed_up(models)

    def _warmed_up(self, models: ModelSet) -> None:
        """Ready once every model served has a warmed set (a reload's set is warmed before its swap)."""
        self._warm_models.add(models.name)
        if not self.ready and self._warm_models >= set(self.served):
            self.ready, self.warm_error = True, None
            log.info("ready: %s", {m.name: m.holder.current.versions() for m in self.served.values()
                                   if m.holder.current is not None})

    def check_serving(self) -> None:
        """Raise 503 unless requests can be admitted now."""
        if self.draining:
            raise Unavailable("the service is draining for shutdown; retry on another replica", code="draining")
        if not self.ready:
            raise Unavailable(self.warm_error or "models are loading or warming up", code="not_ready")

    async def drain(self) -> None:
        """Stop admitting, then decode everything admitted (bounded by ``drain_timeout_s``). Idempotent."""
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.wait([self._drained])  # returns (does not raise) if the drain was abandoned

    def abandon_drain(self) -> None:
        """Stop waiting for admitted requests (a second signal): they are answered 503 at once."""
        self.draining = True
        if self._drained is not None:
            self._drained.cancel()
        self._fail_pending("the service is shutting down at once (a second signal); retry on another replica")

    def _fail_pending(self, message: str) -> None:
        for _, b in self.all_batchers():
            b.fail_pending(Unavailable(message, code="draining"))

    async def _drain(self) -> None:
        self.draining = True
        log.info("draining: %s", {key: b.depth for key, b in self.all_batchers()})
        timeout = self.settings.drain_timeout_s
        done = await asyncio.gather(*(b.drain(timeout) for _, b in self.all_batchers()))
        if not all(done):
            log.warning("drain timed out after %.0f s; queued requests get 503", timeout)
            self._fail_pending(f"the service is shutting down and its drain ran out ({timeout:g} s); "
                               "retry on another replica")
        pending = [t for t in self._tasks if not t.done()]
        if pending:  # shadow comparisons whose decodes were drained above finish almost at once
            await asyncio.wait(pending, timeout=1.0)

    async def stop(self) -> None:
        await self.drain()
        for _, b in self.all_batchers():
            await b.stop()
        for t in list(self._tasks):
            t.cancel()
        self.torch_executor.shutdown(wait=False, cancel_futures=True)
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run background work (warm-up, shadow decodes) and keep a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- models
    def _load(self, name: str, refs: dict[str, str]) -> ModelSet:
        s = self.settings
        return load_model_set(self.store, name, refs, device=s.device, max_new_tokens=s.max_new_tokens,
                              max_history=s.max_history)

    def _load_and_warm(self, name: str, refs: dict[str, str]) -> ModelSet:
        models = self._load(name, refs)
        warm_up(models)
        return models

    def _install(self, served: ServedModel, models: ModelSet) -> None:
        served.holder.swap(models)
        self.metrics.set_versions(served.name, models.versions())

    async def reload(self, model: str | None,
                     refs: dict[str, str | None]) -> tuple[str, dict[str, str], dict[str, str], float]:
        """Load, verify and warm new checkpoints of one model off to the side, then swap; on failure keep
        the old. The other models are not touched.

        Returns (the model, previous versions, current versions, seconds taken). A model this process
        does not serve is 404; a ref in ``refs`` that is malformed, unknown or outside the store is the
        caller's error (422); a checkpoint that fails to load (500).
        """
        assert self._reload_lock is not None, "reload before start"
        served = self.model(model)
        async with self._reload_lock:  # one reload at a time: two would race, and hold two spare sets in memory
            if self.draining:
                raise Unavailable("the service is draining for shutdown", code="draining")
            old = served.holder.current
            previous = old.versions() if old else {}
            for d in DECODERS:  # a ref the request names must exist in the store: else the client erred (422)
                if refs.get(d):
                    try:
                        self.store.resolve(served.name, refs[d])
                    except CheckpointError as e:
                        raise InvalidInput(public_message(str(e)), param=f"{d}_ref") from None
            wanted = {d: refs.get(d) or (old.engines[d].ref if old else self.settings.ref(d)) for d in DECODERS}
            start = time.perf_counter()
            try:
                new = await in_side_thread(self._load_and_warm, served.name, wanted)  # serving goes on meanwhile
            except Exception as e:
                log.exception("reload of %s %s failed, still serving %s", served.name, wanted, previous)
                raise ReloadFailed(f"reload of {served.name} failed; still serving {previous}: "
                                   f"{_public_reason(e)}") from None
            self._install(served, new)
            self._warmed_up(new)  # also recovers a start-up whose warm-up of this model failed
            log.info("reloaded %s: %s -> %s", served.name, previous, new.versions())
            return served.name, previous, new.versions(), time.perf_counter() - start
