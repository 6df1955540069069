"""Wiring only: settings → stores → engines → services → routes, and the worker's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from batchd import __version__, metrics
from batchd.api import (
    admin,
    batches,
    chat,
    completions,
    console,
    embeddings,
    files,
    models,
    responses,
)
from batchd.api import estimates as estimates_api
from batchd.api import metrics as metrics_api
from batchd.api import uploads as uploads_api
from batchd.api import usage as usage_api
from batchd.api import webhooks as webhooks_api
from batchd.api.errors import install_error_handlers
from batchd.api.middleware import BodyLimit, BodyTimeout, DocsContentPolicy, RateLimitHeaders
from batchd.api.state import Services
from batchd.backends import DatabaseClock, open_blob_store, preflight
from batchd.batches.retry import BatchRetry
from batchd.batches.service import BatchService
from batchd.clock import Clock, SystemClock
from batchd.engines.registry import ModelRegistry, load_registry
from batchd.errors import ServiceUnavailable
from batchd.estimates import EstimateService
from batchd.files import FileService
from batchd.keys import KeyService
from batchd.limits.inflight import InFlight
from batchd.limits.preparation import Preparation
from batchd.limits.ratelimit import RateLimiter
from batchd.limits.tiers import load_tiers
from batchd.probes import Probes
from batchd.settings import Settings
from batchd.shielding import stop_then_wait
from batchd.store.metadata import MetadataStore
from batchd.uploads import UploadService
from batchd.usage import UsageService
from batchd.webhooks.endpoints import WebhookEndpoints
from batchd.worker.context import WorkerContext
from batchd.worker.crashes import record_past_lives
from batchd.worker.identity import WorkerIdentity
from batchd.worker.runner import Worker, WorkerFailed
from batchd.worker.wakeup import Wakeup

log = logging.getLogger(__name__)


async def open_services(settings: Settings, *, clock: Clock | None = None,
                        registry: ModelRegistry | None = None,
                        probes: Probes | None = None) -> Services:
    """Open the stores (migrating the schema) and start the engines; `probes` are told
    which of these it is doing."""
    probes = probes or Probes()
    probes.starting("waiting for the database and the object store")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(settings.resolved_database_url)
    blobs = open_blob_store(settings)
    try:
        await preflight(settings, store, blobs, wait_seconds=settings.backend_wait_seconds)
        if clock is None and store.postgres:
            clock = DatabaseClock(store)
            await clock.start()
    except BaseException:
        await store.close()
        raise
    clock = clock or SystemClock()
    if registry is None:
        registry = load_registry(settings.models, created=int(clock.now()))
        probes.starting("loading models")
        await registry.start()
    wake = Wakeup()
    batches = BatchService(store=store, blobs=blobs, clock=clock, wake=wake)
    files = FileService(store=store, blobs=blobs, clock=clock, settings=settings)
    return Services(
        settings=settings, clock=clock, store=store, blobs=blobs, registry=registry,
        files=files,
        uploads=UploadService(store=store, blobs=blobs, clock=clock, settings=settings,
                              files=files),
        batches=batches,
        retries=BatchRetry(store=store, blobs=blobs, batches=batches, clock=clock),
        keys=KeyService(store=store, clock=clock),
        usage=UsageService(store=store, clock=clock, registry=registry),
        estimates=EstimateService(store=store, blobs=blobs, registry=registry, clock=clock,
                                  settings=settings),
        webhooks=WebhookEndpoints(store=store, clock=clock, settings=settings, wake=wake),
        tiers=load_tiers(settings.tiers), rate_limiter=RateLimiter(), auth_failures=RateLimiter(),
        realtime=InFlight(per_key=settings.realtime_choices_per_key),
        preparation=Preparation(name="parse"), wake=wake,
        gauges=metrics.StoreGauges(store.queue_snapshot),
    )


async def close_services(svc: Services) -> None:
    svc.estimates.close()  # before the engines: never free a model under its tokenizer
    await svc.registry.aclose()
    svc.preparation.close()
    if isinstance(svc.clock, DatabaseClock):
        await svc.clock.aclose()
    await svc.store.close()


async def start_worker(
    svc: Services, *, record_crashes: bool = False,
    on_failure: Callable[[WorkerFailed], None] | None = None,
) -> tuple[Worker, WorkerIdentity]:
    """`record_crashes`: this process's fatal signals are recorded as evidence against the
    requests it runs (the `batchd` commands; faulthandler is process-wide). `on_failure`:
    told if the worker stops because one of its loops died."""
    identity = WorkerIdentity(svc.settings.data_dir, record_crashes=record_crashes)
    # Before taking back the leases: a crash is recorded on the chunks its life still holds.
    await record_past_lives(svc.store, identity.lives, own=identity.life)
    if identity.stable:
        reclaimed = await svc.store.release_leases_of(identity.id)
        if reclaimed:
            log.info("took back %d pieces of work from this worker's previous run", reclaimed)
    worker = Worker(WorkerContext(worker_id=identity.id, store=svc.store, blobs=svc.blobs,
                                  registry=svc.registry, clock=svc.clock, settings=svc.settings,
                                  tiers=svc.tiers, life=identity.life.id))
    worker.start(on_failure=on_failure)
    svc.wake.attach(worker.wake)
    return worker, identity


@asynccontextmanager
async def serving(svc: Services, probes: Probes) -> AsyncIterator[None]:
    """The running process: the store-wide gauges kept fresh, readiness checked (ready from
    here on while the stores answer), and draining at the end."""
    metrics.serve_models(svc.registry.served_ids())
    stop = asyncio.Event()
    refresher = asyncio.create_task(svc.gauges.keep_fresh(stop), name="metrics:store-gauges")
    try:
        async with probes.watching(svc.store, svc.blobs):
            probes.started()
            try:
                yield
            finally:
                probes.drain()
    finally:
        await stop_then_wait(refresher, stop, within=10)


def create_app(settings: Settings, *, clock: Clock | None = None,
               registry: ModelRegistry | None = None, record_crashes: bool = False,
               on_worker_failure: Callable[[WorkerFailed], None] | None = None,
               probes: Probes | None = None) -> FastAPI:
    """`on_worker_failure`: told if the embedded worker stops because one of its loops died
    (`batchd serve` then exits, so that it is restarted); /healthz fails from then on.
    `app.state.probes` answer /healthz and /readyz (here and on BATCHD_METRICS_PORT).
    `probes`: ones whose metrics port the caller already serves (`batchd serve` opens it
    before it waits for the database); by default the lifespan serves it."""
    serve_port = probes is None
    probes = probes or Probes()

    def worker_failed(failure: WorkerFailed) -> None:
        probes.died(str(failure))
        if on_worker_failure is not None:
            on_worker_failure(failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with probes.serving(settings.metrics_host,
                            settings.metrics_port if serve_port else None):
            svc = await open_services(settings, clock=clock, registry=registry, probes=probes)
            app.state.services = svc
            worker, identity = ((await start_worker(svc, record_crashes=record_crashes,
                                                    on_failure=worker_failed))
                                if settings.embedded_worker else (None, None))
            try:
                async with serving(svc, probes):
                    yield
            finally:
                if worker is not None:
                    await worker.stop(settings.shutdown_grace_seconds)
                if identity is not None:
                    identity.close()
                await close_services(svc)

    # /docs and /redoc load Swagger UI and ReDoc from the installed package, never a CDN:
    # batchd runs on machines without internet.
    app = FastAPIOffline(title="batchd", version=__version__, lifespan=lifespan,
                         description="A self-hosted, OpenAI-compatible Batch API for open LLMs.")
    install_error_handlers(app)
    for module in (files, batches, models, chat, responses, embeddings, completions, admin):
        app.include_router(module.router)
    app.include_router(console.api)
    app.include_router(console.pages)
    app.include_router(metrics_api.router)
    app.include_router(webhooks_api.router)
    app.include_router(uploads_api.router)
    app.include_router(usage_api.router)
    app.include_router(estimates_api.router)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodyLimit, max_json_bytes=settings.max_json_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout_seconds)
    app.add_middleware(DocsContentPolicy, paths=("/docs", "/redoc"))
    app.add_middleware(metrics.HttpMetrics)  # outermost: counts every answer, errors too

    app.state.probes = probes

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: fails only when the process must be restarted (its worker died;
        answering HTTP is not health)."""
        problem = probes.liveness_problem()
        if problem is not None:
            raise ServiceUnavailable(problem, code="worker_failed")
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> dict[str, str]:
        """Readiness: 503 with the reason while the database or the object store does not
        answer, or while the process drains after SIGTERM."""
        problem = probes.readiness_problem()
        if problem is not None:
            raise ServiceUnavailable(problem, code="not_ready")
        return {"status": "ok"}

    return app
