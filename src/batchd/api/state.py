"""The services an app instance holds, reachable from any request."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from batchd.batches.retry import BatchRetry
from batchd.batches.service import BatchService
from batchd.clock import Clock
from batchd.engines.registry import ModelRegistry
from batchd.estimates import EstimateService
from batchd.files import FileService
from batchd.keys import KeyService
from batchd.limits.inflight import InFlight
from batchd.limits.preparation import Preparation
from batchd.limits.ratelimit import RateLimiter
from batchd.limits.tiers import TiersFile
from batchd.metrics import StoreGauges
from batchd.settings import Settings
from batchd.store.blobs import BlobStore
from batchd.store.metadata import MetadataStore
from batchd.uploads import UploadService
from batchd.usage import UsageService
from batchd.webhooks.endpoints import WebhookEndpoints
from batchd.worker.wakeup import Wakeup


@dataclass(kw_only=True)
class Services:
    settings: Settings
    clock: Clock
    store: MetadataStore
    blobs: BlobStore
    registry: ModelRegistry
    files: FileService
    uploads: UploadService
    batches: BatchService
    retries: BatchRetry
    keys: KeyService
    usage: UsageService
    estimates: EstimateService  # a batch input file's cost and time, before it runs
    webhooks: WebhookEndpoints
    tiers: TiersFile
    rate_limiter: RateLimiter  # requests per minute, per key
    auth_failures: RateLimiter  # failed authentications, per client address
    realtime: InFlight  # real-time choices being generated, per key
    preparation: Preparation  # large request bodies parsed off the event loop, per owner
    wake: Wakeup  # the services' wake-ups for this process's worker, once one runs
    gauges: StoreGauges  # the store-wide metrics, read for each scrape


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
