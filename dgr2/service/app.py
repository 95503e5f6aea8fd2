"""The FastAPI app factory: wires settings, runtime, middleware, routes and error handlers.

No import-time side effects: nothing loads or listens until the app's lifespan starts, and each
app has its own metrics registry, so tests can build as many apps as they like.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dgr2.service.errors import UnexpectedErrorMiddleware, register_exception_handlers
from dgr2.service.limits import BodyLimitMiddleware
from dgr2.service.metrics import Metrics, RequestMetricsMiddleware
from dgr2.service.page import page_router
from dgr2.service.routes import admin_router, router
from dgr2.service.runtime import Runtime
from dgr2.service.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics(settings.model, *(m for m in settings.served_models if m != settings.model))
    rt = Runtime(settings, metrics)
    for served in rt.served.values():
        metrics.set_split(served.name, served.router.split)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start()  # loads and verifies; warm-up continues in the background (/readyz)
        try:
            yield
        finally:
            await rt.stop()  # drains what was admitted (idempotent after a signal-driven drain)

    app = FastAPI(title="diffusion-gr2 re-ranker", version="1", lifespan=lifespan,
                  description="Generative re-ranking with AR or block-diffusion decoding.")
    app.state.settings, app.state.metrics, app.state.runtime = settings, metrics, rt
    register_exception_handlers(app)
    app.add_middleware(UnexpectedErrorMiddleware)  # innermost: a handler's crash is a JSON 500, counted below
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # outermost: sees 413/422 too
    app.include_router(router)
    app.include_router(page_router)  # GET /: the decoders side by side (no admin, only the public API)
    if settings.admin_token is not None:  # no token: /admin/* does not exist (404)
        app.include_router(admin_router)
    return app
