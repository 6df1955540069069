"""What every worker task needs, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from batchd.clock import Clock
from batchd.engines.registry import ModelRegistry
from batchd.limits.tiers import DEFAULT_TIERS, TiersFile
from batchd.settings import Settings
from batchd.store.blobs import BlobStore
from batchd.store.roles import WorkerStore


@dataclass(frozen=True, kw_only=True)
class WorkerContext:
    worker_id: str
    store: WorkerStore
    blobs: BlobStore
    registry: ModelRegistry
    clock: Clock
    settings: Settings
    tiers: TiersFile = field(default_factory=lambda: DEFAULT_TIERS)
    life: str | None = None  # this process's life (crashes.py), tagged on in-flight records
