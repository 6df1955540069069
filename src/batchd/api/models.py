"""/v1/models: every served id and alias. Ids may contain '/', raw or as %2F."""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote

from fastapi import APIRouter, Request
from pydantic import BaseModel

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.engines.registry import ModelRegistry

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=AuthenticatedRoute)


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def model_object(registry: ModelRegistry, name: str) -> ModelObject:
    return ModelObject(id=name, created=registry.created, owned_by=registry.entry(name).owned_by)


@router.get("", response_model=ModelList)
async def list_models(request: Request, caller: Caller) -> ModelList:
    registry = services(request).registry
    return ModelList(data=[model_object(registry, name) for name in registry.names()])


@router.get("/{model:path}", response_model=ModelObject)
async def retrieve_model(request: Request, caller: Caller, model: str) -> ModelObject:
    return model_object(services(request).registry, unquote(model))
