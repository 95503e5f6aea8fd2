"""Prometheus metrics: one :class:`Metrics` per app, on its own ``CollectorRegistry``.

Every series carries ``model`` (the model name) and, where a decoder is involved, ``decoder``
(``none`` when the request failed before one was chosen). A process serving several models labels
each series with the model that did the work; a request refused before its model was known (a body
refused whole, an unknown model name) counts under the default model, so each model's ratios of
refusals to requests stay over that model's own traffic and no client-chosen name becomes a label.
Conventions:

- ``dgr2_requests_total{status}`` and ``dgr2_request_duration_seconds`` count re-rank requests: one
  per ``/v1/rerank`` call and one per item of a ``/v1/rerank/batch`` call (a batch refused as a whole
  counts once, with ``decoder="none"``).
- ``dgr2_rejections_total{reason}``: ``invalid`` (422), ``too_large`` (413), ``queue_full`` (429),
  ``not_ready`` / ``draining`` (503), ``deadline`` (504).
- ``dgr2_invalid_decodes_total{kind}``: decodes whose raw answer had that fault (``duplicates``,
  ``missing``, ``out_of_set``, ``malformed``); a decode with several faults counts once per kind.
- Decode-side series (tokens, forward passes, batch size, decode time) include shadow decodes:
  they measure work done. Shadow agreement is the histogram ``dgr2_shadow_agreement{decoder,metric}``
  where ``decoder`` is the one that served and ``metric`` is ``tau`` (Kendall tau, in [-1, 1]) or
  ``top10`` (overlap of the two top-10 sets, in [0, 1]).
- ``dgr2_ab_split{decoder}``: the share of routed traffic the A/B split sends to each decoder (0 for a
  decoder out of the split), so alerts and dashboards know whether an A/B test is running.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dgr2.model.config import DECODERS
from dgr2.model.guard import INVALID_KINDS, GuardReport

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
AGREEMENT_BUCKETS = (-0.5, 0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
REJECTION_REASONS = {413: "too_large", 422: "invalid", 429: "queue_full", 504: "deadline"}


class Metrics:
    def __init__(self, *models: str) -> None:
        """``models``: every model served, the default first."""
        self.model = models[0]  # the default model: requests refused before their model is known
        self.registry = r = CollectorRegistry(auto_describe=True)
        mdd = ["model", "decoder"]
        self.requests = Counter("dgr2_requests", "Re-rank requests by outcome", [*mdd, "status"], registry=r)
        self.request_seconds = Histogram("dgr2_request_duration_seconds", "Re-rank request latency, end to end",
                                         mdd, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("dgr2_queue_duration_seconds", "Time admitted requests wait for a batch",
                                       mdd, buckets=LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Histogram("dgr2_decode_duration_seconds", "Wall time of one batched decode",
                                        mdd, buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("dgr2_generated_tokens", "Tokens generated", mdd, registry=r)
        self.forward_passes = Counter("dgr2_forward_passes", "Model forward passes (per sequence, prefill "
                                      "included)", mdd, registry=r)
        self.batch_size = Histogram("dgr2_batch_size", "Requests per batched decode", mdd,
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("dgr2_queue_depth", "Requests waiting in a decoder's queue", mdd, registry=r)
        self.invalid_decodes = Counter("dgr2_invalid_decodes", "Decodes whose raw answer was invalid, by fault",
                                       [*mdd, "kind"], registry=r)
        self.repairs = Counter("dgr2_repairs", "Answers the guard repaired into a valid ranking", mdd, registry=r)
        self.rejections = Counter("dgr2_rejections", "Requests refused, by reason", [*mdd, "reason"], registry=r)
        self.model_info = Gauge("dgr2_model_info", "Checkpoint version served (value 1)", [*mdd, "version"],
                                registry=r)
        self.shadow_agreement = Histogram("dgr2_shadow_agreement", "Agreement of the shadow decoder's ranking "
                                          "with the served one", [*mdd, "metric"], buckets=AGREEMENT_BUCKETS,
                                          registry=r)
        self.ab_split = Gauge("dgr2_ab_split", "Share of routed traffic the A/B split sends to the decoder",
                              mdd, registry=r)
        # Series that should be 0 rather than absent: with both decoders constrained, faults are rare,
        # and a rate over a never-created series is "no data", not the 0 an SRE expects on the panel.
        for model in models:
            for decoder in DECODERS:
                for kind in INVALID_KINDS:
                    self.invalid_decodes.labels(model, decoder, kind)
                self.repairs.labels(model, decoder)
        self._versions: dict[str, dict[str, str]] = {}

    # ----------------------------------------------------------------- recording helpers
    def observe_request(self, model: str | None, decoder: str | None, status: int, seconds: float,
                        reason: str | None = None) -> None:
        m, d = model or self.model, decoder or "none"
        self.requests.labels(m, d, str(status)).inc()
        self.request_seconds.labels(m, d).observe(seconds)
        reason = reason or REJECTION_REASONS.get(status)
        if reason:
            self.rejections.labels(m, d, reason).inc()

    def observe_batch(self, model: str, decoder: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model, decoder).observe(size)
        self.decode_seconds.labels(model, decoder).observe(seconds)

    def observe_decode(self, model: str, decoder: str, queue_s: float, generated: int, passes: int,
                       report: GuardReport) -> None:
        self.queue_seconds.labels(model, decoder).observe(queue_s)
        self.generated_tokens.labels(model, decoder).inc(generated)
        self.forward_passes.labels(model, decoder).inc(passes)
        for kind, bad in report.faults().items():
            if bad:
                self.invalid_decodes.labels(model, decoder, kind).inc()
        if report.repaired:
            self.repairs.labels(model, decoder).inc()

    def set_versions(self, model: str, versions: dict[str, str]) -> None:
        """What ``model`` serves now; its previous versions' series go, the other models' stay."""
        self._versions[model] = dict(versions)
        self.model_info.clear()
        for m, served in self._versions.items():
            for decoder, version in served.items():
                self.model_info.labels(m, decoder, version).set(1)

    def set_split(self, model: str, split: dict[str, float]) -> None:
        for decoder in DECODERS:
            self.ab_split.labels(model, decoder).set(split.get(decoder, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts ``/v1/rerank`` calls (and whole-batch refusals) by status, including 413/422 answered
    before any handler ran. Handlers leave the model, decoder and error code in ``request.state``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path not in ("/v1/rerank", "/v1/rerank/batch"):
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if path == "/v1/rerank" or status != 200:  # batch items are counted one by one by the handler
                state = scope.get("state") or {}
                code = state.get("error_code")
                reason = code if code in ("not_ready", "draining") else None
                self.metrics.observe_request(state.get("model"), state.get("decoder"), status,
                                             time.perf_counter() - start, reason)
