"""/metrics: the Prometheus text format, for admin keys (or on BATCHD_METRICS_PORT)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from batchd.api.auth import Admin
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.backends import outage
from batchd.metrics import REGISTRY

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"], route_class=AuthenticatedRoute)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, admin: Admin) -> Response:
    """This process's metrics in Prometheus' text format (a batchd extension; admin keys
    only). `BATCHD_METRICS_PORT` serves the same without a key on a bind of its own."""
    # A scrape sees the store as it is now (two aggregate queries); during an outage, the
    # last snapshot and its age.
    try:
        await services(request).gauges.refresh(timeout=5)
    except Exception as exc:  # said by batchd_store_snapshot_age_seconds, and here
        log.warning("metrics: the store-wide gauges are stale: %s", outage(exc) or repr(exc))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
