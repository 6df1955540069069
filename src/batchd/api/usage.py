"""OpenAI's Usage and Costs APIs: `GET /v1/organization/usage/completions`, `/embeddings`
and `GET /v1/organization/costs` (usage priced by the models file's `prices`).

batchd's owner is OpenAI's project (`project_id`); batchd has no users, so `user_id` is always
null. An admin key sees every owner's usage; a user key sees only its own owner's (a batchd
extension: OpenAI asks for an admin key). Buckets start at `start_time` and are `bucket_width`
long; every bucket of a page is listed, an empty one with no results, as OpenAI does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from batchd.api.auth import Caller, Principal
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.errors import InvalidRequest
from batchd.store.records import UsageQuery

router = APIRouter(prefix="/v1/organization", tags=["usage"], route_class=AuthenticatedRoute)

# Bucket widths: seconds, and the default and largest `limit` (buckets per page), as OpenAI's.
WIDTHS = {"1m": (60, 60, 1440), "1h": (3600, 24, 168), "1d": (86400, 7, 31)}
# OpenAI's group_by values, and the column each is read from (None: batchd has no such
# dimension, and the group's value is always null).
GROUPS = {"project_id": "owner", "user_id": None, "api_key_id": "key_id", "model": "model",
          "batch": "batch", "service_tier": None}
EMBEDDING_GROUPS = ("project_id", "user_id", "api_key_id", "model")
FILTERS = {"project_ids": "owners", "user_ids": None, "api_key_ids": "key_ids",
           "models": "models"}


@dataclass(frozen=True)
class _Params:
    query: UsageQuery
    groups: tuple[str, ...]  # OpenAI's names, in the order asked
    limit: int
    end: int


def _values(request: Request, name: str) -> list[str]:
    """A list parameter as clients send it: repeated (`models=a&models=b`), with brackets
    (`models[]=a`) or comma-separated."""
    found: list[str] = []
    for key, value in request.query_params.multi_items():
        if key in (name, f"{name}[]"):
            found.extend(v for v in value.split(",") if v)
    return found


def _integer(request: Request, name: str, *, required: bool = False) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if required:
            raise InvalidRequest(f"Missing required parameter: '{name}'.",
                                 code="missing_required_parameter", param=name)
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid value for '{name}': expected an integer, got {raw!r}.",
                             code="invalid_value", param=name) from None
    if value < 0:
        raise InvalidRequest(f"Invalid value for '{name}': it must not be negative.",
                             code="invalid_value", param=name)
    return value


def _params(request: Request, caller: Principal, kind: str, now: int, *,
            allowed: tuple[str, ...] | None = None,
            widths: dict[str, tuple[int, int, int]] = WIDTHS) -> _Params:
    if allowed is None:
        allowed = EMBEDDING_GROUPS if kind == "embeddings" else tuple(GROUPS)
    width_name = request.query_params.get("bucket_width", "1d")
    if width_name not in widths:
        raise InvalidRequest(f"Invalid value for 'bucket_width': {width_name!r}; supported "
                             f"values are {', '.join(map(repr, widths))}.",
                             code="invalid_value", param="bucket_width")
    width, default_limit, max_limit = widths[width_name]
    start = _integer(request, "start_time", required=True)
    assert start is not None
    end = _integer(request, "end_time")
    if end is None:
        # Up to now, this second included: usage is kept a minute to a row that begins at
        # the minute, so in a minute's first second an end of int(now) left its row out.
        end = now + 1
    if end <= start:
        raise InvalidRequest("'end_time' must be after 'start_time'.", code="invalid_value",
                             param="end_time")
    limit = _integer(request, "limit")
    if limit is None:
        limit = default_limit
    if not 1 <= limit <= max_limit:
        raise InvalidRequest(f"Invalid value for 'limit': {limit}; with bucket_width "
                             f"'{width_name}' it must be between 1 and {max_limit}.",
                             code="invalid_value", param="limit")
    page = request.query_params.get("page")
    first = start
    if page:
        try:
            first = int(page.removeprefix("page_"))
        except ValueError:
            first = -1
        if first < start or first >= end or (first - start) % width:
            raise InvalidRequest(f"Invalid value for 'page': {page!r}; use a next_page value "
                                 "of the same query.", code="invalid_value", param="page")
    groups = tuple(dict.fromkeys(_values(request, "group_by")))
    for group in groups:
        if group not in allowed:
            raise InvalidRequest(f"Invalid value for 'group_by': {group!r}; supported values "
                                 f"are {', '.join(map(repr, allowed))}.",
                                 code="invalid_value", param="group_by")
    filters: dict[str, tuple[str, ...]] = {}
    for name, field in FILTERS.items():
        values = tuple(_values(request, name))
        if values and field is None:
            filters["owners"] = ("\0none",)  # no usage has a user: nothing matches
        elif values and field is not None:
            filters[field] = values
    batch: bool | None = None
    raw_batch = request.query_params.get("batch")
    if raw_batch is not None:
        if kind == "embeddings" or raw_batch.lower() not in ("true", "false"):
            raise InvalidRequest(f"Invalid value for 'batch': {raw_batch!r}; expected true "
                                 "or false (completions only).", code="invalid_value",
                                 param="batch")
        batch = raw_batch.lower() == "true"
    last = min(end, first + limit * width)
    query = UsageQuery(kind=kind, start=first, end=last, width=width, owner=caller.scope,
                       group_by=tuple(c for g in groups if (c := GROUPS.get(g)) is not None),
                       batch=batch, **filters)
    return _Params(query=query, groups=groups, limit=limit, end=end)


def _result(kind: str, row: dict[str, Any], groups: tuple[str, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {"object": f"organization.usage.{kind}.result",
                              "input_tokens": row["input_tokens"]}
    if kind == "completions":
        result.update(output_tokens=row["output_tokens"],
                      input_cached_tokens=row["cached_tokens"], input_audio_tokens=0,
                      output_audio_tokens=0)
    result["num_model_requests"] = row["requests"]
    for group in (EMBEDDING_GROUPS if kind == "embeddings" else tuple(GROUPS)):
        column = GROUPS[group]
        value = row.get(column) if column is not None and group in groups else None
        if group == "batch" and value is not None:
            value = bool(value)
        if group == "api_key_id" and value == "":
            value = None  # recorded before batches remembered their key
        result[group] = value
    return result


async def _usage(request: Request, caller: Principal, kind: str) -> dict[str, Any]:
    svc = services(request)
    params = _params(request, caller, kind, int(svc.clock.now()))
    query = params.query
    rows = await svc.usage.read(query)
    by_bucket: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_bucket.setdefault(int(row["start"]), []).append(_result(kind, row, params.groups))
    buckets = [{"object": "bucket", "start_time": start,
                "end_time": min(start + query.width, params.end),
                "results": by_bucket.get(start, [])}
               for start in range(query.start, query.end, query.width)]
    more = query.end < params.end
    return {"object": "page", "data": buckets, "has_more": more,
            "next_page": f"page_{query.end}" if more else None}


@router.get("/usage/completions")
async def completions_usage(request: Request, caller: Caller) -> dict[str, Any]:
    """Usage of chat completions, responses and completions, batch and real time."""
    return await _usage(request, caller, "completions")


@router.get("/usage/embeddings")
async def embeddings_usage(request: Request, caller: Caller) -> dict[str, Any]:
    """Usage of embeddings, batch and real time."""
    return await _usage(request, caller, "embeddings")


# The Costs API: daily buckets only, up to 180 a page, as OpenAI's.
COST_WIDTHS = {"1d": (86400, 7, 180)}
COST_GROUPS = ("project_id", "line_item")


@router.get("/costs")
async def costs(request: Request, caller: Caller) -> dict[str, Any]:
    """What the usage cost at the models file's `prices` (per million tokens, with the batch
    discount on batch requests). Models without prices cost 0 and are listed in
    `unpriced_models` (a batchd extension), so a zero is never mistaken for free."""
    svc = services(request)
    params = _params(request, caller, "completions", int(svc.clock.now()),
                     allowed=COST_GROUPS, widths=COST_WIDTHS)
    by_item = "line_item" in params.groups
    totals = await svc.usage.costs(params.query, by_project="project_id" in params.groups,
                                   by_line_item=by_item)
    query = params.query
    buckets = []
    for start in range(query.start, query.end, query.width):
        results = [{"object": "organization.costs.result",
                    "amount": {"value": round(amount["value"], 10),
                               "currency": amount["currency"]},
                    "line_item": line_item, "project_id": project}
                   for (bucket, project, line_item), amount in sorted(
                       totals.amounts.items(), key=lambda item: tuple(map(str, item[0])))
                   if bucket == start and (amount["value"] or not by_item)]
        buckets.append({"object": "bucket", "start_time": start,
                        "end_time": min(start + query.width, params.end), "results": results})
    more = query.end < params.end
    return {"object": "page", "data": buckets, "has_more": more,
            "next_page": f"page_{query.end}" if more else None,
            "unpriced_models": sorted(totals.unpriced)}
